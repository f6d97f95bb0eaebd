"""Split work across ``torch.distributed`` ranks and gather the results on rank 0.

We do not run our own cluster system: launch with ``torchrun`` (one or many
nodes) or ``accelerate launch``, initialise the process group as usual, and
call these helpers. Without an initialised process group they run everything
in the current process, so the same script works alone.

* ``shard(items)``: this rank's share of a list (contiguous blocks, in order).
* ``distributed_map(fn, items)``: ``fn`` on this rank's share; the full list of
  results, in the original order, on rank 0 (or on every rank with
  ``all_ranks=True``).
* ``distributed_sweep(pv.causal_trace, ...)``: one sweep, its clean and
  corrupted runs computed once and shared, its rows split across ranks.
* Training: wrap an ``IntervenableModel`` in ``DistributedDataParallel``; its
  ``parameters()`` are the trainable ones only (interventions, plus the model
  if unfrozen), so DDP averages exactly those gradients.
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple, TypeVar

import torch.distributed as dist

from .ranks import rank_and_world

T = TypeVar("T")
R = TypeVar("R")


def shard_bounds(n: int, rank: int, world: int) -> Tuple[int, int]:
    """``[start, end)`` of rank ``rank``'s contiguous share of ``n`` items (sizes differ by at most one)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard(items: Sequence[T], rank: Optional[int] = None, world: Optional[int] = None) -> List[T]:
    """This rank's contiguous share of ``items``."""
    if rank is None or world is None:
        rank, world = rank_and_world()
    start, end = shard_bounds(len(items), rank, world)
    return list(items[start:end])


def gather(local: List[Any], all_ranks: bool = False) -> Optional[List[Any]]:
    """Concatenate every rank's list, in rank order, on rank 0 (or everywhere with ``all_ranks``)."""
    rank, world = rank_and_world()
    if world == 1:
        return list(local)
    if all_ranks:
        parts: List[Any] = [None] * world
        dist.all_gather_object(parts, local)
    else:
        parts = [None] * world if rank == 0 else None
        dist.gather_object(local, parts, dst=0)
        if rank != 0:
            return None
    return [item for part in parts for item in part]


def distributed_map(fn: Callable[[T], R], items: Sequence[T], all_ranks: bool = False) -> Optional[List[R]]:
    """``[fn(x) for x in items]`` computed across ranks; the full list on rank 0 (None elsewhere)."""
    return gather([fn(x) for x in shard(items)], all_ranks=all_ranks)


def distributed_sweep(sweep: Callable[..., Any], *args: Any, layers: Optional[Sequence[int]] = None,
                      n_layers: Optional[int] = None, all_ranks: bool = False, **kwargs: Any) -> Any:
    """Run a layer sweep (``causal_trace`` / ``patching_sweep``) split across ranks.

    For this library's sweeps, every rank runs the same sweep inside ``share_rows()``: the clean
    and the corrupted runs (the fast path's prefix: each layer's input and keys/values) are
    computed once, clean on rank 0 and corrupted on rank 1, and broadcast; each rank patches
    the rows of every ``world``-th position (or layer); the scores are gathered. Rank 0 gets one
    ``SweepResult`` equal to the single-process sweep (None on other ranks unless
    ``all_ranks``). Any other sweep function is called with its share of ``layers`` (default:
    all ``n_layers`` layers, read from the model's config when not given) and the shards are
    joined. Seeded corruption noise is the same on every rank, so the shares fit together.
    """
    rank, world = rank_and_world()
    if layers is None and n_layers is not None:
        layers = list(range(int(n_layers)))
    if getattr(sweep, "__module__", "").startswith("intervenable.sweeps"):
        from .sweeps.sharing import share_rows

        with share_rows():
            result = sweep(*args, layers=layers, **kwargs)
        return result if rank == 0 or all_ranks else None
    if layers is None:
        config = getattr(args[0], "config", None) if args else None
        n_layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
        if n_layers is None:
            raise ValueError("distributed_sweep needs layers=[...] or n_layers= for this model.")
        layers = list(range(int(n_layers)))
    layers = list(layers)
    mine = layers[rank::world]  # interleaved: a patch at layer l costs about L - l layers, so blocks would be unbalanced
    local = sweep(*args, layers=mine, **kwargs) if mine else None
    parts = gather([local], all_ranks=all_ranks)
    if parts is None:
        return None
    return merge_layer_shards([p for p in parts if p is not None], order=layers)


def merge_layer_shards(results: List[Any], order: Optional[Sequence[int]] = None) -> Any:
    """Join ``SweepResult`` shards along their layer axis, in the layer order ``order`` (default: as given)."""
    import dataclasses

    import torch

    first = results[0]
    values = torch.cat([r.values for r in results], dim=1)
    layers = [layer for r in results for layer in r.layers]
    if order is not None:
        index = [layers.index(layer) for layer in order]
        values = values[:, index]
        layers = list(order)
    info = dict(first.info)
    info["ranks"] = len(results)
    info["seconds_per_rank"] = [r.info.get("seconds") for r in results]
    return dataclasses.replace(first, values=values, layers=layers, info=info)
