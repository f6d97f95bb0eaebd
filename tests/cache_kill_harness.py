"""Kill ``cache_to_disk`` with SIGKILL after each of its steps and at random moments, then resume it.

Run as ``python cache_kill_harness.py OUT``. Each scenario forks a child that caches ``DATA`` into
its own folder and is killed (after step k of ``disk.after_step``, or at a random moment inside a random
window of steps, three times in a row); after each kill the harness records the hash of every file under a shard's final
name, then a fresh child resumes the run to completion. ``OUT/manifest.json`` lists each folder and
what its kills left; tests/test_cache_disk.py compares them with an uninterrupted run.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sys
import time
from typing import Any, Callable, Dict, List, Tuple

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

ARGS = dict(components=["block_output", "head_attention_value_output"], layers=[0, 2], shard_tokens=40,
            batch_size=3, progress=False)


def make_model():
    from gpt2_manual import tiny_gpt2

    return tiny_gpt2(n_layer=3)


def make_data() -> List[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 64, (int(n),), generator=g) for n in torch.randint(3, 13, (24,), generator=g)]


def run(folder: str) -> Dict[str, Any]:
    import intervenable as pv

    return pv.cache_to_disk(make_model(), make_data(), folder, **ARGS)


def _set_hook(hook: Callable[[str], None]) -> None:
    from intervenable.cache import disk

    disk.after_step = hook


def shard_hashes(folder: str) -> Dict[str, str]:
    """sha256 of every file under a final shard name (what a reader may take as complete)."""
    out = {}
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if name.startswith("shard-") and name.endswith(".safetensors"):
            with open(os.path.join(folder, name), "rb") as handle:
                out[name] = hashlib.sha256(handle.read()).hexdigest()
    return out


def child(work: Callable[[], None], kill_after: int = -1, report: int = -1, gate: Tuple[int, int] = (-1, -1)) -> int:
    """Fork a child running ``work``: it kills itself after step ``kill_after``; with ``report`` it writes
    one byte per step to that pipe; with ``gate`` = (step, fd) it stops after that step, blocked on a
    read of ``fd``, so a kill from the parent lands between the reported step and the gate at the latest."""
    pid = os.fork()
    if pid == 0:
        try:
            count = [0]

            def hook(step: str) -> None:
                if count[0] == kill_after:
                    os.kill(os.getpid(), signal.SIGKILL)
                count[0] += 1
                if report >= 0:
                    os.write(report, b".")
                if count[0] == gate[0]:
                    os.read(gate[1], 1)

            _set_hook(hook)
            work()
        finally:
            os._exit(0 if kill_after < 0 else 3)
    return pid


def read_bytes(fd: int, n: int) -> int:
    """Read up to ``n`` bytes from a pipe; fewer when the writer exits first. Returns how many came."""
    got = 0
    while got < n:
        chunk = os.read(fd, n - got)
        if not chunk:
            break
        got += len(chunk)
    return got


def killed_in_window(folder: str, start: int, width: int, delay: float) -> Dict[str, Any]:
    """Run ``folder``'s cache in a child, wait until it reports step ``start``, then kill it after
    ``delay`` seconds: a random moment inside the next ``width`` steps (mid-write included), and at the
    gate after them at the latest. A child that finishes before ``start`` is not killed."""
    report_r, report_w = os.pipe()
    gate_r, gate_w = os.pipe()
    pid = child(lambda: run(folder), report=report_w, gate=(start + width, gate_r))
    os.close(report_w)
    os.close(gate_r)
    reached = read_bytes(report_r, start)
    time.sleep(delay)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    status = wait(pid)
    done = reached + read_bytes(report_r, 1 << 20)
    os.close(report_r)
    os.close(gate_w)
    return {"status": status, "start": start, "steps_done": done, "left": shard_hashes(folder)}


def wait(pid: int) -> str:
    status = os.waitpid(pid, 0)[1]
    if os.WIFSIGNALED(status):
        return signal.Signals(os.WTERMSIG(status)).name
    return f"exit {os.WEXITSTATUS(status)}"


def main(out: str) -> None:
    torch.set_num_threads(1)
    import intervenable  # noqa: F401  (imported once, before the forks)

    # The harness itself never runs cache_to_disk (whose writer is a background thread) or a forward: every
    # run is a forked child of a process that has started no thread, so no child inherits a held lock.
    import intervenable.cache.writer  # noqa: F401  (the code the children run, imported once here)

    make_model()  # the model's modeling code too, so that a child starts writing as soon as a run would
    counted = os.path.join(out, "count-steps.json")

    def count() -> None:
        steps: List[str] = []
        _set_hook(steps.append)
        run(os.path.join(out, "count"))
        start = time.perf_counter()
        _set_hook(lambda step: None)
        run(os.path.join(out, "timing"))
        with open(counted, "w") as handle:
            json.dump({"steps": steps, "one_run": time.perf_counter() - start}, handle)

    wait(child(count))
    with open(counted) as handle:
        counts = json.load(handle)
    steps, one_run = counts["steps"], counts["one_run"]
    manifest: Dict[str, Any] = {"steps": steps, "stepwise": [], "random": []}
    for k in range(len(steps)):
        folder = os.path.join(out, f"step-{k:02d}")
        status = wait(child(lambda: run(folder), kill_after=k))
        left = shard_hashes(folder)
        resumed = wait(child(lambda: run(folder)))
        manifest["stepwise"].append({"dir": folder, "step": steps[k], "status": status, "left": left,
                                     "resumed": resumed})
    # Random kills: each lands at a random moment inside a random window of steps. The window, not a
    # delay from the start, anchors the moment, so a loaded machine (a slow start) cannot move every kill
    # before the first write. The first kill of each scenario starts after the first shard is renamed and
    # ends before the last one is, so it always leaves a part of the shards.
    rng = random.Random(0)
    renames = [k for k, s in enumerate(steps) if s.startswith("renamed shard-")]
    width = 3
    step_s = one_run / len(steps)
    for i in range(int(os.environ.get("KILLS", "6"))):
        folder = os.path.join(out, f"random-{i:02d}")
        kills = []
        for n in range(3):  # three kills in a row, each resuming what the last left
            if n == 0:
                start = rng.randrange(renames[0] + 1, renames[-1] - width + 1)
            else:
                start = rng.randrange(0, len(steps))
            kills.append(killed_in_window(folder, start, width, rng.uniform(0.0, width * step_s)))
        resumed = wait(child(lambda: run(folder)))
        manifest["random"].append({"dir": folder, "kills": kills, "resumed": resumed})
    manifest["one_run_s"] = one_run
    with open(os.path.join(out, "manifest.json"), "w") as handle:
        json.dump(manifest, handle, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
