"""Which dimensions an intervention touches: ``subspaces``, ``subspace_partition``, ``interchange_dim``.

Two callers, two readings of the same arguments:

* **Direct calls** (``intervention(base, source, subspaces)`` on tensors, as in
  the reference library): row ``i`` of ``subspaces`` applies to index ``i``
  along dimension ``-2`` of ``base`` (the batch for the ``[batch, width]``
  vectors the reference hands to most interventions); rows of different
  lengths apply along dimension 0; when every row is the same (or
  ``use_fast`` is set) row 0 applies everywhere. Without ``subspaces`` a swap
  touches the first ``interchange_dim`` dimensions, which defaults to
  ``embed_dim``.
* **Engine calls** (inside ``IntervenableModel``): ``subspaces`` rows are batch
  rows whatever the shape the intervention sees, and the engine sets the width
  itself: ``interchange_dim`` narrows a swap only when it differs from
  ``embed_dim`` (``set_interchange_dim``), so the width guessed at
  construction can never truncate what the engine passes.

``engine_call()`` marks the engine's calls. Partition ids are rendered into
column indices; an index outside the width (or the partition) raises
``SubspaceError``, an ``IndexError``.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterator, List, Optional, Tuple

import torch

from ..errors import SubspaceError

_ENGINE_CALL: ContextVar[bool] = ContextVar("intervenable_engine_call", default=False)


@contextmanager
def engine_call() -> Iterator[None]:
    """Mark the intervention calls made by ``IntervenableModel`` (see the module docstring)."""
    token = _ENGINE_CALL.set(True)
    try:
        yield
    finally:
        _ENGINE_CALL.reset(token)


def in_engine_call() -> bool:
    return _ENGINE_CALL.get()


def swap_width(interchange_dim: Any, embed_dim: Any) -> Optional[int]:
    """How many leading dimensions a swap without ``subspaces`` touches; None means all."""
    if interchange_dim is None:
        return None
    if isinstance(interchange_dim, torch.Tensor):
        interchange_dim = interchange_dim.item()
    if in_engine_call() and embed_dim is not None and int(interchange_dim) == int(embed_dim):
        return None
    return int(interchange_dim)


def _raw_rows(subspaces: Any) -> List[List[int]]:
    """``subspaces`` as a list of rows of ints (an int or a flat list is one row)."""
    if isinstance(subspaces, torch.Tensor):
        subspaces = subspaces.tolist()
    if isinstance(subspaces, int):
        return [[subspaces]]
    rows = list(subspaces)
    if rows and not isinstance(rows[0], (list, tuple, torch.Tensor)):
        return [[int(s) for s in rows]]
    return [r.tolist() if isinstance(r, torch.Tensor) else [int(s) for s in r] for r in rows]


def _render(row: List[int], partition: Optional[List[List[int]]], width: int) -> List[int]:
    """Column indices of one row (partition ids expanded), bounds-checked against ``width``."""
    dims: List[int] = []
    for s in row:
        if partition is None:
            dims.append(int(s))
            continue
        if not -len(partition) <= int(s) < len(partition):
            raise SubspaceError(
                f"Subspace id {s} is outside the subspace_partition of {len(partition)} subspaces: use ids "
                f"0..{len(partition) - 1}."
            )
        dims.extend(partition[int(s)])
    for d in dims:
        if not -width <= d < width:
            raise SubspaceError(
                f"Subspace dimension {d} is out of range for width {width}: use dimensions 0..{width - 1} "
                "(or partition ids when the representation has a subspace_partition)."
            )
    return [d % width for d in dims]


def _plan(subspaces: Any, partition: Optional[List[List[int]]], base: torch.Tensor, use_fast: bool) -> Tuple[List[List[int]], Optional[int]]:
    """Rendered rows and the axis of ``base`` they run along (None: row 0 applies everywhere)."""
    raw = _raw_rows(subspaces)
    if not raw:
        raise SubspaceError("subspaces is empty: give at least one row of dimensions, or None.")
    if use_fast:
        raw = raw[:1]
    rows = [_render(r, partition, base.shape[-1]) for r in raw]
    if all(r == rows[0] for r in rows):
        return rows[:1], None
    if base.dim() < 2:
        raise SubspaceError(f"subspaces give {len(rows)} different rows but the input has shape {tuple(base.shape)}.")
    rectangular = all(len(r) == len(raw[0]) for r in raw)
    axis = 0 if in_engine_call() or not rectangular else base.dim() - 2
    if len(rows) != base.shape[axis]:
        what = "batch rows" if axis == 0 else "entries along dimension -2 (the reference applies rows there)"
        raise SubspaceError(
            f"subspaces give {len(rows)} rows but the input of shape {tuple(base.shape)} has {base.shape[axis]} "
            f"{what}: give one row per entry, or a single row for all."
        )
    return rows, axis


def subspace_mask(subspaces: Any, partition: Optional[List[List[int]]], base: torch.Tensor, use_fast: bool = False) -> torch.Tensor:
    """Boolean mask of the dimensions named by ``subspaces``, broadcastable to ``base``."""
    rows, axis = _plan(subspaces, partition, base, use_fast)
    width = base.shape[-1]
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, dims in enumerate(rows):
        mask[i, dims] = True
    if axis is None:
        return mask[0].to(base.device)
    shape = [1] * base.dim()
    shape[axis], shape[-1] = len(rows), width
    return mask.view(shape).to(base.device)


def select_subspaces(base: torch.Tensor, subspaces: Any, partition: Optional[List[List[int]]], use_fast: bool = False) -> torch.Tensor:
    """The dimensions named by ``subspaces``, per row (what a collect returns)."""
    rows, axis = _plan(subspaces, partition, base, use_fast)
    if axis is None:
        return base[..., torch.tensor(rows[0], dtype=torch.long, device=base.device)]
    if any(len(r) != len(rows[0]) for r in rows):
        raise SubspaceError(
            f"subspaces select different numbers of dimensions per row ({[len(r) for r in rows]}); a collect "
            "returns one tensor, so every row must select as many."
        )
    index = torch.tensor(rows, dtype=torch.long, device=base.device)
    shape = [1] * base.dim()
    shape[axis], shape[-1] = len(rows), len(rows[0])
    index = index.view(shape).expand(*base.shape[:-1], len(rows[0]))
    return torch.gather(base, -1, index)
