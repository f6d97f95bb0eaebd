"""Shared table builders for the family files (not a family itself).

``attention_components`` covers the usual layout: separate (or fused) q/k/v
projections, an output projection whose input is the per-head value mix, and
an attention module returning ``(output, weights, ...)``. Widths come from
the config with grouped-query attention in mind: keys and values use
``num_key_value_heads * head_dim``.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from ...version import transformers_older_than
from ..registry import Component, ConfigFn, attr, inp, out

hidden_size = attr("hidden_size", "d_model", "n_embd")
n_heads = attr("num_attention_heads", "n_head", "num_heads")
n_kv_heads = attr("num_key_value_heads", "num_kv_heads", default=lambda c: n_heads(c))
head_dim = attr("head_dim", default=lambda c: hidden_size(c) // n_heads(c))


def q_width(c: Any) -> int:
    return n_heads(c) * head_dim(c)


def kv_width(c: Any) -> int:
    return n_kv_heads(c) * head_dim(c)


def on(fn: ConfigFn, cfg: Optional[ConfigFn]) -> ConfigFn:
    """``fn`` read from ``cfg(config)`` (a sub-config) when ``cfg`` is given."""
    if cfg is None:
        return fn
    return lambda c: fn(cfg(c))


def attention_components(
    attn: str,
    q: str,
    k: str,
    v: str,
    o: str,
    cfg: Optional[ConfigFn] = None,
    heads: ConfigFn = n_heads,
    kv_heads: ConfigFn = n_kv_heads,
    hd: ConfigFn = head_dim,
    hidden: ConfigFn = hidden_size,
    weights: bool = True,
    weight_index: int = 1,
    **extra: Any,
) -> Dict[str, Component]:
    """Attention components for separate q/k/v projections (paths relative to the base model)."""
    H, KV = on(heads, cfg), on(kv_heads, cfg)
    qw = on(lambda c: heads(c) * hd(c), cfg)
    kvw = on(lambda c: kv_heads(c) * hd(c), cfg)
    hid = on(hidden, cfg)
    table = {
        "attention_value_output": inp(o, qw, **extra),
        "head_attention_value_output": inp(o, qw, heads=H, **extra),
        "attention_output": out(attn, hid, **extra),
        "attention_input": inp(attn, hid, **extra),
        "query_output": out(q, qw, **extra),
        "key_output": out(k, kvw, **extra),
        "value_output": out(v, kvw, **extra),
        "head_query_output": out(q, qw, heads=H, **extra),
        "head_key_output": out(k, kvw, heads=KV, **extra),
        "head_value_output": out(v, kvw, heads=KV, **extra),
    }
    if weights:
        table["attention_weight"] = out(
            attn, None, heads=H, output_index=weight_index, writable=False, head_layout="bhsd", **extra
        )
    return table


def fused_qkv_components(
    attn: str,
    qkv: str,
    o: str,
    cfg: Optional[ConfigFn] = None,
    groups: Optional[ConfigFn] = None,
    heads: ConfigFn = n_heads,
    kv_heads: ConfigFn = n_kv_heads,
    hd: ConfigFn = head_dim,
    hidden: ConfigFn = hidden_size,
    weights: bool = True,
    weight_index: int = 1,
    **extra: Any,
) -> Dict[str, Component]:
    """Attention components for one fused q/k/v projection.

    Without ``groups`` the output is ``[q | k | v]`` (Phi-3, BLIP vision,
    Falcon multi-query). With ``groups`` it is ``groups`` chunks of
    ``[q_heads_of_group | k | v]`` (GPT-NeoX: one chunk per head; Falcon's
    new decoder architecture: one chunk per KV head).
    """
    H, KV = on(heads, cfg), on(kv_heads, cfg)
    qw = on(lambda c: heads(c) * hd(c), cfg)
    kvw = on(lambda c: kv_heads(c) * hd(c), cfg)
    hid = on(hidden, cfg)
    if groups is None:
        q_span = on(lambda c: (0, heads(c) * hd(c)), cfg)
        k_span = on(lambda c: (heads(c) * hd(c), heads(c) * hd(c) + kv_heads(c) * hd(c)), cfg)
        v_span = on(lambda c: (heads(c) * hd(c) + kv_heads(c) * hd(c), heads(c) * hd(c) + 2 * kv_heads(c) * hd(c)), cfg)
        g = None
    else:
        g = on(groups, cfg)
        per = on(lambda c: heads(c) // groups(c) * hd(c), None)  # q width inside one group (raw config)
        q_span = on(lambda c: (0, per(c)), cfg)
        k_span = on(lambda c: (per(c), per(c) + hd(c) * kv_heads(c) // groups(c)), cfg)
        v_span = on(lambda c: (per(c) + hd(c) * kv_heads(c) // groups(c), per(c) + 2 * hd(c) * kv_heads(c) // groups(c)), cfg)
    table = {
        "attention_value_output": inp(o, qw, **extra),
        "head_attention_value_output": inp(o, qw, heads=H, **extra),
        "attention_output": out(attn, hid, **extra),
        "attention_input": inp(attn, hid, **extra),
        "query_output": out(qkv, qw, slice=q_span, groups=g, **extra),
        "key_output": out(qkv, kvw, slice=k_span, groups=g, **extra),
        "value_output": out(qkv, kvw, slice=v_span, groups=g, **extra),
        "head_query_output": out(qkv, qw, slice=q_span, groups=g, heads=H, **extra),
        "head_key_output": out(qkv, kvw, slice=k_span, groups=g, heads=KV, **extra),
        "head_value_output": out(qkv, kvw, slice=v_span, groups=g, heads=KV, **extra),
    }
    if weights:
        table["attention_weight"] = out(attn, None, heads=H, output_index=weight_index, writable=False, head_layout="bhsd",
                                        **extra)
    return table


def block_components(block: str, hidden: ConfigFn, **extra: Any) -> Dict[str, Component]:
    return {"block_input": inp(block, hidden, **extra), "block_output": out(block, hidden, **extra)}


def prefixed(prefix: str, table: Dict[str, Component]) -> Dict[str, Component]:
    """``{"block_output": c}`` -> ``{"vision_block_output": c}`` (a second stack of a family)."""
    return {prefix + name: comp for name, comp in table.items()}


def sliding_window(config: Any, layer: int) -> Optional[int]:
    """Sliding-window width of ``layer``'s attention for the fast sweep path (None: full causal attention).

    ``config.layer_types`` decides per layer when the config has it (Gemma2, Qwen2/3, GPT-OSS: only
    ``"sliding_attention"`` layers are windowed); otherwise ``config.sliding_window``, when set, applies
    to every layer (Mistral, Mixtral, Phi-3), as in those models' own mask code.
    """
    width = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if types is not None:
        return width if types[layer] == "sliding_attention" else None
    return width


def weight_index_before(version: str) -> int:
    """Where a family's attention module returns its weights: 2, after its key/value cache, on transformers
    before ``version`` (the release whose attention stopped returning the cache), else 1."""
    return 2 if transformers_older_than(version) else 1


def masked_window(config: Any, layer: int) -> Optional[int]:
    """``sliding_window`` for Mixtral, Phi-3 and Qwen2, whose eager and sdpa masks have no window before
    transformers 4.46 (only flash attention, which the fast path does not use, windowed them then)."""
    return None if transformers_older_than("4.46") else sliding_window(config, layer)


def config_value(name: str) -> ConfigFn:
    """A config reader returning ``config.<name>`` or None."""
    return lambda c: getattr(c, name, None)
