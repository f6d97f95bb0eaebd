"""Steered generation overhead: ``IntervenableModel.generate`` vs plain ``model.generate`` (issue #5).

A randomly initialised GPT-2-small-shaped model (``GPT2LMHeadModel(GPT2Config())``:
12 layers, 768 wide, CPU), one 16-token prompt (batch 1), greedy decoding of
32 new tokens. The steered run adds a constant vector to one layer's
``block_output`` at every generated token (``AdditionIntervention`` with a
``source_representation``, ``intervene_on_prompt=False``). Overhead =
median(steered) / median(plain) - 1, where the plain and steered runs
alternate (after a warm-up) so that load changes hit both alike. The
reference library (pyvene 0.1.8) is measured the same way, in its own
subprocess and environment, against its own plain ``generate``, in the same
run. "identical" checks our steered tokens against plain ``generate`` with a
hand-written forward hook that adds the vector at generated tokens only.
Run::

    .venv/bin/python benchmarks/bench_generation.py [--repeat 7] [--new-tokens 32] [--threads 1]

The pyvene column needs pyvene 0.1.8 in a separate virtual environment (``.venv-pyvene``,
``$PYVENE_PYTHON`` or ``--pyvene-python PATH``: see pyvene_venv.py for how to make it); without it
the column reads "not installed".
Target: our overhead under 5% of plain generation.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

from pyvene_venv import default_pyvene_python  # the comparison venv: $PYVENE_PYTHON or .venv-pyvene

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
TARGET = 0.05


def _setup(args: argparse.Namespace):
    import torch
    from transformers import GPT2LMHeadModel

    torch.set_num_threads(args.threads)
    model = GPT2LMHeadModel.from_pretrained(args.model_dir).eval()
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, model.config.vocab_size, (1, args.tokens), generator=g)
    vector = torch.randn(model.config.n_embd, generator=g) * args.scale
    base = {"input_ids": prompt, "attention_mask": torch.ones_like(prompt)}
    gen = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
               pad_token_id=model.config.eos_token_id)
    return torch, model, base, vector, gen


def _hooked_generate(torch, model, base, vector, gen, layer: int):
    """Plain generate with a hand-written hook adding ``vector`` to block ``layer``'s output on generated tokens."""
    calls = [0]

    def hook(module, args, output):
        calls[0] += 1
        if calls[0] == 1:  # the prefill: the prompt is not intervened on
            return output
        if isinstance(output, tuple):
            return (output[0] + vector,) + tuple(output[1:])
        return output + vector

    handle = model.transformer.h[layer].register_forward_hook(hook)
    try:
        with torch.no_grad():
            return model.generate(**base, **gen)
    finally:
        handle.remove()


def child(args: argparse.Namespace) -> None:
    torch, model, base, vector, gen = _setup(args)
    if args.child == "ours":
        sys.path.insert(0, str(ROOT))
        import intervenable as pv
    else:
        import pyvene as pv
    if args.child == "ours":
        config = {"layer": args.layer, "component": "block_output",
                  "intervention": pv.AdditionIntervention(embed_dim=model.config.n_embd),
                  "source_representation": vector}
    else:  # pyvene 0.1.8 ignores a config-level source_representation when given an instance
        config = {"layer": args.layer, "component": "block_output",
                  "intervention": pv.AdditionIntervention(embed_dim=model.config.n_embd, source_representation=vector)}
    pv_model = pv.IntervenableModel(config, model=model)

    def plain():
        with torch.no_grad():
            return model.generate(**base, **gen)

    def steered():
        with torch.no_grad():
            _, out = pv_model.generate(base, unit_locations=None, intervene_on_prompt=False, **gen)
        return out

    for _ in range(args.warmup):
        plain(), steered()
    times: Dict[str, List[float]] = {"plain": [], "steered": []}
    for i in range(args.repeat):
        order = [("plain", plain), ("steered", steered)]
        for name, fn in (order if i % 2 == 0 else order[::-1]):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    steered_ids = steered()
    hooked_ids = _hooked_generate(torch, model, base, vector, gen, args.layer)
    plain_ids = plain()
    print(json.dumps({
        "plain": statistics.median(times["plain"]), "steered": statistics.median(times["steered"]),
        "ratios": [s / p for s, p in zip(times["steered"], times["plain"])],
        "times": times, "steered_ids": steered_ids[0].tolist(),
        "identical": bool(torch.equal(steered_ids, hooked_ids)),
        "changed": not bool(torch.equal(steered_ids, plain_ids)),
    }))


def run_child(python: str, method: str, args: argparse.Namespace) -> Dict[str, Any]:
    cmd = [python, str(HERE), "--child", method, "--model-dir", args.model_dir]
    for name in ("tokens", "new_tokens", "layer", "threads", "repeat", "warmup", "scale"):
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return {"error": "failed: " + (lines[-1] if lines else "?")}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=16, help="prompt length")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--layer", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=7, help="timed (plain, steered) pairs; medians are reported")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--scale", type=float, default=4.0, help="norm scale of the steering vector")
    ap.add_argument("--pyvene-python", default=default_pyvene_python(),
                    help="pyvene 0.1.8's interpreter (default: $PYVENE_PYTHON or .venv-pyvene; see pyvene_venv.py)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        GPT2LMHeadModel(GPT2Config()).save_pretrained(tmp)
        args.model_dir = tmp
        rows = {"intervenable": run_child(sys.executable, "ours", args)}
        if Path(args.pyvene_python).exists():
            rows["pyvene 0.1.8"] = run_child(args.pyvene_python, "pyvene", args)
        else:
            rows["pyvene 0.1.8"] = {"error": "not installed"}
    ours = rows["intervenable"]
    print(f"\nSteered generation, GPT2LMHeadModel(GPT2Config()) random weights (12 x 768), CPU, "
          f"{args.threads} thread(s), prompt {args.tokens} tokens, {args.new_tokens} new tokens greedy, batch 1, "
          f"AdditionIntervention at layer {args.layer} block_output on every generated token; "
          f"median of {args.repeat} alternating runs, torch {torch.__version__}\n")
    print("| library | plain generate (s) | steered generate (s) | overhead | median per-pair overhead | "
          "identical to hand-written hook |")
    print("|---|---:|---:|---:|---:|---|")
    for name, r in rows.items():
        if "error" in r:
            print(f"| {name} | {r['error']} | | | | |")
            continue
        over = r["steered"] / r["plain"] - 1
        pair = statistics.median(r["ratios"]) - 1
        print(f"| {name} | {r['plain']:.3f} | {r['steered']:.3f} | {over:+.1%} | {pair:+.1%} | "
              f"{'yes' if r['identical'] else 'no'}{'' if r['changed'] else ' (but unsteered!)'} |")
    if "error" not in ours:
        print(f"\nidentical: {'yes' if ours['identical'] else 'no'} (ours vs plain generate + hand-written hook); "
              f"steering changed the tokens: {'yes' if ours['changed'] else 'no'}")
        ref = rows["pyvene 0.1.8"]
        if "error" not in ref:
            same = ref["steered_ids"] == ours["steered_ids"]
            print(f"same steered tokens as pyvene: {'yes' if same else 'no'}")
        over = ours["steered"] / ours["plain"] - 1
        print(f"target (overhead < {TARGET:.0%}): {'met' if over < TARGET else 'NOT met'} ({over:+.1%})")


if __name__ == "__main__":
    main()
