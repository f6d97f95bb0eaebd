"""The intervention contract, its base classes, and the registry of types by name.

What an intervention is
-----------------------
An ``nn.Module`` called as ``intervention(base, source, subspaces=None, **kwargs)``:

* ``base``: the selected units of the base run, ``[batch, positions, width]``
  (``[batch, heads, positions, head_dim]`` for head units; ``[batch, width]``
  for 2-D activations);
* ``source``: the same units of the source run, a constant
  ``source_representation``, the module's own input (``uses_module_input``),
  or ``None`` for sourceless interventions;
* ``subspaces``: per-row lists of dimension indices (or partition ids when
  ``subspace_partition`` is set), or ``None``;
* ``kwargs``: ``intervention_additional_kwargs`` of the call.

It returns the new value of ``base`` (same shape, or broadcastable to it) or an
``InterventionOutput`` (new value + a latent reported in the output).

What an intervention may declare
--------------------------------
Class attributes (or, for ``needs_source`` / ``reads_source``, properties), all optional; a
plain ``nn.Module`` that declares none of them is a source-reading swap-like
intervention. The engine reads them once per slot, when the
``IntervenableModel`` is built, into a frozen ``Capabilities`` record, so
change them before wrapping:

==================== ======= ==================================================
name                 default meaning
==================== ======= ==================================================
``needs_source``     True    a call must provide a source (source run,
                             ``source_representations`` or a constant)
``reads_source``     (*)     a given source is run for it, even when not
                             required (plain callables: ``f(base, None)``
                             without sources, ``f(base, source)`` with them)
``collects``         False   the output is reported in ``collected_activations``
                             and the activation is left untouched
``flatten_units``    False   units are concatenated into the last dimension,
                             ``[batch, units * width]`` (the rotations); the
                             model then builds it with ``embed_dim = width *
                             max_number_of_units``
``uses_module_input`` False  ``source`` is the hooked module's own input at the
                             same units (skip, LoRA), or the input of the module
                             that ``input_site(model, site)`` names (a transcoder
                             writing Gemma 2's normed MLP output reads the MLP's)
``collects_latents`` False   the output is written and the ``latent`` of its
                             ``InterventionOutput`` is also reported in
                             ``collected_activations`` (SAEs)
==================== ======= ==================================================
(*) defaults to ``needs_source``.

Saving (io/native.py) rebuilds an intervention from its registered name and
``init_kwargs`` (JSON-able constructor arguments), then loads its
``state_dict()``. Optional hooks: ``config_dict()`` (extra JSON settings),
``init_tensors`` (class attribute: constructor arguments that are tensors,
saved in the safetensors file) and ``from_reference_state_dict`` (classmethod:
convert a reference-library state dict).
"""
from __future__ import annotations

import functools
import inspect
import weakref
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..config import REPRESENTATION_FIELDS
from ..errors import ShapeError
from .subspaces import subspace_mask, swap_width  # noqa: F401  subspace_mask re-exported
from .registry import (  # noqa: F401  re-exported: the registry used to live here
    get_intervention_class,
    intervention_name,
    register_intervention,
    registered_interventions,
    resolve_subclasses_of,
    saved_type_name,
)

_DERIVED_KWARGS = frozenset(REPRESENTATION_FIELDS) | {"embed_dim", "use_fast"}


