"""Distributed sweeps and sharded models on CPU (issue #7).

(a) ``distributed_sweep(pv.causal_trace, ...)`` over 2 gloo processes
    (``torch.multiprocessing.spawn``, 1 torch thread each) vs the same sweep in
    1 process (1 thread), plus 1 process with 2 threads for comparison. The clean
    run is computed on rank 0 and the corrupted run (the fast path's prefix) on
    rank 1, then broadcast; each rank patches half of the positions. Model: a
    randomly initialised GPT-2 (default 12 layers x 768 wide: GPT-2 small), a 16-token prompt
    and a counterfactual prompt (3 tokens changed), a layers x tokens trace of
    block outputs. Timed inside the workers, after model loading and a barrier
    (median of ``--repeat`` sweeps), for the default fast path and for the
    general batched path (``fast=False``). Results must equal the 1-process sweep.
(b) One forward of the same model dispatched by accelerate with a ``device_map``
    putting some blocks on "cpu" and the last third on "disk"
    (``offload_folder``) vs the plain model: a plain forward, and an
    ``IntervenableModel`` forward with one interchange patch (source run + base
    run) at a disk-offloaded layer's block_output. Median of ``--repeat`` runs.

Run::

    .venv/bin/python benchmarks/bench_distributed.py [--layers 12] [--width 768] [--tokens 16] [--repeat 5]

No reference-library column: pyvene 0.1.8 has no distributed sweep helper.
Target for (a): close to 2x on 2 idle cores (the machine's load average is printed).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))


def _load(model_dir: str, **kwargs: Any):
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(model_dir, attn_implementation="eager", **kwargs).eval()


def _inputs(tokens: int, vocab: int):
    import torch

    g = torch.Generator().manual_seed(1)
    clean = torch.randint(0, vocab, (1, tokens), generator=g)
    corrupted = clean.clone()
    corrupted[0, 2:5] = torch.randint(0, vocab, (3,), generator=g)
    return clean, corrupted


def _worker(rank: int, world: int, threads: int, init_file: str, model_dir: str, tokens: int, repeat: int,
            fast: bool, out_file: str) -> None:
    import torch
    import torch.distributed as dist

    import intervenable as pv
    from intervenable.distributed import distributed_sweep

    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = _load(model_dir)
        clean, corrupted = _inputs(tokens, model.config.vocab_size)
        with torch.no_grad():
            target = int(model(clean).logits[0, -1].argmax())
        distributed_sweep(pv.causal_trace, model, clean, corrupted, target, progress=False, fast=fast)  # warm-up
        times: List[float] = []
        result = None
        for _ in range(repeat):
            dist.barrier()
            t0 = time.perf_counter()
            result = distributed_sweep(pv.causal_trace, model, clean, corrupted, target, progress=False, fast=fast)
            times.append(time.perf_counter() - t0)
        if rank == 0:
            torch.save({"times": times, "values": result.values, "layers": result.layers,
                        "path": result.info.get("path"), "per_rank": result.info.get("row_seconds_per_rank")}, out_file)
        dist.barrier()  # both ranks done before the group is torn down (gloo aborts a rank whose peer left)
    finally:
        dist.destroy_process_group()


def sweep_run(model_dir: str, world: int, threads: int, tokens: int, repeat: int, fast: bool) -> Dict[str, Any]:
    import torch
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.pt")
        t0 = time.perf_counter()
        mp.spawn(_worker, args=(world, threads, os.path.join(tmp, "init"), model_dir, tokens, repeat, fast, out),
                 nprocs=world, join=True)
        wall = time.perf_counter() - t0
        r = torch.load(out)
    r["median"] = statistics.median(r["times"])
    r["wall"] = wall
    return r


def sharded_run(model_dir: str, tokens: int, repeat: int, threads: int) -> List[Dict[str, Any]]:
    import torch

    import intervenable as pv

    torch.set_num_threads(threads)
    plain = _load(model_dir)
    n = plain.config.n_layer
    disk_from = n - max(1, n // 3)
    device_map = {"transformer.wte": "cpu", "transformer.wpe": "cpu", "transformer.drop": "cpu",
                  "transformer.ln_f": "cpu", "lm_head": "cpu"}
    device_map.update({f"transformer.h.{i}": ("disk" if i >= disk_from else "cpu") for i in range(n)})
    offload = tempfile.mkdtemp(prefix="offload-")
    sharded = _load(model_dir, device_map=device_map, offload_folder=offload)
    assert sharded.transformer.h[n - 1].mlp.c_fc.weight.device.type == "meta", "layer should be offloaded"
    layer = disk_from  # a disk-offloaded layer
    base, source = _inputs(tokens, plain.config.vocab_size)
    rows = []

    def timed(fn):
        fn()  # warm-up
        ts, out = [], None
        for _ in range(repeat):
            t0 = time.perf_counter()
            out = fn()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts), out

    for label, make in (
        ("plain forward", lambda m: (lambda: m(base).logits)),
        (f"IntervenableModel forward, 1 patch at layer {layer} (disk)",
         lambda m: (lambda pvm=pv.IntervenableModel({"layer": layer, "component": "block_output"}, m):
                    pvm({"input_ids": base}, [{"input_ids": source}],
                        unit_locations={"sources->base": 3})[1].logits)),
    ):
        with torch.no_grad():
            t_plain, out_plain = timed(make(plain))
            t_sharded, out_sharded = timed(make(sharded))
        rows.append({"label": label, "plain": t_plain, "sharded": t_sharded,
                     "diff": (out_plain - out_sharded).abs().max().item()})
    return rows, device_map, disk_from


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--skip", choices=["sweep", "sharded"], default=None)
    args = ap.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        config = GPT2Config(n_layer=args.layers, n_embd=args.width, n_head=args.heads)
        GPT2LMHeadModel(config).save_pretrained(tmp)
        shape = f"GPT-2 {args.layers} layers x {args.width} wide, {args.tokens} tokens, CPU, torch {torch.__version__}"
        if args.skip != "sweep":
            print(f"\n(a) distributed_sweep(pv.causal_trace), {args.layers} x {args.tokens} block outputs, {shape}; "
                  f"median of {args.repeat} sweeps after a warm-up; load average before: {os.getloadavg()[0]:.1f}\n")
            print("| path | setup | seconds (median) | all runs | speedup vs 1 process x 1 thread | per-rank row seconds (last run) | max abs diff |")
            print("|---|---|---:|---|---:|---|---:|")
            for fast in (True, False):
                one = sweep_run(tmp, 1, 1, args.tokens, args.repeat, fast)
                runs = [("1 process x 1 thread", one),
                        ("2 processes x 1 thread (gloo)", sweep_run(tmp, 2, 1, args.tokens, args.repeat, fast)),
                        ("1 process x 2 threads", sweep_run(tmp, 1, 2, args.tokens, args.repeat, fast))]
                for name, r in runs:
                    diff = (r["values"] - one["values"]).abs().max().item()
                    per_rank = ", ".join(f"{s:.2f}" for s in (r["per_rank"] or []) if s is not None)
                    print(f"| {r['path']} | {name} | {r['median']:.2f} | {' '.join(f'{t:.2f}' for t in r['times'])} | "
                          f"{one['median'] / r['median']:.2f}x | "
                          f"{per_rank} | {diff:.1e} |", flush=True)
            print(f"\nload average after: {os.getloadavg()[0]:.1f}")
        if args.skip != "sharded":
            rows, device_map, disk_from = sharded_run(tmp, args.tokens, args.repeat, 1)
            print(f"\n(b) accelerate device_map: blocks 0-{disk_from - 1} on cpu, {disk_from}-{args.layers - 1} "
                  f"on disk (offload_folder), rest on cpu, vs the plain model; {shape}, 1 thread, batch 1, "
                  f"median of {args.repeat}; load average: {os.getloadavg()[0]:.1f}\n")
            print("| call | plain model (ms) | sharded model (ms) | sharded / plain | max abs diff |")
            print("|---|---:|---:|---:|---:|")
            for r in rows:
                print(f"| {r['label']} | {r['plain'] * 1e3:.1f} | {r['sharded'] * 1e3:.1f} | "
                      f"{r['sharded'] / r['plain']:.2f}x | {r['diff']:.1e} |")


if __name__ == "__main__":
    main()
