"""The main job: a causal trace of one fact of the embedded demo model, as in ROME.

Run ``python -m intervenable.demo.main [--out out/causal_trace.png] [--fact N]``.
It corrupts the subject's token embeddings with Gaussian noise, restores one
block output (layer x position) at a time, writes the heatmap and prints where
restoring brings the answer's probability back most (for a model that recalls
facts ROME-style: the subject's last token in the middle layers). It then patches
a counterfactual prompt exactly and by attribution patching (one backward),
and writes both heatmaps side by side. Last, ROME's average causal trace over
the demo's facts (all 1,440 by default, ``--facts N`` for the first N): one list
call, every fact's trace aligned on its subject (ROME's six rows), averaged, the
heatmap written, and where the average effect of each component peaks printed.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

import torch


def run(out: str = "out/causal_trace.png", fact: int = 0, samples: int = 5, quiet: bool = False,
        n_facts: Optional[int] = None) -> int:
    """Trace fact number ``fact`` of the demo model; write the heatmap; print a summary."""
    from ..cli import _demo_dir, _field, load_model
    from ..sweeps import causal_trace

    if not (_demo_dir() / "config.json").exists():
        print(f"The embedded demo model is not installed ({_demo_dir()}); train it with "
              "scripts/train_demo_model.py, or run `intervenable trace --model DIR ...`.")
        return 2
    from . import demo_facts

    model, tok = load_model(None)
    facts = list(demo_facts())
    f = facts[fact % len(facts)]
    prompt, target, subject = _field(f, "prompt"), _field(f, "target", "answer"), _field(f, "subject")
    print(f"Fact {fact}: {prompt!r} -> {target!r}  (subject: {subject!r})")
    r = causal_trace(model, prompt, target=target, subject=subject, tokenizer=tok, samples=samples,
                     components=["block_output", "mlp_output", "attention_output"], window=3,
                     progress=not quiet and None)
    path = r.save(out)
    print(r.summary())
    print(_explain(r))
    print(f"Heatmap written to {path} ({r.info['path']} path, {r.info['seconds']:.1f} s).")
    _attribution(model, tok, f, facts, str(Path(out).with_name(Path(out).stem + "_attribution.png")))
    _average(model, tok, facts[:n_facts] if n_facts else facts, str(Path(out).with_name(Path(out).stem + "_average.png")),
             quiet)
    return 0


def _average(model, tok, facts: list, out: str, quiet: bool) -> None:
    """ROME's average causal trace over ``facts`` (noise on each subject, seed 0 + fact index)."""
    from ..sweeps import causal_trace

    print(f"\nAverage causal trace over {len(facts)} facts (one list call; each fact's trace aligned on its subject):")
    r = causal_trace(model, facts, tokenizer=tok, components=["block_output", "mlp_output", "attention_output"],
                     window=3, progress=not quiet and None)
    avg = r.average(align="subject")
    print(f"  {r.info['seconds']:.1f} s; mean clean {avg.clean_score:.3f}, corrupted {avg.corrupted_score:.3f}")
    print("\n".join(peaks(avg)))
    print(f"Average heatmap written to {avg.save(out)}.")


def peaks(avg) -> list:
    """Where each component's average effect peaks (row and layer), and the layer of its peak at the two rows
    ROME's picture is about: the last subject token and the last token."""
    n = len(avg.layers)
    depth = lambda layer: "early" if layer < n / 3 else "middle" if layer < 2 * n / 3 else "late"  # noqa: E731
    lines = []
    for comp in avg.components:
        v = avg[comp] - avg.corrupted_score  # [layer, row]: the effect of restoring
        layer_i, row = [int(i) for i in torch.unravel_index(torch.argmax(v), v.shape)]
        at = {name: avg.layers[int(torch.argmax(v[:, avg.tokens.index(name)]))]
              for name in ("last subject token", "last token") if name in avg.tokens}
        lines.append(f"  {comp}: peak +{float(v[layer_i, row]):.3f} at the {avg.tokens[row]}, layer {avg.layers[layer_i]} "
                     f"({depth(avg.layers[layer_i])}); best layer at the last subject token {at.get('last subject token')}, "
                     f"at the last token {at.get('last token')}")
    return lines