@dataclass(frozen=True)
class Capabilities:
    """What one intervention declared (see the module docstring), read once when a model is built."""

    needs_source: bool = True
    collects: bool = False
    flatten_units: bool = False
    uses_module_input: bool = False
    reads_source: Optional[bool] = None  # None: same as needs_source
    collects_latents: bool = False

    def __post_init__(self) -> None:
        if self.reads_source is None:
            object.__setattr__(self, "reads_source", self.needs_source)

    @classmethod
    def of(cls, intervention: nn.Module) -> "Capabilities":
        """The declarations of ``intervention`` (defaults for a plain module that declares nothing)."""
        needs_source = bool(getattr(intervention, "needs_source", True))
        return cls(
            needs_source=needs_source,
            reads_source=bool(getattr(intervention, "reads_source", needs_source)),
            collects=bool(getattr(intervention, "collects", False)),
            flatten_units=bool(getattr(intervention, "flatten_units", False)),
            uses_module_input=bool(getattr(intervention, "uses_module_input", False)),
            collects_latents=bool(getattr(intervention, "collects_latents", False)),
        )

    @classmethod
    def of_class(cls, intervention_class: type) -> "Capabilities":
        """Class-level declarations, before an instance exists (``needs_source`` may be a property)."""
        declared = getattr(intervention_class, "needs_source", True)
        reads = getattr(intervention_class, "reads_source", declared)
        return cls(
            needs_source=declared if isinstance(declared, bool) else True,
            reads_source=reads if isinstance(reads, bool) else None,
            collects=bool(getattr(intervention_class, "collects", False)),
            flatten_units=bool(getattr(intervention_class, "flatten_units", False)),
            uses_module_input=bool(getattr(intervention_class, "uses_module_input", False)),
            collects_latents=bool(getattr(intervention_class, "collects_latents", False)),
        )


@dataclass
class InterventionOutput:
    """What an intervention returns when it also exposes a latent (e.g. SAE features)."""

    output: Any = None
    latent: Any = None


def expand_partition(partition: Optional[Sequence[Any]]) -> Optional[List[List[int]]]:
    """``[[0, 4], [4, 8]]`` (ranges) or ``[[0, 2, 5], ...]`` (indices) -> index lists."""
    if partition is None:
        return None
    out: List[List[int]] = []
    for part in partition:
        part = list(part)
        if len(part) == 2 and all(isinstance(p, int) for p in part) and part[1] > part[0] + 1:
            out.append(list(range(part[0], part[1])))
        elif len(part) == 2 and all(isinstance(p, int) for p in part) and part[1] == part[0] + 1:
            out.append([part[0]])
        else:
            out.append([int(p) for p in part])
    return out


#: per instance under construction, the (args, kwargs) of its outermost constructor call
_CONSTRUCTOR_CALLS: "weakref.WeakKeyDictionary[nn.Module, Tuple[tuple, dict]]" = weakref.WeakKeyDictionary()


def outermost_kwargs(module: nn.Module, fallback: Dict[str, Any]) -> Dict[str, Any]:
    """The keyword arguments of ``module``'s outermost constructor call (positional ones named by
    its signature); ``fallback`` when the call was not recorded."""
    try:
        call = _CONSTRUCTOR_CALLS.pop(module, None)
    except TypeError:
        call = None
    if call is None:
        return dict(fallback)
    args, kwargs = call
    if not args:
        return dict(kwargs)
    try:
        bound = inspect.signature(type(module).__init__).bind(module, *args, **kwargs)
    except (TypeError, ValueError):
        return dict(kwargs)
    out: Dict[str, Any] = {}
    for name, param in list(bound.signature.parameters.items())[1:]:
        if name not in bound.arguments:
            continue
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            out.update(bound.arguments[name])
        elif param.kind is not inspect.Parameter.VAR_POSITIONAL:
            out[name] = bound.arguments[name]
    return out


def _recording_attributes(init: Any) -> Any:
    """``init`` that, when it is the outermost constructor call, records the instance attributes it set
    (``constructed_attributes``: saving tells apart what a rebuild recreates from what was set later)."""

    @functools.wraps(init)
    def wrapped(self: nn.Module, *args: Any, **kwargs: Any) -> None:
        depth = self.__dict__.get("_init_depth", 0)
        self.__dict__["_init_depth"] = depth + 1
        try:
            init(self, *args, **kwargs)
        finally:
            self.__dict__["_init_depth"] = depth
        if depth == 0:
            self.__dict__["_constructed_attributes"] = frozenset(vars(self))

    wrapped._records_attributes = True  # type: ignore[attr-defined]
    return wrapped


