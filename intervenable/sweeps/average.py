"""Averages over a dataset's per-example results, aligned by subject, by the end, or by named marks.

Each alignment maps an example's swept positions to output rows: ``"subject"`` gives ROME's six
rows (its figure over 1,209 facts) and, like ROME, pools tokens: the middle subject tokens and
the further tokens are each one sample of their row; ``"end"`` aligns the last ``K`` tokens
(``K``: the shortest example); ``marks`` (``{"S1": 3, "IO": 5, "END": -1}`` per example) give
one row per name; ``None`` needs the same positions in every example. ``normalise=True`` first
maps each example to ``(patched - corrupted) / (clean - corrupted)``. Rows report the mean and
the standard error over their samples (``tensors["stderr"]``, ``tensors["count"]``); a row
without samples (no middle subject token in any example) is left out and named in
``info["empty_rows"]``.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from ..errors import InputError
from .result import SweepResult

SUBJECT_ROWS = ("first subject token", "middle subject tokens", "last subject token", "first subsequent token",
                "further tokens", "last token")
GAP_TOLERANCE = 1e-6


def _index(r: SweepResult, position: int, i: int, why: str) -> int:
    T = int(r.info.get("prompt_tokens", max(r.positions) + 1))
    q = position + T if position < 0 else position
    if q not in r.positions:
        raise InputError(f"Example {i}: {why} is position {q}, which this sweep did not cover (positions "
                         f"{r.positions}): sweep every position (positions=None) to align on it.")
    return r.positions.index(q)


def subject_groups(r: SweepResult, i: int) -> List[List[int]]:
    """ROME's six rows for one example: the position indices whose cells are samples of each row."""
    if r.subject is None:
        raise InputError(f"Example {i} has no subject range: align='subject' needs causal traces with subject=... "
                         "(noise on the subject); use align='end' or marks=... for counterfactual prompts.")
    T = int(r.info.get("prompt_tokens", max(r.positions) + 1))
    s, e = r.subject
    spans = [[s], list(range(s + 1, e - 1)), [e - 1], [e] if e < T else [], list(range(e + 1, T - 1)), [T - 1]]
    return [[_index(r, q, i, f"the {name}") for q in span] for name, span in zip(SUBJECT_ROWS, spans)]


def _mark_groups(r: SweepResult, i: int, marks: Mapping[str, int], names: Sequence[str]) -> List[List[int]]:
    missing = [n for n in names if n not in marks]
    extra = [n for n in marks if n not in names]
    if missing or extra:
        raise InputError(f"Example {i} has marks {list(marks)} but example 0 has {list(names)}: every example needs "
                         "the same mark names.")
    return [[_index(r, int(marks[n]), i, f"mark {n!r}")] for n in names]


def normalised(r: SweepResult, i: int) -> torch.Tensor:
    """``(values - corrupted) / (clean - corrupted)``; a zero gap is an error naming the example."""
    clean, corrupted = r.clean_score, r.corrupted_score
    gap = clean - corrupted
    if not abs(gap) > GAP_TOLERANCE * max(1.0, abs(clean), abs(corrupted)):
        raise InputError(f"Example {i}: its clean and corrupted scores are equal ({clean:.6g} and {corrupted:.6g}), so "
                         "normalise=True would divide by zero. Drop it (result.subset([...])) or average without "
                         "normalise.")
    return (r.values - corrupted) / gap


