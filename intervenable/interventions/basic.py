"""The basic interventions: swap, add, subtract, zero, collect, noise, skip, and plain callables."""
from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Optional, Tuple

import torch

from ..errors import InputError
from .base import (
    BasisAgnosticIntervention,
    ConstantSourceIntervention,
    Intervention,
    LocalistRepresentationIntervention,
    register_intervention,
)
from .subspaces import select_subspaces, swap_width


def _require(source: Optional[torch.Tensor], name: str) -> torch.Tensor:
    if source is None:
        raise InputError(
            f"{name} needs a source: pass sources=[...], source_representations=..., or give the "
            "representation a constant 'source_representation'."
        )
    return source


@register_intervention("VanillaIntervention")
class VanillaIntervention(Intervention, LocalistRepresentationIntervention):
    """Interchange: replace the base units by the source units (activation patching)."""

    def forward(self, base, source=None, subspaces=None, **kwargs):
        src = _require(self._source(source), "VanillaIntervention")
        return self._swap(base, src, "interchange", subspaces)


@register_intervention("AdditionIntervention")
class AdditionIntervention(BasisAgnosticIntervention, LocalistRepresentationIntervention):
    """Add the source to the base (steering with a vector)."""

    def forward(self, base, source=None, subspaces=None, **kwargs):
        src = _require(self._source(source), "AdditionIntervention")
        return self._swap(base, src, "add", subspaces)


@register_intervention("SubtractionIntervention")
class SubtractionIntervention(BasisAgnosticIntervention, LocalistRepresentationIntervention):
    """Subtract the source from the base."""

    def forward(self, base, source=None, subspaces=None, **kwargs):
        src = _require(self._source(source), "SubtractionIntervention")
        return self._swap(base, src, "subtract", subspaces)


@register_intervention("ZeroIntervention")
class ZeroIntervention(ConstantSourceIntervention, LocalistRepresentationIntervention):
    """Set the selected units (or subspace) to zero."""

    def forward(self, base, source=None, subspaces=None, **kwargs):
        return self._swap(base, torch.zeros_like(base), "interchange", subspaces)


@register_intervention("CollectIntervention")
class CollectIntervention(ConstantSourceIntervention):
    """Read the selected units without changing them; returns what was collected.

    The engine leaves the activation untouched and reports the returned tensor
    in ``collected_activations``.
    """

    collects = True

    def forward(self, base, source=None, subspaces=None, **kwargs):
        if subspaces is not None:
            return select_subspaces(base, subspaces, self.subspace_partition, self.use_fast)
        width = swap_width(self.interchange_dim, self.embed_dim)
        if width is not None and width < base.shape[-1]:
            return base[..., :width]
        return base


@register_intervention("NoiseIntervention")
class NoiseIntervention(ConstantSourceIntervention, LocalistRepresentationIntervention):
    """Add seeded Gaussian noise of scale ``noise_level`` (ROME-style corruption).

    The noise is drawn from a generator seeded with ``seed`` at every call, so
    the same input gets the same noise, run after run.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        level = kwargs.get("noise_level", kwargs.get("noise_leve", 0.13462981581687927))
        self.register_buffer("noise_level", torch.tensor(float(level)))
        self.seed = int(kwargs.get("seed", 1))

    def forward(self, base, source=None, subspaces=None, **kwargs):
        generator = torch.Generator(device="cpu").manual_seed(self.seed)
        noise = torch.randn(base.shape, generator=generator, dtype=torch.float32).to(base.device, base.dtype)
        return self._swap(base, noise * self.noise_level.to(base.dtype), "add", subspaces)


@register_intervention("SkipIntervention")
class SkipIntervention(BasisAgnosticIntervention, LocalistRepresentationIntervention):
    """Skip the module: its output at the selected units becomes its input there.

    ``source`` is filled by the engine with the module's own input (same units).
    """

    uses_module_input = True

    def forward(self, base, source=None, subspaces=None, **kwargs):
        src = _require(source, "SkipIntervention")
        return self._swap(base, src, "interchange", subspaces)


def positional_arity(func: Callable[..., Any]) -> Optional[Tuple[int, float]]:
    """(required, maximum) positional arguments of ``func``; None when it cannot be inspected.

    A required keyword-only parameter makes ``func`` uncallable positionally: required is then inf.
    For a module, its ``forward`` is inspected.
    """
    if isinstance(func, torch.nn.Module):
        func = func.forward
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return None
    required, maximum = 0, 0.0
    for p in params:
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            maximum += 1
            required += p.default is p.empty
        elif p.kind == p.VAR_POSITIONAL:
            maximum = math.inf
        elif p.kind == p.KEYWORD_ONLY and p.default is p.empty:
            return math.inf, maximum
    return required, maximum


def takes_base_and_source(func: Callable[..., Any]) -> bool:
    """True when ``func(base, source)`` binds (or the signature cannot be read)."""
    arity = positional_arity(func)
    return arity is None or arity[0] <= 2 <= arity[1]


class LambdaIntervention(Intervention):
    """Wrap a plain callable ``f(base, source)`` (or ``f(base, source, subspaces)``).

    ``source`` is the source units when sources are given (or the constant
    ``source_representation``), else None, as in the reference library.
    """

    def __init__(self, func: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.func = func
        arity = positional_arity(func)
        self._takes_subspaces = arity is not None and arity[1] >= 3
        self._needs_subspaces = arity is not None and arity[0] >= 3

    @property
    def needs_source(self) -> bool:
        return False  # a callable may ignore its source; it gets None without one

    @property
    def reads_source(self) -> bool:
        """Run the given sources for this callable (unless its source is a constant)."""
        return not self.is_source_constant

    def forward(self, base, source=None, subspaces=None, **kwargs):
        if self._needs_subspaces or (subspaces is not None and self._takes_subspaces):
            return self.func(base, self._source(source), subspaces)
        return self.func(base, self._source(source))

    def extra_repr(self) -> str:
        return getattr(self.func, "__name__", repr(self.func))
