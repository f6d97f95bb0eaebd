"""A tiny GPT-2 with a word-level tokenizer (every word one token, unknown words -> <unk>)."""
from __future__ import annotations

from pathlib import Path
from typing import Tuple

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

WORDS = ["<unk>", "The", "native", "language", "of", "Drovan", "Teller", "Mira", "Sol", "is", "Ostic", "Velan"]


def word_gpt2(n_layer: int = 3, seed: int = 0) -> Tuple[GPT2LMHeadModel, PreTrainedTokenizerFast]:
    """(model, tokenizer): random weights, vocabulary ``WORDS``."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(n_layer=n_layer, n_embd=32, n_head=4, vocab_size=len(WORDS), n_positions=16,
                                       bos_token_id=0, eos_token_id=0))
    return model.eval(), fast


def save_word_gpt2(folder: Path, n_layer: int = 3) -> str:
    """Write ``word_gpt2`` to ``folder`` (``save_pretrained``) and return its path."""
    model, tok = word_gpt2(n_layer)
    tok.save_pretrained(folder)
    model.save_pretrained(folder)
    return str(folder)
