"""LLaMA-style decoders: LLaMA, Mistral, Qwen2, Qwen3, Gemma, Gemma2, OLMo, OLMo2.

All share ``model.layers[i]`` with ``self_attn.{q,k,v,o}_proj`` and
``mlp.{gate,up,down}_proj`` + ``mlp.act_fn``. Keys and values use
``num_key_value_heads * head_dim`` (grouped-query attention); ``head_dim`` is
read from the config when it is set explicitly (Gemma, Qwen3).
``mlp_activation`` is ``act_fn(gate_proj(x))`` (before the product with
``up_proj``), as in the reference library.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from dataclasses import replace

from ..registry import Architecture, Component, ConfigFn, LayerStack, Norm, Residual, attr, inp, out, register_architecture
from ._common import attention_components, block_components, config_value, hidden_size, masked_window, on, sliding_window

intermediate = attr("intermediate_size")
num_layers = attr("num_hidden_layers")


def llama_components(root: str = "layers.{layer}", cfg: Optional[ConfigFn] = None, **extra: Any) -> Dict[str, Component]:
    """The LLaMA table with layers at ``root`` (``cfg``: read widths from a sub-config)."""
    hid, inner = on(hidden_size, cfg), on(intermediate, cfg)
    a = root + ".self_attn"
    table = block_components(root, hid, **extra)
    table.update(
        {
            "mlp_activation": out(root + ".mlp.act_fn", inner, **extra),
            "mlp_output": out(root + ".mlp", hid, **extra),
            "mlp_input": inp(root + ".mlp", hid, **extra),
        }
    )
    table.update(attention_components(a, a + ".q_proj", a + ".k_proj", a + ".v_proj", a + ".o_proj", cfg=cfg, **extra))
    return table


#: LLaMA's RMSNorm (``variance_epsilon``); Gemma's scales by ``1 + weight``; OLMo's is a LayerNorm
#: without parameters (epsilon fixed at 1e-5 in its code).
RMS = Norm(centred=False, eps="variance_epsilon", bias="")
GEMMA_RMS = Norm(centred=False, eps="eps", bias="", offset=1.0)
OLMO_LN = Norm(centred=True, eps=1e-5, weight="", bias="")
#: The fast sweep path's stack: rotary position embeddings from ``model.rotary_emb`` (before
#: transformers 4.46 Gemma, Gemma2, Mistral and OLMo layers compute them from ``position_ids``), the final
#: ``norm``, sliding windows from the config (Mistral, Qwen2 with ``use_sliding_window``, Gemma2's
#: alternating layers), Gemma2's final logit soft-capping (``final_logit_softcapping``; None for the
#: others). Gemma scales its embeddings before layer 0, which the cached inputs include.
LLAMA_STACK = LayerStack(final=("norm",), rotary="rotary_emb", rotary_in_layers=True, window=sliding_window,
                         logit_softcap=config_value("final_logit_softcapping"),
                         residual=Residual(attention_norm="layers.{layer}.input_layernorm",
                                           mlp_norm="layers.{layer}.post_attention_layernorm",
                                           kv_groups="layers.{layer}.self_attn.num_key_value_groups",
                                           final_norm=RMS))
#: Gemma2 norms each sublayer's output before adding it (post_attention_layernorm,
#: post_feedforward_layernorm) and reads the MLP's input through pre_feedforward_layernorm.
GEMMA2_STACK = replace(LLAMA_STACK, residual=Residual(
    attention=out("layers.{layer}.post_attention_layernorm", hidden_size),
    mlp=out("layers.{layer}.post_feedforward_layernorm", hidden_size),
    attention_norm="layers.{layer}.input_layernorm", mlp_norm="layers.{layer}.pre_feedforward_layernorm",
    sublayer_norm=GEMMA_RMS, kv_groups="layers.{layer}.self_attn.num_key_value_groups", final_norm=GEMMA_RMS))
#: OLMo2 reads the stream itself and norms each sublayer's output before adding it.
OLMO2_STACK = replace(LLAMA_STACK, residual=Residual(
    attention=out("layers.{layer}.post_attention_layernorm", hidden_size),
    mlp=out("layers.{layer}.post_feedforward_layernorm", hidden_size), sublayer_norm=RMS,
    kv_groups="layers.{layer}.self_attn.num_key_value_groups", final_norm=RMS))
GEMMA_STACK = replace(LLAMA_STACK, residual=replace(LLAMA_STACK.residual, final_norm=GEMMA_RMS))


def gemma2_window(config: Any, layer: int) -> Optional[int]:
    """Gemma2's window: from ``layer_types``; configs without them (transformers < 4.53) slide even layers."""
    if getattr(config, "layer_types", None) is not None:
        return sliding_window(config, layer)
    return getattr(config, "sliding_window", None) if layer % 2 == 0 else None


GEMMA2_STACK = replace(GEMMA2_STACK, window=gemma2_window)
OLMO_STACK = replace(LLAMA_STACK, residual=replace(LLAMA_STACK.residual, final_norm=OLMO_LN))
_STACKS = {"gemma": GEMMA_STACK, "gemma2": GEMMA2_STACK, "olmo": OLMO_STACK, "olmo2": OLMO2_STACK,
           "qwen2": replace(LLAMA_STACK, window=masked_window)}

_FAMILIES = {
    "llama": ("LLaMA", ("llama",)),
    "mistral": ("Mistral", ("mistral",)),
    "qwen2": ("Qwen2", ("qwen2",)),
    "qwen3": ("Qwen3 (q_norm/k_norm act after query_output/key_output)", ("qwen3",)),
    "gemma": ("Gemma (explicit head_dim)", ("gemma",)),
    "gemma2": ("Gemma2 (explicit head_dim; attention_weight after soft-capping)", ("gemma2",)),
    "olmo": ("OLMo", ("olmo",)),
    "olmo2": ("OLMo2 (q_norm/k_norm act after query_output/key_output)", ("olmo2",)),
}

for _name, (_desc, _types) in _FAMILIES.items():
    register_architecture(
        Architecture(
            name=_name,
            model_types=_types,
            num_layers=num_layers,
            components=llama_components(),
            description=_desc,
            stack=_STACKS.get(_name, LLAMA_STACK),
        )
    )
