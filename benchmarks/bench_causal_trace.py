"""Causal trace speed: intervenable's fast and general paths vs a hand-written batched sweep vs pyvene 0.1.8.

Randomly initialised models of three shapes (CPU, eager attention), a 16-token prompt and its
counterfactual (3 tokens changed), and a 12 x 16 trace of block outputs (probability of a
target token):

* ``gpt2``: GPT-2 small (12 layers, 768 wide, 12 heads, vocabulary 50257);
* ``llama``: LLaMA-shaped with grouped-query attention (12 layers, 768 wide, 12 query heads,
  4 key/value heads, SwiGLU 2048, vocabulary 32000);
* ``gemma2``: Gemma2-shaped (12 layers, 768 wide, 8 query heads of 96, 4 key/value heads,
  alternating sliding-window / full layers with a 4096 window, attention and final logit
  soft-capping, vocabulary 32000).

Methods, each in its own subprocess (peak memory = ru_maxrss growth after loading the model):
(b) a hand-written batched hook sweep in plain torch (32 rows per forward: cache the clean block
outputs, patch each row's own (layer, position)); intervenable's general batched path; its fast
path; (a) pyvene 0.1.8 as its documentation shows (a new ``IntervenableModel`` per (layer,
position)), run by ``--pyvene-python`` (default ``$PYVENE_PYTHON`` or ``.venv-pyvene``, see pyvene_venv.py; "not installed"
when absent). Times are wall-clock seconds and the child's CPU seconds (best of ``--repeat``).

A second table traces a 128-token prompt (``--long-tokens``; layers ``--long-layers``, every
position) with the fast path only and reports the ratio to its cost floor: the layers after
each patched layer at the positions from the patched one on, plus one head row per patch,
priced by the same process's measured cost of one layer-token (a batched forward of the
layers) and of one head row. Run::

    .venv/bin/python benchmarks/bench_causal_trace.py [--shapes gpt2,llama,gemma2] [--tokens 16] [--threads 1]
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
from typing import Any, Callable, Dict, List

from pyvene_venv import default_pyvene_python  # the comparison venv: $PYVENE_PYTHON or .venv-pyvene

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _config(shape: str, layers: int):
    import transformers as T

    if shape == "gpt2":
        return T.GPT2Config(n_layer=layers, n_embd=768, n_head=12)
    common = dict(num_hidden_layers=layers, hidden_size=768, intermediate_size=2048, vocab_size=32000,
                  num_key_value_heads=4, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if shape == "llama":
        return T.LlamaConfig(num_attention_heads=12, **common)
    if shape == "gemma2":
        return T.Gemma2Config(num_attention_heads=8, head_dim=96, sliding_window=4096,
                              final_logit_softcapping=30.0, attn_logit_softcapping=50.0, **common)
    raise SystemExit(f"unknown shape {shape!r}: use gpt2, llama or gemma2")


def _inputs(tokens: int, vocab: int):
    import torch

    g = torch.Generator().manual_seed(1)
    clean = torch.randint(3, vocab, (1, tokens), generator=g)
    corrupted = clean.clone()
    corrupted[0, 2:5] = torch.randint(3, vocab, (3,), generator=g)  # the "subject" differs
    return clean, corrupted


def _load(model_dir: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager").eval()


def _blocks(model) -> List[Any]:
    return list(model.transformer.h) if hasattr(model, "transformer") else list(model.model.layers)


def method_ours(model, clean, corrupted, target: int, fast: bool, layers=None) -> List[List[float]]:
    sys.path.insert(0, str(ROOT))
    from intervenable.sweeps import causal_trace

    r = causal_trace(model, clean, corrupted, target=target, layers=layers, progress=False, fast=fast)
    assert r.info["path"] == ("fast" if fast else "general"), r.info
    return r.values[0].tolist()


def method_plain(model, clean, corrupted, target: int, rows_per_forward: int = 32) -> List[List[float]]:
    """Plain torch: cache the clean block outputs, then patch 32 (layer, position) rows per forward."""
    import torch

    T = clean.shape[1]
    blocks = _blocks(model)
    n = len(blocks)
    main = lambda o: o[0] if isinstance(o, tuple) else o  # noqa: E731
    cache: Dict[int, torch.Tensor] = {}
    handles = [blocks[l].register_forward_hook(lambda m, a, o, l=l: cache.__setitem__(l, main(o).detach()))
               for l in range(n)]
    with torch.no_grad():
        model(clean)
    for h in handles:
        h.remove()
    cells = [(l, p) for l in range(n) for p in range(T)]
    out = torch.zeros(n, T)
    with torch.no_grad():
        for s in range(0, len(cells), rows_per_forward):
            chunk = cells[s:s + rows_per_forward]

            def make(l):
                rows = [i for i, (ll, _) in enumerate(chunk) if ll == l]
                pos = [chunk[i][1] for i in rows]

                def hook(m, a, o):
                    h = main(o).clone()
                    h[rows, pos] = cache[l][0, pos]
                    return (h,) + tuple(o[1:]) if isinstance(o, tuple) else h
                return hook

            hs = [blocks[l].register_forward_hook(make(l)) for l in {c[0] for c in chunk}]
            try:
                logits = model(corrupted.expand(len(chunk), -1)).logits[:, -1]
            finally:
                for h in hs:
                    h.remove()
            for (l, p), v in zip(chunk, logits.softmax(-1)[:, target].tolist()):
                out[l, p] = v
    return out.tolist()


def method_pyvene(model, clean, corrupted, target: int) -> List[List[float]]:
    """pyvene as its documentation shows: a new IntervenableModel per (layer, position)."""
    import pyvene as pv
    import torch

    T = clean.shape[1]
    n = len(_blocks(model))
    out = torch.zeros(n, T)
    for l in range(n):
        for p in range(T):
            im = pv.IntervenableModel(
                {"layer": l, "component": "block_output", "intervention_type": pv.VanillaIntervention}, model=model)
            _, patched = im(base={"input_ids": corrupted}, sources=[{"input_ids": clean}],
                            unit_locations={"sources->base": p})
            out[l, p] = patched.logits[0, -1].softmax(-1)[target].item()
    return out.tolist()


def floor_costs(model, tokens: int) -> Dict[str, float]:
    """Seconds per layer-token (a batched forward of the layers) and per head row, measured here."""
    import torch

    blocks = _blocks(model)
    d = model.config.hidden_size
    rows = max(1, 2048 // tokens)
    h = torch.randn(rows, tokens, d) * 0.1
    captured: Dict[str, Any] = {}

    class Stop(Exception):
        pass

    def grab(m, args, kwargs):
        captured["args"], captured["kwargs"] = args[1:], {k: v for k, v in kwargs.items() if k != "hidden_states"}
        raise Stop

    handle = blocks[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            model(torch.zeros(rows, tokens, dtype=torch.long), use_cache=False)
    except Stop:
        pass
    finally:
        handle.remove()
    args, kwargs = captured["args"], captured["kwargs"]
    with torch.no_grad():
        t0 = time.process_time()
        x = h
        for b in blocks:
            x = b(x, *args, **kwargs)
            x = x[0] if isinstance(x, tuple) else x
        t_layers = time.process_time() - t0
        head = model.get_output_embeddings()
        t0 = time.process_time()
        head(h[:, -1].repeat(8, 1))
        t_head = time.process_time() - t0
    return {"layer_token": t_layers / (rows * tokens * len(blocks)), "head_row": t_head / (8 * rows)}


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    model = _load(args.model_dir)
    clean, corrupted = _inputs(args.tokens, model.config.vocab_size)
    with torch.no_grad():
        target = int(model(clean).logits[0, -1].argmax())
    rss0 = _rss_mib()
    long_layers = [int(x) for x in args.long_layers.split(",")] if args.long_layers else None
    fn: Callable[[], Any] = {
        "ours": lambda: method_ours(model, clean, corrupted, target, True),
        "ours_general": lambda: method_ours(model, clean, corrupted, target, False),
        "ours_long": lambda: method_ours(model, clean, corrupted, target, True, long_layers),
        "plain": lambda: method_plain(model, clean, corrupted, target),
        "pyvene": lambda: method_pyvene(model, clean, corrupted, target)}[args.child]
    best = None
    for _ in range(args.repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        values = fn()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        best = (wall, cpu) if best is None or cpu < best[1] else best
    out = {"seconds": best[0], "cpu": best[1], "values": values, "extra_peak_mib": _rss_mib() - rss0}
    if args.child == "ours_long":
        out["floor"] = floor_costs(model, args.tokens)
    print(json.dumps(out))


def run_child(python: str, method: str, args: argparse.Namespace, model_dir: str, tokens: int, repeat: int) -> Dict[str, Any]:
    cmd = [python, str(HERE), "--child", method, "--model-dir", model_dir, "--tokens", str(tokens),
           "--threads", str(args.threads), "--repeat", str(repeat), "--long-layers", args.long_layers]
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": str(args.threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def floor_layer_tokens(layers: List[int], n_layers: int, tokens: int) -> int:
    """Layer-tokens a block_output trace must compute: layers after l, positions from p on."""
    return sum((n_layers - 1 - l) * (tokens - p) for l in layers for p in range(tokens))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="gpt2,llama,gemma2")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=2, help="best of N (by CPU time) for our methods and (b); pyvene runs once")
    ap.add_argument("--long-tokens", type=int, default=128, help="0 skips the long-prompt table")
    ap.add_argument("--long-layers", default="0,6,11", help="layers of the long-prompt trace")
    ap.add_argument("--long-shapes", default="gpt2")
    ap.add_argument("--pyvene-python", default=default_pyvene_python(),
                    help="pyvene 0.1.8's interpreter (default: $PYVENE_PYTHON or .venv-pyvene; see pyvene_venv.py)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    import torch
    from transformers import AutoModelForCausalLM

    load = lambda: " / ".join(f"{x:.1f}" for x in os.getloadavg())  # noqa: E731
    print(f"torch {torch.__version__}, {args.threads} thread(s) per method, load average (1/5/15 min) at start {load()}")
    summary = []
    for shape in args.shapes.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            torch.manual_seed(0)
            AutoModelForCausalLM.from_config(_config(shape, args.layers), attn_implementation="eager").save_pretrained(tmp)
            rows = {"(b) hand-written batched hook sweep, 32 rows/forward": run_child(sys.executable, "plain", args, tmp, args.tokens, args.repeat),
                    "intervenable, general batched path": run_child(sys.executable, "ours_general", args, tmp, args.tokens, args.repeat),
                    "intervenable causal_trace, fast path": run_child(sys.executable, "ours", args, tmp, args.tokens, args.repeat)}
            if Path(args.pyvene_python).exists():
                rows["(a) pyvene 0.1.8, documented loop"] = run_child(args.pyvene_python, "pyvene", args, tmp, args.tokens, 1)
            else:
                rows["(a) pyvene 0.1.8, documented loop"] = {"error": "not installed"}
            long = None
            if args.long_tokens and shape in args.long_shapes.split(","):
                long = run_child(sys.executable, "ours_long", args, tmp, args.long_tokens, 1)
        ours = rows["intervenable causal_trace, fast path"]
        ref = torch.tensor(rows["(b) hand-written batched hook sweep, 32 rows/forward"]["values"])
        print(f"\n{shape}-shaped, {args.layers} layers x 768 wide, {args.tokens} tokens, {args.layers} x {args.tokens} "
              f"block outputs (load average now {load()})\n")
        print("| method | seconds | CPU seconds | fast path is x faster (CPU) | fast / this (CPU) | extra peak RSS (MiB) | max abs diff vs (b) |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, r in rows.items():
            if "error" in r:
                print(f"| {name} | {r['error']} | | | | | |")
                continue
            diff = (torch.tensor(r["values"]) - ref).abs().max().item()
            x = r["cpu"] / ours["cpu"]
            print(f"| {name} | {r['seconds']:.2f} | {r['cpu']:.2f} | {x:.1f} | {1 / x:.2f} | {r['extra_peak_mib']:.0f} | {diff:.1e} |")
            summary.append((shape, name, x))
        if long is not None and "error" not in long:
            lay = [int(x) for x in args.long_layers.split(",")]
            lt = floor_layer_tokens(lay, args.layers, args.long_tokens)
            n_rows = len(lay) * args.long_tokens
            floor = lt * long["floor"]["layer_token"] + n_rows * long["floor"]["head_row"]
            print(f"\n{shape}-shaped, {args.long_tokens}-token prompt, layers {lay} x {args.long_tokens} positions "
                  f"({n_rows} patches): fast path {long['seconds']:.1f} s ({long['cpu']:.1f} CPU s); cost floor "
                  f"{lt} layer-tokens x {long['floor']['layer_token'] * 1e3:.3f} ms + {n_rows} head rows x "
                  f"{long['floor']['head_row'] * 1e3:.3f} ms = {floor:.1f} CPU s; fast path / floor = {long['cpu'] / floor:.2f}")
        elif long is not None:
            print(f"\nlong prompt: {long['error']}")
    print(f"\nload average at the end {load()}")


if __name__ == "__main__":
    main()
