"""``attribution_patching``: every site's patching effect from gradients, verified exactly where it matters.

Activation patching costs one (partial) forward per site. Attribution patching
(AtP: Nanda 2023; Kramar et al. 2024; Syed et al. 2023) estimates the effect of
copying activation ``a`` from the source run into the base run as
``(a_source - a_base) . dMetric/da`` for every site at once, from one source
forward, one base forward and one backward. ``method="ig"`` averages the
gradient over ``steps`` points of the straight path from the site's base to its
source activation (integrated gradients on the sites, one layer and position
group at a time, the rest of the run computed from the base prompt);
``method="eap-ig"`` (Hanna et al. 2024) over the straight path between the two
prompts' token embeddings, along which every site moves at once. The sites,
cells and result are those of ``patching_sweep`` (same ``patching_plan``), so
the two compare cell by cell; ``verify=k`` reruns the ``k`` largest estimates
with exact patching.
"""
from __future__ import annotations

import time
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..errors import ConfigError, InputError
from .dataset import run_dataset
from .dataset_result import DatasetResult
from .examples import is_dataset
from .execute import execute as _execute
from .execute import n_layers as _n_layers
from .gradients import activations_only, attribution_per_site, row_gradients, site_gradients, site_path_gradients
from .result import SweepResult
from .runner import auto_batch_size, budget_bytes, capture
from .plans import Job, finish, prepare_patch
from .spec import Metric, Plan

METHODS = ("atp", "ig", "eap-ig")
DEFAULT_STEPS = 8


