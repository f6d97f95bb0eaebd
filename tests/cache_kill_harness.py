"""Kill ``cache_to_disk`` with SIGKILL after each of its steps and at random moments, then resume it.

Run as ``python cache_kill_harness.py OUT``. Each scenario forks a child that caches ``DATA`` into
its own folder and is killed (after step k of ``disk.after_step``, or after a random delay, several
times in a row); after each kill the harness records the hash of every file under a shard's final
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
from typing import Any, Callable, Dict, List

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


def child(work: Callable[[], None], kill_after: int = -1, ready: Any = None) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            if ready is not None:
                os.write(ready, b".")
            if kill_after >= 0:
                count = [0]

                def hook(step: str) -> None:
                    if count[0] == kill_after:
                        os.kill(os.getpid(), signal.SIGKILL)
                    count[0] += 1

                _set_hook(hook)
            work()
        finally:
            os._exit(0 if kill_after < 0 else 3)
    return pid


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
    rng = random.Random(0)
    for i in range(int(os.environ.get("KILLS", "6"))):
        folder = os.path.join(out, f"random-{i:02d}")
        kills = []
        for _ in range(3):  # three kills in a row at random moments, each resuming what the last left
            read_end, write_end = os.pipe()
            pid = child(lambda: run(folder), ready=write_end)
            os.close(write_end)
            os.read(read_end, 1)  # the child is running
            os.close(read_end)
            time.sleep(rng.uniform(0.0, 1.2 * one_run))
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            kills.append({"status": wait(pid), "left": shard_hashes(folder)})
        resumed = wait(child(lambda: run(folder)))
        manifest["random"].append({"dir": folder, "kills": kills, "resumed": resumed})
    manifest["one_run_s"] = one_run
    with open(os.path.join(out, "manifest.json"), "w") as handle:
        json.dump(manifest, handle, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
