"""Causal trace speed: intervenable's sweep vs pyvene 0.1.8 vs a hand-written plain-torch baseline.

A randomly initialised GPT-2-small-shaped model (12 layers, 768 wide, CPU), a
16-token prompt and its counterfactual, and a 12 x 16 trace of block outputs
(probability of a target token). Every method runs in its own subprocess so
that its peak memory (ru_maxrss, minus the RSS after loading the model) is its
own. Run::

    .venv/bin/python benchmarks/bench_causal_trace.py [--layers 12] [--width 768] [--tokens 16]

The pyvene column needs pyvene 0.1.8 in a separate virtual environment::

    python3 -m venv /tmp/pyvene-venv
    /tmp/pyvene-venv/bin/pip install torch==2.13.0
    /tmp/pyvene-venv/bin/pip install pyvene==0.1.8 "transformers>=4.45,<4.50"

(``--pyvene-python PATH`` points at another interpreter); without it the column reads "not installed".
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
from typing import Any, Dict, List

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _inputs(tokens: int, vocab: int):
    import torch

    g = torch.Generator().manual_seed(1)
    clean = torch.randint(0, vocab, (1, tokens), generator=g)
    corrupted = clean.clone()
    corrupted[0, 2:5] = torch.randint(0, vocab, (3,), generator=g)  # the "subject" differs
    return clean, corrupted


def _load(model_dir: str):
    import torch
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel.from_pretrained(model_dir, attn_implementation="eager").eval()
    return model


def method_ours(model, clean, corrupted, target: int, layers: int, fast: bool) -> List[List[float]]:
    sys.path.insert(0, str(ROOT))
    from intervenable.sweeps import causal_trace

    r = causal_trace(model, clean, corrupted, target=target, progress=False, fast=fast)
    assert r.info["path"] == ("fast" if fast else "general"), r.info
    return r.values[0].tolist()


def method_plain(model, clean, corrupted, target: int, layers: int, rows_per_forward: int = 32) -> List[List[float]]:
    """Plain torch: cache the clean block outputs, then patch 32 (layer, position) rows per forward."""
    import torch

    T = clean.shape[1]
    blocks = model.transformer.h
    cache: Dict[int, torch.Tensor] = {}
    handles = [blocks[l].register_forward_hook(lambda m, a, o, l=l: cache.__setitem__(l, o.detach()))
               for l in range(layers)]
    with torch.no_grad():
        model(clean)
    for h in handles:
        h.remove()
    cells = [(l, p) for l in range(layers) for p in range(T)]
    out = torch.zeros(layers, T)
    with torch.no_grad():
        for s in range(0, len(cells), rows_per_forward):
            chunk = cells[s:s + rows_per_forward]

            def make(l):
                rows = [i for i, (ll, _) in enumerate(chunk) if ll == l]
                pos = [chunk[i][1] for i in rows]

                def hook(m, a, o):
                    o = o.clone()
                    o[rows, pos] = cache[l][0, pos]
                    return o
                return hook, rows

            hs = []
            for l in {c[0] for c in chunk}:
                fn, _ = make(l)
                hs.append(blocks[l].register_forward_hook(fn))
            logits = model(corrupted.expand(len(chunk), -1)).logits[:, -1]
            for h in hs:
                h.remove()
            probs = logits.softmax(-1)[:, target]
            for (l, p), v in zip(chunk, probs.tolist()):
                out[l, p] = v
    return out.tolist()


def method_pyvene(model, clean, corrupted, target: int, layers: int) -> List[List[float]]:
    """pyvene as its documentation shows: a new IntervenableModel per (layer, position)."""
    import pyvene as pv
    import torch

    T = clean.shape[1]
    out = torch.zeros(layers, T)
    for l in range(layers):
        for p in range(T):
            im = pv.IntervenableModel(
                {"layer": l, "component": "block_output", "intervention_type": pv.VanillaIntervention}, model=model)
            _, patched = im(base={"input_ids": corrupted}, sources=[{"input_ids": clean}],
                            unit_locations={"sources->base": p})
            out[l, p] = patched.logits[0, -1].softmax(-1)[target].item()
    return out.tolist()


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    model = _load(args.model_dir)
    clean, corrupted = _inputs(args.tokens, model.config.vocab_size)
    with torch.no_grad():
        target = int(model(clean).logits[0, -1].argmax())
    rss0 = _rss_mib()
    fn = {"ours": lambda: method_ours(model, clean, corrupted, target, args.layers, True),
          "ours_general": lambda: method_ours(model, clean, corrupted, target, args.layers, False),
          "plain": lambda: method_plain(model, clean, corrupted, target, args.layers),
          "pyvene": lambda: method_pyvene(model, clean, corrupted, target, args.layers)}[args.child]
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        values = fn()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"seconds": min(times), "values": values, "extra_peak_mib": _rss_mib() - rss0,
                      "peak_mib": _rss_mib()}))


def run_child(python: str, method: str, args: argparse.Namespace, repeat: int) -> Dict[str, Any]:
    cmd = [python, str(HERE), "--child", method, "--model-dir", args.model_dir, "--tokens", str(args.tokens),
           "--layers", str(args.layers), "--threads", str(args.threads), "--repeat", str(repeat)]
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
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2, help="best of N for the fast methods (pyvene runs once)")
    ap.add_argument("--pyvene-python", default="/tmp/pyvene-venv/bin/python")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        config = GPT2Config(n_layer=args.layers, n_embd=args.width, n_head=args.heads)
        GPT2LMHeadModel(config).save_pretrained(tmp)
        args.model_dir = tmp
        rows = {"plain torch, 32 rows/forward (b)": run_child(sys.executable, "plain", args, args.repeat),
                "intervenable, general batched path": run_child(sys.executable, "ours_general", args, args.repeat),
                "intervenable causal_trace (fast path)": run_child(sys.executable, "ours", args, args.repeat)}
        if Path(args.pyvene_python).exists():
            rows["pyvene 0.1.8, documented usage (a)"] = run_child(args.pyvene_python, "pyvene", args, 1)
        else:
            rows["pyvene 0.1.8, documented usage (a)"] = {"error": "not installed"}
    ours = rows["intervenable causal_trace (fast path)"]
    ref = torch.tensor(rows["plain torch, 32 rows/forward (b)"]["values"])
    print(f"\nCausal trace, GPT-2 shape {args.layers} layers x {args.width} wide, {args.tokens} tokens, "
          f"{args.layers} x {args.tokens} block outputs, CPU, {args.threads} threads, torch {torch.__version__}\n")
    print(f"| method | seconds | ours is x faster | extra peak RSS (MiB) | max abs diff vs (b) |")
    print(f"|---|---:|---:|---:|---:|")
    for name, r in rows.items():
        if "error" in r:
            print(f"| {name} | {r['error']} | | | |")
            continue
        diff = (torch.tensor(r["values"]) - ref).abs().max().item()
        speedup = r["seconds"] / ours["seconds"] if "seconds" in ours else float("nan")
        print(f"| {name} | {r['seconds']:.2f} | {speedup:.1f} | {r['extra_peak_mib']:.0f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
