"""OPT: ``decoder.layers[i]`` with ``fc1`` / ``activation_fn`` / ``fc2`` directly on the layer (no MLP module).

OPT flattens tokens before its MLP, so ``mlp_input`` / ``mlp_activation`` /
``mlp_output`` are ``[batch * positions, width]``: use them with
``unit_locations=None`` (every token) or use ``block_*`` / attention sites for
position units.
"""
from __future__ import annotations

from ..registry import Architecture, LayerStack, attr, inp, out, register_architecture
from ._common import attention_components, block_components, hidden_size

_L = "decoder.layers.{layer}"
_A = _L + ".self_attn"
_opt = block_components(_L, hidden_size)
_opt.update(
    {
        "mlp_activation": out(_L + ".activation_fn", attr("ffn_dim")),
        "mlp_output": out(_L + ".fc2", hidden_size),
        "mlp_input": inp(_L + ".fc1", hidden_size),
    }
)
_opt.update(attention_components(_A, _A + ".q_proj", _A + ".k_proj", _A + ".v_proj", _A + ".out_proj"))

OPT = register_architecture(
    Architecture(
        name="opt",
        model_types=("opt",),
        num_layers=attr("num_hidden_layers"),
        components=_opt,
        description="OPT: mlp_input is fc1's input (after final_layer_norm), mlp_output is fc2's output (before the residual).",
        # Learned positions are added before layer 0; the decoder's final norm and project_out (either may be
        # None, e.g. OPT-350m) run before lm_head.
        stack=LayerStack(final=("decoder.final_layer_norm", "decoder.project_out")),
    )
)
