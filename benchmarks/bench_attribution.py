"""Attribution patching speed: ``atp``, ``ig`` and ``eap-ig`` against the exact ``patching_sweep`` they estimate.

A randomly initialised GPT-2-small-shaped model (12 layers, 768 wide, 12 heads, vocabulary 50257, CPU);
the sites are every head x position (``head_attention_value_output``, ``heads="all"``) plus every
block / MLP / attention output x position (two calls per method, timed together); prompts of 16 and
128 tokens. Every method runs in its own subprocess, so its peak memory (ru_maxrss growth over the RSS
after loading the model) is its own. Run::

    .venv/bin/python benchmarks/bench_attribution.py [--layers 12] [--width 768] [--tokens 16 128]

The exact sweep at long prompts is slow on a small CPU: ``--exact-stride S`` (default 16 for prompts
over 32 tokens) times the exact sweep on every S-th position only (starting at S // 2, so the measured
positions have the average cost) and multiplies the time by the fraction skipped; the table says
"extrapolated" on such rows. Rank correlations compare the estimates with exact patching on the cells
measured.
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
from typing import Any, Dict, List, Optional

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
COMPONENTS = ["block_output", "mlp_output", "attention_output"]
HEADS = "head_attention_value_output"


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _inputs(tokens: int, vocab: int):
    import torch

    g = torch.Generator().manual_seed(1)
    clean = torch.randint(0, vocab, (1, tokens), generator=g)
    corrupted = clean.clone()
    corrupted[0, 2:5] = torch.randint(0, vocab, (3,), generator=g)  # the "subject" differs
    return clean, corrupted


def _run(model, method: str, clean, corrupted, target: int, positions: Optional[List[int]]):
    import intervenable as pv

    kw = dict(target=target, positions=positions)
    if method == "exact":
        a = pv.patching_sweep(model, corrupted, clean, components=COMPONENTS, progress=False, **kw)
        b = pv.patching_sweep(model, corrupted, clean, components=[HEADS], heads="all", progress=False, **kw)
        assert a.info["path"] == b.info["path"] == "fast", (a.info, b.info)
    else:
        a = pv.attribution_patching(model, corrupted, clean, components=COMPONENTS, method=method, **kw)
        b = pv.attribution_patching(model, corrupted, clean, components=[HEADS], heads="all", method=method, **kw)
    return a.values, b.values


def child(args: argparse.Namespace) -> None:
    import torch
    from transformers import GPT2LMHeadModel

    torch.set_num_threads(args.threads)
    model = GPT2LMHeadModel.from_pretrained(args.model_dir, attn_implementation="eager").eval()
    clean, corrupted = _inputs(args.tokens, model.config.vocab_size)
    with torch.no_grad():
        target = int(model(clean).logits[0, -1].argmax())
    positions = None
    if args.stride > 1:
        positions = list(range(args.stride // 2, args.tokens, args.stride))
    sys.path.insert(0, str(ROOT))
    import intervenable  # noqa: F401  (imported before timing)

    rss0 = _rss_mib()
    _run(model, args.child, clean, corrupted, target, [args.tokens - 1])  # warm-up: one position
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        a, b = _run(model, args.child, clean, corrupted, target, positions if args.child == "exact" else None)
        times.append(time.perf_counter() - t0)
    print(json.dumps({"seconds": min(times), "a": a.tolist(), "b": b.tolist(), "positions": positions,
                      "extra_peak_mib": _rss_mib() - rss0}))


def run_child(method: str, tokens: int, stride: int, args: argparse.Namespace) -> Dict[str, Any]:
    cmd = [sys.executable, str(HERE), "--child", method, "--model-dir", args.model_dir, "--tokens", str(tokens),
           "--threads", str(args.threads), "--repeat", str(args.repeat if method != "exact" else 1),
           "--stride", str(stride)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"})
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--tokens", type=int, nargs="+", default=[16, 128])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2, help="best of N for the estimates (exact runs once)")
    ap.add_argument("--exact-stride", type=int, default=None,
                    help="time exact patching on every S-th position only (default: 16 above 32 tokens, else 1)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--stride", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.tokens = args.tokens[0]
        return child(args)

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    sys.path.insert(0, str(ROOT))
    from intervenable.sweeps.spec import spearman

    print(f"\nAttribution patching, GPT-2 shape {args.layers} layers x {args.width} wide x {args.heads} heads, "
          f"sites: {args.heads} heads + block/mlp/attention outputs per layer x position, CPU, {args.threads} threads, "
          f"torch {torch.__version__}\n")
    print("| tokens | method | sites | seconds | exact / method | extra peak RSS (MiB) | rank corr. with exact |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        GPT2LMHeadModel(GPT2Config(n_layer=args.layers, n_embd=args.width, n_head=args.heads)).save_pretrained(tmp)
        args.model_dir = tmp
        for T in args.tokens:
            stride = args.exact_stride or (16 if T > 32 else 1)
            n_sites = args.layers * T * (len(COMPONENTS) + args.heads)
            exact = run_child("exact", T, stride, args)
            from intervenable.sweeps.attribution import DEFAULT_STEPS

            rows = {"atp": run_child("atp", T, 1, args)}
            for method in ("ig", "eap-ig"):
                rows[f"{method} ({DEFAULT_STEPS} steps)"] = run_child(method, T, 1, args)
            if "error" in exact:
                print(f"| {T} | exact patching_sweep | {n_sites} | {exact['error']} | | | |")
                continue
            scale = T / len(exact["positions"]) if exact["positions"] else 1.0
            exact_s = exact["seconds"] * scale
            note = f" (extrapolated x{scale:.0f} from {len(exact['positions'])} of {T} positions)" if scale > 1 else ""
            print(f"| {T} | exact patching_sweep{note} | {n_sites} | {exact_s:.1f} | 1.0 | "
                  f"{exact['extra_peak_mib']:.0f} | 1.00 |")
            pos = exact["positions"] or list(range(T))
            ref = torch.cat([torch.tensor(exact["a"]).flatten(), torch.tensor(exact["b"]).flatten()])
            for name, r in rows.items():
                if "error" in r:
                    print(f"| {T} | {name} | {n_sites} | {r['error']} | | | |")
                    continue
                est = torch.cat([torch.tensor(r["a"])[:, :, pos].flatten(), torch.tensor(r["b"])[:, :, pos].flatten()])
                print(f"| {T} | {name} | {n_sites} | {r['seconds']:.2f} | {exact_s / r['seconds']:.0f} | "
                      f"{r['extra_peak_mib']:.0f} | {spearman(est, ref):.2f} |")


if __name__ == "__main__":
    main()
