"""BLIP (``BlipForQuestionAnswering``, ``BlipForImageTextRetrieval``): text and vision stacks.

Naming: the plain names (``block_output``, ``head_query_output``, ...) are the
text encoder ``text_encoder.encoder.layer[i]`` (as in the reference library),
plus ``cross_attention_{input,output,value_output}`` for its attention over the
image. ``vision_*`` names are the vision encoder
``vision_model.encoder.layers[i]`` (fused ``self_attn.qkv`` ``[q | k | v]``).
``decoder_*`` names are the answer decoder ``text_decoder.bert.encoder.layer[i]``
of the question-answering model. Widths come from ``text_config`` /
``vision_config``.
"""
from __future__ import annotations

from ..registry import Architecture, attr, inp, out, register_architecture, sub
from ._common import block_components, fused_qkv_components, hidden_size, on, prefixed
from .bert import bert_components

text = lambda c: c.text_config  # noqa: E731
vision = lambda c: c.vision_config  # noqa: E731
text_layers = sub("text_config", attr("num_hidden_layers"))
vision_layers = sub("vision_config", attr("num_hidden_layers"))

_components = bert_components("text_encoder.encoder.layer.{layer}", cfg=text, cross=True)

_V = "vision_model.encoder.layers.{layer}"
_vision = block_components(_V, on(hidden_size, vision), num_layers=vision_layers)
_vision.update(
    {
        "mlp_activation": out(_V + ".mlp.activation_fn", sub("vision_config", attr("intermediate_size")), num_layers=vision_layers),
        "mlp_output": out(_V + ".mlp", on(hidden_size, vision), num_layers=vision_layers),
        "mlp_input": inp(_V + ".mlp", on(hidden_size, vision), num_layers=vision_layers),
    }
)
_vision.update(fused_qkv_components(_V + ".self_attn", _V + ".self_attn.qkv", _V + ".self_attn.projection", cfg=vision, num_layers=vision_layers))
_components.update(prefixed("vision_", _vision))
_components.update(
    prefixed("decoder_", bert_components("text_decoder.bert.encoder.layer.{layer}", cfg=text, cross=True, num_layers=text_layers))
)

BLIP = register_architecture(
    Architecture(
        name="blip",
        model_types=("blip",),
        num_layers=text_layers,
        components=_components,
        base_paths=("",),
        description="BLIP: text encoder (plain names), vision encoder (vision_*), answer decoder (decoder_*).",
    )
)
