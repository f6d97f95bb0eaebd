"""Whisper: encoder (plain names, as in the reference library) and decoder (``decoder_*``).

Encoder layers ``model.encoder.layers[i]``, decoder layers
``model.decoder.layers[i]``; ``mlp_input`` is ``fc1``'s input and
``mlp_output`` is ``fc2``'s output (before the residual), as in the reference.
The decoder also has ``decoder_cross_attention_{input,output,value_output}``
(attention over the encoder states).
"""
from __future__ import annotations

from typing import Any, Dict

from ..registry import Architecture, Component, attr, inp, out, register_architecture
from ._common import attention_components, block_components, prefixed

d_model = attr("d_model")


def _stack(root: str, side: str) -> Dict[str, Any]:
    heads = attr(f"{side}_attention_heads")
    layers = attr(f"{side}_layers")
    hd = lambda c: d_model(c) // heads(c)  # noqa: E731
    table: Dict[str, Component] = block_components(root, d_model, num_layers=layers)
    table.update(
        {
            "mlp_activation": out(root + ".activation_fn", attr(f"{side}_ffn_dim"), num_layers=layers),
            "mlp_output": out(root + ".fc2", d_model, num_layers=layers),
            "mlp_input": inp(root + ".fc1", d_model, num_layers=layers),
        }
    )
    a = root + ".self_attn"
    table.update(attention_components(a, a + ".q_proj", a + ".k_proj", a + ".v_proj", a + ".out_proj",
                                      heads=heads, kv_heads=heads, hd=hd, hidden=d_model, num_layers=layers))
    if side == "decoder":
        x = root + ".encoder_attn"
        table.update(
            {
                "cross_attention_value_output": inp(x + ".out_proj", d_model, num_layers=layers),
                "cross_attention_output": out(x, d_model, num_layers=layers),
                "cross_attention_input": inp(x, d_model, num_layers=layers),
            }
        )
    return table


_components = _stack("encoder.layers.{layer}", "encoder")
_components.update(prefixed("decoder_", _stack("decoder.layers.{layer}", "decoder")))

WHISPER = register_architecture(
    Architecture(
        name="whisper",
        model_types=("whisper",),
        num_layers=attr("encoder_layers"),
        components=_components,
        base_paths=("model", ""),
        description="Whisper: encoder (plain names) and decoder (decoder_*), each with its own layer count.",
    )
)
