"""A sweep over a dataset: parse the examples, check each, run them in shared forwards, keep going.

Every example becomes the ``Job`` its single call would build (``plans.py``; example ``i`` of a
noised trace draws with seed ``seed + i`` unless its row gives ``seed``). Jobs are checked
before any forward; one that cannot run is an error naming its index (``on_error="raise"``) or
is reported in ``result.errors`` (``"skip"``). The rest run grouped by prompt length, a few
examples at a time sharing each forward (``multi.py``), with a progress bar over examples.
``save_to`` writes each example as it completes and resumes from what is there (``resume.py``).
Inside ``distributed_sweep`` the examples are split over the ranks (every ``world``-th) and
every rank gathers all results.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from torch import nn

from ..errors import ConfigError, InputError, IntervenableError
from .dataset_result import DatasetResult
from .examples import Example, examples, is_rows
from .execute import check_common, n_layers_or_none, progress_bar
from .multi import run_jobs
from .plans import Job, finish, prepare_patch, prepare_trace
from .resume import ResultStore, call_record
from .result import SweepResult
from .runner import budget_bytes
from .sharing import rank_world, rows_unshared

MAX_EXAMPLES_PER_BATCH = 64
# Options that do not change results (the tokenizer is recorded by its vocabulary instead).
RESULT_IGNORED = ("batch_size", "memory_budget", "fast", "progress", "examples_per_batch", "tokenizer")

RunOne = Callable[[Example, int], SweepResult]
RunBatch = Callable[[List[Job]], List[SweepResult]]


def parse(kind: str, fields: Dict[str, Any]) -> List[Example]:
    """The examples of a call's prompt arguments (rows or lists), by the sweep's argument names."""
    if kind == "causal_trace":
        return list(examples(None if not is_rows(fields["prompt"]) else fields["prompt"],
                             clean=None if is_rows(fields["prompt"]) else fields["prompt"],
                             corrupted=fields.get("corrupted"), subject=fields.get("subject"),
                             target=fields.get("target"), foil=fields.get("foil"), marks=fields.get("marks")))
    base = fields["base"]
    return list(examples(base if is_rows(base) else None, clean=fields.get("source"),
                         corrupted=None if is_rows(base) else base, target=fields.get("target"),
                         foil=fields.get("foil"), marks=fields.get("marks")))


def _prepare(kind: str, model: nn.Module, ex: Example, i: int, options: Dict[str, Any]) -> Job:
    if kind == "causal_trace":
        opts = dict(options)
        opts["seed"] = int(ex.seed) if ex.seed is not None else int(opts.get("seed", 0)) + i
        return prepare_trace(model, ex.clean, ex.corrupted, ex.target, subject=ex.subject, foil=ex.foil, **opts)
    if ex.corrupted is None:
        raise InputError("it has no base (corrupted) prompt: give 'base' (the prompt that is run and patched) "
                         "and 'source' (the prompt whose activations are copied in).")
    return prepare_patch(model, ex.corrupted, ex.clean, ex.target, foil=ex.foil, kind=kind, **options)


def _auto_examples(model: nn.Module, job: Job, memory_budget: Optional[int]) -> int:
    """Examples per shared batch: their cached runs (site values, layer inputs, keys/values) fit a quarter
    of the memory budget; at most ``MAX_EXAMPLES_PER_BATCH`` (examples in flight when a run is killed)."""
    config = getattr(model, "config", None)
    d = int(getattr(config, "hidden_size", None) or getattr(config, "n_embd", 1024))
    L = n_layers_or_none(model) or 1
    per = job.length * d * 4 * (2 * len(job.plan.sites) + 3 * L + 2)
    return int(max(1, min(MAX_EXAMPLES_PER_BATCH, budget_bytes(model, memory_budget) // (4 * max(per, 1)))))


def _fail(i: int, exc: Exception) -> IntervenableError:
    cls = type(exc) if isinstance(exc, IntervenableError) else InputError
    return cls(f"Example {i} cannot run: {exc}")


def run_dataset(kind: str, model: nn.Module, fields: Dict[str, Any], options: Dict[str, Any], *,
                memory_budget: Optional[int] = None, fast: Optional[bool] = None, progress: Optional[bool] = None,
                save_to: Any = None, on_error: str = "raise", examples_per_batch: Optional[int] = None,
                run_one: Optional[RunOne] = None, run_batch: Optional[RunBatch] = None,
                record_options: Optional[Dict[str, Any]] = None) -> DatasetResult:
    """Run ``kind`` over the examples of ``fields``: each length's jobs in shared batches (``multi.py``, or
    ``run_batch(jobs)``, e.g. AtP's shared backward), or ``run_one(example, index)`` one by one (a sweep
    without a batched dataset path, e.g. integrated gradients)."""
    if on_error not in ("raise", "skip"):
        raise ConfigError(f"on_error must be 'raise' (stop at the first example that cannot run) or 'skip' (report "
                          f"it and go on); got {on_error!r}.")
    if examples_per_batch is not None and (isinstance(examples_per_batch, bool) or int(examples_per_batch) < 1):
        raise ConfigError(f"examples_per_batch must be a whole number >= 1; got {examples_per_batch!r}.")
    check_common(model, options.get("layers"), options.get("batch_size"), options.get("components", ("block_output",)))
    exs = parse(kind, fields)
    n = len(exs)
    t0 = time.perf_counter()
    rank, world = rank_world()
    recorded = {k: v for k, v in (record_options or options).items() if k not in RESULT_IGNORED}
    store = (ResultStore(save_to, call_record(kind, model, exs, recorded, options.get("tokenizer")), write=rank == 0)
             if save_to is not None else None)
    done, errors = store.load(n) if store is not None else ({}, {})
    resumed = len(done) + len(errors)
    mine = [i for i in range(rank, n, world) if i not in done and i not in errors]

    def report(i: int, exc: Exception) -> None:
        if on_error == "raise":
            raise _fail(i, exc) from None
        errors[i] = str(_fail(i, exc))
        if store is not None:
            store.put_error(i, errors[i])

    tick, close = progress_bar(len(mine), progress, desc=kind.replace("_", " "), unit="example", leave=True)
    try:
        with rows_unshared():
            if run_one is not None:
                _each(mine, exs, run_one, done, store, report, tick)
            else:
                jobs: Dict[int, Job] = {}
                for i in mine:
                    try:
                        jobs[i] = _prepare(kind, model, exs[i], i, options)
                    except IntervenableError as exc:
                        report(i, exc)
                        tick(1)
                _batched(model, jobs, done, store, tick, options.get("batch_size"), memory_budget, fast,
                         examples_per_batch, run_batch)
    finally:
        close()
    if world > 1:
        done, errors = _gather(done, errors, mine)
    info = {"examples": n, "failed": len(errors), "resumed": resumed, "seconds": time.perf_counter() - t0}
    if world > 1:
        info["ranks"] = world
    return DatasetResult([done.get(i) for i in range(n)], kind, dict(sorted(errors.items())),
                         [e.marks for e in exs], info)


def _each(mine: List[int], exs: List[Example], run_one: RunOne, done: Dict[int, SweepResult],
          store: Optional[ResultStore], report: Callable[[int, Exception], None], tick: Callable[[int], None]) -> None:
    for i in mine:
        try:
            done[i] = run_one(exs[i], i)
        except IntervenableError as exc:
            report(i, exc)
        else:
            if store is not None:
                store.put(i, done[i])
        tick(1)


def _batched(model: nn.Module, jobs: Dict[int, Job], done: Dict[int, SweepResult], store: Optional[ResultStore],
             tick: Callable[[int], None], batch_size: Optional[int], memory_budget: Optional[int],
             fast: Optional[bool], examples_per_batch: Optional[int], run_batch: Optional[RunBatch] = None) -> None:
    """Jobs grouped by prompt length, ``examples_per_batch`` at a time in shared forwards, stored as they finish."""
    by_length: Dict[int, List[int]] = {}
    for i, job in jobs.items():
        by_length.setdefault(job.length, []).append(i)
    for length in sorted(by_length):
        idx = by_length[length]
        step = int(examples_per_batch) if examples_per_batch else _auto_examples(model, jobs[idx[0]], memory_budget)
        for c in range(0, len(idx), step):
            chunk = idx[c:c + step]
            if run_batch is not None:
                results = run_batch([jobs[i] for i in chunk])
            else:
                results = [finish(jobs[i], scores, info) for i, (scores, info) in
                           zip(chunk, run_jobs(model, [jobs[i] for i in chunk], batch_size, memory_budget, fast))]
            for i, result in zip(chunk, results):
                done[i] = result
                if store is not None:
                    store.put(i, done[i])
            tick(len(chunk))


def _gather(done: Dict[int, SweepResult], errors: Dict[int, str], mine: List[int]) -> Tuple[Dict[int, SweepResult], Dict[int, str]]:
    """Every rank's finished examples, on every rank."""
    from ..distributed import gather

    parts = gather([({i: done[i] for i in mine if i in done}, {i: errors[i] for i in mine if i in errors})],
                   all_ranks=True)
    all_done, all_errors = dict(done), dict(errors)
    for d, e in parts:
        all_done.update(d)
        all_errors.update(e)
    return all_done, all_errors
