"""``causal_trace`` (ROME) and ``patching_sweep`` (activation patching): the public entry points."""
from __future__ import annotations

import time
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..errors import ConfigError, FastPathFallbackWarning, InputError
from ..sites.registry import find_architecture
from .fast import check_stack, classify, record_corrupted, run_fast
from .result import SweepResult
from .runner import auto_batch_size, capture, logits_of, run_general
from .sharing import exchange, gather_scores, my_rows
from .stack import build_stack
from .spec import (Metric, Plan, Write, add_site, as_ids, check_count, check_layers, check_token_id, make_metric,
                   normalise_positions, subject_range, target_id, token_strings, token_text, vocab_size, window_layers)

Noise = Optional[Tuple[torch.Tensor, int, int]]


def _n_layers(model: nn.Module) -> int:
    arch = find_architecture(model)
    if arch is not None:
        return int(arch.num_layers(model.config))
    config = getattr(model, "config", None)
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        if getattr(config, name, None) is not None:
            return int(getattr(config, name))
    raise ConfigError("Cannot tell how many layers the model has: pass layers=[...] explicitly.")


def _n_layers_or_none(model: nn.Module) -> Optional[int]:
    try:
        return _n_layers(model)
    except ConfigError:
        return None


def _check_common(model: nn.Module, layers: Optional[Sequence[int]], batch_size: Optional[int],
                  components: Sequence[str]) -> Optional[List[int]]:
    """Checks shared by both sweeps, done before any forward; returns the explicit layers (or None)."""
    if isinstance(components, str):
        raise InputError(f"components must be a list of names, e.g. components=[{components!r}]; got a string.")
    if not list(components):
        raise InputError("components is empty: give at least one, e.g. components=['block_output'].")
    if batch_size is not None:
        check_count(batch_size, "batch_size", "rows per forward")
    return check_layers(layers, _n_layers_or_none(model))


@contextmanager
def _eval_no_grad(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _progress(total: int, progress: Optional[bool]) -> Tuple[Callable[[int], None], Callable[[], None]]:
    """A tqdm bar shown once the sweep has run for a second (never when ``progress=False``)."""
    if progress is False or total == 0:
        return (lambda n: None), (lambda: None)
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="patching", unit="run", delay=0.0 if progress else 1.0, leave=False)
    return bar.update, bar.close


def _execute(model: nn.Module, plan: Plan, clean_ids: torch.Tensor, corrupt_ids: torch.Tensor, noise: Noise,
             metric: Callable[[torch.Tensor], torch.Tensor], batch_size: Optional[int],
             memory_budget: Optional[int], fast: Optional[bool], progress: Optional[bool]) -> Tuple[torch.Tensor, Dict[str, Any]]:
    """Scores of every row of ``plan``, plus run information (path, batch size, forwards, seconds)."""
    with _eval_no_grad(model):
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
    tick, close = _progress(len(rows), progress)
    path = "fast" if corrupted is not None else "general"
    if path == "general" and stack is not None:
        warnings.warn(f"Sweep used the general batched path: {reason}.", FastPathFallbackWarning, stacklevel=4)
    if path == "general" and fast:
        close()
        raise ConfigError(f"fast=True, but the fast path cannot run this sweep: {reason}. Use fast=None.")
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


def _setup(model: nn.Module, clean: Any, corrupted: Any, target: Any, tokenizer: Any, foil: Any,
           metric: Metric) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[int], Callable]:
    clean_ids = as_ids(clean, tokenizer, "clean prompt")
    corrupt_ids = None
    if corrupted is not None:
        corrupt_ids = as_ids(corrupted, tokenizer, "corrupted prompt")
        if corrupt_ids.shape[1] != clean_ids.shape[1]:
            raise InputError(
                f"The clean prompt has {clean_ids.shape[1]} tokens but the corrupted one has "
                f"{corrupt_ids.shape[1]}: positions are patched one-to-one, so give prompts of equal length."
            )
    tid = None
    if target is not None:
        tid = target_id(target, tokenizer)
    elif not callable(metric):
        with _eval_no_grad(model):
            out = model(input_ids=clean_ids.to(next(model.parameters()).device))
        tid = int(logits_of(out)[0, -1].argmax())
    fid = target_id(foil, tokenizer) if foil is not None else None
    size = vocab_size(model)
    check_token_id(tid, size, "target")
    check_token_id(fid, size, "foil")
    return clean_ids, corrupt_ids, tid, make_metric(metric, tid, fid)


