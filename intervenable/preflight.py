"""What can be checked before the first forward, and errors that surface at the call site.

A bad position, head, subspace or batch found inside a hook arrives after the
source run, under dozens of frames of torch internals. Here the same checks run
on the inputs of a call before any forward (locations against each input's
sequence length and the site's head count, subspaces against the width,
source batches against the base's), and ``subspace_partition`` against the
width when the model is built. ``at_call_site`` trims what is still raised
inside hooks so that our errors point at the user's call.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Sequence, TypeVar

import torch
from torch import nn

from .errors import ConfigError, InputError, IntervenableError, SubspaceError
from .inputs import batch_size, check_batched, is_transformers_model
from .interventions.base import Intervention, registered_interventions
from .interventions.registry import closest_type
from .interventions.basic import (
    AdditionIntervention,
    CollectIntervention,
    NoiseIntervention,
    SkipIntervention,
    SubtractionIntervention,
    VanillaIntervention,
    ZeroIntervention,
    positional_arity,
    takes_base_and_source,
)
from .sites.registry import find_architecture
from .sites.site import Site
from .units import Units, _check, is_opaque_subspaces

if TYPE_CHECKING:
    from .engine import CallPlan, Slot

F = TypeVar("F", bound=Callable[..., Any])

#: interventions whose subspaces and partition index the last dimension of the selected units
_UNIT_WIDTH_INTERVENTIONS = (
    VanillaIntervention, AdditionIntervention, SubtractionIntervention, ZeroIntervention,
    CollectIntervention, NoiseIntervention, SkipIntervention,
)
#: input keys of a text-only call: every site's position axis is then the input's sequence
_TEXT_KEYS = frozenset({
    "input_ids", "inputs_embeds", "attention_mask", "token_type_ids", "position_ids", "labels",
    "past_key_values", "cache_position", "use_cache", "output_attentions", "output_hidden_states", "return_dict",
})

#: abstract components that are [batch, positions, ...] (head views [batch, heads, positions, ...])
_SEQUENCE_COMPONENTS = frozenset(
    {"block_input", "block_output", "attention_input", "attention_output", "attention_value_output",
     "attention_weight", "query_output", "key_output", "value_output", "mlp_input", "mlp_output", "mlp_activation"}
    | {f"head_{name}_output" for name in ("query", "key", "value", "attention_value")}
)


def at_call_site(method: F) -> F:
    """Re-raise our errors from the public call, without the frames of torch's hooks under it."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except IntervenableError as exc:
            raise exc.with_traceback(None)  # the message names the site; the frames inside torch do not help

    return wrapper  # type: ignore[return-value]


def from_registry(model: nn.Module, site: Site) -> bool:
    """True for an abstract component of a registered family: its width comes from the config.

    (A raw module path's width is a guess from the module's parameters, e.g. a conv's
    channels where the last axis is spatial, so nothing is refused on it.)
    """
    arch = find_architecture(model)
    return arch is not None and site.component in arch.components


# -- construction ----------------------------------------------------------------
def intervention_class_named(name: str) -> type:
    """The registered intervention class called ``name``, with a 'did you mean' when there is none."""
    registered = registered_interventions()
    if name in registered:
        return registered[name]
    hint = closest_type(name)
    raise ConfigError(
        f"Unknown intervention type {name!r}.{hint} Give a class (e.g. pv.VanillaIntervention), an instance, "
        f"a callable f(base, source), or one of the registered names: {', '.join(sorted(registered))}."
    )


