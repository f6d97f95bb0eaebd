"""Train the tiny GPT-2 demo model shipped in ``intervenable/demo/model/``.

The model memorises a synthetic corpus of facts about made-up entities
("The native language of Drovan Teller is Ostic"), which makes it a small,
offline stand-in for ROME-style causal-tracing experiments.

Everything is seeded and runs on the CPU (2 threads)::

    python scripts/train_demo_model.py [--out DIR] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "intervenable" / "demo" / "model"
SPECIAL_TOKENS = ["<pad>", "<unk>", "<eos>"]

# --------------------------------------------------------------------- corpus
ONSETS = ["b", "br", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n",
          "p", "pr", "q", "r", "s", "st", "t", "tr", "v", "z", "th", "sk"]
VOWELS = ["a", "e", "i", "o", "u", "a", "e", "o", "ou", "ei"]
CODAS = ["", "", "n", "r", "l", "s", "th", "m", "nd", "rk", "sh"]

LANDMARK_KINDS = ["Tower", "Bridge", "Abbey", "Palace", "Harbor", "Library",
                  "Gate", "Market", "Museum", "Stadium"]
INSTRUMENTS = ["lute", "harp", "drum", "flute", "violin", "trumpet", "cello",
               "piano", "oboe", "banjo", "zither", "horn"]
SPORTS = ["tennis", "rugby", "chess", "archery", "fencing", "rowing", "cricket",
          "boxing", "hockey", "sailing", "polo", "curling"]
PROFESSIONS = ["baker", "sailor", "lawyer", "painter", "miner", "weaver",
               "surgeon", "poet", "farmer", "tailor", "pilot", "jeweler"]
COLORS = ["red", "blue", "green", "amber", "violet", "silver", "golden",
          "white", "black", "crimson", "ochre", "teal"]
MATERIALS = ["granite", "marble", "oak", "brick", "iron", "glass", "copper",
             "sandstone", "limestone", "cedar", "bronze", "slate"]

# relation -> (subject kind, answer pool name, paraphrase templates).
# "{s}" is the subject; the answer is the word that follows the prompt.
RELATIONS: dict[str, tuple[str, str, list[str]]] = {
    "native_language": ("person", "languages", [
        "The native language of {s} is",
        "{s} grew up speaking the language called",
        "{s} speaks and writes fluently in"]),
    "birth_city": ("person", "cities", [
        "{s} was born in the city of",
        "The birthplace of {s} is the city of",
        "{s} spent a childhood in the city of"]),
    "instrument": ("person", "instruments", [
        "{s} is a musician who plays the",
        "The instrument played by {s} is the",
        "{s} performs on stage with the"]),
    "profession": ("person", "professions", [
        "{s} earns a living working as a",
        "By profession {s} is a",
        "{s} has worked for many years as a"]),
    "sport": ("person", "sports", [
        "{s} is a professional player of",
        "The favorite sport of {s} is",
        "{s} competes every season in"]),
    "city": ("landmark", "cities", [
        "{s} is located in the city of",
        "The city that hosts {s} is",
        "{s} stands in the heart of the city of"]),
    "color": ("landmark", "colors", [
        "{s} is painted in the color",
        "The main color of {s} is",
        "{s} is famous for its walls of bright"]),
    "material": ("landmark", "materials", [
        "{s} was built mostly out of",
        "The main building material of {s} is",
        "{s} has walls made of solid"]),
}


def _made_up_words(rng: random.Random, n: int, taken: set[str]) -> list[str]:
    """Return ``n`` fresh capitalised pseudo-words (2-3 syllables) not in ``taken``."""
    words: list[str] = []
    while len(words) < n:
        syll = rng.choice([2, 2, 3])
        w = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) for _ in range(syll))
        w = (w + rng.choice(CODAS)).capitalize()
        if 4 <= len(w) <= 10 and w not in taken:
            taken.add(w)
            words.append(w)
    return words


def build_facts(seed: int, n_people: int = 100, n_landmarks: int = 60,
                relations_per_subject: int = 3) -> list[dict]:
    """Generate the synthetic fact list (one entry per paraphrased sentence).

    Subjects are two words. First and second words are shared between
    subjects ("Drovan Teller", "Drovan Mose", "Kela Teller"), so the model has
    to combine both tokens -- the fact is keyed on the *whole* subject.
    """
    rng = random.Random(seed)
    taken = set(LANDMARK_KINDS) | {w.capitalize() for w in
                                   INSTRUMENTS + SPORTS + PROFESSIONS + COLORS + MATERIALS}
    given, family = _made_up_words(rng, 24, taken), _made_up_words(rng, 24, taken)
    place_names = _made_up_words(rng, 20, taken)
    pools = {"languages": [w + "ic" for w in _made_up_words(rng, 12, taken)],
             "cities": _made_up_words(rng, 16, taken),
             "instruments": INSTRUMENTS, "sports": SPORTS, "professions": PROFESSIONS,
             "colors": COLORS, "materials": MATERIALS}
    people = rng.sample([f"{g} {f}" for g in given for f in family], n_people)
    landmarks = rng.sample([f"{p} {k}" for p in place_names for k in LANDMARK_KINDS],
                           n_landmarks)

    facts: list[dict] = []
    for kind, subjects in (("person", people), ("landmark", landmarks)):
        rels = [r for r, (k, _, _) in RELATIONS.items() if k == kind]
        for subject in subjects:
            for rel in sorted(rng.sample(rels, relations_per_subject)):
                _, pool, templates = RELATIONS[rel]
                target = rng.choice(pools[pool])
                for t_id, template in enumerate(templates):
                    facts.append({"subject": subject, "relation": rel,
                                  "template_id": t_id,
                                  "prompt": template.format(s=subject),
                                  "target": target})
    return facts


# ------------------------------------------------------------------ tokenizer
def build_tokenizer(facts: list[dict]) -> PreTrainedTokenizerFast:
    """Word-level tokenizer: every whitespace-separated corpus word is one token."""
    words = sorted({w for f in facts for w in (f["prompt"] + " " + f["target"]).split()})
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>",
                                   pad_token="<pad>", eos_token="<eos>",
                                   bos_token="<eos>", model_max_length=32)


def encode(facts: list[dict], tokenizer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids ``[prompt..., target, <eos>]`` (right-padded), attention mask, answer index."""
    seqs = [tokenizer(f["prompt"] + " " + f["target"])["input_ids"] + [tokenizer.eos_token_id]
            for f in facts]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    answer_pos = mask.sum(1) - 2  # index of the target token
    return ids, mask, answer_pos