def patching_sweep(model: nn.Module, base: Any, source: Any, target: Any = None, *,
                   components: Sequence[str] = ("block_output",), layers: Optional[Sequence[int]] = None,
                   positions: Optional[Sequence[int]] = None, heads: Union[None, str, Sequence[int]] = None,
                   metric: Metric = "prob", foil: Any = None, tokenizer: Any = None,
                   batch_size: Optional[int] = None, memory_budget: Optional[int] = None,
                   fast: Optional[bool] = None, progress: Optional[bool] = None) -> SweepResult:
    """Activation patching: run ``base`` (the corrupted prompt) once per site x position (x head),
    each time copying that one activation from ``source`` (the clean prompt); score each run.

    ``components``: abstract names (``block_output``, ``mlp_output``, ``attention_output``,
    ``head_attention_value_output``, ...) or raw module paths (placed as given, no layer axis).
    ``heads="all"`` or a list sweeps heads of head components. ``metric``: ``"prob"``,
    ``"logprob"``, ``"logit"``, ``"logit_diff"`` (with ``foil``) or ``f(logits[rows, vocab]) -> [rows]``
    on the last position. Returns a ``SweepResult`` with axes (component, layer, position[, head]).
    """
    explicit = _check_common(model, layers, batch_size, components)
    clean_ids, base_ids, tid, fn = _setup(model, source, base, target, tokenizer, foil, metric)
    plan, lay, pos, head_list = patching_plan(model, components, explicit, positions, heads, clean_ids.shape[1])
    scores, info = _execute(model, plan, clean_ids, base_ids, None, fn, batch_size, memory_budget, fast, progress)
    shape = (len(components), len(lay), len(pos)) + ((len(head_list),) if head_list else ())
    result = _result("patching_sweep", scores, plan, shape, list(components), lay, pos, head_list,
                     token_strings(clean_ids, tokenizer), metric, tid, info, None, {})
    result.info["target_text"] = token_text(tid, tokenizer)
    return result


def patching_plan(model: nn.Module, components: Sequence[str], layers: Optional[Sequence[int]],
                  positions: Optional[Sequence[int]], heads: Union[None, str, Sequence[int]],
                  T: int) -> Tuple[Plan, List[int], List[int], Optional[List[int]]]:
    """The rows of an activation-patching sweep (one write each) and its axes: (plan, layers, positions, heads).

    Shared by ``patching_sweep`` and ``attribution_patching`` so both give the same cells.
    """
    pos = normalise_positions(positions, T)
    lay = list(layers) if layers is not None else list(range(_n_layers(model)))
    plan = Plan({}, {}, [], [])
    head_list: Optional[List[int]] = None
    for c, comp in enumerate(components):
        raw = "." in comp or "[" in comp
        for li, layer in enumerate(lay):
            if raw and li > 0:
                break
            key = add_site(plan.sites, plan.layers, model, comp, None if raw else layer)
            site = plan.sites[key]
            if heads is not None:
                if not site.has_heads:
                    raise ConfigError(f"heads=... needs head components; {comp!r} has no head view.")
                head_list = list(range(site.n_heads)) if heads == "all" else [int(h) for h in heads]
            for pi, p in enumerate(pos):
                for hi, h in enumerate(head_list if heads is not None else [None]):
                    plan.rows.append((Write(key, p, h),))
                    plan.cells.append((c, li, pi) if h is None else (c, li, pi, hi))
    return plan, lay, pos, head_list


