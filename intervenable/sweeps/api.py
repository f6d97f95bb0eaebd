"""``causal_trace`` (ROME) and ``patching_sweep`` (activation patching): the public entry points.

Each takes one prompt (pair) or a dataset: lists (one entry per example, a single value
broadcast), or rows (dicts, a ``datasets.Dataset``, JSONL lines; parsed by ``examples.py``).
One prompt runs the single-example path (``plans.py`` + ``execute.py``); a dataset runs
``dataset.py``, whose per-example results equal those single calls.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

from torch import nn

from ..errors import InputError

from .dataset import run_dataset
from .dataset_result import DatasetResult
from .examples import is_dataset
from .execute import execute
from .plans import combine_samples, finish, prepare_patch, prepare_trace
from .result import SweepResult
from .spec import Metric


def patching_sweep(model: nn.Module, base: Any, source: Any = None, target: Any = None, *,
                   components: Sequence[str] = ("block_output",), layers: Optional[Sequence[int]] = None,
                   positions: Optional[Sequence[int]] = None, heads: Union[None, str, Sequence[int]] = None,
                   together: bool = False, metric: Metric = "prob", foil: Any = None, tokenizer: Any = None,
                   batch_size: Optional[int] = None, memory_budget: Optional[int] = None,
                   fast: Optional[bool] = None, progress: Optional[bool] = None, marks: Any = None,
                   save_to: Any = None, on_error: str = "raise",
                   examples_per_batch: Optional[int] = None) -> Union[SweepResult, DatasetResult]:
    """Activation patching: run ``base`` (the corrupted prompt) once per site x position (x head),
    each time copying that one activation from ``source`` (the clean prompt); score each run.

    ``components``: abstract names (``block_output``, ``mlp_output``, ``attention_output``,
    ``head_attention_value_output``, ...) or raw module paths (placed as given, no layer axis).
    ``heads="all"`` or a list sweeps heads of head components. ``together=True`` patches each site
    (each head) at every swept position at once (TransformerLens's ``..._all_pos``): the position
    axis has one entry, ``"all"``. ``metric``: ``"prob"``, ``"logprob"``, ``"logit"``,
    ``"logit_diff"`` (with ``foil``) or ``f(logits[rows, vocab]) -> [rows]`` on the last position.
    Returns a ``SweepResult`` with axes (component, layer, position[, head]).

    Datasets: ``base`` / ``source`` / ``target`` / ``foil`` / ``marks`` as lists (one per example)
    or ``base`` as rows (dicts with ``base``, ``source``, ``target``, ``foil``, ``marks``) give a
    ``DatasetResult`` (``per_example``, ``average(...)``); ``save_to`` (a folder) keeps results as
    they complete and resumes; ``on_error="skip"`` reports an example that cannot run and goes on;
    ``examples_per_batch`` bounds how many examples share forwards (default: from the memory budget).
    """
    if is_dataset(base, source):
        return run_dataset("patching_sweep", model, dict(
            base=base, source=source, target=target, foil=foil, marks=marks), dict(
            components=components, layers=layers, positions=positions, heads=heads, together=together,
            metric=metric, tokenizer=tokenizer, batch_size=batch_size), memory_budget=memory_budget, fast=fast,
            progress=progress, save_to=save_to, on_error=on_error, examples_per_batch=examples_per_batch)
    if source is None:
        raise InputError("patching_sweep needs source=... (the clean prompt whose activations are copied in), "
                         "or rows of a dataset with 'base' and 'source'.")
    job = prepare_patch(model, base, source, target, components=components, layers=layers, positions=positions,
                        heads=heads, metric=metric, foil=foil, tokenizer=tokenizer, batch_size=batch_size,
                        together=together)
    scores, info = execute(model, job.plan, job.clean_ids, job.corrupt_ids, None, job.fn, batch_size, memory_budget,
                           fast, progress)
    return finish(job, scores, info)


def causal_trace(model: nn.Module, clean: Any, corrupted: Any = None, target: Any = None, *,
                 subject: Any = None, noise: Optional[float] = None, samples: int = 1, seed: int = 0,
                 layers: Optional[Sequence[int]] = None, positions: Optional[Sequence[int]] = None,
                 components: Sequence[str] = ("block_output",), window: int = 1, sever: Optional[str] = None,
                 metric: Metric = "prob", foil: Any = None, tokenizer: Any = None,
                 batch_size: Optional[int] = None, memory_budget: Optional[int] = None,
                 fast: Optional[bool] = None, progress: Optional[bool] = None, marks: Any = None,
                 save_to: Any = None, on_error: str = "raise",
                 examples_per_batch: Optional[int] = None) -> Union[SweepResult, DatasetResult]:
    """ROME's causal trace: corrupt the prompt, then restore one clean state at a time.

    Corruption: ``corrupted`` (a counterfactual prompt of the same length) or, when it is None,
    Gaussian noise on the token embeddings of ``subject`` (text or token range) with standard
    deviation ``noise`` (default 3 x the std of the embedding matrix), averaged over ``samples``
    noise draws. ``window``: restore that many layers around each layer (ROME uses 10) for every
    component except ``block_output``. ``sever="mlp"`` / ``"attention"``: restore the block output
    while the MLP / attention outputs of later layers at that position stay at corrupted values.
    Scores are ``metric`` of the last position (default: probability of ``target``, which
    defaults to the clean prompt's top token).

    Datasets: ``clean`` (and ``corrupted``, ``target``, ``subject``, ``foil``, ``marks``) as lists,
    or ``clean`` as rows (dicts with ``prompt``, ``corrupted``, ``subject``, ``target``, ``foil``,
    ``marks``, ``seed``) give a ``DatasetResult``. Example ``i`` draws its noise with seed
    ``seed + i`` (a row's own ``seed`` wins), so it equals ``causal_trace(..., seed=seed + i)``.
    ``save_to``, ``on_error`` and ``examples_per_batch``: as in ``patching_sweep``.
    """
    if is_dataset(clean, corrupted):
        return run_dataset("causal_trace", model, dict(
            prompt=clean, corrupted=corrupted, target=target, subject=subject, foil=foil, marks=marks), dict(
            noise=noise, samples=samples, seed=seed, layers=layers, positions=positions, components=components,
            window=window, sever=sever, metric=metric, tokenizer=tokenizer, batch_size=batch_size),
            memory_budget=memory_budget, fast=fast, progress=progress, save_to=save_to, on_error=on_error,
            examples_per_batch=examples_per_batch)
    job = prepare_trace(model, clean, corrupted, target, subject=subject, noise=noise, samples=samples, seed=seed,
                        layers=layers, positions=positions, components=components, window=window, sever=sever,
                        metric=metric, foil=foil, tokenizer=tokenizer, batch_size=batch_size)
    parts = [execute(model, job.plan, job.clean_ids, job.corrupt_ids, noise_s, job.fn, batch_size, memory_budget,
                     fast, progress) for noise_s in job.noises()]
    scores, info = combine_samples(job, parts)
    return finish(job, scores, info)
