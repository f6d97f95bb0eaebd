"""The time-step unit ``t`` on unrolled recurrent models.

An unrolled RNN calls its cell module once per time step with a 2-D
``[batch, width]`` tensor, so the hook on that module fires ``T`` times per
forward. For unit ``t`` on such a module, unit locations name *steps* (call
indices): ``{"sources->base": ([[[0]]], [[[2]]])}`` takes the cell's value at
step 0 of the source run and puts it in at step 2 of the base run. Each row
may name its own steps. (On modules that see the whole sequence, such as
``nn.GRU``, ``t`` indexes the time dimension like ``pos``.)

The intervention sees ``[rows, width]``: the rows intervened on at that step.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from .errors import LocationError



def _step(state: Any, key: str) -> int:
    step = state.step_counters.get(key, 0)
    state.step_counters[key] = step + 1
    return step


def _matches(index: torch.Tensor, step: int):
    """Rows and unit slots whose selected step is ``step`` (one slot per row at most)."""
    hit = index == step
    rows = hit.any(dim=1).nonzero().flatten()
    slots = hit.float().argmax(dim=1)[rows]
    return rows, slots


def store_step(state: Any, store_key: str, index: Optional[torch.Tensor], full: torch.Tensor) -> None:
    """Getter side: keep the rows whose selected step is this call's step (every step if ``index`` is None)."""
    step = _step(state, "get:" + store_key)
    if index is None:
        state.step_values.setdefault(store_key, []).append(full)
        state.activations[store_key] = full
        return
    index = index.to(full.device)
    buffers = state.step_buffers
    if store_key not in buffers:
        buffers[store_key] = (
            full.new_zeros(index.shape[0], index.shape[1], *full.shape[1:]),
            torch.zeros(index.shape, dtype=torch.bool, device=full.device),
        )
    values, filled = buffers[store_key]
    rows, slots = _matches(index, step)
    if rows.numel():
        values = values.index_put((rows, slots), full[rows])
        filled = filled.index_put((rows, slots), torch.ones_like(rows, dtype=torch.bool))
        buffers[store_key] = (values, filled)
    state.activations[store_key] = values


def apply_step(slot: Any, index: Optional[torch.Tensor], state: Any, source: Optional[torch.Tensor], subspaces: Any,
               full: torch.Tensor, run) -> Optional[torch.Tensor]:
    """Setter side: intervene on the rows whose selected step is this call's step.

    With ``index`` None every step is intervened on, with the source's value at the same step.
    """
    step = _step(state, "set:" + slot.key)
    if index is None:
        values = state.step_values.get(slot.key)
        src = source
        if values is not None:
            if step >= len(values):
                raise LocationError(f"At {slot.where()}: the base run has more time steps than the source run.")
            src = values[step]
        new = run(full, src, subspaces)
        return None if new is None else new.to(full.dtype)
    index = index.to(full.device)
    rows, slots = _matches(index, step)
    if rows.numel() == 0:
        return None
    src = None
    if source is not None:
        buffer = state.step_buffers.get(slot.key)
        if buffer is not None and not bool(buffer[1][rows, slots].all()):
            raise LocationError(
                f"At {slot.where()}: a source time step was never reached in the source run "
                "(steps count the calls of the recurrent cell: use a step below the sequence length)."
            )
        src = source[rows, slots] if source.dim() >= 3 else source
    row_list = rows.tolist()
    sub = None if subspaces is None else [subspaces[r] for r in row_list]
    new_rows = run(full[rows], src, sub)
    if new_rows is None:  # collect
        return None
    return full.index_put((rows,), new_rows.to(full.dtype))