def causal_trace(model: nn.Module, clean: Any, corrupted: Any = None, target: Any = None, *,
                 subject: Any = None, noise: Optional[float] = None, samples: int = 1, seed: int = 0,
                 layers: Optional[Sequence[int]] = None, positions: Optional[Sequence[int]] = None,
                 components: Sequence[str] = ("block_output",), window: int = 1, sever: Optional[str] = None,
                 metric: Metric = "prob", foil: Any = None, tokenizer: Any = None,
                 batch_size: Optional[int] = None, memory_budget: Optional[int] = None,
                 fast: Optional[bool] = None, progress: Optional[bool] = None) -> SweepResult:
    """ROME's causal trace: corrupt the prompt, then restore one clean state at a time.

    Corruption: ``corrupted`` (a counterfactual prompt of the same length) or, when it is None,
    Gaussian noise on the token embeddings of ``subject`` (text or token range) with standard
    deviation ``noise`` (default 3 x the std of the embedding matrix), averaged over ``samples``
    noise draws. ``window``: restore that many layers around each layer (ROME uses 10) for every
    component except ``block_output``. ``sever="mlp"`` / ``"attention"``: restore the block output
    while the MLP / attention outputs of later layers at that position stay at corrupted values.
    Scores are ``metric`` of the last position (default: probability of ``target``, which
    defaults to the clean prompt's top token).
    """
    explicit = _check_common(model, layers, batch_size, components)
    window = check_count(window, "window", "layers restored together around each layer; ROME uses 10")
    samples = check_count(samples, "samples", "noise draws to average; ROME uses 10")
    if corrupted is None and subject is None:
        raise InputError("causal_trace needs a corruption: pass subject=... (noised) or corrupted=... (a prompt).")
    subj = subject_range(as_ids(clean, tokenizer, "clean prompt"), subject, tokenizer) if subject is not None else None
    clean_ids, corrupt_ids, tid, fn = _setup(model, clean, corrupted, target, tokenizer, foil, metric)
    T = clean_ids.shape[1]
    L = _n_layers(model)
    if sever not in (None, "mlp", "attention"):
        raise ConfigError(f"sever must be None, 'mlp' or 'attention'; got {sever!r}.")
    if sever is not None and tuple(components) != ("block_output",):
        raise ConfigError("sever=... applies to block_output traces: use components=['block_output'].")
    pos = normalise_positions(positions, T)
    lay = explicit if explicit is not None else list(range(L))
    plan = Plan({}, {}, [], [])
    frozen = "mlp_output" if sever == "mlp" else "attention_output"
    for c, comp in enumerate(components):
        w = 1 if comp == "block_output" else int(window)
        for li, layer in enumerate(lay):
            keys = [add_site(plan.sites, plan.layers, model, comp, l) for l in window_layers(layer, w, L)]
            freeze = ([add_site(plan.sites, plan.layers, model, frozen, l) for l in range(layer + 1, L)]
                      if sever else [])
            for pi, p in enumerate(pos):
                plan.rows.append(tuple(Write(k, p) for k in keys) + tuple(Write(k, p, None, "corrupted") for k in freeze))
                plan.cells.append((c, li, pi))
    shape = (len(components), len(lay), len(pos))
    noise_tensors: Dict[str, torch.Tensor] = {}
    if corrupted is not None:
        scores, info = _execute(model, plan, clean_ids, corrupt_ids, None, fn, batch_size, memory_budget, fast, progress)
    else:
        emb = model.get_input_embeddings().weight
        scale = float(noise) if noise is not None else 3.0 * float(emb.detach().float().std())
        gen = torch.Generator().manual_seed(seed)
        total, infos = None, []
        for s in range(samples):
            draw = torch.randn(subj[1] - subj[0], emb.shape[1], generator=gen) * scale
            noise_tensors[f"noise_{s}"] = draw
            sc, inf = _execute(model, plan, clean_ids, clean_ids, (draw, subj[0], subj[1]), fn,
                               batch_size, memory_budget, fast, progress)
            total = sc if total is None else total + sc
            infos.append(inf)
        scores = total / samples
        info = dict(infos[0])
        info["corrupted_score"] = sum(i["corrupted_score"] for i in infos) / len(infos)
        info["seconds"] = sum(i["seconds"] for i in infos)
        info["forwards"] = sum(i["forwards"] for i in infos)
        info["noise_scale"] = scale
    info.update(window=window, sever=sever, samples=samples)
    result = _result("causal_trace", scores, plan, shape, list(components), lay, pos, None,
                     token_strings(clean_ids, tokenizer), metric, tid, info, subj, noise_tensors)
    result.info["target_text"] = token_text(tid, tokenizer)
    return result


def _result(kind: str, scores: torch.Tensor, plan: Plan, shape: Tuple[int, ...], components: List[str],
            layers: List[int], positions: List[int], heads: Optional[List[int]], tokens: List[str],
            metric: Metric, tid: Optional[int], info: Dict[str, Any], subj: Optional[Tuple[int, int]],
            extra: Dict[str, torch.Tensor]) -> SweepResult:
    values = torch.zeros(shape)
    for score, cell in zip(scores.tolist(), plan.cells):
        values[cell] = score
    # A raw module path has no layer (its site is placed once): its scores fill the whole layer axis.
    for c in sorted({cell[0] for row, cell in zip(plan.rows, plan.cells) if plan.layers.get(row[0].site, 0) is None}):
        values[c] = values[c, :1].clone()
    return SweepResult(
        values=values, components=components, layers=layers, positions=positions, heads=heads,
        tokens=[tokens[p] for p in positions], metric=metric if isinstance(metric, str) else getattr(metric, "__name__", "custom"),
        target=tid, kind=kind, subject=subj, info=info, tensors=extra,
    )
