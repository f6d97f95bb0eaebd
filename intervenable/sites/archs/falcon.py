"""Falcon: fused ``query_key_value`` in three layouts, all handled by one grouped slice.

* multi-query (old architecture): ``[q heads | k | v]`` (one KV head);
* old architecture without multi-query: per head ``[q k v]``;
* new decoder architecture: per KV group ``[q heads of the group | k | v]``.
"""
from __future__ import annotations

from typing import Any

from ..registry import Architecture, LayerStack, attr, inp, out, register_architecture
from ._common import block_components, fused_qkv_components, hidden_size, n_heads, weight_index_before


def kv_heads(c: Any) -> int:
    if getattr(c, "new_decoder_architecture", False):
        return int(c.num_kv_heads)
    return 1 if getattr(c, "multi_query", False) else int(n_heads(c))


_L = "h.{layer}"
_A = _L + ".self_attention"
_falcon = block_components(_L, hidden_size)
_falcon.update(
    {
        "mlp_activation": out(_L + ".mlp.act", attr("ffn_hidden_size", default=lambda c: 4 * hidden_size(c))),
        "mlp_output": out(_L + ".mlp", hidden_size),
        "mlp_input": inp(_L + ".mlp", hidden_size),
    }
)
# Falcon's attention returned (output, cache, weights) before transformers 4.54.
_falcon.update(fused_qkv_components(_A, _A + ".query_key_value", _A + ".dense", groups=kv_heads, kv_heads=kv_heads,
                                    weight_index=weight_index_before("4.54")))

FALCON = register_architecture(
    Architecture(
        name="falcon",
        model_types=("falcon",),
        num_layers=attr("num_hidden_layers"),
        components=_falcon,
        description="Falcon: fused query_key_value split per KV group (multi-query, per-head, or new architecture); "
                    "the sweep fast path covers rotary Falcon (ALiBi Falcon uses the general path).",
        # Rotary Falcon (7B/40B/180B); ALiBi Falcon (RW) folds its biases into the mask: not described here.
        stack=LayerStack(final=("ln_f",), rotary="rotary_emb", layer_kwargs=lambda c: {"alibi": None},
                         unsupported=lambda c: "Falcon with ALiBi position biases" if getattr(c, "alibi", False) else ""),
    )
)
