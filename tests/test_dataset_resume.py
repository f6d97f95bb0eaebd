"""save_to: a dataset sweep killed with SIGKILL mid-run and rerun gives the uninterrupted results; a folder of
a different call is refused, naming the difference; and two gloo ranks, each running every other example,
give the one-process result."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import intervenable as pv
from intervenable.distributed import distributed_sweep
from intervenable.errors import InputError

HERE = Path(__file__).resolve().parent
N = 8


def setup():
    """A tiny GPT-2 and eight prompts of two lengths, noised on a subject (seeded per example)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=32, n_head=4, vocab_size=50, n_positions=16,
                                       bos_token_id=0, eos_token_id=0)).eval()
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(1, 50, (1, 5 + i % 2), generator=g) for i in range(N)]
    kw = dict(target=[int(x) for x in torch.randint(1, 50, (N,), generator=g)], subject=[(1, 3)] * N, noise=0.5,
              samples=2, components=["block_output", "mlp_output"], progress=False, examples_per_batch=1)
    return model, prompts, kw


CHILD = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {here!r})
    from intervenable.sweeps import resume
    from test_dataset_resume import setup

    put = resume.ResultStore.put
    count = [0]

    def slow_put(self, index, result):
        count[0] += 1
        if count[0] == 4:  # the fourth example is being written: leave a partial file, then wait to be killed
            open(os.path.join(self.folder, ".tmp-99999-example-000006.safetensors"), "wb").write(b"\\x00" * 10)
            time.sleep(600)
        put(self, index, result)

    resume.ResultStore.put = slow_put
    import intervenable as pv
    model, prompts, kw = setup()
    pv.causal_trace(model, prompts, save_to={folder!r}, **kw)
""")


def test_sigkill_mid_run_then_rerun_equals_an_uninterrupted_run(tmp_path) -> None:
    folder = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(here=str(HERE), folder=str(folder))], env=env)
    try:
        deadline = time.time() + 120
        while not (folder / ".tmp-99999-example-000006.safetensors").exists():
            assert child.poll() is None, "the child ended before it was killed"
            assert time.time() < deadline, "the child never reached its fourth example"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    finished = sorted(p.name for p in folder.glob("example-*"))
    # Examples run grouped by length (the 5-token ones, 0, 2, 4, ..., first): the fourth, in flight, is lost.
    assert finished == [f"example-{i:06d}.safetensors" for i in (0, 2, 4)]
    model, prompts, kw = setup()
    resumed = pv.causal_trace(model, prompts, save_to=folder, **kw)
    assert resumed.info["resumed"] == 3
    whole = pv.causal_trace(model, prompts, **kw)
    fresh = pv.causal_trace(model, prompts, save_to=tmp_path / "fresh", **kw)
    for a, b, c in zip(resumed.per_example, whole.per_example, fresh.per_example):
        assert torch.equal(a.values, c.values) and a.tokens == b.tokens and a.subject == b.subject
        torch.testing.assert_close(a.values, b.values, atol=0, rtol=0)
        assert a.clean_score == b.clean_score and a.corrupted_score == b.corrupted_score
    assert len(list(folder.glob("example-*.safetensors"))) == N
    assert not list(folder.glob(".tmp-*"))  # the killed write's temporary file is gone
    again = pv.causal_trace(model, prompts, save_to=folder, **kw)  # everything there: nothing runs
    assert again.info["resumed"] == N


def test_a_folder_of_another_call_is_refused_naming_the_difference(tmp_path) -> None:
    model, prompts, kw = setup()
    pv.causal_trace(model, prompts[:2], save_to=tmp_path, **{**kw, "target": kw["target"][:2], "subject": [(1, 3)] * 2})
    with pytest.raises(InputError, match="option components"):
        pv.causal_trace(model, prompts[:2], save_to=tmp_path, **{**kw, "target": kw["target"][:2],
                                                                   "subject": [(1, 3)] * 2, "components": ["mlp_output"]})
    with pytest.raises(InputError, match="example 1 differs"):
        pv.causal_trace(model, [prompts[0], prompts[3]], save_to=tmp_path,
                        **{**kw, "target": kw["target"][:2], "subject": [(1, 3)] * 2})


def _rank_worker(rank, world, init_file, out_dir):
    sys.path.insert(0, str(HERE))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model, prompts, kw = setup()
        r = distributed_sweep(pv.causal_trace, model, prompts, **kw)
        p = distributed_sweep(pv.patching_sweep, model, prompts, [q.flip(1) for q in prompts], kw["target"],
                              progress=False)
        if rank == 0:
            torch.save({"trace": [x.values for x in r.per_example], "patch": [x.values for x in p.per_example],
                        "ranks": r.info.get("ranks")}, os.path.join(out_dir, "ranks.pt"))
        else:
            assert r is None and p is None
        dist.barrier()  # both ranks done before the group is torn down: gloo aborts a rank whose peer left
    finally:
        dist.destroy_process_group()


def test_two_ranks_share_the_examples_and_equal_one_process() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_rank_worker, args=(2, os.path.join(tmp, "init"), tmp), nprocs=2, join=True)
        got = torch.load(os.path.join(tmp, "ranks.pt"))
    model, prompts, kw = setup()
    one = pv.causal_trace(model, prompts, **kw)
    patch = pv.patching_sweep(model, prompts, [q.flip(1) for q in prompts], kw["target"], progress=False)
    assert got["ranks"] == 2 and len(got["trace"]) == N
    for a, b in zip(got["trace"], one.per_example):
        torch.testing.assert_close(a, b.values, atol=1e-6, rtol=0)
    for a, b in zip(got["patch"], patch.per_example):
        torch.testing.assert_close(a, b.values, atol=1e-6, rtol=0)
