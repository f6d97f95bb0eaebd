"""DAS on the embedded demo model: find the subspace that carries a subject's identity.

Counterfactual pairs share a sentence (same relation and template, so the same length): the base
says "Skebrund Kodevin was born in the city of", the source names another person. Swapping the
learned subspace of the subject's last token at ``--layer`` from the source into the base should
make the model answer the *source's* fact; interchange accuracy is how often it does, on pairs of
people never seen in training.

    .venv/bin/python scripts/das_demo.py                      # layer 2, rank 32, lr 1e-2, 8 epochs: 0.78
    .venv/bin/python scripts/das_demo.py --rank 1 --lr 1e-3   # the old README recipe: 0.08

(measured with seed 0 on 500 held-out pairs; 3 epochs give 0.74, rank 64 0.81, 6000 training pairs 0.81.
The ceiling at this site is the full-width swap, VanillaIntervention at the same layer and position:
0.86 on the same pairs at layer 2, 0.76 at layer 1, 0.64 at layer 3.)
    .venv/bin/python scripts/das_demo.py --sweep              # accuracy per layer and rank

How to choose: the site is where the variable lives. A causal trace (``bash scripts/demo.sh``)
shows the subject's last token carrying the fact in layers 0-4, so position = the subject's last
token, layer = early-middle (2). The rank is the size of the variable: a person's identity among
hundreds is not one direction; sweep ranks (1, 8, 32, ...) and keep the smallest that reaches the
accuracy of the full-width swap. The learning rate must let the rotation move within a few epochs
(1e-2 here; 1e-3 barely leaves its random start).
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import intervenable as pv  # noqa: E402
from intervenable.demo import demo_facts, load_demo_model  # noqa: E402


def pairs(facts: List[dict], tok, n: int, seed: int) -> List[Dict[str, torch.Tensor]]:
    """``n`` (base, source) examples: same relation and template, different people; label = the source's answer."""
    rng = random.Random(seed)
    groups: Dict[Tuple[str, int], List[dict]] = {}
    for f in facts:
        groups.setdefault((f["relation"], f["template_id"]), []).append(f)
    keys = sorted(groups)
    out = []
    while len(out) < n:
        group = groups[rng.choice(keys)]
        base, source = rng.sample(group, 2)
        if set(base["subject"].split()) & set(source["subject"].split()):
            continue
        words = base["prompt"].split()
        last_subject = max(i for i, w in enumerate(words) if w in base["subject"].split())
        out.append({"input_ids": tok(base["prompt"], return_tensors="pt")["input_ids"][0],
                    "source_input_ids": tok(source["prompt"], return_tensors="pt")["input_ids"][0],
                    "labels": torch.tensor(tok.convert_tokens_to_ids(source["target"])),
                    "position": last_subject})
    return out


def batches(examples: List[dict], size: int) -> List[Dict[str, object]]:
    """Batches of examples of one length, with their subject positions as unit locations."""
    by_shape: Dict[Tuple[int, int], List[dict]] = {}
    for ex in examples:
        by_shape.setdefault((len(ex["input_ids"]), ex["position"]), []).append(ex)
    out = []
    for group in by_shape.values():
        for i in range(0, len(group), size):
            chunk = group[i:i + size]
            position = [[[ex["position"]] for ex in chunk]]
            out.append({"input_ids": torch.stack([ex["input_ids"] for ex in chunk]),
                        "source_input_ids": torch.stack([ex["source_input_ids"] for ex in chunk]),
                        "labels": torch.stack([ex["labels"] for ex in chunk]),
                        "unit_locations": {"sources->base": (position, position)}})
    return out


def accuracy(logits: List[torch.Tensor], labels: List[torch.Tensor]) -> float:
    return float((logits[0][:, -1].argmax(-1) == labels[0]).float().mean())


def run(layer: int = 2, rank: int = 32, lr: float = 1e-2, epochs: int = 8, n_train: int = 2000,
        n_test: int = 500, seed: int = 0) -> float:
    """Train a rank-``rank`` DAS rotation at the subject's last token of ``layer``; held-out interchange accuracy."""
    torch.manual_seed(seed)
    model, tok = load_demo_model()
    facts = demo_facts()
    people = sorted({f["subject"] for f in facts})
    random.Random(seed).shuffle(people)
    held_out = set(people[: len(people) // 5])  # test pairs only involve people never trained on
    train = pairs([f for f in facts if f["subject"] not in held_out], tok, n_train, seed)
    test = pairs([f for f in facts if f["subject"] in held_out], tok, n_test, seed + 1)
    pv_model = pv.IntervenableModel({"layer": layer, "component": "block_output",
                                     "intervention": pv.LowRankRotatedSpaceIntervention,
                                     "low_rank_dimension": rank}, model)
    loss = lambda logits, labels: torch.nn.functional.cross_entropy(logits[:, -1], labels)
    pv_model.train_alignment(batches(train, 64), loss, lr=lr, epochs=epochs)
    return pv_model.eval_alignment(batches(test, 256), accuracy)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layer", type=int, default=2)
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--train", type=int, default=2000, help="training pairs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sweep", action="store_true", help="layers 0, 2, 4, 6 x ranks 1, 8, 32")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.sweep:
        print("layer  rank  accuracy")
        for layer in (0, 2, 4, 6):
            for rank in (1, 8, 32):
                acc = run(layer, rank, args.lr, args.epochs, args.train, seed=args.seed)
                print(f"{layer:5d}  {rank:4d}  {acc:8.3f}", flush=True)
        return
    acc = run(args.layer, args.rank, args.lr, args.epochs, args.train, seed=args.seed)
    print(f"layer {args.layer}, rank {args.rank}, lr {args.lr}: held-out interchange accuracy {acc:.3f}")


if __name__ == "__main__":
    main()
