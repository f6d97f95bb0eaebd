"""Two gloo processes: a sharded map equals the single-process one, and DDP training of an
intervention equals single-process training on the concatenated batch."""
import glob
import os
import subprocess
import sys
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import intervenable as pv
from intervenable.distributed import distributed_map, distributed_sweep, shard, shard_bounds


class Shift(pv.SourcelessIntervention, pv.TrainableIntervention):
    """base + w: a trainable steering vector."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.w = nn.Parameter(torch.zeros(self.embed_dim))

    def forward(self, base, source=None, subspaces=None):
        return base + self.w


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).eval()


def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)


def train(pv_model, x, y, steps=5):
    opt = torch.optim.SGD(pv_model.get_trainable_parameters(), lr=0.5)
    for _ in range(steps):
        opt.zero_grad()
        _, out = pv_model(x)
        nn.functional.cross_entropy(out, y).backward()
        opt.step()


def wrap(model):
    return pv.IntervenableModel({"component": "0.output", "intervention_type": Shift}, model)


def _worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        # 1. a sharded map, gathered on rank 0
        squares = distributed_map(lambda i: i * i, list(range(11)))
        # 2. DDP training on this rank's half of the batch
        x, y = data()
        start, end = shard_bounds(len(x), rank, world)
        pv_model = wrap(make_model())
        ddp = nn.parallel.DistributedDataParallel(pv_model)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.5)
        for _ in range(5):
            opt.zero_grad()
            _, out = ddp(x[start:end])
            nn.functional.cross_entropy(out, y[start:end]).backward()
            opt.step()
        if rank == 0:
            torch.save({"squares": squares, "w": pv_model.interventions[pv_model.sorted_keys[0]].w.detach()},
                       os.path.join(out_dir, "rank0.pt"))
        else:
            assert squares is None
        dist.barrier()  # both ranks done before the group is torn down: gloo aborts a rank whose peer left
    finally:
        dist.destroy_process_group()


def test_two_process_map_and_ddp_training_match_single_process():
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(2, os.path.join(tmp, "init"), tmp), nprocs=2, join=True)
        result = torch.load(os.path.join(tmp, "rank0.pt"))
    assert result["squares"] == [i * i for i in range(11)]
    single = wrap(make_model())
    x, y = data()
    train(single, x, y)
    assert torch.allclose(result["w"], single.interventions[single.sorted_keys[0]].w.detach(), atol=1e-6)
    assert result["w"].abs().sum() > 0


def test_shard_without_process_group_is_everything():
    assert shard(list(range(5))) == list(range(5))
    assert [shard(list(range(5)), r, 2) for r in range(2)] == [[0, 1, 2], [3, 4]]
    assert distributed_map(str, [1, 2]) == ["1", "2"]


@pytest.mark.parametrize("n,world", [(10, 3), (2, 4), (0, 2)])
def test_shard_bounds_cover_everything_once(n, world):
    covered = []
    for r in range(world):
        start, end = shard_bounds(n, r, world)
        covered += list(range(start, end))
    assert covered == list(range(n))


def trace_inputs():
    from gpt2_manual import tiny_gpt2

    model = tiny_gpt2(n_layer=3)
    clean = torch.tensor([[3, 14, 15, 9, 26, 5]])
    corrupted = torch.tensor([[3, 40, 41, 9, 26, 5]])
    return model, clean, corrupted


def gloo_threads():
    """Names of this process's gloo threads (Linux: /proc/self/task/*/comm)."""
    names = [open(f).read().strip() for f in glob.glob("/proc/self/task/*/comm")]
    return sorted(n for n in names if "gloo" in n)


