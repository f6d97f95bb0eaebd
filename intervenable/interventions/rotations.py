"""Distributed (rotated-basis) interventions: DAS and its variants.

Every class here sets ``flatten_units = True``: it sees the selected units
concatenated into one vector per row (``[batch, units * width]``), as in the
reference library, so ``embed_dim`` is ``width * max_number_of_units``.

* ``RotatedSpaceIntervention``: a learned orthogonal ``R`` (``rotate_layer``);
  the first ``interchange_dim`` rotated dimensions (or ``subspaces``) of the
  base are replaced by the source's, then rotated back with ``R^T``.
* ``LowRankRotatedSpaceIntervention``: ``R`` has ``low_rank_dimension``
  orthonormal columns; ``base + ((source - base) R) R^T``.
* ``BoundlessRotatedSpaceIntervention``: a learned, soft boundary
  (temperature-controlled sigmoid) picks how many rotated dimensions swap.
* ``SigmoidMaskRotatedSpaceIntervention``: a learned soft mask per rotated dim.
* ``SigmoidMaskIntervention``: a learned soft mask in the original basis.
* ``PCARotatedSpaceIntervention``: swap in a fixed PCA basis.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from ..errors import ConfigError, ShapeError
from .base import (
    BasisAgnosticIntervention,
    DistributedRepresentationIntervention,
    LocalistRepresentationIntervention,
    TrainableIntervention,
    register_intervention,
    subspace_mask,
)


def require_embed_dim(intervention: nn.Module, kwargs: dict) -> int:
    """``embed_dim`` from the keyword arguments, or an error that says how to give it."""
    embed_dim = kwargs.get("embed_dim")
    if embed_dim is None:
        raise ConfigError(
            f"{type(intervention).__name__} needs embed_dim (the width it sees): pass an instance built "
            f"with embed_dim=..., or use a component whose width is known (width * max_number_of_units)."
        )
    return int(embed_dim)


def sigmoid_boundary(_input: torch.Tensor, boundary_x: Any, boundary_y: Any, temperature: Any) -> torch.Tensor:
    """Soft mask ~1 inside ``(boundary_x, boundary_y)`` and ~0 outside (Boundless DAS; the reference's
    ``basic_utils.sigmoid_boundary``, which basic_utils re-exports)."""
    return torch.sigmoid((_input - boundary_x) / temperature) * torch.sigmoid((boundary_y - _input) / temperature)


class RotateLayer(nn.Module):
    """``x @ W`` with ``W`` square, initialised orthogonal (wrap with ``orthogonal``)."""

    def __init__(self, n: int, init_orth: bool = True) -> None:
        super().__init__()
        weight = torch.empty(n, n)
        if init_orth:
            nn.init.orthogonal_(weight)
        self.weight = nn.Parameter(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(x.to(self.weight.dtype), self.weight)


class LowRankRotateLayer(nn.Module):
    """``x @ W`` with ``W`` of shape ``[n, m]`` (``m <= n``), orthonormal columns."""

    def __init__(self, n: int, m: int, init_orth: bool = True) -> None:
        super().__init__()
        if m > n:
            raise ConfigError(f"low_rank_dimension {m} exceeds the width {n}; use at most {n}.")
        self.weight = nn.Parameter(torch.empty(n, m))
        if init_orth:
            nn.init.orthogonal_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(x.to(self.weight.dtype), self.weight)


def orthogonal_rotation(n: int, m: Optional[int] = None, orthogonal_map: Optional[str] = None) -> nn.Module:
    """A rotate layer whose ``weight`` stays orthogonal through training."""
    layer = RotateLayer(n) if m is None else LowRankRotateLayer(n, m)
    return nn.utils.parametrizations.orthogonal(layer, orthogonal_map=orthogonal_map)


def check_width(intervention: nn.Module, base: torch.Tensor) -> None:
    """The last dimension must be ``embed_dim``; say how to fix the usual causes."""
    if base.shape[-1] != intervention.embed_dim:
        raise ShapeError(
            f"{type(intervention).__name__} has embed_dim={intervention.embed_dim} but sees width "
            f"{base.shape[-1]} (units are concatenated): select exactly max_number_of_units units in "
            "unit_locations, or build it with embed_dim = width * max_number_of_units."
        )


def _require_source(intervention: nn.Module, source: Optional[torch.Tensor]) -> torch.Tensor:
    if source is None:
        raise ConfigError(
            f"{type(intervention).__name__} swaps a source into the base: pass sources=[...] or "
            "source_representations=... in the forward call."
        )
    return source


class _RotatedBase(TrainableIntervention, DistributedRepresentationIntervention):
    """Shared pieces: a full orthogonal ``rotate_layer`` over ``embed_dim``."""

    flatten_units = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.embed_dim = require_embed_dim(self, kwargs)
        self.rotate_layer = orthogonal_rotation(self.embed_dim)

    def _rotated(self, base: torch.Tensor, source: Optional[torch.Tensor]):
        check_width(self, base)
        source = _require_source(self, self._source(source))
        weight = self.rotate_layer.weight
        rb = torch.matmul(base.to(weight.dtype), weight)
        rs = torch.matmul(source.to(device=base.device, dtype=weight.dtype), weight)
        return weight, rb, rs


@register_intervention("RotatedSpaceIntervention")
class RotatedSpaceIntervention(_RotatedBase):
    """DAS: swap the first ``interchange_dim`` (or ``subspaces``) dims of the rotated space.

    ``output = swap(base R, source R) R^T``; ``rotate_layer.weight`` is ``R``.
    """

    def forward(self, base, source=None, subspaces=None, **kwargs):
        weight, rb, rs = self._rotated(base, source)
        mixed = self._swap(rb, rs, "interchange", subspaces)
        return torch.matmul(mixed, weight.T).to(base.dtype)


@register_intervention("LowRankRotatedSpaceIntervention")
class LowRankRotatedSpaceIntervention(TrainableIntervention, DistributedRepresentationIntervention):
    """DAS in a ``low_rank_dimension``-dim subspace: ``base + ((source - base) R) R^T``.

    ``subspaces`` (or partition ids) select columns of ``R`` per row.
    """

    flatten_units = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.embed_dim = require_embed_dim(self, kwargs)
        rank = kwargs.get("low_rank_dimension")
        if rank is None:
            raise ConfigError(
                "LowRankRotatedSpaceIntervention needs low_rank_dimension (the subspace size); "
                "set it in the representation or the constructor."
            )
        self.low_rank_dimension = int(rank)
        self.rotate_layer = orthogonal_rotation(self.embed_dim, self.low_rank_dimension)

    def forward(self, base, source=None, subspaces=None, **kwargs):
        check_width(self, base)
        source = _require_source(self, self._source(source))
        weight = self.rotate_layer.weight
        diff = torch.matmul((source.to(device=base.device) - base).to(weight.dtype), weight)
        if subspaces is not None:
            diff = diff * subspace_mask(subspaces, self.subspace_partition, diff, self.use_fast).to(diff.dtype)
        return (base + torch.matmul(diff, weight.T).to(base.dtype)).to(base.dtype)


@register_intervention("BoundlessRotatedSpaceIntervention")
class BoundlessRotatedSpaceIntervention(_RotatedBase):
    """Boundless DAS: a learned boundary ``b`` in (0, 1] swaps rotated dims ``[0, b * embed_dim)``.

    The mask is ``sigmoid(i / T) * sigmoid((b * embed_dim - i) / T)``; lower the
    temperature ``T`` during training (``set_temperature``) to make it sharp.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.intervention_boundaries = nn.Parameter(torch.tensor([0.5]))
        self.register_buffer("temperature", torch.tensor(50.0))
        self.register_buffer("intervention_population", torch.arange(0, self.embed_dim, dtype=torch.float32))

    def get_boundary_parameters(self) -> nn.Parameter:
        return self.intervention_boundaries

    def get_temperature(self) -> torch.Tensor:
        return self.temperature

    def set_temperature(self, temp: Any) -> None:
        """Set the sigmoid temperature (float or tensor)."""
        self.temperature.copy_(torch.as_tensor(temp, dtype=self.temperature.dtype).reshape(()))

    def set_intervention_boundaries(self, intervention_boundaries: float) -> None:
        """Set the boundary (fraction of ``embed_dim``) in place, keeping optimiser references valid."""
        with torch.no_grad():
            self.intervention_boundaries.fill_(float(intervention_boundaries))

    def boundary_mask(self) -> torch.Tensor:
        """The current soft mask over rotated dimensions, shape ``[embed_dim]``."""
        bound = torch.clamp(self.intervention_boundaries, 1e-3, 1.0)[0] * self.embed_dim
        return sigmoid_boundary(self.intervention_population, 0.0, bound, self.temperature)

    def learned_width(self) -> float:
        """How many rotated dimensions the boundary currently covers."""
        return float(torch.clamp(self.intervention_boundaries.detach(), 1e-3, 1.0)[0]) * self.embed_dim

    def forward(self, base, source=None, subspaces=None, **kwargs):
        weight, rb, rs = self._rotated(base, source)
        mask = self.boundary_mask().to(rb.dtype)
        mixed = (1.0 - mask) * rb + mask * rs
        return torch.matmul(mixed, weight.T).to(base.dtype)


