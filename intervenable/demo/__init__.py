"""A tiny GPT-2 that memorised synthetic facts, shipped for offline demos.

The model (8 layers, width 96, word-level vocabulary) was trained by
``scripts/train_demo_model.py`` on facts about made-up entities such as
"The native language of Kouzeifu Pretes is Drelic". Every word is one token,
and each fact's answer is the single token that follows its prompt, which
makes it a convenient target for ROME-style causal tracing.

Example::

    from intervenable.demo import load_demo_model, demo_facts

    model, tokenizer = load_demo_model()
    fact = demo_facts()[0]
    ids = tokenizer(fact["prompt"], return_tensors="pt").input_ids
    next_id = model(ids).logits[0, -1].argmax()
    assert tokenizer.decode(next_id) == fact["target"]

This module depends on torch/transformers only, not on the rest of the package.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["DEMO_MODEL_DIR", "demo_facts", "load_demo_model"]

DEMO_MODEL_DIR: Path = Path(__file__).resolve().parent / "model"
"""Folder with the model weights (safetensors), tokenizer files and ``facts.json``."""

_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "facts.json")


def _check_model_dir() -> None:
    """Raise ``FileNotFoundError`` with a remedy if the shipped folder is incomplete."""
    missing = [name for name in _REQUIRED_FILES if not (DEMO_MODEL_DIR / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"The demo model is missing from {DEMO_MODEL_DIR} (no {', '.join(missing)}). "
            "Recreate it with `python scripts/train_demo_model.py` from the repository root.")


def load_demo_model(device: str = "cpu") -> tuple[Any, Any]:
    """Load the demo model and its tokenizer.

    Args:
        device: torch device to put the model on (e.g. ``"cpu"``, ``"cuda"``).

    Returns:
        ``(model, tokenizer)``: a ``GPT2LMHeadModel`` in eval mode (eager
        attention, float32) and a ``PreTrainedTokenizerFast``. The tokenizer
        adds no special tokens, so prompt token ``i`` is word ``i``.

    Raises:
        FileNotFoundError: if the shipped model folder is missing.
    """
    _check_model_dir()
    from transformers import AutoTokenizer, GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(DEMO_MODEL_DIR, attn_implementation="eager")
    tokenizer = AutoTokenizer.from_pretrained(DEMO_MODEL_DIR)
    return model.to(device).eval(), tokenizer


def demo_facts() -> list[dict[str, Any]]:
    """Return the memorised facts, one dict per prompt.

    Keys: ``subject`` (e.g. ``"Kouzeifu Pretes"``), ``relation`` (e.g.
    ``"native_language"``), ``template_id`` (which paraphrase, 0-2),
    ``prompt`` (the sentence without its last word) and ``target`` (that word,
    a single token).

    Raises:
        FileNotFoundError: if the shipped model folder is missing.
    """
    _check_model_dir()
    with open(DEMO_MODEL_DIR / "facts.json", encoding="utf-8") as fh:
        return json.load(fh)