def constructed_attributes(module: nn.Module) -> Optional[frozenset]:
    """Names of the instance attributes the outermost constructor set (None when not recorded)."""
    return vars(module).get("_constructed_attributes")


class Intervention(nn.Module):
    """Base of every intervention. Accepts the reference's keyword arguments.

    ``embed_dim``: width of what the intervention sees; ``source_representation``:
    a constant source (then no source run is needed); ``subspace_partition``:
    groups of dimensions that ``subspaces`` ids refer to.
    """

    #: present units concatenated into the last dimension (rotations)
    flatten_units: bool = False
    #: True for interventions that read the module's own input as source (skip)
    uses_module_input: bool = False
    #: True for interventions whose output is collected, not written back
    collects: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None and not getattr(init, "_records_attributes", False):
            cls.__init__ = _recording_attributes(init)

    def __new__(cls, *args: Any, **kwargs: Any) -> "Intervention":
        self = super().__new__(cls)
        try:
            _CONSTRUCTOR_CALLS[self] = (args, kwargs)  # what the caller passed to the outermost constructor
        except TypeError:  # a subclass made itself unhashable: its base-level arguments are used
            pass
        return self

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        # Constructor arguments, kept so that a saved intervention is rebuilt with the same
        # settings (io keeps the JSON-able ones; tensors are saved as tensors). They are what the
        # caller passed to the outermost constructor, not what a subclass passes on to this base
        # (pyreft's classes add keep_last_dim=True, which a rebuild must not pass twice).
        # ``init_kwargs`` leaves out the representation's fields and the width, which the engine
        # derives from the model when it builds the class itself.
        self.__dict__["_constructor_kwargs"] = outermost_kwargs(self, kwargs)
        self.init_kwargs = {k: v for k, v in self._constructor_kwargs.items() if k not in _DERIVED_KWARGS}
        self.trainable = False
        self.is_source_constant = False
        self.keep_last_dim = bool(kwargs.get("keep_last_dim", False))
        self.use_fast = bool(kwargs.get("use_fast", False))
        self.subspace_partition = expand_partition(kwargs.get("subspace_partition"))
        embed_dim = kwargs.get("embed_dim")
        self.embed_dim: Optional[int] = int(embed_dim) if embed_dim is not None else None
        # As in the reference, a swap touches the first ``interchange_dim`` dims, ``embed_dim`` by
        # default; inside IntervenableModel only a different value narrows it (see subspaces.py).
        self.interchange_dim: Optional[int] = self.embed_dim
        self.low_rank_dimension = kwargs.get("low_rank_dimension")
        source = kwargs.get("source_representation")
        if source is not None:
            self.set_source_representation(source)
        else:
            self.source_representation = None
            if kwargs.get("hidden_source_representation") is not None:
                self.is_source_constant = True

    def set_source_representation(self, source_representation: torch.Tensor) -> None:
        """Use a constant source; no source run is needed afterwards."""
        if not isinstance(source_representation, torch.Tensor):
            source_representation = torch.as_tensor(source_representation)
        self.is_source_constant = True
        if "source_representation" not in self._buffers and hasattr(self, "source_representation"):
            delattr(self, "source_representation")  # a plain None attribute: make room for the buffer
        self.register_buffer("source_representation", source_representation)

    def set_interchange_dim(self, interchange_dim: Any) -> None:
        """Swap only the first ``interchange_dim`` dimensions (when no ``subspaces`` are given)."""
        if isinstance(interchange_dim, torch.Tensor):
            interchange_dim = interchange_dim.item()
        self.interchange_dim = int(interchange_dim)

    def _swap(self, base: torch.Tensor, source: torch.Tensor, op: str, subspaces: Any) -> torch.Tensor:
        """``swap`` with this intervention's partition, ``use_fast``, ``interchange_dim`` and ``embed_dim``."""
        return swap(base, source, op, subspaces, self.subspace_partition, self.interchange_dim,
                    use_fast=self.use_fast, embed_dim=self.embed_dim)

    @property
    def needs_source(self) -> bool:
        """True when a forward needs source activations (or source_representations)."""
        return not self.is_source_constant and not self.uses_module_input

    def _source(self, source: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        return self.source_representation if self.source_representation is not None else source

    def check_site(self, model: nn.Module, site: Any) -> None:
        """Called once when an ``IntervenableModel`` places this intervention at ``site`` of ``model``:
        raise ``ConfigError`` naming the fix when it cannot act there (default: any site fits)."""

    def input_site(self, model: nn.Module, site: Any) -> Optional[Any]:
        """Called once at placement for a ``uses_module_input`` intervention: the ``Site`` (hook "input")
        whose input it reads when that is not the hooked module's own (default None: its own)."""
        return None

    def forward(self, base: torch.Tensor, source: Optional[torch.Tensor] = None, subspaces: Any = None, **kwargs: Any):  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, index: int) -> "Intervention":
        # Old reference tutorials index ``interventions[key][0]`` (a (module, hook) pair).
        if index == 0:
            return self
        raise IndexError("an intervention is not a sequence; interventions[key] is the intervention itself")


