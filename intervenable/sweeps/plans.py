"""One example's sweep as data (``Job``): its checked prompts, target, metric, plan of rows, and the
result it becomes. ``causal_trace`` / ``patching_sweep`` build one job per example, the same way
for one prompt or a dataset, so a dataset's example equals the single call cell for cell.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..errors import ConfigError, InputError
from .execute import check_common, eval_no_grad, n_layers
from .result import SweepResult
from .runner import logits_of
from .spec import (Metric, Plan, Write, add_site, as_ids, check_count, check_token_id, make_metric,
                   normalise_positions, subject_range, target_id, token_strings, token_text, vocab_size, window_layers)

ALL_POSITIONS = "all"  # positions="all" with together=True: one label for the patched-together positions


@dataclass
class Job:
    """One example's sweep, checked and ready to run (no forward done yet, except a default target)."""

    kind: str
    plan: Plan
    clean_ids: torch.Tensor  # [1, T]
    corrupt_ids: torch.Tensor  # [1, T]; the clean prompt itself under noise
    fn: Callable[[torch.Tensor], torch.Tensor]
    tid: Optional[int]
    shape: Tuple[int, ...]
    components: List[str]
    layers: List[int]
    positions: List[int]
    heads: Optional[List[int]]
    tokens: List[str]
    metric: Metric
    target_text: Optional[str] = None
    subject: Optional[Tuple[int, int]] = None
    draws: List[torch.Tensor] = field(default_factory=list)  # one noise draw per sample; empty: a corrupted prompt
    extra_info: Dict[str, Any] = field(default_factory=dict)
    together: bool = False  # every swept position patched at once (one position column)

    @property
    def length(self) -> int:
        return int(self.clean_ids.shape[1])

    def noises(self) -> List[Optional[Tuple[torch.Tensor, int, int]]]:
        """The corruption of each sample: ``(draw, start, end)`` on the token embeddings, or ``[None]``."""
        if not self.draws:
            return [None]
        return [(d, self.subject[0], self.subject[1]) for d in self.draws]


def setup(model: nn.Module, clean: Any, corrupted: Any, target: Any, tokenizer: Any, foil: Any,
          metric: Metric) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[int], Callable]:
    """Token ids of both prompts (equal lengths), the target and foil ids, and the metric function."""
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
        with eval_no_grad(model):
            out = model(input_ids=clean_ids.to(next(model.parameters()).device))
        tid = int(logits_of(out)[0, -1].argmax())
    fid = target_id(foil, tokenizer) if foil is not None else None
    size = vocab_size(model)
    check_token_id(tid, size, "target")
    check_token_id(fid, size, "foil")
    return clean_ids, corrupt_ids, tid, make_metric(metric, tid, fid)


def patching_plan(model: nn.Module, components: Sequence[str], layers: Optional[Sequence[int]],
                  positions: Optional[Sequence[int]], heads: Union[None, str, Sequence[int]],
                  T: int, together: bool = False) -> Tuple[Plan, List[int], List[int], Optional[List[int]]]:
    """The rows of an activation-patching sweep (one write each) and its axes: (plan, layers, positions, heads).

    ``together``: one row per site (and head) writing every swept position at once; the position
    axis then has one entry. Shared by ``patching_sweep`` and ``attribution_patching`` so both give
    the same cells.
    """
    pos = normalise_positions(positions, T)
    lay = list(layers) if layers is not None else list(range(n_layers(model)))
    plan = Plan({}, {}, [], [])
    head_list: Optional[List[int]] = None
    groups = [pos] if together else [[p] for p in pos]
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
            for pi, group in enumerate(groups):
                for hi, h in enumerate(head_list if heads is not None else [None]):
                    plan.rows.append(tuple(Write(key, p, h) for p in group))
                    plan.cells.append((c, li, pi) if h is None else (c, li, pi, hi))
    return plan, lay, pos, head_list


def prepare_patch(model: nn.Module, base: Any, source: Any, target: Any, *, components: Sequence[str],
                  layers: Optional[Sequence[int]], positions: Optional[Sequence[int]],
                  heads: Union[None, str, Sequence[int]], metric: Metric, foil: Any, tokenizer: Any,
                  batch_size: Optional[int], together: bool = False, kind: str = "patching_sweep") -> Job:
    """The job of ``patching_sweep(model, base, source, target, ...)``: every argument checked."""
    explicit = check_common(model, layers, batch_size, components)
    if together and heads is None and any(c.startswith("head_") for c in components):
        raise ConfigError("together=True with a head component needs heads='all' (or a list): one row per head.")
    clean_ids, base_ids, tid, fn = setup(model, source, base, target, tokenizer, foil, metric)
    plan, lay, pos, head_list = patching_plan(model, components, explicit, positions, heads, clean_ids.shape[1],
                                              together)
    toks = token_strings(clean_ids, tokenizer)
    shown = [-1] if together else pos
    labels = [ALL_POSITIONS] if together else [toks[p] for p in pos]
    shape = (len(components), len(lay), len(shown)) + ((len(head_list),) if head_list else ())
    extra: Dict[str, Any] = {"prompt_tokens": int(clean_ids.shape[1])}
    if together:
        extra["together_positions"] = pos
    return Job(kind, plan, clean_ids, base_ids, fn, tid, shape, list(components), lay, shown, head_list, labels,
               metric, token_text(tid, tokenizer), extra_info=extra, together=together)


