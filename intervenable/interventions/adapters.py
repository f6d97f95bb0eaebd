"""Sourceless trainable interventions that act as adapters (ReFT, LoRA).

* ``LoreftIntervention`` (LoReFT): ``h + R^T (act(W h + b) - R h)`` with ``R``
  (``rotate_layer``, ``[embed_dim, r]``) having orthonormal columns and
  ``W h + b`` the ``learned_source`` linear layer. Parameter names follow
  pyreft so its saved weights load.
* ``NoreftIntervention``: the same with an unconstrained ``R`` (``proj_layer``).
* ``LoRAIntervention``: ``h + scaling * dropout(x) A B`` where ``x`` is the
  hooked module's *input* at the same units (the engine passes it as
  ``source`` because the class sets ``uses_module_input``; a reference-style
  ``args=`` keyword is also accepted). ``A`` is ``[input_dim, r]``, ``B`` is
  ``[r, embed_dim]`` and starts at zero, so the adapter starts as the identity.

All three keep the last dimension (``flatten_units = False``): they see
``[batch, positions, width]`` and act on every unit independently.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict

import torch
from torch import nn

from ..errors import ConfigError, InputError
from .base import (
    DistributedRepresentationIntervention,
    SourcelessIntervention,
    TrainableIntervention,
    register_intervention,
)
from .rotations import LowRankRotateLayer, require_embed_dim

_ACTIVATIONS: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "linear": lambda x: x,
    "relu": torch.relu,
    "gelu": nn.functional.gelu,
    "tanh": torch.tanh,
    "silu": nn.functional.silu,
    "sigmoid": torch.sigmoid,
}


def _activation(name: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    if name is None:
        return _ACTIVATIONS["linear"]
    if callable(name):
        return name
    if name not in _ACTIVATIONS:
        raise ConfigError(f"Unknown act_fn {name!r}; choose one of {sorted(_ACTIVATIONS)} or pass a callable.")
    return _ACTIVATIONS[name]


def _rank(intervention: nn.Module, kwargs: dict) -> int:
    rank = kwargs.get("low_rank_dimension")
    if rank is None:
        raise ConfigError(f"{type(intervention).__name__} needs low_rank_dimension (the rank r of the edit).")
    return int(rank)


class _ReftBase(SourcelessIntervention, TrainableIntervention, DistributedRepresentationIntervention):
    flatten_units = False

    def __init__(self, **kwargs: Any) -> None:
        kwargs["keep_last_dim"] = True
        super().__init__(**kwargs)
        self.embed_dim = require_embed_dim(self, kwargs)
        self.low_rank_dimension = _rank(self, kwargs)
        dtype = kwargs.get("dtype") or torch.float32
        self.learned_source = nn.Linear(self.embed_dim, self.low_rank_dimension).to(dtype)
        self.dropout = nn.Dropout(float(kwargs.get("dropout") or 0.0))
        self.act_fn = _activation(kwargs.get("act_fn"))


@register_intervention("LoreftIntervention")
class LoreftIntervention(_ReftBase):
    """LoReFT: ``h + R^T (act(W h + b) - R h)``, ``R`` with orthonormal rows kept by parametrisation."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        layer = LowRankRotateLayer(self.embed_dim, self.low_rank_dimension)
        self.rotate_layer = nn.utils.parametrizations.orthogonal(layer, orthogonal_map="householder")

    def forward(self, base, source=None, subspaces=None, **kwargs):
        weight = self.rotate_layer.weight  # [d, r]
        h = base.to(weight.dtype)
        edit = self.act_fn(self.learned_source(h)) - h @ weight
        return self.dropout((h + edit @ weight.T).to(base.dtype))


@register_intervention("NoreftIntervention")
class NoreftIntervention(_ReftBase):
    """ReFT without the orthogonality constraint: ``h + P^T (act(W h + b) - P h)``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.proj_layer = nn.Linear(self.embed_dim, self.low_rank_dimension, bias=bool(kwargs.get("add_bias", False)))

    def forward(self, base, source=None, subspaces=None, **kwargs):
        h = base.to(self.proj_layer.weight.dtype)
        edit = self.act_fn(self.learned_source(h)) - self.proj_layer(h)
        return self.dropout((h + edit @ self.proj_layer.weight).to(base.dtype))


@register_intervention("LoRAIntervention")
class LoRAIntervention(TrainableIntervention, DistributedRepresentationIntervention):
    """LoRA on a module as an intervention: ``output + (alpha / r) * dropout(input) A B``.

    Hook it on a module's output (e.g. ``"transformer.h[0].attn.c_proj.output"``);
    ``input_dim`` is the module's input width (defaults to ``embed_dim``).
    """

    flatten_units = False
    uses_module_input = True

    def __init__(self, **kwargs: Any) -> None:
        kwargs["keep_last_dim"] = True
        super().__init__(**kwargs)
        self.embed_dim = require_embed_dim(self, kwargs)
        self.low_rank_dimension = _rank(self, kwargs)
        self.input_dim = int(kwargs.get("input_dim") or self.embed_dim)
        alpha = kwargs.get("alpha")
        self.scaling = float(alpha) / self.low_rank_dimension if alpha is not None else 1.0
        self.lora_A = nn.Parameter(torch.empty(self.input_dim, self.low_rank_dimension))
        self.lora_B = nn.Parameter(torch.zeros(self.low_rank_dimension, self.embed_dim))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(float(kwargs.get("dropout") or 0.0))

    def forward(self, base, source=None, subspaces=None, **kwargs):
        x = kwargs.get("args", source)
        if isinstance(x, (tuple, list)):
            x = x[0]
        if x is None:
            raise InputError(
                "LoRAIntervention needs the module's input; the engine passes it automatically "
                "(uses_module_input). When calling it directly, pass it as source or args=."
            )
        x = x.to(device=base.device, dtype=self.lora_A.dtype)
        if x.shape[-1] != self.input_dim:
            raise ConfigError(
                f"LoRAIntervention got a module input of width {x.shape[-1]} but input_dim={self.input_dim}; "
                "construct it with input_dim=<the module's input width>."
            )
        delta = self.lora_dropout(x) @ self.lora_A @ self.lora_B * self.scaling
        return base + delta.to(base.dtype)


register_intervention("LoraIntervention", LoRAIntervention)
LoraIntervention = LoRAIntervention  # the reference README's spelling
