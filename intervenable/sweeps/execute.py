"""Running one sweep's plan: the clean and corrupted runs, then every row (fast or general path).

``execute`` is the single-example ground truth that ``causal_trace``, ``patching_sweep`` and the
attribution's verification call; ``multi.py`` runs several examples' plans in shared forwards.
"""
from __future__ import annotations

import time
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import ConfigError, FastPathFallbackWarning, InputError
from ..sites.registry import find_architecture
from .fast import check_stack, classify, record_corrupted, run_fast
from .runner import auto_batch_size, capture, run_general
from .sharing import exchange, gather_scores, my_rows
from .spec import Plan, check_count, check_layers
from .stack import build_stack

Noise = Optional[Tuple[torch.Tensor, int, int]]


def n_layers(model: nn.Module) -> int:
    """The model's layer count (architecture registry, else its config)."""
    arch = find_architecture(model)
    if arch is not None:
        return int(arch.num_layers(model.config))
    config = getattr(model, "config", None)
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        if getattr(config, name, None) is not None:
            return int(getattr(config, name))
    raise ConfigError("Cannot tell how many layers the model has: pass layers=[...] explicitly.")


def n_layers_or_none(model: nn.Module) -> Optional[int]:
    try:
        return n_layers(model)
    except ConfigError:
        return None


def check_common(model: nn.Module, layers: Optional[Sequence[int]], batch_size: Optional[int],
                 components: Sequence[str]) -> Optional[List[int]]:
    """Checks shared by both sweeps, done before any forward; returns the explicit layers (or None)."""
    if isinstance(components, str):
        raise InputError(f"components must be a list of names, e.g. components=[{components!r}]; got a string.")
    if not list(components):
        raise InputError("components is empty: give at least one, e.g. components=['block_output'].")
    if batch_size is not None:
        check_count(batch_size, "batch_size", "rows per forward")
    return check_layers(layers, n_layers_or_none(model))


@contextmanager
def eval_no_grad(model: nn.Module) -> Iterator[None]:
    """Eval mode and no autograd for the block; the model's training flag is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def progress_bar(total: int, progress: Optional[bool], desc: str = "patching", unit: str = "run",
                 leave: bool = False) -> Tuple[Callable[[int], None], Callable[[], None]]:
    """A tqdm bar shown once the work has run for a second (never when ``progress=False``); ``leave``: the
    finished bar stays (a dataset's count of examples and time), else it is cleared."""
    if progress is False or total == 0:
        return (lambda n: None), (lambda: None)
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit, delay=0.0 if progress else 1.0, leave=leave)
    return bar.update, bar.close


def sweep_path(fast_ready: bool, described: bool, fast: Optional[bool], reason: str, stacklevel: int) -> str:
    """``"fast"`` when the fast path's corrupted run is ready, else ``"general"``: warned
    (``FastPathFallbackWarning``) for a described family, refused when the caller asked for ``fast=True``."""
    if fast_ready:
        return "fast"
    if described:
        warnings.warn(f"Sweep used the general batched path: {reason}.", FastPathFallbackWarning,
                      stacklevel=stacklevel + 1)
    if fast:
        raise ConfigError(f"fast=True, but the fast path cannot run this sweep: {reason}. Use fast=None.")
    return "general"


def execute(model: nn.Module, plan: Plan, clean_ids: torch.Tensor, corrupt_ids: torch.Tensor, noise: Noise,
            metric: Callable[[torch.Tensor], torch.Tensor], batch_size: Optional[int],
            memory_budget: Optional[int], fast: Optional[bool], progress: Optional[bool]) -> Tuple[torch.Tensor, Dict[str, Any]]:
    """Scores of every row of ``plan``, plus run information (path, batch size, forwards, seconds)."""
    with eval_no_grad(model):
        return _execute_inner(model, plan, clean_ids, corrupt_ids, noise, metric, batch_size, memory_budget, fast, progress)


def _execute_inner(model: nn.Module, plan: Plan, clean_ids: torch.Tensor, corrupt_ids: torch.Tensor, noise: Noise,
                   metric: Callable[[torch.Tensor], torch.Tensor], batch_size: Optional[int],
                   memory_budget: Optional[int], fast: Optional[bool], progress: Optional[bool]) -> Tuple[torch.Tensor, Dict[str, Any]]:
    t0 = time.perf_counter()
    device = next(model.parameters()).device
    clean_ids, corrupt_ids = clean_ids.to(device), corrupt_ids.to(device)
    if noise is not None:
        noise = (noise[0].to(device), noise[1], noise[2])
    needed = {"clean": set(), "corrupted": set()}
    for row in plan.rows:
        for w in row:
            needed[w.source].add(w.site)
    stack, reason = build_stack(model) if fast is not False else (None, "fast=False")
    kinds = classify(stack, plan.sites) if stack is not None else None
    if stack is not None and kinds is None:
        stack, reason = None, "a site lies outside the model's layers"

    def corrupted_run() -> Tuple[torch.Tensor, Dict[str, torch.Tensor], Any, str]:
        if stack is None:
            return (*capture(model, corrupt_ids, plan.sites, needed["corrupted"], noise), None, reason)
        rec = record_corrupted(model, stack, corrupt_ids, plan.sites, needed["corrupted"], noise)
        why = check_stack(stack, rec)
        return rec.logits, rec.values, (None if why else rec), why

    # Computed once (split across ranks inside distributed_sweep, then shared).
    (clean_logits, clean_vals), (corrupt_logits, corrupt_vals, corrupted, reason) = exchange(
        lambda: capture(model, clean_ids, plan.sites, needed["clean"]), corrupted_run, device)
    values = {"clean": clean_vals, "corrupted": corrupt_vals}
    mine = my_rows(plan.cells)
    rows = [plan.rows[i] for i in mine]
    T = clean_ids.shape[1]
    bs = batch_size or auto_batch_size(model, T, len(rows), memory_budget)
    path = sweep_path(corrupted is not None, stack is not None, fast, reason, stacklevel=5)
    tick, close = progress_bar(len(rows), progress)
    t_rows = time.perf_counter()
    try:
        if path == "fast":
            scores, forwards = run_fast(stack, kinds, corrupted, plan.sites, rows, values, metric, bs, tick)
        else:
            scores, forwards = run_general(model, corrupt_ids, plan.sites, rows, values, metric, bs, noise, tick)
    finally:
        close()
    scores, forwards, per_rank = gather_scores(scores, mine, len(plan.rows), forwards, t_rows)
    info = {"path": path, "fallback_reason": reason if path == "general" else "", "batch_size": bs,
            "forwards": forwards, "seconds": time.perf_counter() - t0,
            "clean_score": float(metric(clean_logits.float())[0]),
            "corrupted_score": float(metric(corrupt_logits.float())[0])}
    if len(per_rank) > 1:
        info["ranks"], info["row_seconds_per_rank"] = len(per_rank), per_rank
    return scores, info