def check_callable(spec: Any) -> None:
    """Refuse a module or callable that cannot be called as ``f(base, source)`` (e.g. ``nn.Linear``)."""
    if isinstance(spec, Intervention) or takes_base_and_source(spec):
        return
    required, maximum = positional_arity(spec)  # not None: takes_base_and_source said no
    if required == 3 and maximum >= 3 and not isinstance(spec, nn.Module):
        return  # f(base, source, subspaces), as in the reference's tutorial: LambdaIntervention passes them
    if required == float("inf"):
        takes = "a required keyword-only argument"
    elif maximum < 2:
        takes = f"only {maximum:.0f} positional argument{'' if maximum == 1 else 's'}"
    else:
        takes = f"{required:.0f} required positional arguments"
    if isinstance(spec, nn.Module):
        name = type(spec).__name__
        raise ConfigError(
            f"{name} is not an intervention: its forward takes {takes}, so it cannot be called as "
            f"f(base, source). Subclass pv.Intervention (forward(self, base, source=None, subspaces=None)), "
            f"or wrap the module in a function, e.g. intervention=lambda base, source: module(base) "
            "(its parameters are then not part of the IntervenableModel)."
        )
    name = getattr(spec, "__name__", type(spec).__name__)
    raise ConfigError(
        f"The callable {name} takes {takes}, so it cannot be called as f(base, source): define it as "
        "f(base, source) (source is None when no source is given) or f(base, source, subspaces)."
    )


def unit_width(site: Site) -> Optional[int]:
    """Width of the last dimension an intervention sees at ``site`` (per head on head sites)."""
    return site.head_dim if site.has_heads else site.width


def check_partition(intervention: nn.Module, model: nn.Module, site: Site, where: str) -> None:
    """A ``subspace_partition`` must fit in the width of the units it partitions."""
    partition = getattr(intervention, "subspace_partition", None)
    width = unit_width(site)
    if not partition or width is None or not isinstance(intervention, _UNIT_WIDTH_INTERVENTIONS):
        return
    if not from_registry(model, site):
        return
    dims = [d for part in partition for d in part]
    if dims and (max(dims) >= width or min(dims) < -width):
        bad = max(dims) if max(dims) >= width else min(dims)
        raise ConfigError(
            f"subspace_partition of {where} names dimension {bad}, but the units there have width {width}: "
            f"partition dimensions 0..{width - 1} (e.g. [[0, {width // 2}], [{width // 2}, {width}]])."
        )


# -- one call ----------------------------------------------------------------------
def check_batches(model: nn.Module, base: Any, per_group: Sequence[Any]) -> int:
    """Every input has a batch dimension; each source has the base's batch or 1 row. Returns the batch."""
    check_batched(base, model, "the base")
    batch = batch_size(base)
    for g, source in enumerate(per_group):
        if source is None:
            continue
        check_batched(source, model, f"the source of group {g}")
        rows = batch_size(source)
        if rows not in (1, batch):
            raise InputError(
                f"The source of group {g} has batch size {rows} but the base has {batch}: the batches differ. "
                "Give each source the base's batch size (row i of a source patches row i of the base), or a "
                "single row to use for every base row."
            )
    return batch


def sequence_length(inputs: Any) -> Optional[int]:
    """The sequence length of a text-only input (dict of ids/embeddings or a 2-D id tensor), else None."""
    if isinstance(inputs, Mapping):
        if any(key not in _TEXT_KEYS for key in inputs):
            return None  # images, audio, decoder inputs: sites may see other lengths
        ids, embeds = inputs.get("input_ids"), inputs.get("inputs_embeds")
        if isinstance(ids, torch.Tensor) and ids.dim() == 2:
            return int(ids.shape[1])
        if isinstance(embeds, torch.Tensor) and embeds.dim() == 3:
            return int(embeds.shape[1])
        return None
    if isinstance(inputs, torch.Tensor) and inputs.dim() == 2 and not inputs.is_floating_point():
        return int(inputs.shape[1])
    return None


