"""Hook callbacks of one intervened call: getters read source units, setters write base units.

``Slot`` is one configured intervention (key, site, unit, intervention module).
``CallState`` holds everything that lives for one forward call (gathered
source activations, collected values, latents) so that nothing leaks between
calls. ``getter`` and ``setter`` build the hook functions that ``HookSet``
registers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from .config import RepresentationConfig
from .errors import InputError, ShapeError
from .interventions.base import Capabilities, InterventionOutput
from .interventions.subspaces import engine_call
from .sites.site import Site, extract, replace
from .recurrent import apply_step, store_step
from .units import Units, gather, resolve_units, scatter

if TYPE_CHECKING:
    from .generation import GenerationPlan


@dataclass
class Slot:
    """One configured intervention: where (site, unit) and what (intervention)."""

    key: str
    index: int
    site: Site
    unit: str
    intervention: nn.Module
    representation: RepresentationConfig
    caps: Capabilities = field(default_factory=Capabilities)
    as_adaptor: bool = False  # pass the module's inputs as ``args=`` / ``kwargs=`` (the reference's as_adaptor)
    #: where a ``uses_module_input`` intervention reads its input when not the hooked module's own
    #: (``Intervention.input_site``, asked once at placement); kept per call by ``input_keeper``
    input_site: Optional[Site] = None

    @property
    def head_view(self) -> bool:
        return self.site.has_heads

    @property
    def is_collect(self) -> bool:
        return self.caps.collects

    @property
    def needs_source(self) -> bool:
        return self.caps.needs_source

    @property
    def reads_source(self) -> bool:
        """True when a given source is run for this slot (callables read it without needing it)."""
        return self.caps.reads_source

    def where(self) -> str:
        return f"{self.key} ({self.site.describe()})"

    def is_step(self, full: torch.Tensor) -> bool:
        """Unit ``t`` on a per-step (2-D) activation of an unrolled recurrent cell."""
        return self.unit == "t" and full.dim() == 2


@dataclass(frozen=True)
class CallPlan:
    """What one intervened call was asked to do, built once before any forward.

    ``sources`` has one entry per group (``None``: no source for that group);
    ``locations`` are ``unit_locations`` normalised once for the model's mode
    (parallel, or serial without sources: one ``Locations`` per intervention;
    serial: ``{group: [Locations per member]}``); ``provided`` are
    ``source_representations`` by key; ``subspaces`` has one entry per
    intervention; ``generation`` is set for ``generate`` calls.
    """

    base: Any
    batch: int
    sources: List[Any]
    unit_locations: Any
    locations: Any
    provided: Dict[str, torch.Tensor]
    subspaces: List[Any]
    extra: Optional[Dict[str, Any]] = None
    generation: Optional["GenerationPlan"] = None


@dataclass
class CallState:
    """State of one intervened forward call."""

    activations: Dict[str, torch.Tensor] = field(default_factory=dict)
    collected: Dict[str, Any] = field(default_factory=dict)
    latents: Dict[str, Any] = field(default_factory=dict)
    per_call: bool = False  # generation: collect a list with one entry per forward call
    # unit "t" on unrolled recurrent cells (see recurrent.py)
    step_counters: Dict[str, int] = field(default_factory=dict)
    step_buffers: Dict[str, Any] = field(default_factory=dict)  # key -> (values, filled mask)
    step_values: Dict[str, Any] = field(default_factory=dict)
    module_inputs: Dict[str, torch.Tensor] = field(default_factory=dict)  # slot key -> its input_site's input


# -- reading and writing the hooked value --------------------------------------
def _input_location(site: Site, args: tuple, kwargs: dict) -> Tuple[str, Any]:
    """Where the hooked input tensor lives: ("arg", i) or ("kw", name)."""
    if len(args) > site.output_index:
        return "arg", site.output_index
    for name in ("hidden_states", "input", "x", "inputs_embeds", "input_ids"):
        if isinstance(kwargs.get(name), torch.Tensor):
            return "kw", name
    for name, value in kwargs.items():
        if isinstance(value, torch.Tensor):
            return "kw", name
    raise ShapeError(f"Site {site.describe()}: the module was called without a tensor input to intervene on.")


def read_input(site: Site, args: tuple, kwargs: dict) -> torch.Tensor:
    kind, where = _input_location(site, args, kwargs)
    value = args[where] if kind == "arg" else kwargs[where]
    if not isinstance(value, torch.Tensor):
        raise ShapeError(f"Site {site.describe()}: the module's input is {type(value).__name__}, not a tensor.")
    return value


def write_input(site: Site, args: tuple, kwargs: dict, new: torch.Tensor) -> Tuple[tuple, dict]:
    kind, where = _input_location(site, args, kwargs)
    if kind == "arg":
        args = tuple(new if i == where else a for i, a in enumerate(args))
    else:
        kwargs = dict(kwargs)
        kwargs[where] = new
    return args, kwargs


def _adaptor_input(slot: Slot, args: tuple, kwargs: dict, units: Units, base_units: torch.Tensor) -> torch.Tensor:
    """The module's first input at the intervened positions, as the reference's ``as_adaptor`` passes it."""
    if slot.site.hook == "input":
        return base_units
    first = next((a for a in args if isinstance(a, torch.Tensor)), None)
    if first is None:
        first = next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)
    if first is None:
        raise ShapeError(f"Site {slot.site.describe()}: as_adaptor needs a tensor input to the module; it has none.")
    positions = Units(positions=units.positions)
    if positions.is_all or first.dim() < 2:
        return first
    return gather(first, resolve_units(positions, first, False, slot.where()), False)


def rewrite_hook(site: Site, apply: Callable[[torch.Tensor], torch.Tensor]) -> Callable[..., Any]:
    """A hook (pre-hook for input sites) that replaces ``site``'s tensor by ``apply(tensor)``."""
    if site.hook == "input":
        def pre(module, args, kwargs):
            return write_input(site, args, kwargs, apply(read_input(site, args, kwargs)))
        return pre

    def post(module, args, kwargs, output):
        return replace(site, output, apply(extract(site, output)))
    return post