def prepare_trace(model: nn.Module, clean: Any, corrupted: Any, target: Any, *, subject: Any,
                  noise: Optional[float], samples: int, seed: int, layers: Optional[Sequence[int]],
                  positions: Optional[Sequence[int]], components: Sequence[str], window: int,
                  sever: Optional[str], metric: Metric, foil: Any, tokenizer: Any,
                  batch_size: Optional[int]) -> Job:
    """The job of ``causal_trace(...)``: every argument checked, the noise drawn from ``seed``."""
    explicit = check_common(model, layers, batch_size, components)
    window = check_count(window, "window", "layers restored together around each layer; ROME uses 10")
    samples = check_count(samples, "samples", "noise draws to average; ROME uses 10")
    if corrupted is None and subject is None:
        raise InputError("causal_trace needs a corruption: pass subject=... (noised) or corrupted=... (a prompt).")
    subj = subject_range(as_ids(clean, tokenizer, "clean prompt"), subject, tokenizer) if subject is not None else None
    clean_ids, corrupt_ids, tid, fn = setup(model, clean, corrupted, target, tokenizer, foil, metric)
    T = clean_ids.shape[1]
    L = n_layers(model)
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
    extra: Dict[str, Any] = {"window": window, "sever": sever, "samples": samples, "prompt_tokens": T}
    draws: List[torch.Tensor] = []
    if corrupted is None:
        emb = model.get_input_embeddings().weight
        scale = float(noise) if noise is not None else 3.0 * float(emb.detach().float().std())
        gen = torch.Generator().manual_seed(seed)
        draws = [torch.randn(subj[1] - subj[0], emb.shape[1], generator=gen) * scale for _ in range(samples)]
        extra["noise_scale"] = scale
        corrupt_ids = clean_ids
    toks = token_strings(clean_ids, tokenizer)
    return Job("causal_trace", plan, clean_ids, corrupt_ids, fn, tid, (len(components), len(lay), len(pos)),
               list(components), lay, pos, None, [toks[p] for p in pos], metric, token_text(tid, tokenizer),
               subj, draws, extra)


def combine_samples(job: Job, parts: List[Tuple[torch.Tensor, Dict[str, Any]]]) -> Tuple[torch.Tensor, Dict[str, Any]]:
    """One (scores, info) from the runs of each noise sample: scores averaged, costs summed."""
    if len(parts) == 1 and not job.draws:
        return parts[0]
    total = None
    for sc, _ in parts:
        total = sc if total is None else total + sc
    infos = [i for _, i in parts]
    info = dict(infos[0])
    info["corrupted_score"] = sum(i["corrupted_score"] for i in infos) / len(infos)
    info["seconds"] = sum(i["seconds"] for i in infos)
    info["forwards"] = sum(i["forwards"] for i in infos)
    return total / len(parts), info


def finish(job: Job, scores: torch.Tensor, info: Dict[str, Any]) -> SweepResult:
    """The job's ``SweepResult`` from the scores of its rows (in plan order) and the run's information."""
    plan = job.plan
    values = torch.zeros(job.shape)
    for score, cell in zip(scores.tolist(), plan.cells):
        values[cell] = score
    # A raw module path has no layer (its site is placed once): its scores fill the whole layer axis.
    for c in sorted({cell[0] for row, cell in zip(plan.rows, plan.cells) if plan.layers.get(row[0].site, 0) is None}):
        values[c] = values[c, :1].clone()
    info = dict(info)
    info.update(job.extra_info)
    info["target_text"] = job.target_text
    metric = job.metric if isinstance(job.metric, str) else getattr(job.metric, "__name__", "custom")
    return SweepResult(values=values, components=job.components, layers=job.layers, positions=job.positions,
                       heads=job.heads, tokens=job.tokens, metric=metric, target=job.tid, kind=job.kind,
                       subject=job.subject, info=info,
                       tensors={f"noise_{s}": d for s, d in enumerate(job.draws)})
