"""Unit locations: every accepted form, normalised once into one canonical index.

Canonical form, per intervention and side (source or base): ``Units`` with
``positions`` and (for head sites) ``heads``, each a ``LongTensor[batch, n]``
or ``None`` for "all". Negative positions count from the end, as in Python.

Accepted forms (the reference library's, plus a few conveniences):

* ``None``: every position, for every intervention.
* ``{"sources->base": L}`` where ``L`` is
  - an ``int`` ``p``: position (or head, for unit ``h``) ``p`` everywhere;
  - a pair of ints ``(s, b)``, or ``(None, b)`` / ``(s, None)``;
  - a flat list of ints ``[p0, p1, ...]`` (three or more, or a 1-element
    list): those units for every intervention and row. A 2-element list of
    ints is read as a ``(source, base)`` pair, as in the reference;
  - a pair ``(source_locations, base_locations)`` of nested lists
    ``[intervention][batch][units]``; for unit ``h.pos`` each intervention
    entry is ``[heads_per_row, positions_per_row]``
    (``[intervention][heads_then_positions][batch][units]``).
* ``{"base": L}``: base-only locations (no source run). A pair ``(s, b)`` is
  read as in the reference, base unit ``b`` (with a warning: ``[[[s, b]]]``
  names both units).
* Serial mode: keys ``"source_0->source_1"``, ..., ``"source_{n-1}->base"``.
* ``"last"`` (parallel mode, unit ``pos``): each row's last real token (its attention mask's last 1),
  alone or as either side of a pair: ``{"base": "last"}``, ``{"sources->base": "last"}``,
  ``{"sources->base": (3, "last")}``; ``expand_last`` turns it into per-row positions.
"""
from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .errors import InputError, LocationError, warn_user

_Index = Optional[torch.Tensor]


@dataclass(frozen=True)
class Units:
    """Which units one intervention touches on one side, for the whole batch."""

    positions: _Index = None  # LongTensor[batch, n] or None (all)
    heads: _Index = None  # LongTensor[batch, n] or None (all); head sites only

    @property
    def is_all(self) -> bool:
        return self.positions is None and self.heads is None


ALL = Units()


@dataclass(frozen=True)
class Locations:
    """Source and base units of one intervention. ``source`` is None when no source is read."""

    source: Optional[Units]
    base: Units


# -- parsing -------------------------------------------------------------------
def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) or (
        isinstance(x, torch.Tensor) and x.dim() == 0 and not x.is_floating_point()
    )


def _depth(x: Any) -> int:
    if isinstance(x, torch.Tensor):
        return x.dim()
    if isinstance(x, (list, tuple)):
        return 1 + (_depth(x[0]) if len(x) else 0)
    return 0


def _rows(value: Any, batch: int, what: str) -> torch.Tensor:
    """``[batch][units]`` (or one row to broadcast) -> LongTensor[batch, n]."""
    if isinstance(value, torch.Tensor):
        t = value.long()
    else:
        try:
            t = torch.as_tensor(value, dtype=torch.long)
        except (ValueError, TypeError) as exc:
            raise LocationError(
                f"{what}: rows select different numbers of units ({value!r}). Every row of a batch "
                "must select the same number of units: split the batch, or repeat a unit to pad."
            ) from exc
    if t.dim() == 1:  # one row: broadcast over the batch
        t = t.unsqueeze(0)
    if t.dim() != 2:
        raise LocationError(f"{what}: expected [batch][units], got a nested list of depth {t.dim()}.")
    if t.shape[0] == 1 and batch > 1:
        t = t.expand(batch, -1)
    if t.shape[0] != batch:
        raise LocationError(
            f"{what}: locations are given for {t.shape[0]} rows but the batch has {batch}. "
            "Give one list of units per row, or one row to use for all."
        )
    if t.shape[1] == 0:
        raise LocationError(f"{what}: an empty list of units; give at least one unit or None for all.")
    return t.contiguous()