def _module_input_units(slot: Slot, args: tuple, kwargs: dict, units: Units, state: CallState) -> torch.Tensor:
    """The module's own input at the same units (skip interventions), or its ``input_site``'s input of this call."""
    site = slot.input_site or slot.site
    if slot.input_site is None:
        full = read_input(site, args, kwargs)
    elif slot.key in state.module_inputs:
        full = state.module_inputs[slot.key]
    else:
        raise ShapeError(f"{slot.where()} reads the input of {site.describe()}, which did not run before it in "
                         "this forward.")
    view = site.to_view(full)
    return gather(view, resolve_units(units, view, site.has_heads, slot.where()), site.has_heads)


def add_setter(hooks: Any, slot: Slot, hook: Callable[..., Any], state: CallState) -> None:
    """Register ``slot``'s setter first on its site (and, with an ``input_site``, the keeper of that input)."""
    if slot.input_site is not None:
        hooks.add(slot.input_site.module, "input", input_keeper(slot, state))
    hooks.add(slot.site.module, slot.site.hook, hook, first=True)


def input_keeper(slot: Slot, state: CallState) -> Callable[..., None]:
    """A pre-hook on ``slot.input_site``'s module keeping its input of the current call for the slot's setter."""
    site = slot.input_site

    def pre_hook(module, args, kwargs):
        state.module_inputs[slot.key] = read_input(site, args, kwargs)
        return None
    return pre_hook


# -- flattening units for interventions that want one vector per row -----------
def _flatten(t: torch.Tensor, head_view: bool) -> torch.Tensor:
    if t.dim() < 3:
        return t
    if head_view and t.dim() == 4:  # [b, h, s, d] -> [b, s, h*d]
        b, h, s, d = t.shape
        return t.permute(0, 2, 1, 3).reshape(b, s, h * d)
    return t.reshape(t.shape[0], -1)


def _unflatten(t: torch.Tensor, like: torch.Tensor, head_view: bool) -> torch.Tensor:
    if like.dim() < 3:
        return t
    if head_view and like.dim() == 4:
        b, h, s, d = like.shape
        return t.reshape(b, s, h, d).permute(0, 2, 1, 3)
    return t.reshape(like.shape)


# -- hook builders -------------------------------------------------------------
def getter(slot: Slot, units: Units, state: CallState, store_key: Optional[str] = None,
           rows: Optional[int] = None) -> Callable[..., Any]:
    """A hook that stores the selected units of this site in ``state.activations``.

    ``rows``: the base's batch size; a 1-row source is broadcast to it (a free ``expand``),
    so each base row reads its own units from the one source row.
    """
    store_key = store_key or slot.key

    def read(full: torch.Tensor) -> None:
        if slot.is_step(full):
            store_step(state, store_key, units.positions, full)
            return
        view = slot.site.to_view(full)
        if rows is not None and rows > 1 and view.shape[0] == 1:
            view = view.expand(rows, *view.shape[1:])
        resolved = resolve_units(units, view, slot.head_view, slot.where())
        state.activations[store_key] = gather(view, resolved, slot.head_view)

    if slot.site.hook == "input":
        def pre_hook(module, args, kwargs):
            read(read_input(slot.site, args, kwargs))
            return None
        return pre_hook

    def hook(module, args, kwargs, output):
        read(extract(slot.site, output))
        return None

    return hook


