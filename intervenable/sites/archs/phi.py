"""Phi (``self_attn.dense`` output projection, ``mlp.fc1/fc2``) and Phi-3 (fused ``qkv_proj`` and ``gate_up_proj``)."""
from __future__ import annotations

from ..registry import Architecture, LayerStack, Norm, Residual, attr, inp, out, register_architecture
from ._common import attention_components, block_components, fused_qkv_components, hidden_size, masked_window

_L = "layers.{layer}"
_A = _L + ".self_attn"
inner = attr("intermediate_size")

_phi = block_components(_L, hidden_size)
_phi.update(
    {
        "mlp_activation": out(_L + ".mlp.activation_fn", inner),
        "mlp_output": out(_L + ".mlp", hidden_size),
        "mlp_input": inp(_L + ".mlp", hidden_size),
    }
)
_phi.update(attention_components(_A, _A + ".q_proj", _A + ".k_proj", _A + ".v_proj", _A + ".dense"))

PHI = register_architecture(
    Architecture(
        name="phi",
        model_types=("phi",),
        num_layers=attr("num_hidden_layers"),
        components=_phi,
        description="Phi: parallel attention and MLP; output projection is self_attn.dense.",
        # Attention and MLP both read input_layernorm of the block input.
        stack=LayerStack(final=("final_layernorm",), rotary="rotary_emb",
                         residual=Residual(attention_norm=_L + ".input_layernorm", mlp_norm=_L + ".input_layernorm",
                                           parallel=lambda c: True, final_norm=Norm(),
                                           kv_groups=_L + ".self_attn.num_key_value_groups")),
    )
)

_phi3 = block_components(_L, hidden_size)
_phi3.update(
    {
        # gate_up_proj -> chunk -> up * activation_fn(gate): the activation of the gate half.
        "mlp_activation": out(_L + ".mlp.activation_fn", inner),
        "mlp_output": out(_L + ".mlp", hidden_size),
        "mlp_input": inp(_L + ".mlp", hidden_size),
    }
)
_phi3.update(fused_qkv_components(_A, _A + ".qkv_proj", _A + ".o_proj"))

PHI3 = register_architecture(
    Architecture(
        name="phi3",
        model_types=("phi3",),
        num_layers=attr("num_hidden_layers"),
        components=_phi3,
        description="Phi-3: fused qkv_proj [q | k | v] with grouped-query attention, split by slices.",
        stack=LayerStack(final=("norm",), rotary="rotary_emb", rotary_in_layers=True, window=masked_window,
                         residual=Residual(attention_norm=_L + ".input_layernorm", mlp_norm=_L + ".post_attention_layernorm",
                                           final_norm=Norm(centred=False, eps="variance_epsilon", bias=""))),
    )
)
