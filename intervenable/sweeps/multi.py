"""Several examples of one prompt length in shared forwards, on the fast and the general path.

The examples' clean prompts run as one batch, their corrupted prompts (with each one's own
noise) as another; then the rows of every example are packed together: on the fast path rows
of all examples that share a first patched position form one group (each row restarts from
its own example's corrupted state, with its own example's keys/values as the prefix), on the
general path each batch row runs its own example's corrupted input. Scores are computed with
each example's own metric. Every example's scores equal what ``execute`` gives for it alone
(up to float rounding of a wider batch).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..hooks import HookSet
from ..sites.site import Site
from .execute import eval_no_grad, sweep_path
from .fast import Corrupted, check_stack, classify, record_corrupted, walk_layers
from .plans import Job, combine_samples
from .runner import Values, auto_batch_size, capture, embedding_noise_hook, logits_kwargs, logits_of, write_hook
from .spec import Row
from .stack import PrefixCache, Stack, build_stack

Item = Tuple[int, Row]  # (example index within the batch, row)


class RowPrefixCache(PrefixCache):
    """Each batch row's own prefix: positions ``< p`` of its example's keys/values (rows ``rows[:b]``)."""

    def __init__(self, kv: Dict[int, Tuple[torch.Tensor, torch.Tensor]], p: int, rows: torch.Tensor) -> None:
        super().__init__({})
        self.kv, self.p, self.rows = kv, p, rows

    def prefix_kv(self, layer_idx: int, rows: int) -> Tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv[layer_idx]
        idx = self.rows[:rows]
        return k[idx, :, : self.p], v[idx, :, : self.p]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.p


def run_jobs(model: nn.Module, jobs: Sequence[Job], batch_size: Optional[int], memory_budget: Optional[int],
             fast: Optional[bool]) -> List[Tuple[torch.Tensor, Dict[str, Any]]]:
    """Per job (all of one prompt length): (scores in plan order, info), as ``execute`` gives for it alone."""
    parts: List[List[Tuple[torch.Tensor, Dict[str, Any]]]] = [[] for _ in jobs]
    samples = max(len(j.noises()) for j in jobs)
    for s in range(samples):
        ks = [k for k, j in enumerate(jobs) if s < len(j.noises())]
        got = _run_sample(model, [jobs[k] for k in ks], [jobs[k].noises()[s] for k in ks], batch_size,
                          memory_budget, fast)
        for k, part in zip(ks, got):
            parts[k].append(part)
    return [combine_samples(job, p) for job, p in zip(jobs, parts)]


def _full_noise(jobs: Sequence[Job], noises: Sequence[Any], d: int) -> Optional[torch.Tensor]:
    if all(nz is None for nz in noises):
        return None
    full = torch.zeros(len(jobs), jobs[0].length, d)
    for k, nz in enumerate(noises):
        if nz is not None:
            full[k, nz[1]:nz[2]] = nz[0]
    return full


def _run_sample(model: nn.Module, jobs: Sequence[Job], noises: Sequence[Any], batch_size: Optional[int],
                memory_budget: Optional[int], fast: Optional[bool]) -> List[Tuple[torch.Tensor, Dict[str, Any]]]:
    with eval_no_grad(model):
        t0 = time.perf_counter()
        device = next(model.parameters()).device
        T = jobs[0].length
        clean_ids = torch.cat([j.clean_ids for j in jobs]).to(device)
        corrupt_ids = torch.cat([j.corrupt_ids for j in jobs]).to(device)
        full = _full_noise(jobs, noises, model.get_input_embeddings().weight.shape[1]) if any(
            nz is not None for nz in noises) else None
        noise = None if full is None else (full.to(device), 0, T)
        sites: Dict[str, Site] = {}
        needed: Dict[str, set] = {"clean": set(), "corrupted": set()}
        items: List[Item] = []
        for k, job in enumerate(jobs):
            for key, site in job.plan.sites.items():
                sites.setdefault(key, site)
            for row in job.plan.rows:
                items.append((k, row))
                for w in row:
                    needed[w.source].add(w.site)
        stack, reason = build_stack(model) if fast is not False else (None, "fast=False")
        kinds = classify(stack, sites) if stack is not None else None
        if stack is not None and kinds is None:
            stack, reason = None, "a site lies outside the model's layers"
        clean_logits, clean_vals = capture(model, clean_ids, sites, needed["clean"])
        corrupted: Optional[Corrupted] = None
        if stack is None:
            corrupt_logits, corrupt_vals = capture(model, corrupt_ids, sites, needed["corrupted"], noise)
        else:
            corrupted = record_corrupted(model, stack, corrupt_ids, sites, needed["corrupted"], noise)
            corrupt_logits, corrupt_vals = corrupted.logits, corrupted.values
            why = check_stack(stack, corrupted)
            if why:
                corrupted, reason = None, why
        values = {"clean": clean_vals, "corrupted": corrupt_vals}  # [examples, T, ...] per site
        bs = batch_size or auto_batch_size(model, T, len(items), memory_budget)
        path = sweep_path(corrupted is not None, stack is not None, fast, reason, stacklevel=7)
        fns = [j.fn for j in jobs]
        if path == "fast":
            scores, forwards = _fast(stack, kinds, corrupted, sites, items, values, fns, bs)
        else:
            scores, forwards = _general(model, corrupt_ids, sites, items, values, fns, bs, noise)
        seconds = (time.perf_counter() - t0) / len(jobs)
        out, start = [], 0
        for k, job in enumerate(jobs):
            n = len(job.plan.rows)
            info = {"path": path, "fallback_reason": reason if path == "general" else "", "batch_size": bs,
                    "forwards": forwards, "seconds": seconds, "examples_per_batch": len(jobs),
                    "clean_score": float(job.fn(clean_logits[k:k + 1].float())[0]),
                    "corrupted_score": float(job.fn(corrupt_logits[k:k + 1].float())[0])}
            out.append((scores[start:start + n], info))
            start += n
        return out


def _score(logits: torch.Tensor, examples: Sequence[int], fns: Sequence[Callable]) -> torch.Tensor:
    """Each row's score by its own example's metric (rows of one example are contiguous)."""
    out = torch.empty(len(examples))
    start = 0
    while start < len(examples):
        end = start
        while end < len(examples) and examples[end] == examples[start]:
            end += 1
        out[start:end] = fns[examples[start]](logits[start:end]).detach().float().cpu()
        start = end
    return out


def _gather(sites: Dict[str, Site], values: Values, key: str, sources: List[str], ex: List[int], pos: List[int],
            heads: List[Optional[int]]) -> torch.Tensor:
    """The cached values ``[k, width]`` (or ``[k, head_dim]``) of site ``key`` for each (source, example, position[, head])."""
    out: Optional[torch.Tensor] = None
    for src in dict.fromkeys(sources):
        view = sites[key].to_view(values[src][key])  # [examples, (heads,) T, ...]
        idx = [k for k, s in enumerate(sources) if s == src]
        e = torch.tensor([ex[k] for k in idx], device=view.device)
        p = torch.tensor([pos[k] for k in idx], device=view.device)
        got = view[e, torch.tensor([heads[k] for k in idx], device=view.device), p] if heads[0] is not None else view[e, p]
        if len(idx) == len(sources):
            return got
        if out is None:
            out = got.new_empty((len(sources),) + tuple(got.shape[1:]))
        out[torch.tensor(idx, device=view.device)] = got
    return out


def _group(items: Sequence[Item], values: Values, sites: Dict[str, Site], offset: int = 0,
           skip: Optional[Callable[[Any], bool]] = None) -> Dict[str, Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], torch.Tensor]]:
    """Per site: (batch rows, positions - offset, heads or None, values), each row's value from its example
    (``values``: every example's cached runs, ``[examples, T, ...]`` per site)."""
    acc: Dict[str, Tuple[List[int], List[str], List[int], List[int], List[Optional[int]]]] = {}
    for r, (e, row) in enumerate(items):
        for w in row:
            if skip is not None and skip(w):
                continue
            a = acc.setdefault(w.site, ([], [], [], [], []))
            a[0].append(r)
            a[1].append(w.source)
            a[2].append(e)
            a[3].append(w.pos)
            a[4].append(w.head)
    out = {}
    for key, (rows, sources, ex, pos, heads) in acc.items():
        out[key] = (torch.tensor(rows), torch.tensor(pos) - offset,
                    torch.tensor(heads) if heads[0] is not None else None,
                    _gather(sites, values, key, sources, ex, pos, heads))
    return out


def _general(model: nn.Module, ids: torch.Tensor, sites: Dict[str, Site], items: Sequence[Item],
             values: Values, fns: Sequence[Callable], batch_size: int,
             noise: Optional[Tuple[torch.Tensor, int, int]]) -> Tuple[torch.Tensor, int]:
    scores: List[torch.Tensor] = []
    kwargs = logits_kwargs(model)
    forwards = 0
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        ex = [e for e, _ in chunk]
        rows = torch.tensor(ex, device=ids.device)
        grouped = _group(chunk, values, sites)
        with HookSet() as hooks:
            if noise is not None:
                hooks.add(model.get_input_embeddings(), "output", embedding_noise_hook(noise[0][rows], 0, noise[2]))
            for key, (r, p, h, v) in grouped.items():
                hooks.add(sites[key].module, sites[key].hook, write_hook(sites[key], r, p, h, v))
            out = model(input_ids=ids[rows], **kwargs)
        forwards += 1
        scores.append(_score(logits_of(out)[:, -1], ex, fns))
    return (torch.cat(scores) if scores else torch.zeros(0)), forwards


def _fast(stack: Stack, kinds: Dict[str, Tuple[int, bool]], corrupted: Corrupted, sites: Dict[str, Site],
          items: Sequence[Item], values: Values, fns: Sequence[Callable],
          batch_size: int) -> Tuple[torch.Tensor, int]:
    """Rows of all examples grouped by first patched position, sorted by first layer; the head at the end."""
    L = len(stack.layers)
    T = corrupted.inputs[0].shape[1]

    def start_layer(row: Row) -> int:
        return min(kinds[w.site][0] + (1 if kinds[w.site][1] else 0) for w in row)

    by_pos: Dict[int, List[Tuple[int, int, int]]] = {}
    for i, (e, row) in enumerate(items):
        p = 0 if stack.bidirectional else min(w.pos for w in row)
        by_pos.setdefault(p, []).append((start_layer(row), e, i))
    last = corrupted.inputs[0].new_empty((len(items), corrupted.inputs[0].shape[-1]))
    forwards = 0
    for p in sorted(by_pos):
        members = sorted(by_pos[p])
        for c in range(0, len(members), batch_size):
            chunk = members[c:c + batch_size]
            last[[i for _, _, i in chunk]] = _chunk(stack, kinds, corrupted, sites, items, values, p, chunk, L, T)
            forwards += 1
    ex = [e for e, _ in items]
    scores = [_score(stack.logits(last[c:c + batch_size]), ex[c:c + batch_size], fns)
              for c in range(0, len(items), batch_size)]
    return (torch.cat(scores) if scores else torch.zeros(0)), forwards


def _chunk(stack: Stack, kinds, corrupted: Corrupted, sites, items, values, p: int,
           chunk: List[Tuple[int, int, int]], L: int, T: int) -> torch.Tensor:
    """The last position's hidden state after the last layer, for each row of ``chunk``."""
    chunk_items = [items[i] for _, _, i in chunk]
    starts = [s for s, _, _ in chunk]
    like = corrupted.inputs[0]
    ex = torch.tensor([e for _, e, _ in chunk], device=like.device)
    n = len(chunk)
    H = like.new_empty((n, T - p, like.shape[-1]))
    ctx = stack.context(p, T, like)
    cache = None if stack.bidirectional else RowPrefixCache(corrupted.kv, p, ex)
    is_block = lambda w: kinds[w.site][1]  # noqa: E731
    # Writes at the block output of layer j, applied directly (no hook): per layer, (rows, positions, values).
    block: Dict[int, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    for key, (r, pos, _, v) in _group(chunk_items, values, sites, offset=p, skip=lambda w: not is_block(w)).items():
        got = (r.to(like.device), pos.to(like.device), v)
        j = kinds[key][0]
        block[j] = got if j not in block else tuple(torch.cat([a, b]) for a, b in zip(block[j], got))
    hooked = _group(chunk_items, values, sites, offset=p, skip=is_block)
    by_layer: Dict[int, List[str]] = {}
    for key in hooked:
        by_layer.setdefault(kinds[key][0], []).append(key)

    def apply_block(j: int, h: torch.Tensor, lo: int, hi: int) -> None:
        if j not in block:
            return
        r, pos, vals = block[j]
        keep = (r >= lo) & (r < hi)
        if bool(keep.any()):
            h[r[keep] - lo, pos[keep]] = vals[keep].to(h.dtype)

    return walk_layers(stack, sites, starts, H, lambda j, lo, hi: corrupted.inputs[j][ex[lo:hi], p:], apply_block,
                       hooked, by_layer, cache, ctx, L)