Intervention.__init__ = _recording_attributes(Intervention.__init__)  # type: ignore[method-assign]
resolve_subclasses_of(Intervention)  # third-party interventions are saved by module-qualified name


class TrainableIntervention(Intervention):
    """An intervention with learned parameters; needs a source unless given a constant one."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.trainable = True

    def tie_weight(self, linked_intervention: "Intervention") -> None:
        pass


class ConstantSourceIntervention(Intervention):
    """An intervention that needs no source run (constant or no source)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.is_source_constant = True


class SourcelessIntervention(ConstantSourceIntervention):
    """An intervention that never reads a source."""


class LocalistRepresentationIntervention(nn.Module):
    """Marker: works unit by unit (kept for reference compatibility)."""

    is_repr_distributed = False


class DistributedRepresentationIntervention(nn.Module):
    """Marker: works on a learned basis (kept for reference compatibility)."""

    is_repr_distributed = True


class BasisAgnosticIntervention(Intervention):
    """Marker: changes its basis in an uncontrolled way (kept for reference compatibility)."""

    basis_agnostic = True


class SharedWeightsTrainableIntervention(TrainableIntervention):
    """Marker: weights shared across sites."""

    shared_weights = True


# -- subspace arithmetic shared by the basic interventions ---------------------
def broadcast_source(source: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """``source`` broadcast to ``base``'s shape, with a clear error when it cannot be."""
    source = source.to(device=base.device, dtype=base.dtype)
    if source.shape == base.shape:
        return source
    try:
        return torch.broadcast_to(source, base.shape)
    except RuntimeError as exc:
        raise ShapeError(
            f"Source with shape {tuple(source.shape)} cannot be broadcast to the base units "
            f"{tuple(base.shape)}: select the same number of units on both sides and give "
            "source representations of the component's width."
        ) from exc


def swap(
    base: torch.Tensor,
    source: torch.Tensor,
    op: str,
    subspaces: Any = None,
    partition: Optional[List[List[int]]] = None,
    interchange_dim: Optional[int] = None,
    use_fast: bool = False,
    embed_dim: Optional[int] = None,
) -> torch.Tensor:
    """Out-of-place ``base <- source`` (op ``"interchange"``), ``base + source`` or ``base - source``,
    restricted to ``subspaces`` or to the first ``interchange_dim`` dimensions (see subspaces.py)."""
    source = broadcast_source(source, base)
    if op == "interchange":
        new = source
    elif op == "add":
        new = base + source
    elif op == "subtract":
        new = base - source
    else:  # pragma: no cover - internal
        raise ValueError(op)
    if subspaces is not None:
        return torch.where(subspace_mask(subspaces, partition, base, use_fast), new, base)
    width = base.shape[-1]
    interchange_dim = swap_width(interchange_dim, embed_dim)
    if interchange_dim is None or interchange_dim >= width:
        return new
    return torch.cat([new[..., :interchange_dim], base[..., interchange_dim:]], dim=-1)