def _positions_follow_input(model: nn.Module, slot: "Slot") -> bool:
    """True where a site's position axis is certainly the input's sequence.

    Only abstract components of the registered transformer families that are
    ``[batch, positions, ...]`` everywhere; not the built-in MLP / GRU (2-D cells,
    where ``pos`` indexes neurons), experts and routers (tokens flattened), OPT's
    MLP (flattened, see sites/archs/opt.py), raw module paths or encoder-decoders.
    """
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    component = slot.site.component
    return (
        is_transformers_model(model)
        and not getattr(config, "is_encoder_decoder", False)
        and model_type not in ("mlp", "gru")
        and slot.unit in ("pos", "h.pos")
        and slot.representation.moe_key is None
        and component in _SEQUENCE_COMPONENTS
        and from_registry(model, slot.site)
        and not (model_type == "opt" and component.startswith("mlp_"))
    )


def _check_units(slot: "Slot", units: Optional[Units], length: Optional[int]) -> None:
    if units is None:
        return
    where = slot.where()
    heads = slot.site.n_heads
    if units.heads is not None and heads is not None:
        _check(units.heads, heads, "Head", where + f" ({heads} heads)", "Use a head index below the head count.")
    if units.positions is not None and length is not None:
        _check(units.positions, length, "Position", where + f" (sequence length {length})",
               "Use positions inside the sequence (negative values count from the end).")


def _check_subspaces(model: nn.Module, slot: "Slot", rows: Optional[List[List[int]]]) -> None:
    intervention = slot.intervention
    width = unit_width(slot.site)
    if rows is None or width is None or not isinstance(intervention, _UNIT_WIDTH_INTERVENTIONS):
        return
    if is_opaque_subspaces(rows):
        return  # the intervention's own kind of subspaces (e.g. a dict): not dimension indices
    if not from_registry(model, slot.site):
        return
    partition = getattr(intervention, "subspace_partition", None)
    for row in rows:
        for s in row:
            if partition is not None and not 0 <= s < len(partition):
                raise SubspaceError(
                    f"Subspace id {s} is outside the partition of {len(partition)} subspaces at {slot.where()}: "
                    f"use ids 0..{len(partition) - 1}."
                )
            if partition is None and not -width <= s < width:
                raise SubspaceError(
                    f"Subspace dimension {s} is outside the width {width} at {slot.where()}: subspaces index "
                    f"the last dimension of the selected units (0..{width - 1}; negative values count from the end)."
                )


def check_call(model: nn.Module, slots: Sequence["Slot"], groups: Sequence[List[int]], mode: str,
               plan: "CallPlan") -> None:
    """Everything about one forward call that can be checked before the model runs: ``model`` is the
    wrapped model, ``slots`` its interventions, ``groups`` their indices per group, ``mode`` parallel or serial."""
    per_group = plan.sources  # batches were checked when the plan was built (check_batches)
    for slot, rows in zip(slots, plan.subspaces):
        _check_subspaces(model, slot, rows)
    lengths = {id(x): sequence_length(x) for x in [plan.base, *per_group] if x is not None}

    def length(inputs: Any, slot: "Slot") -> Optional[int]:
        return lengths.get(id(inputs)) if _positions_follow_input(model, slot) else None

    has_sources = any(s is not None for s in per_group)
    if mode == "parallel" or not has_sources:  # serial without sources: every group acts on the base
        for g, members in enumerate(groups):
            for i in members:
                slot, loc = slots[i], plan.locations[i]
                _check_units(slot, loc.base, length(plan.base, slot))
                if per_group[g] is not None and slot.reads_source and slot.key not in plan.provided:
                    _check_units(slot, loc.source if loc.source is not None else loc.base, length(per_group[g], slot))
        return
    # serial: a group's base side is whichever run comes next; bound positions by the longest input
    known = list(lengths.values())
    longest = max(known) if known and None not in known else None
    serial = plan.locations
    for g, members in enumerate(groups):
        for j, i in enumerate(members):
            bound = longest if _positions_follow_input(model, slots[i]) else None
            _check_units(slots[i], serial[g][j].base, bound)
            _check_units(slots[i], serial[g][j].source, bound)
