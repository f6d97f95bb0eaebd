"""The data-only protocol: how an intervention's constructor arguments, attributes and
dimensions are written as JSON and given back to a fresh instance (see docs/saving.md).

Constructor arguments are data: JSON values, plus ``torch.dtype`` values written as
``{"torch.dtype": "bfloat16"}`` (pyreft's interventions take ``dtype=``, and a rebuild in
another dtype would round the saved weights). Nothing here imports or calls code a file names.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
from torch import nn

from .common import SerializationError, is_jsonable, jsonable

#: instance attributes never saved or restored as plain data
_SKIP_ATTRIBUTES = {"training", "source_representation", "embed_dim", "interchange_dim"}
_SOURCE = "source_representation"
_DTYPE_TAG = "torch.dtype"


def encode_value(value: Any, where: str) -> Any:
    """A constructor argument as JSON data (dtypes tagged); SerializationError if it is not data."""
    if isinstance(value, torch.dtype):
        return {_DTYPE_TAG: str(value).replace("torch.", "")}
    if isinstance(value, (list, tuple)):
        return [encode_value(v, where) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: encode_value(v, where) for k, v in value.items()}
    return jsonable(value, where)


def decode_value(value: Any, where: str) -> Any:
    """Inverse of ``encode_value``: only names of ``torch`` dtypes are turned back into objects."""
    if isinstance(value, dict) and set(value) == {_DTYPE_TAG}:
        dtype = getattr(torch, str(value[_DTYPE_TAG]), None) if isinstance(value[_DTYPE_TAG], str) else None
        if not isinstance(dtype, torch.dtype):
            raise SerializationError(f"{where}: {value!r} does not name a torch dtype; the config file is damaged.")
        return dtype
    if isinstance(value, list):
        return [decode_value(v, where) for v in value]
    if isinstance(value, dict):
        return {k: decode_value(v, where) for k, v in value.items()}
    return value


# -- the data-only protocol ------------------------------------------------------------
def init_kwargs_of(module: nn.Module, where: str, built_from: str) -> Dict[str, Any]:
    """Constructor kwargs beyond the representation.

    ``config_dict()`` (every value must be JSON data), else the data items of what
    the caller passed to the outermost constructor: all of them for an instance the
    user built, those beyond the representation and width (``init_kwargs``) for one
    the engine built from a type. Else none.
    """
    if callable(getattr(module, "config_dict", None)):
        kwargs = module.config_dict()
        if not isinstance(kwargs, dict):
            raise SerializationError(f"{where}: config_dict() must return a dict of constructor arguments.")
        return encode_value(kwargs, f"{where}: config_dict() value")
    kwargs = getattr(module, "_constructor_kwargs", None) if built_from == "instance" else None
    if not isinstance(kwargs, dict):
        kwargs = getattr(module, "init_kwargs", None)
    if not isinstance(kwargs, dict):
        return {}
    return {k: encode_value(v, k) for k, v in kwargs.items() if isinstance(k, str) and is_jsonable(v, encode_value)}


def init_tensors_of(module: nn.Module) -> List[str]:
    """Saved tensors passed back to the constructor as kwargs of the same name.

    The class attribute ``init_tensors`` (names in its ``state_dict``) when
    defined, else the module's own top-level buffers (data given at construction,
    such as a PCA basis), except ``source_representation``.
    """
    declared = getattr(type(module), "init_tensors", None)
    if declared is not None:
        return [str(n) for n in declared]
    return sorted(n for n, b in module._buffers.items() if b is not None and n != _SOURCE and n in module.state_dict())


def plain_attributes(module: nn.Module, where: str = "") -> Dict[str, Any]:
    """Public instance attributes holding JSON data (seeds, temperatures, partitions, flags).

    An attribute set after construction that is not data (a tensor that is no buffer, an object)
    cannot be saved: it is named in a warning here, at save time, instead of being lost silently.
    """
    out: Dict[str, Any] = {}
    constructed = vars(module).get("_constructed_attributes")
    lost: List[str] = []
    for name, value in vars(module).items():
        if name.startswith("_") or name in _SKIP_ATTRIBUTES:
            continue
        if not is_jsonable(value):
            if constructed is not None and name not in constructed:
                lost.append(f"{name} ({type(value).__name__})")
            continue
        out[name] = jsonable(value, name)
    if lost:
        from ..errors import warn_user

        warn_user(f"{where or type(module).__name__}: the attribute{'s' if len(lost) > 1 else ''} "
                  f"{', '.join(lost)} set after construction {'are' if len(lost) > 1 else 'is'} not JSON data, so "
                  "the file cannot hold and a load cannot restore it. Pass it to the constructor (returned by "
                  "config_dict()), or register a tensor as a buffer (register_buffer) so that it is saved.")
    return out


def restore_attributes(module: nn.Module, attributes: Dict[str, Any]) -> None:
    """Set every saved data attribute on the fresh instance, as it was when saved (attributes set after
    construction included); a tuple comes back from its JSON list, an int into a float attribute as a float."""
    current = vars(module)
    for name, value in attributes.items():
        if name in _SKIP_ATTRIBUTES or name.startswith("_"):
            continue
        old = current.get(name)
        if isinstance(old, tuple) and isinstance(value, list):
            value = tuple(value)
        if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        setattr(module, name, value)


def set_dims(module: nn.Module, embed_dim: Any, interchange_dim: Any) -> None:
    if embed_dim is not None and "embed_dim" in vars(module):
        module.embed_dim = embed_dim
    if interchange_dim is not None:
        if callable(getattr(module, "set_interchange_dim", None)):
            module.set_interchange_dim(interchange_dim)
        elif "interchange_dim" in vars(module):
            module.interchange_dim = interchange_dim


def dim_of(module: nn.Module, name: str) -> Optional[int]:
    value = getattr(module, name, None)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = int(value.item())
    return value if isinstance(value, int) and not isinstance(value, bool) else None