def _entry(value: Any, unit: str, batch: int, what: str) -> Units:
    """One intervention's locations on one side, in its unit."""
    if value is None:
        return ALL
    if unit == "h.pos":
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise LocationError(
                f"{what}: unit 'h.pos' takes [heads_per_row, positions_per_row], e.g. "
                "[[[3]], [[5]]] for head 3 at position 5; got {value!r}."
            )
        heads, positions = value
        return Units(
            heads=None if heads is None else _rows(heads, batch, what + " (heads)"),
            positions=None if positions is None else _rows(positions, batch, what + " (positions)"),
        )
    rows = _rows(value, batch, what)
    return Units(heads=rows) if unit == "h" else Units(positions=rows)


def _per_intervention(value: Any, units: Sequence[str], batch: int, side: str) -> List[Units]:
    n = len(units)
    if value is None:
        return [ALL] * n
    if _is_int(value):
        return [_scalar(int(value), u, batch, side) for u in units]
    if not isinstance(value, (list, tuple, torch.Tensor)):
        raise LocationError(f"{side} locations must be None, an int or nested lists; got {type(value).__name__}.")
    if len(value) == 1 and n > 1:
        value = list(value) * n
    if len(value) != n:
        raise LocationError(
            f"{side} locations list {len(value)} entries but there are {n} interventions: give one "
            "entry per intervention ([intervention][batch][units]), or a single int or flat list for all."
        )
    return [_entry(v, u, batch, f"{side} locations of intervention {i}") for i, (v, u) in enumerate(zip(value, units))]


def _scalar(p: int, unit: str, batch: int, side: str) -> Units:
    if unit == "h.pos":
        raise LocationError(
            f"{side}: a single int is ambiguous for unit 'h.pos'; give [[[head]], [[position]]] per intervention."
        )
    rows = torch.full((batch, 1), p, dtype=torch.long)
    return Units(heads=rows) if unit == "h" else Units(positions=rows)


def _flat(values: Sequence[int], units: Sequence[str], batch: int, side: str) -> List[Units]:
    out = []
    for u in units:
        if u == "h.pos":
            raise LocationError(f"{side}: a flat list is ambiguous for unit 'h.pos'; use the nested form.")
        rows = torch.as_tensor(list(values), dtype=torch.long).unsqueeze(0).expand(batch, -1)
        out.append(Units(heads=rows) if u == "h" else Units(positions=rows))
    return out


def _is_int_pair(value: Any) -> bool:
    """``(s, b)``, ``(None, b)`` or ``(s, None)``: the reference's pair form."""
    return isinstance(value, (list, tuple)) and len(value) == 2 and all(v is None or _is_int(v) for v in value) and any(
        v is not None for v in value
    )


def _entry_depth(units: Sequence[str]) -> int:
    """Nesting depth of one intervention's locations: [batch][units], or [2][batch][units] for h.pos."""
    return 3 if any(u == "h.pos" for u in units) else 2


def _pair_value(value: Any, units: Sequence[str], batch: int, base_only: bool) -> Tuple[Optional[List[Units]], List[Units]]:
    """Parse one dict value into (source units per intervention or None, base units)."""
    if base_only:
        if _is_int_pair(value):
            # The reference reads a 2-element list as a (source, base) pair even here: base position value[1].
            if value[0] is not None and value[1] is not None:
                warn_user(
                    f"unit_locations={{'base': {list(value)!r}}} is read as a (source, base) pair, as in the "
                    f"reference: only base unit {value[1]} is intervened on. For units {value[0]} and {value[1]} "
                    f"write {{'base': [[[{value[0]}, {value[1]}]]]}}."
                )
            return None, _per_intervention(None if value[1] is None else int(value[1]), units, batch, "base")
        if isinstance(value, (list, tuple)) and value and all(_is_int(v) for v in value):
            return None, _flat(value, units, batch, "base")
        return None, _per_intervention(value, units, batch, "base")
    if _is_int(value):
        side = _per_intervention(int(value), units, batch, "sources->base")
        return side, side
    if _is_int_pair(value):
        src = None if value[0] is None else _per_intervention(int(value[0]), units, batch, "source")
        base = _per_intervention(None if value[1] is None else int(value[1]), units, batch, "base")
        return src, base
    if isinstance(value, (list, tuple)) and value and all(_is_int(v) for v in value):
        side = _flat(value, units, batch, "sources->base")
        return side, side
    if isinstance(value, (list, tuple, torch.Tensor)) and _depth(value) == _entry_depth(units) + 1:
        side = _per_intervention(value, units, batch, "sources->base")  # one nested list for both sides
        return side, side
    if isinstance(value, (list, tuple)) and len(value) == 2:
        src = None if value[0] is None else _per_intervention(value[0], units, batch, "source")
        return src, _per_intervention(value[1], units, batch, "base")
    raise LocationError(
        "Could not read unit_locations: use {'sources->base': (source_locations, base_locations)} with "
        "[intervention][batch][units] lists, an int, a (source, base) pair, or {'base': ...}; got "
        f"{value!r}."
    )