@register_intervention("SigmoidMaskRotatedSpaceIntervention")
class SigmoidMaskRotatedSpaceIntervention(_RotatedBase):
    """A learned soft mask ``sigmoid(masks / T)`` per rotated dimension picks what swaps."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.masks = nn.Parameter(torch.full((self.embed_dim,), 100.0))
        self.register_buffer("temperature", torch.tensor(50.0))

    def get_boundary_parameters(self) -> nn.Parameter:
        return self.masks

    def get_temperature(self) -> torch.Tensor:
        return self.temperature

    def set_temperature(self, temp: Any) -> None:
        self.temperature.copy_(torch.as_tensor(temp, dtype=self.temperature.dtype).reshape(()))

    def forward(self, base, source=None, subspaces=None, **kwargs):
        weight, rb, rs = self._rotated(base, source)
        mask = torch.sigmoid(self.masks / self.temperature).to(rb.dtype)
        mixed = (1.0 - mask) * rb + mask * rs
        return torch.matmul(mixed, weight.T).to(base.dtype)


@register_intervention("SigmoidMaskIntervention")
class SigmoidMaskIntervention(TrainableIntervention, LocalistRepresentationIntervention):
    """A learned soft mask in the original basis: ``(1 - m) * base + m * source``, ``m = sigmoid(mask / T)``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.embed_dim = require_embed_dim(self, kwargs)
        self.mask = nn.Parameter(torch.zeros(self.embed_dim))
        self.register_buffer("temperature", torch.tensor(0.01))

    def get_temperature(self) -> torch.Tensor:
        return self.temperature

    def set_temperature(self, temp: Any) -> None:
        self.temperature.copy_(torch.as_tensor(temp, dtype=self.temperature.dtype).reshape(()))

    def forward(self, base, source=None, subspaces=None, **kwargs):
        source = _require_source(self, self._source(source)).to(device=base.device, dtype=base.dtype)
        mask = torch.sigmoid(self.mask / self.temperature).to(base.dtype)
        return (1.0 - mask) * base + mask * source


