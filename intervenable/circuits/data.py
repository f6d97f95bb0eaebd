"""Prompt pairs for circuits: one normalising function, batches of equal length, a metric per row.

``prompt_pairs`` is the one place that turns what a user passes (one prompt or a list, texts, ids or
tokenizer dicts; one target / foil or one per pair; or ``data`` rows, mappings with ``base`` /
``source`` / ``target`` / ``foil``) into ``Pair``s, with the sweeps' own token, target and metric
parsing (sweeps/spec.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import InputError
from ..sweeps.examples import examples, is_dataset, is_rows
from ..sweeps.spec import Metric, as_ids, check_token_id, make_metric, target_id, vocab_size


@dataclass(frozen=True)
class Pair:
    """One base prompt, the source prompt its edges read from, and the metric on its logits."""

    base: torch.Tensor  # [1, T]
    source: Optional[torch.Tensor]  # [1, T] or None (mean / zero ablation without sources)
    target: Optional[int]
    foil: Optional[int]
    metric: Callable[[torch.Tensor], torch.Tensor]  # logits [rows, vocab] -> [rows]


def _items(base: Any, source: Any, target: Any, foil: Any, need_source: bool) -> List[Tuple[Any, Any, Any, Any]]:
    """``(base, source, target, foil)`` per pair, lists and rows parsed by the sweeps' one parser.

    A circuit's base run is a sweep's corrupted run (the one that is run and patched) and its source a
    sweep's clean run (where patched values come from), so rows use the sweeps' names: ``base`` /
    ``corrupted`` and ``source`` / ``clean`` / ``prompt``.
    """
    if is_rows(base):
        if source is not None:
            raise InputError("Rows give each pair's source prompt: drop source=..., or pass base and source as lists.")
        parsed = examples(base, target=target, foil=foil)
        return [(e.corrupted, e.clean, e.target, e.foil) if e.corrupted is not None else (e.clean, None, e.target, e.foil)
                for e in parsed]
    if source is None:
        if not is_dataset(base):
            return [(base, None, target, foil)]
        return [(e.clean, None, e.target, e.foil) for e in examples(clean=base, target=target, foil=foil)]
    if not is_dataset(base, source):
        return [(base, source, target, foil)]
    nb, ns = (len(examples(clean=x)) if is_dataset(x) else 1 for x in (base, source))
    if nb != ns:
        raise InputError(f"{nb} base prompts but {ns} source prompts: give one source per base prompt.")
    return [(e.corrupted, e.clean, e.target, e.foil) for e in examples(clean=source, corrupted=base, target=target, foil=foil)]


def prompt_pairs(model: nn.Module, base: Any, source: Any = None, target: Any = None, foil: Any = None, *,
                 metric: Metric = "logit_diff", tokenizer: Any = None, need_source: bool = True) -> List[Pair]:
    """Every accepted input form -> ``Pair``s (``base`` may also be rows: mappings with base/source/target/foil)."""
    if isinstance(base, Mapping) and not ("input_ids" in base):
        base = [base]
    items = _items(base, source, target, foil, need_source)
    if need_source and any(s is None for _, s, _, _ in items):
        raise InputError("ablation='patch' needs source prompts (the runs whose node outputs the edges carry): pass "
                         "source=..., or ablation='mean' / 'zero'.")
    size = vocab_size(model)
    pairs = []
    for i, (b, s, t, f) in enumerate(items):
        b_ids = as_ids(b, tokenizer, f"base prompt {i}")
        s_ids = None if s is None else as_ids(s, tokenizer, f"source prompt {i}")
        if s_ids is not None and s_ids.shape[1] != b_ids.shape[1]:
            raise InputError(f"Pair {i}: the base prompt has {b_ids.shape[1]} tokens and the source {s_ids.shape[1]}; "
                             "edges are patched position by position, so both prompts of a pair need the same length.")
        tid = None if t is None else target_id(t, tokenizer)
        fid = None if f is None else target_id(f, tokenizer)
        check_token_id(tid, size, "target")
        check_token_id(fid, size, "foil")
        pairs.append(Pair(b_ids, s_ids, tid, fid, make_metric(metric, tid, fid)))
    return pairs


def by_length(pairs: Sequence[Pair]) -> Dict[int, List[int]]:
    """Pair indices grouped by prompt length (one batch shape per group)."""
    groups: Dict[int, List[int]] = {}
    for i, p in enumerate(pairs):
        groups.setdefault(int(p.base.shape[1]), []).append(i)
    return groups


def row_scores(pairs: Sequence[Pair], row_pair: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
    """The metric of each row's own pair on its logits ``[rows, vocab]`` -> ``[rows]``."""
    where: Dict[int, List[int]] = {}
    for r, p in enumerate(row_pair):
        where.setdefault(int(p), []).append(r)
    values, order = [], []
    for p, rows in where.items():
        value = pairs[p].metric(logits[torch.tensor(rows, device=logits.device)].float())
        if not isinstance(value, torch.Tensor) or value.shape != (len(rows),):
            raise InputError("The metric must map logits [rows, vocab] to one score per row [rows]; got "
                             f"{getattr(value, 'shape', type(value).__name__)} for {len(rows)} rows.")
        values.append(value.float())
        order += rows
    return torch.cat(values)[torch.argsort(torch.tensor(order, device=logits.device))]
