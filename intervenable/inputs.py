"""Calling the wrapped model with the input forms users pass (dict, tensor, tuple)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Dict

import torch
from torch import nn

from .errors import InputError

_BATCH_KEYS = ("input_ids", "inputs_embeds", "pixel_values", "input_values", "input_features", "x")


def batch_size(inputs: Any) -> int:
    """The batch size of a model input: a dict of tensors, a tensor, or a tuple of tensors."""
    if isinstance(inputs, torch.Tensor):
        return int(inputs.shape[0]) if inputs.dim() else 1
    if isinstance(inputs, Mapping):
        for key in _BATCH_KEYS:
            value = inputs.get(key)
            if isinstance(value, torch.Tensor):
                return int(value.shape[0])
        for value in inputs.values():
            if isinstance(value, torch.Tensor) and value.dim():
                return int(value.shape[0])
    if isinstance(inputs, (tuple, list)):
        for value in inputs:
            if isinstance(value, torch.Tensor) and value.dim():
                return int(value.shape[0])
    if inputs is None:
        raise InputError("The base input is None: pass the model's inputs, e.g. tokenizer(text, return_tensors='pt').")
    raise InputError(
        f"Cannot read a batch from a {type(inputs).__name__}: pass a dict of tensors (as a tokenizer "
        "returns), a tensor, or a tuple of tensors."
    )


def call_model(model: nn.Module, inputs: Any, kwargs: Dict[str, Any]) -> Any:
    """``model(**inputs)`` for dicts, ``model(inputs)`` for tensors, ``model(*inputs)`` for tuples."""
    if isinstance(inputs, Mapping):
        return model(**inputs, **kwargs)
    if isinstance(inputs, torch.Tensor):
        return model(inputs, **kwargs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs, **kwargs)
    raise InputError(
        f"Cannot call the model with a {type(inputs).__name__}: pass a dict of tensors, a tensor, or a tuple."
    )