def attribution_patching(model: nn.Module, base: Any, source: Any = None, target: Any = None, *,
                         components: Sequence[str] = ("block_output",), layers: Optional[Sequence[int]] = None,
                         positions: Optional[Sequence[int]] = None, heads: Union[None, str, Sequence[int]] = None,
                         together: bool = False, metric: Metric = "prob", foil: Any = None, tokenizer: Any = None,
                         method: str = "atp", steps: Optional[int] = None, verify: Optional[int] = None,
                         batch_size: Optional[int] = None, memory_budget: Optional[int] = None,
                         fast: Optional[bool] = None, progress: Optional[bool] = False, marks: Any = None,
                         save_to: Any = None, on_error: str = "raise") -> Union[SweepResult, DatasetResult]:
    """Estimate ``patching_sweep(model, base, source, ...)`` from gradients; same arguments, same result axes.

    Each cell holds the base run's score plus the estimated change from copying that one activation
    from ``source``: ``(a_source - a_base) . dMetric/da`` (``method="atp"``: one backward for all sites),
    or the same with the gradient averaged over ``steps`` (default 8) midpoints of a straight path:
    ``method="ig"`` moves one layer's site from its base to its source activation, at each position
    whose token differs between the prompts on its own and at the other positions together
    (``steps x sites x (differing positions + 1)`` rows); ``method="eap-ig"`` moves the token
    embeddings, so every site at once (``steps`` rows). Rows are batched into few forwards.
    Head components with ``heads=...`` give one estimate per head from the same backward.
    ``verify=k`` reruns the ``k`` cells with the largest ``|estimate - base score|`` by exact patching
    (the sweeps' fast path when the model has one) and stores them in ``result.tensors["exact"]``
    (NaN elsewhere); ``summary()`` lists both. Gradients are taken with respect to activations only:
    parameters are frozen meanwhile and left exactly as found (no ``.grad`` is created).
    ``batch_size`` / ``memory_budget`` bound the rows of an IG forward and, with ``fast`` and
    ``progress``, work as in ``patching_sweep`` for the verification. ``together=True``: each cell
    patches the site at every swept position at once, estimated as the sum of the positions' estimates.

    Datasets (lists or rows, as in ``patching_sweep``) give a ``DatasetResult``; each example runs
    this function on its own pair (``save_to`` and ``on_error`` as in ``patching_sweep``).
    """
    if is_dataset(base, source):
        options = dict(components=components, layers=layers, positions=positions, heads=heads, together=together,
                       metric=metric, tokenizer=tokenizer, method=method, steps=steps, verify=verify,
                       batch_size=batch_size, memory_budget=memory_budget, fast=fast)

        def one(ex: Any, i: int) -> SweepResult:
            if ex.corrupted is None:
                raise ConfigError("it has no base (corrupted) prompt: give 'base' and 'source'.")
            return attribution_patching(model, ex.corrupted, ex.clean, ex.target, foil=ex.foil, progress=False,
                                        **options)

        fields = dict(base=base, source=source, target=target, foil=foil, marks=marks)
        if method != "atp" or steps is not None:
            return run_dataset("attribution_patching", model, fields,
                               dict(components=components, layers=layers, batch_size=batch_size, tokenizer=tokenizer),
                               progress=progress, save_to=save_to, on_error=on_error, run_one=one,
                               record_options=options)
        # AtP: examples of one length share the clean forward, the probed base forward and the backward.
        plan_options = dict(components=components, layers=layers, positions=positions, heads=heads,
                            together=together, metric=metric, tokenizer=tokenizer, batch_size=batch_size)
        return run_dataset("attribution_patching", model, fields, plan_options, progress=progress, save_to=save_to,
                           on_error=on_error, record_options=options, memory_budget=memory_budget,
                           run_batch=lambda jobs: _atp_batch(model, jobs, verify, batch_size, memory_budget, fast))
    if source is None:
        raise InputError("attribution_patching needs source=... (the clean prompt whose activations are copied in), "
                         "or rows of a dataset with 'base' and 'source'.")
    if method not in METHODS:
        raise ConfigError(f"Unknown method {method!r}: use 'atp' (linear estimate), 'ig' (integrated gradients on "
                          "the sites) or 'eap-ig' (on the token embeddings); for exact patching call patching_sweep.")
    if steps is not None and method == "atp":
        raise ConfigError("steps=... applies to method='ig' or 'eap-ig' only: drop it, or pass method='ig'.")
    n_steps = DEFAULT_STEPS if steps is None else int(steps)
    if n_steps < 1:
        raise ConfigError(f"steps must be a positive number of points on the path; got {steps!r}.")
    if verify is not None and (isinstance(verify, bool) or int(verify) < 1):
        raise ConfigError(f"verify must be a positive number of sites to rerun exactly (or None); got {verify!r}.")
    job = prepare_patch(model, base, source, target, components=components, layers=layers, positions=positions,
                        heads=heads, metric=metric, foil=foil, tokenizer=tokenizer, batch_size=batch_size,
                        together=together, kind="attribution_patching")
    clean_ids, base_ids, fn, plan, head_list = job.clean_ids, job.corrupt_ids, job.fn, job.plan, job.heads
    pos = job.extra_info.get("together_positions", job.positions)
    _check_writable(plan.sites)
    t0 = time.perf_counter()
    device = next(model.parameters()).device
    clean_ids, base_ids = clean_ids.to(device), base_ids.to(device)
    with activations_only(model):
        with torch.no_grad():
            clean_logits, src = capture(model, clean_ids, plan.sites, plan.sites.keys())
        if method == "atp":
            base_scores, base_acts, grads = site_gradients(model, base_ids, plan.sites, fn)
            rows, backwards, forwards = 1, 1, 1
        else:
            with torch.no_grad():
                base_logits, base_acts = capture(model, base_ids, plan.sites, plan.sites.keys())
            base_scores = fn(base_logits.float()).float()
            if method == "ig":
                grads, rows, backwards = _site_path(model, base_ids, clean_ids, plan, fn, pos, head_list, base_acts,
                                                   src, n_steps, batch_size, memory_budget)
            else:
                grads, rows, backwards = _path_gradients(model, base_ids, clean_ids, plan, fn, n_steps,
                                                        batch_size, memory_budget)
            forwards = backwards + 1  # and the base run
    attr = attribution_per_site(plan.sites, base_acts, src, grads)
    corrupted_score = float(base_scores[0])
    table = {key: a.tolist() for key, a in attr.items()}  # plain lists: one lookup per row, no tensor indexing
    scores = torch.tensor([corrupted_score + sum(_cell(table, w) for w in row) for row in plan.rows],
                          dtype=torch.float64).float()
    info: Dict[str, Any] = {"path": method, "method": method, "fallback_reason": "", "batch_size": rows,
                            "forwards": forwards + 1, "backwards": backwards, "seconds": time.perf_counter() - t0,
                            "clean_score": float(fn(clean_logits.float())[0]), "corrupted_score": corrupted_score}
    if method != "atp":
        info["steps"] = n_steps
    result = finish(job, scores, info)
    if verify:
        _verify(result, model, plan, scores, int(verify), clean_ids, base_ids, fn, batch_size, memory_budget, fast,
                progress)
    return result


