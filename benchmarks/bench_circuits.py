"""Edge attribution speed: ``eap``, ``eap-ig-inputs`` against exact edge patching of every edge.

A randomly initialised GPT-2-small-shaped model (12 layers, 768 wide, 12 heads, vocabulary 50257, CPU),
every edge of its graph with query, key and value inputs separate (``qkv=True``: 32,491 edges), 16
prompt pairs of 16 tokens (each source differs from its base at three positions), metric logit
difference. Exact edge patching of all edges is hours on a CPU: it is timed on a sample of edges
(``--exact-sample``, spread evenly over the edge list, so every receiver kind is in it) and
extrapolated to all edges by the sample's share; the table says so. Times are CPU seconds of the
method's own process (``time.process_time``, one thread by default), so that other load on a shared
machine does not skew the ratios. Every method runs in its own
subprocess, so its peak memory (ru_maxrss growth over the RSS after loading the model) is its own;
rank correlations compare the estimates with exact scores on the sampled edges. Run::

    .venv/bin/python benchmarks/bench_circuits.py [--layers 12] [--width 768] [--pairs 16] [--tokens 16]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _pairs(n: int, tokens: int, vocab: int):
    import torch

    g = torch.Generator().manual_seed(1)
    bases = torch.randint(0, vocab, (n, tokens), generator=g)
    sources = bases.clone()
    sources[:, 2:5] = torch.randint(0, vocab, (n, 3), generator=g)
    return list(bases), list(sources)


def child(args: argparse.Namespace) -> None:
    import torch
    from transformers import GPT2LMHeadModel

    torch.set_num_threads(args.threads)
    model = GPT2LMHeadModel.from_pretrained(args.model_dir, attn_implementation="eager").eval()
    bases, sources = _pairs(args.pairs, args.tokens, model.config.vocab_size)
    targets, foils = [int(b[-1]) for b in bases], [int(b[-2]) for b in bases]
    sys.path.insert(0, str(ROOT))
    import intervenable as pv
    from intervenable.circuits import layout_of
    from intervenable.circuits.scoring import Setup, exact_scores
    from intervenable.circuits.data import prompt_pairs
    from intervenable.sweeps.gradients import activations_only

    rss0 = _rss_mib()
    lay = layout_of(model, qkv=True)
    step = max(1, lay.n_edges // args.exact_sample)
    sample = list(range(step // 2, lay.n_edges, step))[:args.exact_sample]
    clock = time.process_time  # CPU seconds of this (one-thread) process: robust to other load on the machine
    t0 = clock()
    if args.child == "exact":
        pairs = prompt_pairs(model, bases, sources, targets, foils)
        with activations_only(model):
            setup = Setup(model, lay, pairs, "patch")  # recording the runs: once, not per edge
            t1 = clock()
            values = exact_scores(setup, lay.edge_index[sample]).tolist()
        seconds = (t1 - t0) + (clock() - t1) * lay.n_edges / len(sample)
    else:
        c = pv.edge_attribution_patching(model, bases, sources, target=targets, foil=foils, method=args.child, qkv=True)
        seconds = clock() - t0
        values = [c.matrix[int(u), int(r)].item() for u, r in lay.edge_index[sample]]
    print(json.dumps({"seconds": seconds, "values": values, "edges": lay.n_edges, "sample": len(sample),
                      "extra_peak_mib": _rss_mib() - rss0}))


def run_child(method: str, args: argparse.Namespace) -> Dict[str, Any]:
    cmd = [sys.executable, str(HERE), "--child", method, "--model-dir", args.model_dir, "--tokens", str(args.tokens),
           "--pairs", str(args.pairs), "--threads", str(args.threads), "--exact-sample", str(args.exact_sample)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"})
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--exact-sample", type=int, default=64, help="edges timed by exact patching (extrapolated)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    sys.path.insert(0, str(ROOT))
    from intervenable.sweeps.spec import spearman

    print(f"\nEdge attribution, GPT-2 shape {args.layers} layers x {args.width} wide x {args.heads} heads, qkv=True, "
          f"{args.pairs} pairs x {args.tokens} tokens, CPU, {args.threads} threads, torch {torch.__version__}\n")
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        GPT2LMHeadModel(GPT2Config(n_layer=args.layers, n_embd=args.width, n_head=args.heads)).save_pretrained(tmp)
        args.model_dir = tmp
        exact = run_child("exact", args)
        rows = {m: run_child(m, args) for m in ("eap", "eap-ig-inputs")}
    if "error" in exact:
        print(f"exact failed: {exact['error']}")
        return
    print("| method | edges | CPU seconds | exact / method | extra peak RSS (MiB) | rank corr. with exact (sample) |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| exact edge patching (extrapolated x{exact['edges'] / exact['sample']:.0f} from {exact['sample']} edges) | "
          f"{exact['edges']} | {exact['seconds']:.0f} | 1 | {exact['extra_peak_mib']:.0f} | 1.00 |")
    ref = torch.tensor(exact["values"])
    for name, r in rows.items():
        if "error" in r:
            print(f"| {name} | | {r['error']} | | | |")
            continue
        label = name + (" (8 steps)" if name != "eap" else "")
        print(f"| {label} | {r['edges']} | {r['seconds']:.1f} | {exact['seconds'] / r['seconds']:.0f} | "
              f"{r['extra_peak_mib']:.0f} | {spearman(torch.tensor(r['values']), ref):.2f} |")


if __name__ == "__main__":
    main()
