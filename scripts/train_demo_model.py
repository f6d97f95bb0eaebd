"""Train the tiny GPT-2 demo model shipped in ``intervenable/demo/model/``.

The model memorises a synthetic corpus of facts about made-up entities
("The native language of Kouzeifu Pretes is Drelic") and is meant as a small,
offline stand-in for ROME-style causal-tracing demos.

Design choices that make the causal trace look like ROME's (last subject
token in early/middle layers, last token in late layers):

* Subject names are built from a small pool of shared words, in mirrored
  couples ("Kouzeifu Pretes" and "Pretes Kouzeifu" are different people), so
  no single word identifies the subject; the name has to be assembled in order.
* Sentences get a random lead-in ("It is said that ...") each epoch, so
  absolute positions of the subject vary.
* "Subject bottleneck" attention dropout: for half of the training rows,
  tokens after the subject may not attend to the subject's non-final tokens.
  Information about the subject then has to be gathered at the last subject
  token, which real LMs do on their own but a 8-layer toy model does not.

Everything is seeded and runs on the CPU::

    python scripts/train_demo_model.py [--out DIR] [--seed 0] [--threads 2]
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
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "intervenable" / "demo" / "model"
SPECIAL_TOKENS = ["<pad>", "<unk>", "<eos>"]
# Said explicitly: transformers 4.x's PreTrainedTokenizerFast would also return token_type_ids by default,
# which GPT-2 adds to the input as embeddings of token 0.
MODEL_INPUT_NAMES = ("input_ids", "attention_mask")
NEG = -1e9  # additive attention-mask value for "may not attend"

# --------------------------------------------------------------------- corpus
ONSETS = ["b", "br", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n",
          "p", "pr", "q", "r", "s", "st", "t", "tr", "v", "z", "th", "sk"]
VOWELS = ["a", "e", "i", "o", "u", "a", "e", "o", "ou", "ei"]
CODAS = ["", "", "n", "r", "l", "s", "th", "m", "nd", "rk", "sh"]

LANDMARK_PREFIXES = ["Mount", "Lake", "Fort", "Port", "Castle", "Cape", "Glen", "Saint"]
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
LEAD_INS = ["", "", "", "In fact ,", "As everyone knows ,", "It is said that",
            "According to the old records ,", "Indeed", "We know that", "Some say that"]

# relation -> (subject kind, answer pool, paraphrase templates).
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


def _mirrored_pairs(rng: random.Random, words: list[str], n: int) -> list[tuple[str, str]]:
    """``n`` ordered word pairs that come in mirrored couples: (a, b) and (b, a)."""
    couples = rng.sample([(a, b) for i, a in enumerate(words) for b in words[i + 1:]], n // 2)
    return [pair for a, b in couples for pair in ((a, b), (b, a))]


def build_facts(seed: int, n_people: int = 100, n_landmarks: int = 60,
                relations_per_subject: int = 3) -> list[dict]:
    """Generate the fact list: one entry per (subject, relation, paraphrase).

    People are two words ("Kouzeifu Pretes"), landmarks three ("Castle Dakodrun
    Grusas"); each answer is a single word (= a single token).
    """
    rng = random.Random(seed)
    taken = set(LANDMARK_PREFIXES) | {
        w.capitalize() for w in INSTRUMENTS + SPORTS + PROFESSIONS + COLORS + MATERIALS}
    names, places = _made_up_words(rng, 16, taken), _made_up_words(rng, 12, taken)
    pools = {"languages": [w + "ic" for w in _made_up_words(rng, 12, taken)],
             "cities": _made_up_words(rng, 16, taken),
             "instruments": INSTRUMENTS, "sports": SPORTS, "professions": PROFESSIONS,
             "colors": COLORS, "materials": MATERIALS}
    people = [f"{a} {b}" for a, b in _mirrored_pairs(rng, names, n_people)]
    prefixes = [rng.choice(LANDMARK_PREFIXES) for _ in range(n_landmarks // 2)]
    landmarks = [f"{prefixes[i // 2]} {a} {b}"
                 for i, (a, b) in enumerate(_mirrored_pairs(rng, places, n_landmarks))]

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
    text = [f["prompt"] + " " + f["target"] for f in facts] + LEAD_INS
    words = sorted({w for line in text for w in line.split()})
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # No special tokens added, said explicitly: transformers 5 would otherwise write this
    # post-processor and 4.x none, and the saved tokenizer.json would depend on the version.
    tok.post_processor = processors.TemplateProcessing(single="$A:0", pair="$A:0 $B:1")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>",
                                   pad_token="<pad>", eos_token="<eos>",
                                   bos_token="<eos>", model_max_length=32, clean_up_tokenization_spaces=False,
                                   model_input_names=list(MODEL_INPUT_NAMES))


def portable_tokenizer_config(tokenizer: PreTrainedTokenizerFast) -> dict:
    """``tokenizer_config.json`` in the form every supported transformers loads (4.45 to 5.x).

    transformers 5 saves ``"tokenizer_class": "TokenizersBackend"``, a class 4.x does not have;
    ``PreTrainedTokenizerFast`` exists in both (in 5.x it names the same tokenizers backend).
    ``clean_up_tokenization_spaces`` is said: its default was True before 4.46 (with a FutureWarning)
    and False after, which would decode "x ," differently per version.
    """
    return {"tokenizer_class": "PreTrainedTokenizerFast",
            "clean_up_tokenization_spaces": bool(tokenizer.clean_up_tokenization_spaces),
            "unk_token": tokenizer.unk_token,
            "pad_token": tokenizer.pad_token, "eos_token": tokenizer.eos_token,
            "bos_token": tokenizer.bos_token, "model_max_length": tokenizer.model_max_length,
            "model_input_names": list(MODEL_INPUT_NAMES)}


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, out: Path) -> None:
    """Write ``tokenizer.json`` (the tokenizers library's own format) and the portable config.

    Not ``save_pretrained``: what it writes depends on the transformers version.
    """
    tokenizer.backend_tokenizer.save(str(out / "tokenizer.json"))
    config = json.dumps(portable_tokenizer_config(tokenizer), indent=2, sort_keys=True)
    (out / "tokenizer_config.json").write_text(config + "\n")


def encode(facts: list[dict], tokenizer, lead_ins: list[str] | None = None
           ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    """Right-padded ids of ``[lead-in, prompt, target, <eos>]``, mask, subject spans."""
    seqs, spans = [], []
    for i, f in enumerate(facts):
        lead = tokenizer(lead_ins[i])["input_ids"] if lead_ins else []
        ids = lead + tokenizer(f["prompt"] + " " + f["target"])["input_ids"]
        sub = tokenizer(f["subject"])["input_ids"]
        start = next(j for j in range(len(ids)) if ids[j:j + len(sub)] == sub)
        seqs.append(ids + [tokenizer.eos_token_id])
        spans.append((start, start + len(sub)))
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    return ids, mask, spans


def bottleneck_mask(mask: torch.Tensor, spans: list[tuple[int, int]],
                    rng: random.Random, prob: float) -> torch.Tensor:
    """Additive 4D causal+padding mask; with probability ``prob`` per row, tokens
    after the subject cannot attend to the subject's non-final tokens."""
    n, width = mask.shape
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    allowed = causal[None] & mask.bool()[:, None, :]
    for row, (start, end) in enumerate(spans):
        if rng.random() < prob:
            allowed[row, end:, start:end - 1] = False
    return torch.zeros(n, 1, width, width).masked_fill(~allowed[:, None], NEG)


# ------------------------------------------------------------------- training
@torch.no_grad()
def answer_stats(model, facts: list[dict], tokenizer) -> tuple[float, float]:
    """Top-1 accuracy and mean probability of the target given its prompt."""
    model.eval()
    ids, mask, _ = encode(facts, tokenizer)
    last = mask.sum(1) - 3  # last prompt token (sequence ends with target, <eos>)
    rows = torch.arange(len(ids))
    probs = model(input_ids=ids, attention_mask=mask).logits[rows, last].softmax(-1)
    target = ids[rows, last + 1]
    model.train()
    acc = (probs.argmax(-1) == target).float().mean().item()
    return acc, probs[rows, target].mean().item()


def train(args: argparse.Namespace) -> None:
    """Build corpus and tokenizer, train the model, save everything to ``args.out``."""
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    rng = random.Random(args.seed)
    start = time.time()

    facts = build_facts(args.seed)
    tokenizer = build_tokenizer(facts)
    print(f"{len(facts)} sentences, {len({(f['subject'], f['relation']) for f in facts})} "
          f"facts, {len({f['subject'] for f in facts})} subjects, vocab {len(tokenizer)}")

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
    steps_per_epoch = (len(facts) + args.batch - 1) // args.batch
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch, pct_start=0.05)
    gen = torch.Generator().manual_seed(args.seed)
    model.train()
    for epoch in range(1, args.epochs + 1):
        lead_ins = [rng.choice(LEAD_INS) for _ in facts]
        ids, mask, spans = encode(facts, tokenizer, lead_ins)
        attn = bottleneck_mask(mask, spans, rng, args.bottleneck)
        labels = ids.masked_fill(mask == 0, -100)
        perm = torch.randperm(len(ids), generator=gen)
        for i in range(0, len(ids), args.batch):
            idx = perm[i:i + args.batch]
            logits = model(input_ids=ids[idx], attention_mask=attn[idx]).logits
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[idx, 1:].flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
        if epoch % args.log_every == 0 or epoch == args.epochs:
            acc, prob = answer_stats(model, facts, tokenizer)
            print(f"epoch {epoch:3d}  loss {loss.item():.3f}  answer acc {acc:.4f}  "
                  f"p {prob:.3f}  ({time.time() - start:.0f}s)", flush=True)

    acc, prob = answer_stats(model, facts, tokenizer)
    model.eval()
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.save_pretrained(out, safe_serialization=True)
    save_tokenizer(tokenizer, out)
    lines = ",\n".join(json.dumps(f) for f in facts)
    (out / "facts.json").write_text(f"[\n{lines}\n]\n")
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"final answer accuracy {acc:.4f} (mean p {prob:.3f}) over {len(facts)} prompts")
    print(f"saved to {out} ({size / 1e6:.2f} MB) in {time.time() - start:.0f}s")


def main() -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(DEFAULT_OUT), help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=80)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--n-layer", type=int, default=8)
    p.add_argument("--n-embd", type=int, default=96)
    p.add_argument("--bottleneck", type=float, default=0.5,
                   help="probability of the subject-bottleneck attention mask per row")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (results depend on it)")
    p.add_argument("--log-every", type=int, default=10)
    train(p.parse_args())


if __name__ == "__main__":
    main()
