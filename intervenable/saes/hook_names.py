"""Where an SAE reads and writes: TransformerLens hook names -> our (layer, component).

SAELens files name their site as a TransformerLens hook (``blocks.12.hook_resid_post``)
or, for SAEs trained on a Hugging Face model, a module path (``hf_hook_name``,
e.g. ``model.layers.12``). Both become ``(layer, component)``: an abstract component
of the architecture registry with its layer, or a raw module path (layer ``None``).
A name with no counterpart here is a ``ConfigError`` that says how to give the site.
"""
from __future__ import annotations

import re
from typing import Optional, Tuple

from ..errors import ConfigError

#: hook of ``blocks.{L}.<hook>`` -> our component at layer L
BLOCK_HOOKS = {
    "hook_resid_pre": "block_input",
    "hook_resid_post": "block_output",
    "hook_attn_out": "attention_residual",  # = attention_output unless the family normalises it (Gemma 2)
    "hook_mlp_out": "mlp_residual",  # = mlp_output unless the family normalises it (Gemma 2)
    "attn.hook_z": "attention_value_output",
    "attn.hook_q": "query_output",
    "attn.hook_k": "key_output",
    "attn.hook_v": "value_output",
    "mlp.hook_post": "mlp_activation",
    "ln1.hook_normalized": "attention_input",
    "ln2.hook_normalized": "mlp_input",
}

#: TransformerLens hooks between modules of a Hugging Face block (no module boundary to hook)
_NO_MODULE = {
    "hook_resid_mid": "the residual stream between attention and MLP",
    "hook_mlp_in": "the MLP's input before its layer norm",
    "hook_attn_in": "the attention's input before its layer norm",
}

_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")

SITE_HINT = ("give the site yourself: pv.SAEIntervention(sae, layer=L, component='block_output') (any component "
             "of pv.list_components(model)) or a raw module path such as component='model.layers[12].output'")


def site_of_hook(hook_name: Optional[str], hf_hook_name: Optional[str] = None) -> Tuple[Optional[int], Optional[str]]:
    """``(layer, component)`` of a TransformerLens ``hook_name`` (or, failing that, an ``hf_hook_name``).

    ``(None, None)`` when neither is given; ``ConfigError`` for a name we cannot place.
    """
    if hook_name:
        if hook_name == "hook_embed":
            return 0, "block_input"
        match = _BLOCK.match(hook_name)
        if match:
            layer, hook = int(match.group(1)), match.group(2)
            if hook in BLOCK_HOOKS:
                return layer, BLOCK_HOOKS[hook]
            if hook in _NO_MODULE:
                raise ConfigError(
                    f"The SAE's hook {hook_name!r} is {_NO_MODULE[hook]}, which is no module's input or output "
                    f"in a Hugging Face model, so it cannot be hooked here: {SITE_HINT}."
                )
    if hf_hook_name:
        return None, hf_path(hf_hook_name)
    if hook_name:
        raise ConfigError(
            f"The SAE's hook {hook_name!r} has no counterpart among our components (known: "
            f"{', '.join('blocks.L.' + h for h in BLOCK_HOOKS)}): {SITE_HINT}."
        )
    return None, None


def hf_path(name: str) -> str:
    """A Hugging Face module name (``model.layers.12``, ``model.layers.12.mlp``) as our raw path
    (``model.layers.12.output``); an explicit ``.input`` / ``.output`` suffix is kept."""
    name = name.strip()
    suffix = ".output"
    for kind in (".input", ".output"):
        if name.endswith(kind):
            name, suffix = name[: -len(kind)], kind
    return name + suffix
