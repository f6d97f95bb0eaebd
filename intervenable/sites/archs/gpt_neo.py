"""GPT-NeoX / Pythia (per-head fused ``query_key_value``), GPT-Neo and GPT-J (separate q/k/v)."""
from __future__ import annotations

from ..registry import Architecture, LayerStack, Norm, Residual, attr, inp, out, register_architecture
from ._common import attention_components, block_components, fused_qkv_components, hidden_size, n_heads, weight_index_before

_L = "layers.{layer}"
_neox = block_components(_L, hidden_size)
_neox.update(
    {
        "mlp_activation": out(_L + ".mlp.act", attr("intermediate_size")),
        "mlp_output": out(_L + ".mlp", hidden_size),
        "mlp_input": inp(_L + ".mlp", hidden_size),
    }
)
# query_key_value's output is laid out per head: [h0: q k v | h1: q k v | ...].
# GPT-NeoX's attention returned (output, cache, weights) before transformers 4.49; GPT-Neo's and GPT-J's before 4.54.
_neox.update(fused_qkv_components(_L + ".attention", _L + ".attention.query_key_value", _L + ".attention.dense", groups=n_heads,
                                  weight_index=weight_index_before("4.49")))

GPT_NEOX = register_architecture(
    Architecture(
        name="gpt_neox",
        model_types=("gpt_neox",),
        num_layers=attr("num_hidden_layers"),
        components=_neox,
        description="GPT-NeoX / Pythia: fused query_key_value laid out per head, split by grouped slices.",
        # Parallel residual (use_parallel_residual) happens inside each layer; rotary comes from the model.
        stack=LayerStack(final=("final_layer_norm",), rotary="rotary_emb",
                         residual=Residual(attention_norm=_L + ".input_layernorm", mlp_norm=_L + ".post_attention_layernorm",
                                           parallel=lambda c: bool(getattr(c, "use_parallel_residual", True)),
                                           final_norm=Norm())),
    )
)

_H = "h.{layer}"
_neo_heads = attr("num_heads", "num_attention_heads")
_neo = block_components(_H, hidden_size)
_neo.update(
    {
        "mlp_activation": out(_H + ".mlp.act", attr("intermediate_size", default=lambda c: 4 * hidden_size(c))),
        "mlp_output": out(_H + ".mlp", hidden_size),
        "mlp_input": inp(_H + ".mlp", hidden_size),
    }
)
_SA = _H + ".attn.attention"
_neo.update(
    attention_components(_H + ".attn", _SA + ".q_proj", _SA + ".k_proj", _SA + ".v_proj", _SA + ".out_proj",
                         heads=_neo_heads, kv_heads=_neo_heads, hd=lambda c: hidden_size(c) // _neo_heads(c),
                         weight_index=weight_index_before("4.54"))
)

GPT_NEO = register_architecture(
    Architecture(
        name="gpt_neo",
        model_types=("gpt_neo",),
        num_layers=attr("num_layers", "num_hidden_layers"),
        components=_neo,
        description="GPT-Neo: global/local attention layers, separate q/k/v under attn.attention.",
        # Local layers apply their window through their own causal buffer (aligned to the last key).
        stack=LayerStack(final=("ln_f",), residual=Residual(attention_norm=_H + ".ln_1", mlp_norm=_H + ".ln_2", final_norm=Norm())),
        positions_from_mask=True,
    )
)

_gptj_heads = attr("n_head", "num_attention_heads")
_gptj = block_components(_H, hidden_size)
_gptj.update(
    {
        "mlp_activation": out(_H + ".mlp.act", attr("n_inner", default=lambda c: 4 * hidden_size(c))),
        "mlp_output": out(_H + ".mlp", hidden_size),
        "mlp_input": inp(_H + ".mlp", hidden_size),
    }
)
_GA = _H + ".attn"
_gptj.update(
    attention_components(_GA, _GA + ".q_proj", _GA + ".k_proj", _GA + ".v_proj", _GA + ".out_proj",
                         heads=_gptj_heads, kv_heads=_gptj_heads, hd=lambda c: hidden_size(c) // _gptj_heads(c),
                         weight_index=weight_index_before("4.54"))
)

GPTJ = register_architecture(
    Architecture(
        name="gptj",
        model_types=("gptj",),
        num_layers=attr("n_layer", "num_hidden_layers"),
        components=_gptj,
        description="GPT-J: parallel attention and MLP, separate q/k/v projections.",
        # Attention and MLP both read ln_1 of the block input. transformers >= 5.24 computes rotary once
        # in the model (rotary_emb); before, each attention layer computes it from position_ids (its own
        # embed_positions buffer).
        stack=LayerStack(final=("ln_f",), rotary="rotary_emb", rotary_in_layers=True,
                         residual=Residual(attention_norm=_H + ".ln_1", mlp_norm=_H + ".ln_1", parallel=lambda c: True,
                                           final_norm=Norm())),
    )
)