def _check_writable(sites: Dict[str, Any]) -> None:
    for key, site in sites.items():
        if not site.writable:
            raise ConfigError(f"{key!r} is a read-only site ({site.describe()}): it cannot be patched, so it has "
                              "no patching effect to estimate. Pick a writable component.")


def _atp_batch(model: nn.Module, jobs: List[Job], verify: Optional[int], batch_size: Optional[int],
               memory_budget: Optional[int], fast: Optional[bool]) -> List[SweepResult]:
    """AtP for examples of one length: one clean forward, one probed base forward and one backward for all;
    each example's cells as its single call computes them (``verify`` per example)."""
    t0 = time.perf_counter()
    device = next(model.parameters()).device
    sites: Dict[str, Any] = {}
    for job in jobs:
        _check_writable(job.plan.sites)
        sites.update(job.plan.sites)
    clean_ids = torch.cat([j.clean_ids for j in jobs]).to(device)
    base_ids = torch.cat([j.corrupt_ids for j in jobs]).to(device)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return torch.cat([job.fn(logits[k:k + 1]) for k, job in enumerate(jobs)])

    with activations_only(model):
        with torch.no_grad():
            clean_logits, src = capture(model, clean_ids, sites, sites.keys())
        base_scores, base_acts, grads = row_gradients(model, base_ids, sites, metric)
    seconds = (time.perf_counter() - t0) / len(jobs)
    results = []
    for k, job in enumerate(jobs):
        def row(acts: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
            return {key: acts[key][k:k + 1] for key in job.plan.sites}
        attr = attribution_per_site(job.plan.sites, row(base_acts), row(src), row(grads))
        corrupted_score = float(base_scores[k])
        table = {key: a.tolist() for key, a in attr.items()}
        scores = torch.tensor([corrupted_score + sum(_cell(table, w) for w in r) for r in job.plan.rows],
                              dtype=torch.float64).float()
        info: Dict[str, Any] = {"path": "atp", "method": "atp", "fallback_reason": "", "batch_size": 1, "forwards": 2,
                                "backwards": 1, "seconds": seconds, "examples_per_batch": len(jobs),
                                "clean_score": float(job.fn(clean_logits[k:k + 1].float())[0]),
                                "corrupted_score": corrupted_score}
        result = finish(job, scores, info)
        if verify:
            _verify(result, model, job.plan, scores, int(verify), job.clean_ids.to(device), job.corrupt_ids.to(device),
                    job.fn, batch_size, memory_budget, fast, False)
        results.append(result)
    return results


def _cell(table: Dict[str, list], write: Any) -> float:
    a = table[write.site]
    return a[write.head][write.pos] if write.head is not None else a[write.pos]


def _site_path(model: nn.Module, ids: torch.Tensor, source_ids: torch.Tensor, plan: Plan, fn: Any,
               pos: List[int], heads: Optional[List[int]], base: Dict[str, torch.Tensor],
               source: Dict[str, torch.Tensor], steps: int, batch_size: Optional[int], memory_budget: Optional[int]):
    """Integrated gradients on the sites: (gradients averaged over the path, rows per forward, forwards).

    One row per (site, position group, alpha): the site's swept positions in the group (and heads) move to
    ``base + alpha * (source - base)``, alpha at the midpoints ``(k + 0.5) / steps``; the rest of the run is
    computed from the base prompt. A position whose token differs between the prompts is a group of its own
    (its estimate is then its own patching effect, up to the quadrature); the other positions, which differ
    only through what they read from those, move together. Each site and position moves in ``steps`` rows.
    """
    T = ids.shape[1]
    differs = (ids[0] != source_ids[0]).tolist()
    groups = [[p] for p in pos if differs[p]]
    rest = [p for p in pos if not differs[p]]
    groups += [rest] if rest else []
    keys = list(plan.sites)
    alphas = ((torch.arange(steps, dtype=torch.float32) + 0.5) / steps).tolist()
    rows = [(key, group, alpha) for key in keys for group in groups for alpha in alphas]
    deltas = {key: _swept_delta(plan.sites[key], base[key], source[key], heads) for key in keys}
    if batch_size is None:
        batch_size = _backward_batch_size(model, memory_budget, T, len(rows))

    def coefs_of(chunk: List[Any]) -> Dict[str, torch.Tensor]:
        coefs = {key: torch.zeros(len(chunk), T, device=ids.device) for key in keys}
        for r, (key, group, alpha) in enumerate(chunk):
            coefs[key][r, group] = alpha
        return coefs

    total, calls = _summed(site_path_gradients(model, ids, plan.sites, fn, deltas, coefs_of(rows[i:i + batch_size]))
                           for i in range(0, len(rows), batch_size))
    return {k: v / steps for k, v in total.items()}, int(min(batch_size, len(rows))), calls


def _swept_delta(site: Any, base: torch.Tensor, source: torch.Tensor, heads: Optional[List[int]]) -> torch.Tensor:
    """``source - base`` (raw shape), zero outside the site's slice and, for a head list, the other heads."""
    diff = source - base
    view = site.to_view(diff)
    if heads is not None and site.has_heads and view.dim() == 4:
        mask = torch.zeros(view.shape[1], dtype=view.dtype, device=view.device)
        mask[heads] = 1
        view = view * mask.view(1, -1, 1, 1)
    return site.from_view(torch.zeros_like(diff), view)


def _path_gradients(model: nn.Module, ids: torch.Tensor, source_ids: torch.Tensor, plan: Plan, fn: Any,
                    steps: int, batch_size: Optional[int], memory_budget: Optional[int]):
    """EAP-IG: gradients averaged over the midpoints ``(k + 0.5) / steps`` of the straight path between the
    two prompts' token embeddings, ``batch_size`` points per forward."""
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if not isinstance(emb, nn.Module):
        raise ConfigError("method='eap-ig' interpolates the token embeddings, but the model has no "
                          "get_input_embeddings(): use method='ig' or 'atp'.")
    with torch.no_grad():
        e_base, e_source = emb(ids), emb(source_ids)
    T = ids.shape[1]
    if batch_size is None:
        batch_size = _backward_batch_size(model, memory_budget, T, steps)
    alphas = ((torch.arange(steps, dtype=torch.float32) + 0.5) / steps).to(ids.device)
    total, calls = _summed(site_gradients(model, ids, plan.sites, fn, (alphas[i:i + batch_size], e_base, e_source))[2]
                           for i in range(0, steps, batch_size))
    return {k: v / steps for k, v in total.items()}, int(min(batch_size, steps)), calls


def _backward_batch_size(model: nn.Module, memory_budget: Optional[int], tokens: int, rows: int) -> int:
    """Rows per forward + backward: a backward keeps every layer's activations, so the sweeps'
    per-forward estimate is divided by the layers."""
    budget = budget_bytes(model, memory_budget) // (2 * max(1, _n_layers_or_one(model)))
    return auto_batch_size(model, tokens, rows, max(1, budget))


def _summed(chunks: Iterable[Dict[str, torch.Tensor]]) -> Tuple[Dict[str, torch.Tensor], int]:
    """Per site, the gradients of every chunk added up; and the number of chunks (forwards)."""
    total: Dict[str, torch.Tensor] = {}
    calls = 0
    for grads in chunks:
        for key, g in grads.items():
            total[key] = g if key not in total else total[key] + g
        calls += 1
    return total, calls


def _n_layers_or_one(model: nn.Module) -> int:
    try:
        return _n_layers(model)
    except ConfigError:
        return 1


def _verify(result: SweepResult, model: nn.Module, plan: Plan, scores: torch.Tensor, k: int,
            clean_ids: torch.Tensor, base_ids: torch.Tensor, fn: Any, batch_size: Optional[int],
            memory_budget: Optional[int], fast: Optional[bool], progress: Optional[bool]) -> None:
    """Exact patching of the ``k`` cells with the largest estimated effect; adds ``tensors["exact"]``."""
    effect = (scores - result.corrupted_score).abs()
    top: List[int] = torch.argsort(effect, descending=True, stable=True)[:k].tolist()
    sub = Plan(plan.sites, plan.layers, [plan.rows[i] for i in top], [plan.cells[i] for i in top])
    exact, info = _execute(model, sub, clean_ids, base_ids, None, fn, batch_size, memory_budget, fast, progress)
    table = torch.full_like(result.values, float("nan"))
    for value, cell in zip(exact.tolist(), sub.cells):
        table[cell] = value
    result.tensors["exact"] = table
    err = (exact - scores[top]).abs()
    result.info.update(verified=len(top), verify_path=info["path"], verify_forwards=info["forwards"],
                       verify_seconds=info["seconds"], verify_max_abs_error=float(err.max()) if len(top) else 0.0)
