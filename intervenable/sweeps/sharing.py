"""One sweep split across ``torch.distributed`` ranks, sharing the clean and corrupted runs.

``distributed_sweep`` runs the whole sweep on every rank inside ``share_rows()``. Then the
clean run is computed on rank 0 and the corrupted run (with the fast path's per-layer
recording) on rank 1 (both on rank 0 when there is one rank), and they are exchanged, so no
rank repeats them; each rank patches its share of the rows (interleaved positions: the i-th
position of the sweep goes to rank ``i % world``; layers when there are fewer positions than
ranks), and the scores are gathered on every rank. Outside
``share_rows()`` (or without a process group) everything runs in this process.
"""
from __future__ import annotations

import dataclasses
import time
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Callable, Iterator, List, Sequence, Tuple

import torch

from ..ranks import rank_and_world

_SHARING: ContextVar[bool] = ContextVar("intervenable_share_rows", default=False)


@contextmanager
def share_rows() -> Iterator[None]:
    """Within this block, sweeps split their rows across the ranks of the initialised process group."""
    token = _SHARING.set(True)
    try:
        yield
    finally:
        _SHARING.reset(token)


def rank_world() -> Tuple[int, int]:
    """``(rank, world)`` when rows are shared, else ``(0, 1)``."""
    return rank_and_world() if _SHARING.get() else (0, 1)


def _map(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _map(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map(v, fn) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: _map(getattr(obj, f.name), fn) for f in dataclasses.fields(obj)})
    return obj


def exchange(compute_clean: Callable[[], Any], compute_corrupted: Callable[[], Any],
             device: torch.device) -> Tuple[Any, Any]:
    """Both runs, each computed once across the ranks (clean on rank 0, corrupted on rank 1) and broadcast."""
    rank, world = rank_world()
    if world == 1:
        return compute_clean(), compute_corrupted()
    import torch.distributed as dist

    corrupted_rank = 1
    boxes = []
    for src, compute in ((0, compute_clean), (corrupted_rank, compute_corrupted)):
        boxes.append([_map(compute(), lambda t: t.detach().cpu()) if rank == src else None])
    for src, box in zip((0, corrupted_rank), boxes):
        dist.broadcast_object_list(box, src=src)
    return tuple(_map(box[0], lambda t: t.to(device)) for box in boxes)


def my_rows(cells: Sequence[Tuple[int, ...]]) -> List[int]:
    """Indices of the rows this rank computes: every ``world``-th position (or layer, with few positions).

    Whole positions keep the fast path's groups (rows sharing a first patched position) intact,
    so each rank's forwards stay as wide as in one process; interleaving balances the cost of
    early and late positions (and layers).
    """
    rank, world = rank_world()
    if world == 1:
        return list(range(len(cells)))
    axis = 2 if len({cell[2] for cell in cells}) >= world else 1
    return [i for i, cell in enumerate(cells) if cell[axis] % world == rank]


def gather_scores(local: torch.Tensor, rows: List[int], n: int, forwards: int,
                  started: float) -> Tuple[torch.Tensor, int, List[float]]:
    """Every rank's scores placed at their rows (on every rank), total forwards, seconds per rank."""
    rank, world = rank_world()
    seconds = time.perf_counter() - started
    if world == 1:
        return local, forwards, [seconds]
    import torch.distributed as dist

    parts: List[Any] = [None] * world
    dist.all_gather_object(parts, (rows, local.cpu(), forwards, seconds))
    scores = torch.zeros(n)
    for idx, vals, _, _ in parts:
        if idx:
            scores[idx] = vals
    return scores, sum(p[2] for p in parts), [p[3] for p in parts]


@contextmanager
def rows_unshared() -> Iterator[None]:
    """Within this block, sweeps run all their rows here (a dataset shares its examples instead)."""
    token = _SHARING.set(False)
    try:
        yield
    finally:
        _SHARING.reset(token)
