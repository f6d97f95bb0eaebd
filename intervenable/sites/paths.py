"""Raw module paths: ``"transformer.h[6].mlp.output"`` -> (module, hook kind).

A path names any ``nn.Module`` of the model by its attribute path, with
``[i]`` or ``.i`` for list items, and ends with ``.output`` (the default) or
``.input``. ``.output`` / ``.input`` are read as the hook kind only when what
precedes them is a module, so a module that is itself called ``output``
(BERT's ``layer[0].output``) is still reachable as ``...layer[0].output.output``.
"""
from __future__ import annotations

import re
from typing import Optional, Tuple

from torch import nn

from ..errors import ComponentError, closest

_INDEX = re.compile(r"\[(-?\d+)\]")
HOOK_KINDS = ("output", "input")


def normalise_path(path: str) -> str:
    """``"h[0].attn"`` -> ``"h.0.attn"``."""
    return _INDEX.sub(r".\1", path).strip(".")


def get_module(model: nn.Module, dotted: str) -> Optional[nn.Module]:
    """The submodule at a dotted path ('' is the model itself), or None."""
    if dotted == "":
        return model
    try:
        return model.get_submodule(dotted)
    except AttributeError:
        return None



def parse_module_path(model: nn.Module, path: str) -> Tuple[str, str, nn.Module]:
    """Split a raw path into (dotted module path, hook kind, module); raise if absent."""
    dotted = normalise_path(path)
    head, _, last = dotted.rpartition(".")
    if last in HOOK_KINDS:
        module = get_module(model, head)
        if module is not None:
            return head, last, module
    module = get_module(model, dotted)
    if module is not None:
        return dotted, "output", module
    names = [n for n, _ in model.named_modules() if n]
    target = head if last in HOOK_KINDS else dotted
    hint = closest(target, names)
    raise ComponentError(
        f"No module {target!r} in {type(model).__name__}.{hint} Module paths look like "
        f"'transformer.h[6].mlp.output' or 'model.layers[15].mlp.input'; "
        f"print(model) or pv.list_components(model) shows the names."
    )


def infer_width(module: nn.Module, hook: str) -> Optional[int]:
    """Best-effort width of a module's output (or input) from its parameters."""
    if hook == "output":
        for attr in ("out_features", "nf", "embedding_dim", "out_channels", "hidden_size"):
            value = getattr(module, attr, None)
            if isinstance(value, int):
                return value
        shape = getattr(module, "normalized_shape", None)
        if shape:
            return int(shape[-1])
    else:
        for attr in ("in_features", "in_channels", "input_size"):
            value = getattr(module, attr, None)
            if isinstance(value, int):
                return value
        if type(module).__name__ == "Conv1D" and hasattr(module, "weight"):
            return int(module.weight.shape[0])
        shape = getattr(module, "normalized_shape", None)
        if shape:
            return int(shape[-1])
    return None