def _sweep_worker(rank, world, init_file, out_dir):
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model, clean, corrupted = trace_inputs()
        calls = []
        handle = model.register_forward_pre_hook(lambda m, a: calls.append(1))
        fast = distributed_sweep(pv.causal_trace, model, clean, corrupted, 7, progress=False)
        forwards = len(calls)  # whole-model forwards on this rank for the fast block_output trace
        handle.remove()
        result = distributed_sweep(pv.causal_trace, model, clean, corrupted, 7, components=["block_output", "mlp_output"],
                                   progress=False)
        noised = distributed_sweep(pv.causal_trace, model, clean, None, 7, subject=(1, 3), samples=2, noise=0.3,
                                   progress=False, fast=False)
        one_position = distributed_sweep(pv.patching_sweep, model, corrupted, clean, 7, positions=[2], progress=False)
        counts = [None] * world
        dist.all_gather_object(counts, forwards)
        if rank == 0:
            torch.save({"values": result.values, "layers": result.layers, "fast": fast.values, "counts": counts,
                        "path": fast.info["path"], "ranks": fast.info.get("ranks"), "noised": noised.values,
                        "one_position": one_position.values}, os.path.join(out_dir, "sweep.pt"))
        else:
            assert result is None and fast is None
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # The group is freed: no gloo thread runs on into interpreter shutdown (where one used to abort a rank
    # now and then). transformers' modeling import, inside trace_inputs(), loads torch.distributed.nn,
    # which binds the live group as a default argument unless it was imported first (intervenable/ranks.py).
    with open(os.path.join(out_dir, f"threads{rank}.txt"), "w") as f:
        f.write(",".join(gloo_threads()))


def test_two_process_sweep_equals_single_process_sweep():
    """Each of the clean and corrupted runs happens once across the two ranks; results equal one process."""
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_sweep_worker, args=(2, os.path.join(tmp, "init"), tmp), nprocs=2, join=True)
        got = torch.load(os.path.join(tmp, "sweep.pt"))
        threads = [open(os.path.join(tmp, f"threads{r}.txt")).read() for r in range(2)]
    assert threads == ["", ""]  # no gloo thread left after destroy_process_group, on either rank
    model, clean, corrupted = trace_inputs()
    single = pv.causal_trace(model, clean, corrupted, 7, components=["block_output", "mlp_output"], progress=False)
    assert got["layers"] == single.layers == [0, 1, 2]
    assert torch.allclose(got["values"], single.values, atol=1e-6)
    assert got["path"] == "fast" and got["ranks"] == 2
    assert got["counts"] == [1, 1]  # clean run on rank 0, corrupted run on rank 1, nothing repeated
    fast = pv.causal_trace(model, clean, corrupted, 7, progress=False)
    assert torch.allclose(got["fast"], fast.values, atol=1e-6)
    noised = pv.causal_trace(model, clean, None, 7, subject=(1, 3), samples=2, noise=0.3, progress=False, fast=False)
    assert torch.allclose(got["noised"], noised.values, atol=1e-6)
    one = pv.patching_sweep(model, corrupted, clean, 7, positions=[2], progress=False)
    assert torch.allclose(got["one_position"], one.values, atol=1e-6)



LATE_IMPORT = """
import glob, sys, tempfile
import torch.distributed as dist
if sys.argv[1] == "ours-first":
    import intervenable.distributed  # noqa: F401  (as a script that uses our helpers imports them)
dist.init_process_group("gloo", init_method="file://" + tempfile.mkdtemp() + "/init", rank=0, world_size=1)
from transformers import GPT2LMHeadModel  # noqa: F401  (modeling code first imported after init)
import torch.distributed.nn  # noqa: F401  (what it imports, whatever the transformers version)
dist.destroy_process_group()
print(",".join(sorted(n for n in (open(f).read().strip() for f in glob.glob("/proc/self/task/*/comm")) if "gloo" in n)))
"""


@pytest.mark.parametrize("order", ["late", "ours-first"])
def test_destroy_process_group_frees_gloo_when_intervenable_is_imported_first(order):
    """The cause of the rare rank abort, in one process: torch.distributed.nn first imported after
    init_process_group (transformers' modeling code imports it) binds the group as a default argument,
    so destroy_process_group cannot free it and gloo's threads run on; importing intervenable's
    distributed helpers before init imports it while there is no group, and the group is freed."""
    out = subprocess.run([sys.executable, "-c", LATE_IMPORT, order], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr[-2000:]
    left = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    if order == "late":
        assert "pt_gloo_runloop" in left  # the trap itself: the group outlives destroy_process_group
    else:
        assert left == ""