@register_intervention("PCARotatedSpaceIntervention")
class PCARotatedSpaceIntervention(BasisAgnosticIntervention, DistributedRepresentationIntervention):
    """Swap in a fixed PCA basis of standardised activations.

    Give ``pca`` (an object with ``components_``, e.g. scikit-learn's PCA) with
    ``pca_mean`` and ``pca_std``; or ``pca_components`` (``[k, embed_dim]``); or
    ``data`` (``[n, embed_dim]`` activations) to fit the basis here
    (``n_components`` optional). The component of the base outside the ``k``
    PCA directions is kept (the reference drops it when ``k < embed_dim``).
    """

    flatten_units = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        data = kwargs.get("data")
        if data is not None:
            components, mean, std = pca_basis(torch.as_tensor(data, dtype=torch.float32), kwargs.get("n_components"))
        else:
            pca = kwargs.get("pca")
            components = kwargs.get("pca_components", getattr(pca, "components_", None))
            if components is None:
                raise ConfigError(
                    "PCARotatedSpaceIntervention needs a basis: pass data=<[n, embed_dim] activations>, "
                    "pca=<fitted PCA> (with pca_mean, pca_std) or pca_components=<[k, embed_dim]>."
                )
            components = torch.as_tensor(components, dtype=torch.float32)
            width = components.shape[-1]
            mean = kwargs.get("pca_mean")
            std = kwargs.get("pca_std")
            mean = torch.zeros(width) if mean is None else torch.as_tensor(mean, dtype=torch.float32)
            std = torch.ones(width) if std is None else torch.as_tensor(std, dtype=torch.float32)
        self.embed_dim = int(components.shape[-1])
        if self.interchange_dim is None:
            self.interchange_dim = self.embed_dim
        self.register_buffer("pca_components", components)
        self.register_buffer("pca_mean", mean.reshape(-1))
        self.register_buffer("pca_std", std.reshape(-1))

    def forward(self, base, source=None, subspaces=None, **kwargs):
        source = _require_source(self, self._source(source)).to(device=base.device)
        comps = self.pca_components.to(base.dtype)
        base_n = (base - self.pca_mean) / self.pca_std
        source_n = (source.to(base.dtype) - self.pca_mean) / self.pca_std
        rb, rs = base_n @ comps.T, source_n @ comps.T
        mixed = self._swap(rb, rs, "interchange", subspaces)
        out_n = base_n + (mixed - rb) @ comps
        return (out_n * self.pca_std + self.pca_mean).to(base.dtype)


def pca_basis(data: torch.Tensor, n_components: Optional[int] = None):
    """``(components [k, d], mean [d], std [d])`` of standardised ``data`` ``[n, d]`` via SVD."""
    if data.dim() != 2:
        data = data.reshape(-1, data.shape[-1])
    mean = data.mean(0)
    std = data.std(0).clamp_min(1e-6)
    _, _, vh = torch.linalg.svd((data - mean) / std, full_matrices=False)
    k = vh.shape[0] if n_components is None else int(n_components)
    return vh[:k].contiguous(), mean, std
