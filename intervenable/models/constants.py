"""Hook kinds and output splitters named as in the reference (``pv.models.constants``).

Used in entries of ``pv.type_to_module_mapping``:
``("h[%s].attn.c_attn", CONST_OUTPUT_HOOK, (split_three, 1), (split_head_and_permute, "n_head"))``.
"""
from __future__ import annotations

import torch

CONST_INPUT_HOOK = "register_forward_pre_hook"
CONST_OUTPUT_HOOK = "register_forward_hook"
CONST_GRAD_HOOK = "register_hook"


def split_three(x: torch.Tensor, index: int) -> torch.Tensor:
    """Third ``index`` of the last dimension (a fused q/k/v projection)."""
    return torch.chunk(x, 3, dim=-1)[index]


def split_half(x: torch.Tensor, index: int) -> torch.Tensor:
    """Half ``index`` of the last dimension."""
    return torch.chunk(x, 2, dim=-1)[index]


def split_head_and_permute(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``[batch, seq, heads * d] -> [batch, heads, seq, d]``."""
    batch, seq = x.shape[0], x.shape[1]
    return x.reshape(batch, seq, num_heads, x.shape[-1] // num_heads).permute(0, 2, 1, 3)
