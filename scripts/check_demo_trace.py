"""Self-contained ROME-style causal trace on the demo model (plain torch hooks).

For each fact: add Gaussian noise (std = 3 x the std of the token-embedding
matrix) to the subject token embeddings, then for every layer ``L`` and
position ``p`` restore the clean output of block ``L`` at ``p`` and record the
probability of the correct answer. Prints the grid for one fact and the
average over many facts per (layer, position class)::

    python scripts/check_demo_trace.py [--model DIR] [--n-facts 20]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch
from transformers import AutoTokenizer, GPT2LMHeadModel

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "intervenable" / "demo" / "model"
CLASSES = ["before subj", "first subj", "last subj", "after subj", "last token"]


def subject_span(tokenizer, prompt: str, subject: str) -> tuple[int, int]:
    """Token range ``[start, end)`` of ``subject`` inside ``prompt``."""
    ids = tokenizer(prompt)["input_ids"]
    sub = tokenizer(subject)["input_ids"]
    for i in range(len(ids) - len(sub) + 1):
        if ids[i:i + len(sub)] == sub:
            return i, i + len(sub)
    raise ValueError(f"subject {subject!r} not found in {prompt!r}")


def position_class(p: int, span: tuple[int, int], length: int) -> str:
    """Classify position ``p`` relative to the subject span and the prompt end."""
    if p == length - 1:
        return "last token"
    if p < span[0]:
        return "before subj"
    if p < span[1] - 1:
        return "first subj"
    if p == span[1] - 1:
        return "last subj"
    return "after subj"


@torch.no_grad()
def trace(model, ids: torch.Tensor, span: tuple[int, int], target: int,
          noise_std: float, samples: int, seed: int) -> tuple[float, float, torch.Tensor]:
    """Return (clean prob, corrupted prob, restored-prob grid [layers, positions])."""
    blocks = model.transformer.h
    clean_states: list[torch.Tensor] = []

    def save(_mod, _inp, out):
        clean_states.append((out[0] if isinstance(out, tuple) else out).detach())

    handles = [b.register_forward_hook(save) for b in blocks]
    clean_p = model(ids).logits[0, -1].softmax(-1)[target].item()
    for h in handles:
        h.remove()

    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(samples, span[1] - span[0], model.config.n_embd, generator=gen)

    def corrupt(_mod, _inp, out):
        out = out.clone()
        out[:, span[0]:span[1]] += noise_std * noise
        return out

    batch = ids.expand(samples, -1)
    h_noise = model.transformer.wte.register_forward_hook(corrupt)
    try:
        corrupt_p = model(batch).logits[:, -1].softmax(-1)[:, target].mean().item()
        grid = torch.zeros(len(blocks), ids.shape[1])
        for layer, block in enumerate(blocks):
            for pos in range(ids.shape[1]):
                def restore(_mod, _inp, out, layer=layer, pos=pos):
                    hidden = out[0] if isinstance(out, tuple) else out
                    hidden = hidden.clone()
                    hidden[:, pos] = clean_states[layer][0, pos]
                    return (hidden, *out[1:]) if isinstance(out, tuple) else hidden

                h = block.register_forward_hook(restore)
                probs = model(batch).logits[:, -1].softmax(-1)[:, target]
                h.remove()
                grid[layer, pos] = probs.mean()
    finally:
        h_noise.remove()
    return clean_p, corrupt_p, grid


def main() -> None:
    """Run the trace on a seeded sample of facts and print grid + aggregate."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(DEFAULT_MODEL))
    ap.add_argument("--n-facts", type=int, default=20)
    ap.add_argument("--samples", type=int, default=10, help="noise samples per fact")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    model = GPT2LMHeadModel.from_pretrained(args.model).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    facts = json.loads((Path(args.model) / "facts.json").read_text())
    noise_std = 3 * model.transformer.wte.weight.std().item()
    n_layers = model.config.n_layer

    chosen = random.Random(args.seed).sample(facts, args.n_facts)
    sums = {c: torch.zeros(n_layers) for c in CLASSES}
    counts = {c: 0 for c in CLASSES}
    clean_tot = corrupt_tot = 0.0
    for i, fact in enumerate(chosen):
        ids = torch.tensor([tokenizer(fact["prompt"])["input_ids"]])
        span = subject_span(tokenizer, fact["prompt"], fact["subject"])
        target = tokenizer.convert_tokens_to_ids(fact["target"])
        clean_p, corrupt_p, grid = trace(model, ids, span, target, noise_std,
                                         args.samples, args.seed + i)
        clean_tot += clean_p
        corrupt_tot += corrupt_p
        length = ids.shape[1]
        for c in CLASSES:  # average over positions of a class within a fact first
            cols = [p for p in range(length) if position_class(p, span, length) == c]
            if cols:
                sums[c] += grid[:, cols].mean(1)
                counts[c] += 1
        if i == 0:
            toks = tokenizer.convert_ids_to_tokens(ids[0])
            print(f"Example: {fact['prompt']!r} -> {fact['target']!r}; subject tokens "
                  f"{list(range(*span))}; clean p={clean_p:.3f}, corrupted p={corrupt_p:.3f}")
            print(f"{'position':>22} " + " ".join(f"L{l:<5d}" for l in range(n_layers)))
            for p, tok in enumerate(toks):
                star = "*" if span[0] <= p < span[1] else " "
                print(f"{p:2d} {tok + star:>19} " + " ".join(f"{v:.3f} " for v in grid[:, p]))
            print()

    n = len(chosen)
    print(f"Aggregate over {n} facts: mean clean p={clean_tot / n:.3f}, "
          f"mean corrupted p={corrupt_tot / n:.3f}  (noise std {noise_std:.3f})")
    print(f"{'position class':>15} " + " ".join(f"L{l:<5d}" for l in range(n_layers)) + "  n")
    for c in CLASSES:
        if counts[c]:
            avg = sums[c] / counts[c]
            print(f"{c:>15} " + " ".join(f"{v:.3f} " for v in avg) + f"  {counts[c]}")


if __name__ == "__main__":
    main()
