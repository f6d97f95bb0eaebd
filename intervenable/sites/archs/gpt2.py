"""GPT-2 family (GPT2Model, GPT2LMHeadModel, GPT2ForSequenceClassification, ...)."""
from __future__ import annotations

from ..registry import Architecture, LayerStack, Norm, Residual, attr, inp, out, register_architecture
from ._common import weight_index_before

hidden = attr("n_embd", "hidden_size")
inner = attr("n_inner", default=lambda c: 4 * hidden(c))
heads = attr("n_head", "num_attention_heads")


def _qkv(i: int):
    return lambda c: (i * hidden(c), (i + 1) * hidden(c))


_BLOCK = "h.{layer}"
_ATTN = "h.{layer}.attn"

GPT2 = register_architecture(
    Architecture(
        name="gpt2",
        model_types=("gpt2",),
        num_layers=attr("n_layer", "num_hidden_layers"),
        components={
            "block_input": inp(_BLOCK, hidden),
            "block_output": out(_BLOCK, hidden),
            "mlp_activation": out("h.{layer}.mlp.act", inner),
            "mlp_output": out("h.{layer}.mlp", hidden),
            "mlp_input": inp("h.{layer}.mlp", hidden),
            "attention_value_output": inp(_ATTN + ".c_proj", hidden),
            "head_attention_value_output": inp(_ATTN + ".c_proj", hidden, heads=heads),
            "attention_output": out(_ATTN, hidden),
            "attention_input": inp(_ATTN, hidden),
            # (output, cache, weights) before transformers 4.52
            "attention_weight": out(_ATTN, None, heads=heads, output_index=weight_index_before("4.52"), writable=False,
                                    head_layout="bhsd"),
            "query_output": out(_ATTN + ".c_attn", hidden, slice=_qkv(0)),
            "key_output": out(_ATTN + ".c_attn", hidden, slice=_qkv(1)),
            "value_output": out(_ATTN + ".c_attn", hidden, slice=_qkv(2)),
            "head_query_output": out(_ATTN + ".c_attn", hidden, slice=_qkv(0), heads=heads),
            "head_key_output": out(_ATTN + ".c_attn", hidden, slice=_qkv(1), heads=heads),
            "head_value_output": out(_ATTN + ".c_attn", hidden, slice=_qkv(2), heads=heads),
        },
        description="GPT-2: fused c_attn projection split into q, k, v; heads of n_embd // n_head.",
        # Learned positions are added before layer 0, so a layer needs only the mask and the cache.
        stack=LayerStack(final=("ln_f",), residual=Residual(attention_norm="h.{layer}.ln_1", mlp_norm="h.{layer}.ln_2",
                                                                final_norm=Norm())),
        positions_from_mask=True,
    )
)