LAST = "last"


def _is_last(value: Any) -> bool:
    return isinstance(value, str) and value == LAST


def _pair_with_last(value: Any) -> bool:
    """A (source, base) pair with ``"last"`` on either side."""
    return isinstance(value, (list, tuple)) and len(value) == 2 and any(map(_is_last, value))


def uses_last(unit_locations: Any) -> bool:
    """True when ``unit_locations`` names the ``"last"`` real token anywhere ``expand_last`` reads it."""
    if not isinstance(unit_locations, Mapping):
        return _is_last(unit_locations)
    for value in unit_locations.values():
        if _is_last(value) or _pair_with_last(value):
            return True
    return False


def expand_last(unit_locations: Any, units: Sequence[str], has_sources: bool, base_last: torch.Tensor,
                source_last: Sequence[Optional[torch.Tensor]]) -> Any:
    """``unit_locations`` with ``"last"`` replaced by nested ``[intervention][batch][1]`` positions.

    ``base_last`` holds the last real position of each base row; ``source_last[i]`` those of intervention
    ``i``'s source (None without one). Only parallel-mode forms (``"sources->base"`` / ``"base"``) and
    position units take ``"last"``.
    """
    if not isinstance(unit_locations, Mapping):
        unit_locations = {"sources->base" if has_sources else "base": unit_locations}
    bad = [u for u in units if u != "pos"]
    if bad:
        raise LocationError(f"The location 'last' is a position, but an intervention's unit is {bad[0]!r}: use "
                            "explicit positions for head units (unit 'h.pos': [[heads], [positions]]).")
    unknown = [k for k in unit_locations if k not in ("sources->base", "base")]
    if unknown:
        raise LocationError(f"The location 'last' is read in parallel mode ('sources->base' or 'base'), not in "
                            f"{unknown[0]!r}: give the serial keys explicit positions.")

    def side(value: Any, rows: Sequence[Optional[torch.Tensor]]) -> Any:
        """One side as [intervention][batch][units] (one row broadcasts over the batch)."""
        if _is_last(value):
            return [[[int(p)] for p in (base_last if r is None else r).tolist()] for r in rows]
        if _is_int(value):
            return [[[int(value)]] for _ in rows]
        if value is None:
            return None
        raise LocationError(f"'last' pairs with an int or None on the other side; got {value!r}.")

    base_rows = [base_last] * len(units)
    out = {}
    for key, value in unit_locations.items():
        if key == "base":
            out[key] = side(value, base_rows) if _is_last(value) else value
        elif _is_last(value):
            out[key] = (side(value, source_last), side(value, base_rows))
        elif _pair_with_last(value):
            out[key] = (side(value[0], source_last), side(value[1], base_rows))
        else:
            out[key] = value
    return out


