"""GPT-OSS: LLaMA-style attention (with attention sinks) and a fused mixture of experts.

The experts' weights are fused 3-D tensors with a clamped GLU, so there are no
per-expert modules and no ``mlp_activation`` / ``moe_key`` components here;
``mlp_output`` / ``mlp_input`` are the whole MoE block and
``mlp_gate_output`` the router's logits (read-only).
"""
from __future__ import annotations

from ..registry import Architecture, attr, out, register_architecture
from .llama import LLAMA_STACK, llama_components, num_layers

_components = llama_components()
del _components["mlp_activation"]
_components["mlp_gate_output"] = out("layers.{layer}.mlp.router", attr("num_local_experts"), writable=False)

GPT_OSS = register_architecture(
    Architecture(
        name="gpt_oss",
        model_types=("gpt_oss",),
        num_layers=num_layers,
        components=_components,
        description="GPT-OSS: grouped-query attention with explicit head_dim; fused MoE (no per-expert sites).",
        stack=LLAMA_STACK,  # sliding / full layers from config.layer_types; attention sinks live inside the layer
    )
)