def _attribution(model, tok, fact: dict, facts: list, out: str) -> None:
    """Exact activation patching beside its attribution-patching estimate, for a counterfactual subject."""
    from .. import attribution_patching, patching_sweep
    from ..sweeps.spec import spearman

    other = next((g for g in facts if g["relation"] == fact["relation"] and g["template_id"] == fact["template_id"]
                  and not set(g["subject"].split()) & set(fact["subject"].split())), None)
    if other is None:
        return
    kw = dict(target=fact["target"], tokenizer=tok, metric="logit_diff", foil=other["target"])
    print(f"\nActivation patching: run {other['prompt']!r}, copy one block output at a time from the fact's prompt; "
          f"score: logit({fact['target']}) - logit({other['target']}).")
    exact = patching_sweep(model, other["prompt"], fact["prompt"], progress=False, **kw)
    atp = attribution_patching(model, other["prompt"], fact["prompt"], **kw)
    ig = attribution_patching(model, other["prompt"], fact["prompt"], method="ig", verify=5, **kw)
    print(f"  exact: {exact.info['forwards']} batched forwards, {exact.info['seconds']:.3f} s")
    for r, cost in ((atp, "2 forwards + 1 backward"), (ig, f"{ig.info['steps']}-point path, {ig.info['backwards']} backward")):
        print(f"  {r.info['method']}: {cost}, {r.info['seconds']:.3f} s; rank correlation with exact "
              f"{spearman(r.values, exact.values):.2f}")
    print("\n".join(ig.summary().splitlines()[-6:]))
    print(f"Exact and estimated heatmaps written to {side_by_side(exact, atp, ig).save(out)}.")


def side_by_side(exact, atp, ig):
    """One ``SweepResult`` whose panels are the exact sweep and its two estimates (same metric and target)."""
    from .. import SweepResult

    return SweepResult(values=torch.cat([exact.values, atp.values, ig.values]), components=["exact", "atp", "ig"],
                       layers=exact.layers, positions=exact.positions, tokens=exact.tokens, metric=exact.metric,
                       target=exact.target, kind="block_output patching",
                       info={"target_text": exact.info.get("target_text")})  # the colour bar names the target


def _explain(r) -> str:
    """One paragraph: which layer/position restores the most probability, relative to the subject."""
    v = r["block_output"][:, :-1]  # the last position is excluded: restoring it late is trivially the clean run
    layer_i, pos_i = [int(i) for i in torch.unravel_index(torch.argmax(v), v.shape)]
    b = {"layer": r.layers[layer_i], "position": r.positions[pos_i], "token": r.tokens[pos_i],
         "value": float(v[layer_i, pos_i])}
    s, e = r.subject
    where = ("the subject's last token" if b["position"] == e - 1 else
             "inside the subject" if s <= b["position"] < e else "a token after the subject")
    gain = b["value"] - r.corrupted_score
    span = r.clean_score - r.corrupted_score
    share = f" ({100 * gain / span:.0f}% of the clean-corrupted gap)" if span > 1e-9 else ""
    n = len(r.layers)
    depth = "early" if b["layer"] < n / 3 else "middle" if b["layer"] < 2 * n / 3 else "late"
    last_subj = r["block_output"][:, r.positions.index(e - 1)]
    peak = r.layers[int(torch.argmax(last_subj))]
    return (f"Before the last token, restoring one hidden state helps most at layer {b['layer']} ({depth}), position {b['position']} "
            f"{b['token']!r} = {where}: +{gain:.3f} probability{share}. "
            f"At the subject's last token ({r.tokens[r.positions.index(e - 1)]!r}) the best layer is {peak}.")


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="out/causal_trace.png", help="heatmap path (default out/causal_trace.png)")
    ap.add_argument("--fact", type=int, default=0, help="which demo fact to trace (default 0)")
    ap.add_argument("--samples", type=int, default=5, help="noise draws to average (default 5)")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--facts", type=int, default=None, help="average over the first N facts (default: all 1,440)")
    args = ap.parse_args(list(argv) if argv is not None else None)
    return run(args.out, args.fact, args.samples, args.quiet, args.facts)


if __name__ == "__main__":
    raise SystemExit(main())
