"""A GPT-2 forward pass written out in plain torch: the ground truth of the foundation tests.

``manual_forward(model, ids, edit)`` recomputes ``GPT2LMHeadModel`` from its
weights (eager attention, no dropout) and calls ``edit(component, layer,
tensor)`` at every abstract component with the full ``[batch, seq, width]``
tensor, so a test can cache or replace it. It never touches intervenable.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

Edit = Callable[[str, int, torch.Tensor], torch.Tensor]


def _conv1d(x: torch.Tensor, module) -> torch.Tensor:
    return x @ module.weight + module.bias


def _gelu_new(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def manual_forward(model, ids: torch.Tensor, edit: Optional[Edit] = None) -> torch.Tensor:
    """Logits of ``GPT2LMHeadModel`` for ``ids``, calling ``edit`` at every component."""
    edit = edit or (lambda name, layer, t: t)
    tr = model.transformer
    cfg = model.config
    b, s = ids.shape
    d, n_head = cfg.n_embd, cfg.n_head
    hd = d // n_head
    h = tr.wte(ids) + tr.wpe(torch.arange(s))
    causal = torch.tril(torch.ones(s, s, dtype=torch.bool))
    for layer, block in enumerate(tr.h):
        h = edit("block_input", layer, h)
        a_in = edit("attention_input", layer, block.ln_1(h))
        q, k, v = _conv1d(a_in, block.attn.c_attn).split(d, dim=-1)
        q = edit("head_query_output", layer, edit("query_output", layer, q))
        k = edit("head_key_output", layer, edit("key_output", layer, k))
        v = edit("head_value_output", layer, edit("value_output", layer, v))
        qh, kh, vh = (t.view(b, s, n_head, hd).transpose(1, 2) for t in (q, k, v))
        scores = (qh @ kh.transpose(-1, -2)) / math.sqrt(hd)
        scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
        weights = scores.softmax(-1)
        ctx = (weights @ vh).transpose(1, 2).reshape(b, s, d)
        ctx = edit("head_attention_value_output", layer, edit("attention_value_output", layer, ctx))
        attn_out = edit("attention_output", layer, _conv1d(ctx, block.attn.c_proj))
        h = h + attn_out
        m_in = edit("mlp_input", layer, block.ln_2(h))
        act = edit("mlp_activation", layer, _gelu_new(_conv1d(m_in, block.mlp.c_fc)))
        m_out = edit("mlp_output", layer, _conv1d(act, block.mlp.c_proj))
        h = edit("block_output", layer, h + m_out)
    h = tr.ln_f(h)
    return h @ tr.wte.weight.T


HEAD_COMPONENTS = ("head_query_output", "head_key_output", "head_value_output", "head_attention_value_output")


def cache(model, ids: torch.Tensor) -> Dict[Tuple[str, int], torch.Tensor]:
    """Every component's full tensor in a clean run of ``ids``."""
    store: Dict[Tuple[str, int], torch.Tensor] = {}

    def edit(name, layer, t):
        store[(name, layer)] = t.detach().clone()
        return t

    manual_forward(model, ids, edit)
    return store


def patched_logits(
    model,
    base_ids: torch.Tensor,
    component: str,
    layer: int,
    new_value: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Logits of ``base_ids`` with ``component`` at ``layer`` replaced by ``new_value(full_tensor)``."""

    def edit(name, l, t):
        return new_value(t) if (name, l) == (component, layer) else t

    return manual_forward(model, base_ids, edit)


def heads_view(t: torch.Tensor, n_head: int) -> torch.Tensor:
    """[b, s, d] -> [b, heads, s, head_dim]."""
    b, s, d = t.shape
    return t.view(b, s, n_head, d // n_head).transpose(1, 2)


def unheads_view(t: torch.Tensor) -> torch.Tensor:
    b, h, s, hd = t.shape
    return t.transpose(1, 2).reshape(b, s, h * hd)


def copy_units(
    base: torch.Tensor,
    source: torch.Tensor,
    src_pos: Sequence[Sequence[int]],
    base_pos: Sequence[Sequence[int]],
    n_head: Optional[int] = None,
    src_heads: Optional[Sequence[Sequence[int]]] = None,
    base_heads: Optional[Sequence[Sequence[int]]] = None,
) -> torch.Tensor:
    """``base`` with the chosen positions (and heads) copied from ``source``, by explicit loops."""
    out = base.clone()
    if n_head is None:
        for row in range(base.shape[0]):
            for sp, bp in zip(src_pos[row], base_pos[row]):
                out[row, bp] = source[row, sp]
        return out
    ob, sb = heads_view(out, n_head), heads_view(source, n_head)
    all_heads = list(range(n_head))
    for row in range(base.shape[0]):
        sh = src_heads[row] if src_heads is not None else all_heads
        bh = base_heads[row] if base_heads is not None else all_heads
        sps = src_pos[row] if src_pos is not None else list(range(base.shape[1]))
        bps = base_pos[row] if base_pos is not None else list(range(base.shape[1]))
        for hs, hb in zip(sh, bh):
            for sp, bp in zip(sps, bps):
                ob[row, hb, bp] = sb[row, hs, sp]
    return unheads_view(ob)


def tiny_gpt2(n_layer: int = 3, n_embd: int = 32, n_head: int = 4, vocab: int = 64, seed: int = 0):
    """A small random GPT2LMHeadModel in eval mode, eager attention, no dropout."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=vocab, n_positions=64,
        attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0, bos_token_id=0, eos_token_id=0,
        attn_implementation="eager",
    )
    return GPT2LMHeadModel(config).eval()


def ids(batch: int, seq: int, vocab: int = 64, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, seq), generator=g)


def check_manual_matches_model(model, input_ids: torch.Tensor) -> None:
    """Sanity: the manual forward reproduces the real model."""
    with torch.no_grad():
        expected = model(input_ids).logits
    got = manual_forward(model, input_ids)
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


__all__ = [
    "HEAD_COMPONENTS",
    "cache",
    "check_manual_matches_model",
    "copy_units",
    "heads_view",
    "ids",
    "manual_forward",
    "patched_logits",
    "tiny_gpt2",
    "unheads_view",
]