def normalise_parallel(unit_locations: Any, units: Sequence[str], batch: int, has_sources: bool) -> List[Locations]:
    """Canonical locations for parallel mode, one per intervention (in key order)."""
    if unit_locations is None:
        return [Locations(ALL if has_sources else None, ALL) for _ in units]
    if not isinstance(unit_locations, dict):
        unit_locations = {"sources->base" if has_sources else "base": unit_locations}
    unknown = [k for k in unit_locations if k not in ("sources->base", "base")]
    if unknown:
        raise LocationError(
            f"Unknown unit_locations key {unknown[0]!r}: parallel mode takes 'sources->base' or 'base'."
        )
    if len(unit_locations) != 1:
        raise LocationError("Give either 'sources->base' or 'base' in unit_locations, not both.")
    key, value = next(iter(unit_locations.items()))
    src, base = _pair_value(value, units, batch, base_only=(key == "base"))
    return [Locations(None if src is None else src[i], base[i]) for i in range(len(units))]


def normalise_serial(
    unit_locations: Any, groups: Sequence[Sequence[int]], units: Sequence[str], batch: int
) -> Dict[int, List[Locations]]:
    """Canonical locations for serial mode: ``{group: [Locations per member]}``."""
    out: Dict[int, List[Locations]] = {}
    n = len(groups)
    expected = [f"source_{g}->source_{g + 1}" if g < n - 1 else f"source_{g}->base" for g in range(n)]
    if unit_locations is not None and not isinstance(unit_locations, dict):
        raise LocationError(f"Serial mode takes unit_locations as a dict with keys {expected}.")
    if unit_locations is not None:
        unknown = [k for k in unit_locations if k not in expected]
        if unknown:
            hint = " ('base' alone is for calls without sources.)" if unknown[0] == "base" else ""
            raise LocationError(f"Unknown unit_locations key {unknown[0]!r}; serial mode expects {expected}.{hint}")
    for g, members in enumerate(groups):
        member_units = [units[i] for i in members]
        value = None if unit_locations is None else unit_locations.get(expected[g])
        if value is None:
            out[g] = [Locations(ALL, ALL) for _ in members]
            continue
        src, base = _pair_value(value, member_units, batch, base_only=False)
        out[g] = [Locations(ALL if src is None else src[j], base[j]) for j in range(len(members))]
    return out


def normalise_serial_base_only(
    unit_locations: Any, groups: Sequence[Sequence[int]], units: Sequence[str], batch: int
) -> List[Locations]:
    """Serial mode without sources: base locations per intervention, from ``{"base": ...}`` (as in
    parallel mode) or the base side of the serial keys."""
    if not (isinstance(unit_locations, dict) and any(k != "base" for k in unit_locations)):
        return normalise_parallel(unit_locations, units, batch, has_sources=False)
    serial = normalise_serial(unit_locations, groups, units, batch)
    out: List[Locations] = [Locations(None, ALL)] * len(units)
    for g, members in enumerate(groups):
        for j, i in enumerate(members):
            out[i] = Locations(None, serial[g][j].base)
    return out


def is_opaque_subspaces(entry: Any) -> bool:
    """True for an intervention's ``subspaces`` entry that is not dimension indices (a dict, an object):
    it goes to the intervention as given and nothing checks or slices it."""
    if entry is None or isinstance(entry, torch.Tensor):
        return False
    if isinstance(entry, (Mapping, str)):
        return True
    return not isinstance(entry, numbers.Integral) and not hasattr(entry, "__iter__")


def normalise_subspaces(subspaces: Any, n: int, batch: int) -> List[Any]:
    """``[intervention][batch][dims]`` (or an int / flat list for all) -> per intervention rows.

    An intervention's entry that is not ints (e.g. ``{"idx": 10004, "mag": 100.0}``, as the reference's
    SAE steering tutorial passes) is handed to that intervention verbatim, as the reference does: its
    meaning is the intervention's own.
    """
    if subspaces is None:
        return [None] * n
    if _is_int(subspaces):
        return [[[int(subspaces)]] * batch] * n
    if isinstance(subspaces, torch.Tensor):
        subspaces = subspaces.tolist()
    if not isinstance(subspaces, (list, tuple)) or len(subspaces) == 0:
        raise InputError(f"subspaces must be an int or nested lists [intervention][batch][dims]; got {subspaces!r}.")
    if all(_is_int(s) for s in subspaces):
        return [[[int(s) for s in subspaces]] * batch] * n
    if len(subspaces) == 1 and n > 1:
        subspaces = list(subspaces) * n
    if len(subspaces) != n:
        raise InputError(f"subspaces list {len(subspaces)} entries for {n} interventions; give one per intervention.")
    out: List[Optional[List[List[int]]]] = []
    for i, entry in enumerate(subspaces):
        if entry is None or is_opaque_subspaces(entry):
            out.append(entry)
            continue
        if isinstance(entry, torch.Tensor):
            entry = entry.tolist()
        if _depth(entry) == 1:
            entry = [entry]
        rows = [list(map(int, r)) for r in entry]
        if len(rows) == 1 and batch > 1:
            rows = rows * batch
        if len(rows) != batch:
            raise InputError(f"subspaces of intervention {i} list {len(rows)} rows for a batch of {batch}.")
        out.append(rows)
    return out


