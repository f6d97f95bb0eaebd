"""A small random GPT-2 shared by the save / load tests (built once per width: construction is slow)."""
import copy
from typing import Dict

import torch

WIDTH = 16
_MODELS: Dict[int, torch.nn.Module] = {}


def tiny_gpt2(width: int = WIDTH) -> torch.nn.Module:
    """A fresh copy of one small random GPT-2 of the given width."""
    if width not in _MODELS:
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(0)
        config = GPT2Config(n_layer=2, n_embd=width, n_head=2, vocab_size=32, n_positions=8, bos_token_id=0,
                            eos_token_id=0, attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0)
        _MODELS[width] = GPT2LMHeadModel(config).eval()
    return copy.deepcopy(_MODELS[width])
