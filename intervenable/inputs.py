"""Calling the wrapped model with the input forms users pass (dict, tensor, tuple)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Dict

import torch
from torch import nn

from .errors import InputError, LocationError
from .sites.registry import find_architecture

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


def _padding_before_text(mask: torch.Tensor) -> bool:
    """True when some row has a padding position (0) before a real token (1): left (or inner) padding."""
    real = (mask != 0).long()
    real_at_or_after = real.flip(-1).cummax(-1).values.flip(-1)
    return bool(((real == 0) & (real_at_or_after != 0)).any())


def padded_position_ids(model: nn.Module, inputs: Mapping) -> Any:
    """``position_ids`` numbering each row's real tokens from 0 (from its attention mask, as ``generate``
    does), for a left-padded text batch of a family that needs them (``Architecture.positions_from_mask``);
    None when the input has them already, has no padding before its text, or the family needs none.

    Without them such a family numbers the pads as positions, so every real token of a padded row sees
    shifted position embeddings: ``{"base": -1}`` would read different activations than the same prompt
    alone.
    """
    mask = inputs.get("attention_mask")
    if "position_ids" in inputs or not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        return None
    if not ("input_ids" in inputs or "inputs_embeds" in inputs) or not _padding_before_text(mask):
        return None
    arch = find_architecture(model)
    if arch is None or not arch.positions_from_mask:
        return None
    real = mask != 0
    positions = real.long().cumsum(-1) - 1
    return positions.masked_fill(~real, 1)


def last_real_positions(inputs: Any, what: str) -> torch.Tensor:
    """Index of each row's last real token ``LongTensor[batch]``: the last position whose attention mask is
    1, or the last position of the sequence when the input has no mask (the ``"last"`` unit location)."""
    ids = inputs.get("input_ids", inputs.get("inputs_embeds")) if isinstance(inputs, Mapping) else inputs
    if not isinstance(ids, torch.Tensor) or ids.dim() < 2:
        raise LocationError(f"The location 'last' needs a sequence in {what} (input_ids or inputs_embeds of "
                            "[batch, positions]); give positions instead.")
    mask = inputs.get("attention_mask") if isinstance(inputs, Mapping) else None
    if not isinstance(mask, torch.Tensor):
        return torch.full((ids.shape[0],), ids.shape[1] - 1, dtype=torch.long)
    real = mask != 0
    if not bool(real.any(-1).all()):
        raise LocationError(f"A row of {what} has no real token (its attention_mask is all 0): 'last' has no "
                            "position there; drop that row.")
    index = torch.arange(mask.shape[-1]).expand_as(mask)
    return torch.where(real, index, -1).max(-1).values


def call_model(model: nn.Module, inputs: Any, kwargs: Dict[str, Any]) -> Any:
    """``model(**inputs)`` for dicts, ``model(inputs)`` for tensors, ``model(*inputs)`` for tuples.

    A left-padded text batch of a family with learned absolute positions gets ``position_ids`` from its
    attention mask (``padded_position_ids``), so padded rows compute what the prompts alone would.
    """
    if isinstance(inputs, Mapping):
        positions = None if "position_ids" in kwargs else padded_position_ids(model, inputs)
        if positions is not None:
            return model(**inputs, position_ids=positions, **kwargs)
        return model(**inputs, **kwargs)
    if isinstance(inputs, torch.Tensor):
        return model(inputs, **kwargs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs, **kwargs)
    raise InputError(
        f"Cannot call the model with a {type(inputs).__name__}: pass a dict of tensors, a tensor, or a tuple."
    )


class SharedSource:
    """One source input for every intervention group: ``pv_model(base, pv.SharedSource(source))``.

    Without it, the number of sources must equal the number of groups: one source given for several
    groups is refused (``SourceCountError``) rather than silently reused, since it is usually a missing
    source. ``SharedSource`` says the reuse is meant; the source runs once for all the groups.
    """

    def __init__(self, source: Any) -> None:
        if isinstance(source, SharedSource):
            source = source.source
        self.source = source

    def __repr__(self) -> str:
        return f"SharedSource({type(self.source).__name__})"


def is_transformers_model(model: nn.Module) -> bool:
    """True for a ``transformers.PreTrainedModel`` (checked by name: no import needed)."""
    return any(cls.__name__ == "PreTrainedModel" for cls in type(model).__mro__)


def check_batched(inputs: Any, model: nn.Module, what: str) -> None:
    """Refuse token ids without a batch dimension before any forward.

    Transformers models read ``[batch, positions]`` ids; a 1-D tensor fails deep
    inside them (or is silently read as a batch of one), and our per-row
    locations would count its positions as rows.
    """
    if not is_transformers_model(model):
        return  # a plain module may well take a 1-D batch
    if isinstance(inputs, Mapping):
        ids, name = inputs.get("input_ids"), "input_ids"
    else:
        ids, name = inputs, "input tensor"
    if isinstance(ids, torch.Tensor) and ids.dim() < 2:
        raise InputError(
            f"The {name} of {what} has shape {tuple(ids.shape)}, with no batch dimension: add a batch "
            "dimension, e.g. ids.unsqueeze(0), or tokenize with tokenizer(text, return_tensors='pt')."
        )


def repeat_rows(inputs: Any, rows: int) -> Any:
    """A 1-row input repeated to ``rows`` rows (every tensor whose first dimension is 1)."""

    def one(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == 1:
            return value.expand(rows, *value.shape[1:]).contiguous()  # some models flatten with .view
        return value

    if isinstance(inputs, Mapping):
        return {key: one(value) for key, value in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(one(value) for value in inputs)
    return one(inputs)
