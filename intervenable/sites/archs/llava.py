"""LLaVA: a LLaMA-style language model plus a CLIP vision tower.

Plain names are the language model ``model.language_model.layers[i]`` (widths
from ``text_config``); ``vision_*`` names are the vision tower's encoder
``model.vision_tower.encoder.layers[i]`` (CLIP layout: separate
``q/k/v/out_proj``, ``mlp.fc1`` / ``activation_fn`` / ``fc2``; widths from
``vision_config``; under transformers 4.x ``model.vision_tower.vision_model.encoder.layers[i]``; before 4.52
the whole model has no inner ``model``: ``language_model.model.layers[i]`` and ``vision_tower...``).
"""
from __future__ import annotations

from dataclasses import replace

from ..registry import Architecture, attr, inp, out, register_architecture, sub
from ._common import attention_components, block_components, hidden_size, on, prefixed
from .llama import llama_components

text = lambda c: c.text_config  # noqa: E731
vision = lambda c: c.vision_config  # noqa: E731
vision_layers = sub("vision_config", attr("num_hidden_layers"))


def clip_components(root: str, cfg, **extra):
    """CLIP-style encoder layer table (paths relative to the base model)."""
    hid = on(hidden_size, cfg)
    table = block_components(root, hid, **extra)
    table.update(
        {
            "mlp_activation": out(root + ".mlp.activation_fn", on(attr("intermediate_size"), cfg), **extra),
            "mlp_output": out(root + ".mlp", hid, **extra),
            "mlp_input": inp(root + ".mlp", hid, **extra),
        }
    )
    a = root + ".self_attn"
    table.update(attention_components(a, a + ".q_proj", a + ".k_proj", a + ".v_proj", a + ".out_proj", cfg=cfg, **extra))
    return table


_components = llama_components("language_model.layers.{layer}", cfg=text)
# transformers before 4.52: no inner ``model``; the language model is a whole LlamaForCausalLM (language_model.model).
_components = {name: replace(c, alternatives=c.alternatives + (c.module.replace("language_model.", "language_model.model.", 1),))
               for name, c in _components.items()}
_vision = clip_components("vision_tower.encoder.layers.{layer}", vision, num_layers=vision_layers)
# transformers 4.x: the tower is a CLIPVisionModel, its encoder one level down (vision_tower.vision_model.encoder).
_vision = {name: replace(c, alternatives=(c.module.replace("vision_tower.", "vision_tower.vision_model.", 1),))
           for name, c in _vision.items()}
_components.update(prefixed("vision_", _vision))

LLAVA = register_architecture(
    Architecture(
        name="llava",
        model_types=("llava",),
        num_layers=sub("text_config", attr("num_hidden_layers")),
        components=_components,
        base_paths=("model", ""),
        description="LLaVA: language model (plain names) and CLIP vision tower (vision_*).",
    )
)
