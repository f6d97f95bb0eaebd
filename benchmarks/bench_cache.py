"""Activation caching cost: ``run_with_cache`` and ``cache_to_disk`` against plain forwards (issue 19).

A randomly initialised GPT-2-small-shaped model (``GPT2LMHeadModel(GPT2Config())``: 12 layers,
768 wide, eager attention, CPU), batch 1, random tokens.

* ``run_with_cache`` of ``block_output``, ``attention_output`` and ``mlp_output`` at every layer
  (36 sites) vs a plain forward under ``torch.no_grad()`` vs a hand-written cache (36 plain
  forward hooks keeping ``output.detach()``), at 64 and 512 tokens. The three alternate after a
  warm-up so that load changes hit them alike; medians. Goal: run_with_cache <= 1.2x a plain forward.
* ``cache_to_disk`` of ``block_output`` at every layer (float32, 36 KB a token) for ``--sequences``
  sequences of ``--disk-tokens`` tokens in batches of 8, into a temporary folder, vs plain forwards
  of the same batches: tokens per second. Goal: >= 0.8x the plain forwards' throughput.

Run::

    .venv/bin/python benchmarks/bench_cache.py [--repeat 7] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sequences", type=int, default=32)
    parser.add_argument("--disk-tokens", type=int, default=128)
    args = parser.parse_args()

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    import intervenable as pv

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = GPT2Config()
    config._attn_implementation = "eager"
    model = GPT2LMHeadModel(config).eval()
    comps = ["block_output", "attention_output", "mlp_output"]

    def hand_cache(ids):
        kept: Dict[tuple, torch.Tensor] = {}
        handles = []
        for l, block in enumerate(model.transformer.h):
            for name, module in (("block", block), ("attn", block.attn), ("mlp", block.mlp)):
                handles.append(module.register_forward_hook(
                    lambda m, a, o, k=(name, l): kept.__setitem__(k, (o[0] if isinstance(o, tuple) else o).detach())))
        try:
            with torch.no_grad():
                model(ids)
        finally:
            for h in handles:
                h.remove()
        return kept

    def plain(ids):
        with torch.no_grad():
            return model(ids)

    print(f"GPT-2-small shape (random weights), CPU, {args.threads} threads, batch 1, median of {args.repeat}\n")
    print("| tokens | plain forward (s) | hand-written hooks (s) | run_with_cache (s) | ours / plain | hand / plain | goal |")
    print("|---|---|---|---|---|---|---|")
    for tokens in (64, 512):
        ids = torch.randint(0, config.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(tokens))
        runs = {"plain": lambda: plain(ids), "hand": lambda: hand_cache(ids),
                "ours": lambda: pv.run_with_cache(model, ids, components=comps)}
        for fn in runs.values():
            fn()
        times: Dict[str, List[float]] = {k: [] for k in runs}
        for _ in range(args.repeat):
            for key, fn in runs.items():
                times[key].append(_time(fn))
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"| {tokens} | {med['plain']:.4f} | {med['hand']:.4f} | {med['ours']:.4f} | "
              f"{med['ours'] / med['plain']:.2f}x | {med['hand'] / med['plain']:.2f}x | <= 1.2x |")

    g = torch.Generator().manual_seed(1)
    data = [torch.randint(0, config.vocab_size, (args.disk_tokens,), generator=g) for _ in range(args.sequences)]
    batches = [torch.stack(data[i:i + 8]) for i in range(0, len(data), 8)]
    n_tokens = sum(len(s) for s in data)

    def forwards():
        for b in batches:
            plain(b)

    def to_disk():
        folder = tempfile.mkdtemp(prefix="bench-cache-")
        try:
            pv.cache_to_disk(model, data, folder, components=["block_output"], batch_size=8,
                             shard_tokens=8 * args.disk_tokens, progress=False)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    forwards()
    disk_times: Dict[str, List[float]] = {"plain": [], "disk": []}
    for _ in range(max(3, args.repeat // 2)):
        disk_times["plain"].append(_time(forwards))
        disk_times["disk"].append(_time(to_disk))
    tp = {k: n_tokens / statistics.median(v) for k, v in disk_times.items()}
    print(f"\ncache_to_disk: {args.sequences} x {args.disk_tokens} tokens, block_output at 12 layers (float32, "
          f"{n_tokens * 12 * 768 * 4 / 1e6:.0f} MB), batches of 8, shard of 8 sequences\n")
    print("| plain forwards (tok/s) | cache_to_disk (tok/s) | ratio | goal |")
    print("|---|---|---|---|")
    print(f"| {tp['plain']:.0f} | {tp['disk']:.0f} | {tp['disk'] / tp['plain']:.2f}x | >= 0.8x |")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
