"""Dataset sweeps: one list call over 100 prompt pairs vs a Python loop over our single calls vs pyvene 0.1.8's
documented loop over the same pairs.

Two models (CPU, eager attention, float32):

* ``demo``: the embedded demo GPT-2 (8 layers, 96 wide), 100 counterfactual pairs of its facts (same
  relation and template, another subject of the same length; 6 to 11 tokens);
* ``gpt2``: a GPT-2-small-shaped random model (12 layers, 768 wide, 12 heads, vocabulary 50257), 100
  random pairs of 8, 9 or 10 tokens whose "subject" (3 tokens) differs.

Each pair is an activation-patching sweep of every block output (layer x position), probability of a
target token. Methods: (1) ``patching_sweep(model, bases, sources, targets)``, the list call; (2) a
Python loop over ``patching_sweep`` on each pair; (3) pyvene as its documentation shows (a new
``IntervenableModel`` per (layer, position), one forward each), run by the Python of a separate venv
(``--pyvene-python`` or ``$PYVENE_PYTHON``; "not installed" when absent) on the first
``--pyvene-pairs`` pairs (and the loop on ``--loop-pairs``, default all): their costs are compared per
pair, which does not depend on how many pairs they run (the list call's does: it runs all of them). Each method runs in its own
subprocess with ``--threads`` threads; CPU seconds are the child's. The cost per example is also
given in plain-forward equivalents: CPU seconds per pair / CPU seconds of one plain forward of a pair's
prompt (batch 1), measured in the same child. Run::

    .venv/bin/python benchmarks/bench_datasets.py [--models demo,gpt2] [--pairs 100] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent


def demo_pairs(n: int) -> Tuple[List[List[int]], List[List[int]], List[int]]:
    """(bases, sources, targets): facts with another subject of the same relation, template and length."""
    sys.path.insert(0, str(ROOT))
    from intervenable.demo import demo_facts, load_demo_model

    _, tok = load_demo_model()
    facts = demo_facts()
    ids = [tok(f["prompt"])["input_ids"] for f in facts]
    by_kind: Dict[Any, List[int]] = {}
    for k, f in enumerate(facts):
        by_kind.setdefault((f["relation"], f["template_id"], len(ids[k])), []).append(k)
    bases, sources, targets = [], [], []
    for k, f in enumerate(facts):
        if len(bases) == n:
            break
        other = next((g for g in by_kind[(f["relation"], f["template_id"], len(ids[k]))]
                      if g > k and facts[g]["target"] != f["target"]), None)
        if other is not None:
            bases.append(ids[other])
            sources.append(ids[k])
            targets.append(tok.convert_tokens_to_ids(f["target"]))
    return bases, sources, targets


def random_pairs(n: int, vocab: int) -> Tuple[List[List[int]], List[List[int]], List[int]]:
    import torch

    g = torch.Generator().manual_seed(1)
    bases, sources, targets = [], [], []
    for i in range(n):
        T = (8, 9, 10)[i % 3]
        clean = torch.randint(3, vocab, (T,), generator=g)
        corrupt = clean.clone()
        corrupt[2:5] = torch.randint(3, vocab, (3,), generator=g)
        sources.append(clean.tolist())
        bases.append(corrupt.tolist())
        targets.append(int(torch.randint(3, vocab, (1,), generator=g)))
    return bases, sources, targets


def child(args: argparse.Namespace) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    if args.child != "pyvene":
        sys.path.insert(0, str(ROOT))
        import intervenable.sweeps  # noqa: F401 - imported before the clock starts, like pyvene below
    else:
        import pyvene  # noqa: F401
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, attn_implementation="eager").eval()
    data = json.loads(Path(args.pairs_file).read_text())
    bases, sources, targets = data["bases"], data["sources"], data["targets"]
    k = {"pyvene": args.pyvene_pairs, "loop": args.loop_pairs}.get(args.child) or len(bases)
    bases, sources, targets = bases[:k], sources[:k], targets[:k]
    with torch.no_grad():  # one plain forward of a pair's prompt: the unit of cost
        ids = torch.tensor([sources[0]])
        model(ids)
        c0 = time.process_time()
        for _ in range(20):
            model(ids)
        plain = (time.process_time() - c0) / 20
    t0, c0 = time.perf_counter(), time.process_time()
    values = METHODS[args.child](model, bases, sources, targets)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(json.dumps({"seconds": wall, "cpu": cpu, "pairs": len(bases), "plain_forward_cpu": plain,
                      "values": values}))


def ours_list(model, bases, sources, targets) -> List[Any]:
    sys.path.insert(0, str(ROOT))
    import torch
    from intervenable.sweeps import patching_sweep

    r = patching_sweep(model, [torch.tensor([b]) for b in bases], [torch.tensor([s]) for s in sources], targets,
                       progress=False)
    assert all(x.info["path"] == "fast" for x in r.per_example)
    return [x.values[0].tolist() for x in r.per_example]


def ours_loop(model, bases, sources, targets) -> List[Any]:
    sys.path.insert(0, str(ROOT))
    import torch
    from intervenable.sweeps import patching_sweep

    return [patching_sweep(model, torch.tensor([b]), torch.tensor([s]), t, progress=False).values[0].tolist()
            for b, s, t in zip(bases, sources, targets)]


def pyvene_loop(model, bases, sources, targets) -> List[Any]:
    """pyvene as its documentation shows: a new IntervenableModel per (layer, position), per pair."""
    import pyvene as pv
    import torch

    n = model.config.num_hidden_layers
    out = []
    for b, s, t in zip(bases, sources, targets):
        T = len(b)
        v = torch.zeros(n, T)
        for layer in range(n):
            for p in range(T):
                im = pv.IntervenableModel({"layer": layer, "component": "block_output",
                                           "intervention_type": pv.VanillaIntervention}, model=model)
                _, patched = im(base={"input_ids": torch.tensor([b])}, sources=[{"input_ids": torch.tensor([s])}],
                                unit_locations={"sources->base": p})
                v[layer, p] = patched.logits[0, -1].softmax(-1)[t].item()
        out.append(v.tolist())
    return out


METHODS = {"list": ours_list, "loop": ours_loop, "pyvene": pyvene_loop}


def run_child(python: str, method: str, args: argparse.Namespace, model_dir: str, pairs_file: str) -> Dict[str, Any]:
    cmd = [python, str(HERE), "--child", method, "--model-dir", model_dir, "--pairs-file", pairs_file,
           "--threads", str(args.threads), "--pyvene-pairs", str(args.pyvene_pairs), "--loop-pairs", str(args.loop_pairs)]
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": str(args.threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="demo,gpt2")
    ap.add_argument("--pairs", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--pyvene-pairs", type=int, default=5, help="pairs pyvene runs (its time is scaled per pair)")
    ap.add_argument("--loop-pairs", type=int, default=0,
                    help="pairs the loop of single calls runs (default all; its cost per pair does not depend on it)")
    ap.add_argument("--pyvene-python", default=os.environ.get("PYVENE_PYTHON", ""),
                    help="the Python of a venv with pyvene 0.1.8 (default: $PYVENE_PYTHON)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--pairs-file", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    import torch
    from transformers import AutoModelForCausalLM, GPT2Config

    load = lambda: " / ".join(f"{x:.1f}" for x in os.getloadavg())  # noqa: E731
    print(f"torch {torch.__version__}, {args.threads} thread(s) per method, load average (1/5/15 min) at start {load()}")
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            if name == "demo":
                model_dir = str(ROOT / "intervenable" / "demo" / "model")
                bases, sources, targets = demo_pairs(args.pairs)
            elif name == "gpt2":
                torch.manual_seed(0)
                AutoModelForCausalLM.from_config(GPT2Config(n_layer=12, n_embd=768, n_head=12),
                                                 attn_implementation="eager").save_pretrained(tmp)
                model_dir = tmp
                bases, sources, targets = random_pairs(args.pairs, 50257)
            else:
                raise SystemExit(f"unknown model {name!r}: use demo or gpt2")
            pairs_file = os.path.join(tmp, "pairs.json")
            Path(pairs_file).write_text(json.dumps({"bases": bases, "sources": sources, "targets": targets}))
            rows = {"intervenable list call": run_child(sys.executable, "list", args, model_dir, pairs_file),
                    "loop over intervenable single calls": run_child(sys.executable, "loop", args, model_dir, pairs_file)}
            if args.pyvene_python and Path(args.pyvene_python).exists():
                rows["pyvene 0.1.8 documented loop"] = run_child(args.pyvene_python, "pyvene", args, model_dir,
                                                                 pairs_file)
            else:
                rows["pyvene 0.1.8 documented loop"] = {"error": "not installed (set --pyvene-python or $PYVENE_PYTHON)"}
        ours = rows["intervenable list call"]
        if "error" in ours:
            print(f"\n{name}: the list call failed: {ours['error']}")
            continue
        per_ours = ours["cpu"] / ours["pairs"]
        lengths = sorted({len(b) for b in bases})
        print(f"\n{name}: {len(bases)} pairs of {lengths[0]}-{lengths[-1]} tokens, every block output (layer x "
              f"position); load average now {load()}\n")
        print("| method | pairs run | seconds | CPU seconds | CPU s per pair | plain forwards per pair | "
              "list call / this (CPU per pair) | list call is x faster | max abs diff vs list call |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for label, r in rows.items():
            if "error" in r:
                print(f"| {label} | {r['error']} | | | | | | | |")
                continue
            per = r["cpu"] / r["pairs"]
            diff = max((torch.tensor(a) - torch.tensor(b)).abs().max().item()
                       for a, b in zip(r["values"], ours["values"]))
            print(f"| {label} | {r['pairs']} | {r['seconds']:.2f} | {r['cpu']:.2f} | {per:.3f} | "
                  f"{per / r['plain_forward_cpu']:.0f} | {per_ours / per:.2f} | {per / per_ours:.1f} | {diff:.1e} |")
    print(f"\nload average at the end {load()}")


if __name__ == "__main__":
    main()