# -- gather / scatter ----------------------------------------------------------
def _check(index: torch.Tensor, size: int, what: str, where: str, fix: str) -> torch.Tensor:
    """Bounds-check ``index`` against ``size``; negative values count from the end."""
    bad = (index < -size) | (index >= size)
    if bool(bad.any()):
        raise LocationError(f"{what} {int(index[bad][0])} is out of range at {where}. {fix}")
    return torch.where(index < 0, index + size, index)


def resolve_units(units: Units, view: torch.Tensor, head_view: bool, where: str) -> Units:
    """Bounds-check and move indices to the view's device (negative indices count from the end)."""
    pos_dim = 2 if head_view else 1
    positions, heads = units.positions, units.heads
    for index in (positions, heads):
        if index is not None and index.shape[0] != view.shape[0]:
            raise LocationError(
                f"{where} has {view.shape[0]} rows but the locations give {index.shape[0]}: this module sees "
                "tokens flattened across the batch (e.g. an MoE expert or OPT's MLP), so positions cannot be "
                "chosen there. Use unit_locations=None, or a component before the flattening."
            )
    if positions is not None:
        if view.dim() <= pos_dim:
            raise LocationError(f"{where} has no position dimension (shape {tuple(view.shape)}); use unit_locations=None.")
        positions = _check(
            positions, view.shape[pos_dim], "Position", where + f" (sequence length {view.shape[pos_dim]})",
            "Use positions inside the sequence (negative values count from the end).",
        ).to(view.device)
    if heads is not None:
        heads = _check(heads, view.shape[1], "Head", where + f" ({view.shape[1]} heads)", "Use a head index below the head count.").to(view.device)
    return Units(positions=positions, heads=heads)


def _batch_index(view: torch.Tensor, extra_dims: int) -> torch.Tensor:
    return torch.arange(view.shape[0], device=view.device).view(-1, *([1] * extra_dims))


def gather(view: torch.Tensor, units: Units, head_view: bool) -> torch.Tensor:
    """Select units: ``[b, n, ...]`` or, for head views, ``[b, heads, positions, d]``."""
    if head_view:
        out = view
        if units.heads is not None:
            out = out[_batch_index(out, 1), units.heads]
        if units.positions is not None:
            out = out[_batch_index(out, 2), torch.arange(out.shape[1], device=out.device).view(1, -1, 1), units.positions.unsqueeze(1)]
        return out
    if units.positions is None:
        return view
    return view[_batch_index(view, 1), units.positions]


def scatter(view: torch.Tensor, units: Units, head_view: bool, new: torch.Tensor) -> torch.Tensor:
    """A copy of ``view`` with the selected units replaced by ``new`` (shape as ``gather``)."""
    new = new.to(device=view.device, dtype=view.dtype)
    if units.is_all:
        return new.expand_as(view) if new.shape != view.shape else new
    out = view.clone()
    if head_view:
        heads = units.heads if units.heads is not None else torch.arange(view.shape[1], device=view.device).expand(view.shape[0], -1)
        pos = units.positions if units.positions is not None else torch.arange(view.shape[2], device=view.device).expand(view.shape[0], -1)
        out[_batch_index(view, 2), heads.unsqueeze(2), pos.unsqueeze(1)] = new
        return out
    out[_batch_index(view, 1), units.positions] = new
    return out