def aligned_average(results: Sequence[Tuple[int, SweepResult]], align: Optional[str] = None,
                    marks: Optional[Sequence[Optional[Mapping[str, int]]]] = None,
                    normalise: bool = False) -> SweepResult:
    """The mean (and standard error) of ``results`` (``(index, result)`` pairs) per aligned row."""
    if not results:
        raise InputError("No example has a result to average (all were skipped): fix their errors first.")
    first = results[0][1]
    if align not in (None, "subject", "end", "marks"):
        raise InputError(f"align must be None, 'subject', 'end' or 'marks'; got {align!r}.")
    if align == "marks" and marks is None:
        raise InputError("align='marks' needs per-example marks: pass marks=[{'S1': 3, ...}, ...] to the sweep or here.")
    if marks is not None and align in (None, "marks"):
        align = "marks"
        names = list(marks[results[0][0]] or {})
        if not names:
            raise InputError(f"Example {results[0][0]} has no marks: give every example the same named positions.")
        groups = [_mark_groups(r, i, marks[i] or {}, names) for i, r in results]
        labels = names
    elif align == "subject":
        groups = [subject_groups(r, i) for i, r in results]
        labels = list(SUBJECT_ROWS)
    elif align == "end":
        K = min(len(r.positions) for _, r in results)
        groups = [[[len(r.positions) - K + k] for k in range(K)] for _, r in results]
        for (i, r) in results:
            T = int(r.info.get("prompt_tokens", max(r.positions) + 1))
            if r.positions[-K:] != list(range(T - K, T)):
                raise InputError(f"Example {i}: align='end' needs its last {K} positions swept; sweep positions=None.")
        labels = ["last" if k == K - 1 else f"last-{K - 1 - k}" for k in range(K)]
    else:
        for i, r in results:
            if r.positions != first.positions:
                raise InputError(f"Example {i} covers positions {r.positions} but example {results[0][0]} covers "
                                 f"{first.positions} (prompts of different lengths): average with align='end', "
                                 "align='subject' or marks=....")
        groups = [[[k] for k in range(len(first.positions))] for _ in results]
        same = all(r.tokens == first.tokens for _, r in results)
        labels = list(first.tokens) if same else [f"position {p}" for p in first.positions]
    for i, r in results:
        if r.values.shape[:2] != first.values.shape[:2] or r.components != first.components or r.layers != first.layers:
            raise InputError(f"Example {i} has components {r.components} x layers {r.layers}, unlike example "
                             f"{results[0][0]}: average results of one sweep.")
    vals = [normalised(r, i) if normalise else r.values for i, r in results]
    means, errs, counts = [], [], []
    for row in range(len(labels)):
        samples = [v[:, :, q] for v, g in zip(vals, groups) for q in g[row]]
        counts.append(len(samples))
        if not samples:  # e.g. no middle subject token when every subject has two tokens: left out
            continue
        stacked = torch.stack(samples).double()
        means.append(stacked.mean(0).float())
        errs.append((stacked.std(0) / len(samples) ** 0.5).float() if len(samples) > 1
                    else torch.full_like(stacked[0], float("nan")).float())
    empty = [name for name, c in zip(labels, counts) if c == 0]
    subject_rows = sum(1 for name, c in zip(labels[:3], counts[:3]) if c) if align == "subject" else 0
    labels = [name for name, c in zip(labels, counts) if c]
    counts = [c for c in counts if c]
    scores = [(r.clean_score, r.corrupted_score) for _, r in results]
    info: Dict[str, Any] = {k: first.info[k] for k in ("window", "sever", "samples", "method") if k in first.info}
    info.update(examples=len(results), align=align or "position", normalised=bool(normalise),
                clean_score=1.0 if normalise else sum(c for c, _ in scores) / len(scores),
                corrupted_score=0.0 if normalise else sum(c for _, c in scores) / len(scores))
    if empty:
        info["empty_rows"] = ", ".join(empty)
    targets = {r.target for _, r in results}
    if len(targets) == 1:
        info["target_text"] = first.info.get("target_text")
    return SweepResult(values=torch.stack(means, dim=2), components=first.components, layers=first.layers,
                       positions=list(range(len(labels))), tokens=labels,
                       metric=f"normalised {first.metric}" if normalise else first.metric,
                       target=first.target if len(targets) == 1 else None, kind=f"average {first.kind}",
                       heads=first.heads, subject=(0, subject_rows) if subject_rows else None, info=info,
                       tensors={"stderr": torch.stack(errs, dim=2), "count": torch.tensor(counts)})
