"""Kill saving processes with SIGKILL at every step of a save, and at random moments.

Run as ``python save_kill_harness.py OUT``: imports torch once, then forks one
child per kill, each saving into its own copy of a folder; the folder each kill
leaves is kept under ``OUT`` and listed in ``OUT/manifest.json``. The test
(tests/test_save_atomic.py) loads every one of them. Scenarios:

- ``over``: the folder holds version A (and a user's notes.txt); save B, killed after step k, for every k.
- ``fresh``: no folder yet; save A, killed after step k.
- ``recover``: start from ``over`` killed after its first file move (a commit half moved in) plus a
  staging leftover; save C, killed after step k (the recovery steps included).
- ``random``: the folder holds A; the child saves B, A, B, ... until killed at a random moment.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sys
import time
from typing import Any, Callable, Dict, List

import torch
from torch import nn

WIDTH = 256  # a 256 x 256 rotation: 512 KB of tensors, so random kills land inside writes too
VERSIONS = {"A": 1, "B": 2, "C": 3}


def version(name: str) -> Any:
    """The intervenable model of one version: the same MLP, a rotation drawn from the version's seed."""
    import intervenable as pv

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, WIDTH), nn.Tanh(), nn.Linear(WIDTH, 3))
    torch.manual_seed(VERSIONS[name])
    return pv.IntervenableModel({"component": "0.output", "intervention_type": pv.RotatedSpaceIntervention}, model)


def fresh_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, WIDTH), nn.Tanh(), nn.Linear(WIDTH, 3))


def _set_hook(hook: Callable[[str], None]) -> None:
    from intervenable.io import atomic

    atomic.after_step = hook


def count_steps(save: Callable[[], None]) -> List[str]:
    """The steps one save goes through (run in this process, on a scratch folder)."""
    steps: List[str] = []
    _set_hook(steps.append)
    try:
        save()
    finally:
        _set_hook(lambda step: None)
    return steps


def killed_child(work: Callable[[], None], kill_after: int = -1) -> int:
    """Fork; the child runs ``work`` and SIGKILLs itself after step ``kill_after`` (-1: never). The wait status."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into the harness
        try:
            if kill_after >= 0:
                count = [0]

                def hook(step: str) -> None:
                    if count[0] == kill_after:
                        os.kill(os.getpid(), signal.SIGKILL)
                    count[0] += 1

                _set_hook(hook)
            work()
        finally:
            os._exit(3)  # reached only if no kill came: the parent reports it
    return os.waitpid(pid, 0)[1]


def killed_at_random(work: Callable[[Callable[[], None]], None], saves_first: int, delay: float) -> int:
    """Fork ``work(done)``; once it has called ``done()`` ``saves_first`` times, wait ``delay`` s and SIGKILL it.

    Waiting for completed saves (not for wall time alone) keeps the test meaningful on a loaded machine.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            work(lambda: os.write(write_end, b"."))
        finally:
            os._exit(3)
    os.close(write_end)
    got = 0
    while got < saves_first:
        chunk = os.read(read_end, saves_first - got)
        if not chunk:
            break  # the child ended early: the parent reports its status
        got += len(chunk)
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    os.close(read_end)
    return os.waitpid(pid, 0)[1]


def status_name(status: int) -> str:
    if os.WIFSIGNALED(status):
        return signal.Signals(os.WTERMSIG(status)).name
    return f"exit {os.WEXITSTATUS(status)}"


def stepwise(out: str, name: str, prepare: Callable[[str], None], saving: str) -> Dict[str, Any]:
    """Kill a save of version ``saving`` after each of its steps, each time on a fresh copy of the start state."""
    model = version(saving)
    scratch = os.path.join(out, f"{name}-count")
    prepare(scratch)
    steps = count_steps(lambda: model.save(os.path.join(scratch, "saved")))
    states = []
    for k, step in enumerate(steps):
        root = os.path.join(out, f"{name}-{k:02d}")
        prepare(root)
        status = killed_child(lambda: model.save(os.path.join(root, "saved")), kill_after=k)
        states.append({"dir": os.path.join(root, "saved"), "step_index": k, "step": step, "status": status_name(status)})
    return {"steps": steps, "states": states}


def main(out: str) -> None:
    torch.set_num_threads(1)
    manifest: Dict[str, Any] = {}
    pristine = os.path.join(out, "pristine")
    version("A").save(os.path.join(pristine, "saved"))
    with open(os.path.join(pristine, "saved", "notes.txt"), "w") as handle:
        handle.write("a user's file")

    def copy_of(source: str) -> Callable[[str], None]:
        return lambda root: shutil.copytree(source, root, symlinks=True)

    manifest["over"] = stepwise(out, "over", copy_of(pristine), "B")
    manifest["fresh"] = stepwise(out, "fresh", lambda root: os.makedirs(root), "A")

    first_move = next(s for s in manifest["over"]["states"] if s["step"].startswith("moved "))
    half = os.path.join(out, "half-moved")
    shutil.copytree(os.path.dirname(first_move["dir"]), half, symlinks=True)
    leftover = os.path.join(half, "saved", ".intervenable-staging-leftover")
    os.makedirs(leftover, exist_ok=True)
    with open(os.path.join(leftover, "interventions.safetensors"), "wb") as handle:
        handle.write(b"\x10\x00")  # a write cut short
    manifest["recover"] = stepwise(out, "recover", copy_of(half), "C")

    models = [version("B"), version("A")]
    target = os.path.join(out, "timing", "saved")
    start = time.perf_counter()
    for i in range(4):
        models[i % 2].save(target)
    one_save = (time.perf_counter() - start) / 4
    rng = random.Random(0)
    kills = []
    for i in range(int(os.environ.get("KILLS", "24"))):
        root = os.path.join(out, f"random-{i:02d}")
        copy_of(pristine)(root)
        folder = os.path.join(root, "saved")

        def forever(done: Callable[[], None]) -> None:
            for n in range(10 ** 9):
                models[n % 2].save(folder)
                done()

        saves_first = i % 3  # 0: a kill in the first save (loads A); 1, 2: after B, or B then A, completed
        delay = rng.uniform(0.0, 1.5 * one_save)
        status = killed_at_random(forever, saves_first, delay)
        kills.append({"dir": folder, "saves_first": saves_first, "delay": delay, "status": status_name(status)})
    manifest["random"] = {"one_save_s": one_save, "states": kills}
    with open(os.path.join(out, "manifest.json"), "w") as handle:
        json.dump(manifest, handle, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