def apply_intervention(
    slot: Slot,
    base_units: torch.Tensor,
    source: Optional[torch.Tensor],
    subspaces: Any,
    extra_kwargs: Optional[Dict[str, Any]],
    state: CallState,
    per_call: Optional[bool] = None,
) -> Optional[torch.Tensor]:
    """Run the intervention on gathered units; None means "leave the activation as is"."""
    intervention = slot.intervention
    flatten = slot.caps.flatten_units
    base_in = _flatten(base_units, slot.head_view) if flatten else base_units
    src_in = source
    if flatten and source is not None and source.shape == base_units.shape:
        src_in = _flatten(source, slot.head_view)
    kwargs = dict(extra_kwargs or {})
    with engine_call():  # subspaces rows are batch rows; the engine sets the width (subspaces.py)
        result = intervention(base_in, src_in, subspaces, **kwargs)
    per_call = state.per_call if per_call is None else per_call
    if isinstance(result, InterventionOutput) or (hasattr(result, "output") and hasattr(result, "latent")):
        if per_call:  # generation: one latent per forward call, as collected activations
            state.latents.setdefault(slot.key, []).append(result.latent)
        else:
            state.latents[slot.key] = result.latent
        if slot.caps.collects_latents:  # written back, and its latent reported as a collected activation
            _collect(state, slot.key, result.latent, per_call)
        result = result.output
    if not isinstance(result, torch.Tensor):
        raise ShapeError(
            f"Intervention at {slot.where()} returned {type(result).__name__}; it must return a tensor "
            f"shaped like its base input {tuple(base_in.shape)}."
        )
    if slot.is_collect:
        _collect(state, slot.key, result, per_call)
        return None
    if flatten:
        if result.shape != base_in.shape:
            raise ShapeError(
                f"Intervention at {slot.where()} returned shape {tuple(result.shape)} for a base of "
                f"shape {tuple(base_in.shape)}."
            )
        result = _unflatten(result, base_units, slot.head_view)
    if result.shape != base_units.shape:
        try:
            result = torch.broadcast_to(result, base_units.shape)
        except RuntimeError:
            raise ShapeError(
                f"Intervention at {slot.where()} returned shape {tuple(result.shape)} but the selected "
                f"base units have shape {tuple(base_units.shape)}."
            ) from None
    return result


def _collect(state: CallState, key: str, value: Any, per_call: bool) -> None:
    """Report ``value`` for ``key``: one entry per forward call in generation, else the latest."""
    if per_call:
        state.collected.setdefault(key, []).append(value)
    else:
        state.collected[key] = value


def setter(
    slot: Slot,
    units: Units,
    state: CallState,
    source: Optional[torch.Tensor],
    subspaces: Any,
    extra_kwargs: Optional[Dict[str, Any]],
    plan: Optional["GenerationPlan"] = None,
) -> Callable[..., Any]:
    """A hook that replaces the selected units of this site by the intervention's output.

    With a generation ``plan``, the units of each forward call come from the plan.
    """

    def write(full: torch.Tensor, args: tuple, kwargs: dict) -> Optional[torch.Tensor]:
        if slot.is_step(full):
            run = lambda b, s, sub: apply_intervention(slot, b, s, sub, extra_kwargs, state, per_call=True)  # noqa: E731
            return apply_step(slot, units.positions, state, source, subspaces, full, run)
        call_units, src = units, source
        if plan is not None:  # generation: this call's window of absolute positions
            call_units = plan.units_for_call(units, full.shape[0])
            if call_units is None:
                return None
            src = plan.source_for_call(source, call_units, full.shape[0], every_position=units.positions is None)
        view = slot.site.to_view(full)
        resolved = resolve_units(call_units, view, slot.head_view, slot.where())
        base_units = gather(view, resolved, slot.head_view)
        if slot.caps.uses_module_input:
            # the module's own input (skip, LoRA): its width may differ from the output's
            src = _module_input_units(slot, args, kwargs, call_units, state).to(base_units.device)
        elif isinstance(src, torch.Tensor):
            src = _match_source(slot, src, base_units)
        call_kwargs = extra_kwargs
        if slot.as_adaptor:
            call_kwargs = dict(extra_kwargs or {}, args=_adaptor_input(slot, args, kwargs, call_units, base_units),
                               kwargs=kwargs)
        new_units = apply_intervention(slot, base_units, src, subspaces, call_kwargs, state)
        if new_units is None:
            return None
        return slot.site.from_view(full, scatter(view, resolved, slot.head_view, new_units))

    if slot.site.hook == "input":
        def pre_hook(module, args, kwargs):
            new = write(read_input(slot.site, args, kwargs), args, kwargs)
            if new is None:
                return None
            return write_input(slot.site, args, kwargs, new)
        return pre_hook

    def hook(module, args, kwargs, output):
        new = write(extract(slot.site, output), args, kwargs)
        if new is None:
            return None
        return replace(slot.site, output, new)

    return hook


def _match_source(slot: Slot, source: torch.Tensor, base_units: torch.Tensor) -> torch.Tensor:
    """Move the source to the base's device/dtype and check that the two fit."""
    source = source.to(device=base_units.device, dtype=base_units.dtype)
    if source.dim() == base_units.dim() and source.shape[0] != base_units.shape[0] and source.shape[0] != 1:
        raise InputError(
            f"At {slot.where()}: the source has batch size {source.shape[0]} but the base has "
            f"{base_units.shape[0]}. Sources and base must have the same batch size."
        )
    if source.dim() == base_units.dim() and source.shape[1:] != base_units.shape[1:]:
        try:
            torch.broadcast_shapes(source.shape, base_units.shape)
        except RuntimeError:
            raise ShapeError(
                f"At {slot.where()}: source units have shape {tuple(source.shape)} but base units have "
                f"{tuple(base_units.shape)}. Select the same number of units (positions/heads) on both "
                "sides of unit_locations."
            ) from None
    return source