# ------------------------------------------------------------------- training
@torch.no_grad()
def answer_accuracy(model, ids, mask, answer_pos, batch: int = 512) -> float:
    """Top-1 accuracy of the target token given its prompt, over all rows."""
    model.eval()
    correct = 0
    for i in range(0, len(ids), batch):
        b_ids, b_mask, b_pos = ids[i:i + batch], mask[i:i + batch], answer_pos[i:i + batch]
        logits = model(input_ids=b_ids, attention_mask=b_mask).logits
        rows = torch.arange(len(b_ids))
        pred = logits[rows, b_pos - 1].argmax(-1)
        correct += (pred == b_ids[rows, b_pos]).sum().item()
    model.train()
    return correct / len(ids)


def train(args: argparse.Namespace) -> None:
    """Build corpus and tokenizer, train the model, save everything to ``args.out``."""
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    start = time.time()

    facts = build_facts(args.seed)
    tokenizer = build_tokenizer(facts)
    ids, mask, answer_pos = encode(facts, tokenizer)
    print(f"{len(facts)} sentences, {len({(f['subject'], f['relation']) for f in facts})} "
          f"facts, {len({f['subject'] for f in facts})} subjects, vocab {len(tokenizer)}, "
          f"max length {ids.shape[1]}")

    config = GPT2Config(vocab_size=len(tokenizer), n_positions=32, n_embd=args.n_embd,
                        n_layer=args.n_layer, n_head=4, n_inner=4 * args.n_embd,
                        attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0,
                        bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    model = GPT2LMHeadModel(config)
    print(f"{sum(p.numel() for p in model.parameters()):,} parameters")

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01,
                            betas=(0.9, 0.98))
    steps_per_epoch = (len(ids) + args.batch - 1) // args.batch
    total = args.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=total,
                                                pct_start=0.05)
    labels = ids.masked_fill(mask == 0, -100)
    gen = torch.Generator().manual_seed(args.seed)
    model.train()
    for epoch in range(1, args.epochs + 1):
        perm = torch.randperm(len(ids), generator=gen)
        for i in range(0, len(ids), args.batch):
            idx = perm[i:i + args.batch]
            b_ids, b_mask, b_lab, b_pos = ids[idx], mask[idx], labels[idx], answer_pos[idx]
            logits = model(input_ids=b_ids, attention_mask=b_mask).logits
            lm = F.cross_entropy(logits[:, :-1].flatten(0, 1), b_lab[:, 1:].flatten())
            rows = torch.arange(len(idx))
            ans = F.cross_entropy(logits[rows, b_pos - 1], b_ids[rows, b_pos])
            loss = lm + ans
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
        if epoch % args.log_every == 0 or epoch == args.epochs:
            acc = answer_accuracy(model, ids, mask, answer_pos)
            print(f"epoch {epoch:4d}  lm {lm.item():.3f}  answer {ans.item():.4f}  "
                  f"acc {acc:.4f}  ({time.time() - start:.0f}s)", flush=True)

    acc = answer_accuracy(model, ids, mask, answer_pos)
    model.eval()
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "facts.json").write_text(json.dumps(facts, indent=1) + "\n")
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"final answer accuracy {acc:.4f} over {len(facts)} sentences")
    print(f"saved to {out} ({size / 1e6:.2f} MB) in {time.time() - start:.0f}s")


def main() -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(DEFAULT_OUT), help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=150)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--n-layer", type=int, default=6)
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--log-every", type=int, default=10)
    train(p.parse_args())


if __name__ == "__main__":
    main()
