"""Feature sweeps over SAE latents x positions: exact patching, and AtP / IG estimates with ``verify=k``.

The sparse-feature-circuits workflow (Marks et al. 2024): the nodes are the
latents of one or more SAEs (or transcoders) at each position, the SAEs spliced
with their error terms held. ``feature_patching`` sets each latent at each
position to its source-run value (or to ``value``, 0 by default: ablation), one
batched run per cell, and reads the metric. ``feature_attribution`` estimates the
same cells from gradients: ``(z_target - z_base) * dMetric/dz`` from one forward
and one backward (``method="atp"``), or with the gradient averaged along the
straight path on which every latent of one SAE moves from its base to its target
value together (``method="ig"``, ``steps`` points); ``verify=k`` reruns the ``k``
largest estimates exactly. Both return a ``SweepResult`` with the latent ids on
its last axis (``result.latents``).
"""
from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..errors import ConfigError, InputError
from ..sweeps.gradients import activations_only, site_gradients, site_path_gradients
from ..sweeps.result import SweepResult
from ..sweeps.runner import logits_of
from ..sweeps.spec import (Metric, as_ids, check_token_id, make_metric, normalise_positions, target_id, token_strings,
                           token_text, vocab_size)
from .feature_runs import ERROR, Edit, Runs, SAESite, error_change, record_runs, run_edits, sae_sites

LatentSpec = Union[None, str, Sequence[int]]
METHODS = ("atp", "ig")


def _setup(model: nn.Module, base: Any, source: Any, target: Any, tokenizer: Any, foil: Any, metric: Metric):
    base_ids = as_ids(base, tokenizer, "base prompt")
    source_ids = None if source is None else as_ids(source, tokenizer, "source prompt")
    if source_ids is not None and source_ids.shape[1] != base_ids.shape[1]:
        raise InputError(f"The base prompt has {base_ids.shape[1]} tokens but the source has {source_ids.shape[1]}: "
                         "latents are patched position by position, so give prompts of equal length.")
    device = next(model.parameters()).device
    base_ids = base_ids.to(device)
    source_ids = None if source_ids is None else source_ids.to(device)
    tid = None
    if target is not None:
        tid = target_id(target, tokenizer)
    elif not callable(metric):
        with torch.no_grad():
            tid = int(logits_of(model(input_ids=source_ids if source_ids is not None else base_ids))[0, -1].argmax())
    fid = None if foil is None else target_id(foil, tokenizer)
    size = vocab_size(model)
    check_token_id(tid, size, "target")
    check_token_id(fid, size, "foil")
    return base_ids, source_ids, tid, make_metric(metric, tid, fid)


def _targets(ss: Sequence[SAESite], runs: Runs, value: float) -> Dict[str, torch.Tensor]:
    """Per SAE, the value each latent is set to at each position ``[T, d_sae]``."""
    out = {}
    for s in ss:
        z_src = runs.z_source[s.key]
        out[s.key] = z_src if z_src is not None else torch.full_like(runs.z_base[s.key], float(value))
    return out


def _latent_axis(latents: LatentSpec, ss: Sequence[SAESite], runs: Runs, targets: Dict[str, torch.Tensor],
                 pos: List[int]) -> List[int]:
    widest = max(s.sae.d_sae for s in ss)
    if latents is None or latents == "active":  # every latent that an edit changes somewhere
        changed = torch.zeros(widest, dtype=torch.bool)
        for s in ss:
            diff = (targets[s.key][pos] != runs.z_base[s.key][pos]).any(0).cpu()
            changed[: diff.numel()] |= diff
        return torch.nonzero(changed).flatten().tolist()
    if latents == "all":
        return list(range(widest))
    if isinstance(latents, str):
        raise InputError(f"latents={latents!r}: use None / 'active' (latents an edit changes), 'all', or a list of ids.")
    ids = [int(i) for i in latents]
    bad = [i for i in ids if not 0 <= i < widest]
    if bad:
        raise InputError(f"Latent {bad[0]} is out of range: the SAEs have at most {widest} latents (0..{widest - 1}).")
    return ids


def _layout(ss: Sequence[SAESite]) -> Tuple[List[str], List[Optional[int]], List[Tuple[int, int]]]:
    components = list(dict.fromkeys(s.component for s in ss))
    layers = sorted(dict.fromkeys(s.layer for s in ss), key=lambda x: -1 if x is None else x)
    cells = [(components.index(s.component), layers.index(s.layer)) for s in ss]
    if len(set(cells)) != len(cells):
        raise ConfigError("Two SAEs sit at the same site (component and layer): sweep them one at a time.")
    return components, layers, cells


def _progress(total: int, progress: Optional[bool]):
    """A tqdm bar (shown after a second; never with ``progress=False``): (tick, close)."""
    if progress is False or total == 0:
        return (lambda n: None), (lambda: None)
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="feature patching", unit="run", delay=0.0 if progress else 1.0, leave=False)
    return bar.update, bar.close


class _Sweep:
    """What both sweeps share: the SAE sites, the runs, the latent axis and the editable cells."""

    def __init__(self, model: nn.Module, saes: Any, base: Any, source: Any, target: Any, positions: Any,
                 latents: LatentSpec, value: float, metric: Metric, foil: Any, tokenizer: Any,
                 fast: Optional[bool], errors: bool = False) -> None:
        self.t0 = time.perf_counter()
        self.model, self.tokenizer, self.metric_name = model, tokenizer, metric if isinstance(metric, str) else "custom"
        self.ss = sae_sites(model, saes)
        self.base_ids, self.source_ids, self.tid, self.fn = _setup(model, base, source, target, tokenizer, foil, metric)
        self.pos = normalise_positions(positions, self.base_ids.shape[1])
        self.runs = record_runs(model, self.ss, self.base_ids, self.source_ids, fast)
        self.targets = _targets(self.ss, self.runs, value)
        self.latents = _latent_axis(latents, self.ss, self.runs, self.targets, self.pos) + ([ERROR] if errors else [])
        self.components, self.layers, self.cells = _layout(self.ss)
        self.base_score = float(self.fn(self.runs.base_logits.float())[0])
        self.edits: List[Edit] = []
        self.where: List[Tuple[int, int, int, int]] = []  # result index of each edit
        self.values = torch.full((len(self.components), len(self.layers), len(self.pos), len(self.latents)),
                                 float("nan"))
        for n, s in enumerate(self.ss):
            self._cells_of(n, s)

    def _cells_of(self, n: int, s: SAESite) -> None:
        """The edits of SAE ``n`` (cells whose edit changes nothing hold the base score, exactly)."""
        c, l = self.cells[n]
        columns = [k for k, i in enumerate(self.latents) if 0 <= i < s.sae.d_sae]
        ids = torch.tensor([self.latents[k] for k in columns], dtype=torch.long)
        rows = torch.tensor(self.pos, dtype=torch.long)
        zb = self.runs.z_base[s.key].cpu()[rows][:, ids]
        zt = self.targets[s.key].cpu()[rows][:, ids]
        changed = zt != zb  # [positions, latents]
        table = self.values[c, l]
        table[:, columns] = torch.where(changed, torch.full_like(zb, float("nan")), torch.full_like(zb, self.base_score))
        for (j, k), target in zip(torch.nonzero(changed).tolist(), zt[changed].tolist()):
            self.edits.append(Edit(n, self.pos[j], self.latents[columns[k]], float(target)))
            self.where.append((c, l, j, columns[k]))
        if ERROR in self.latents:
            k = self.latents.index(ERROR)
            for j, p in enumerate(self.pos):
                if bool((error_change(self.runs, s.key, p) == 0).all()):
                    table[j, k] = self.base_score
                else:
                    self.edits.append(Edit(n, p, ERROR, float("nan")))
                    self.where.append((c, l, j, k))

    def result(self, kind: str, values: torch.Tensor, info: Dict[str, Any]) -> SweepResult:
        info = {"clean_score": float(self.fn(self.runs.source_logits.float())[0]) if self.runs.source_logits is not None
                else float("nan"), "corrupted_score": self.base_score, "seconds": time.perf_counter() - self.t0,
                "edited_cells": len(self.edits), **info}
        tokens = token_strings(self.base_ids, self.tokenizer)
        result = SweepResult(values=values, components=self.components, layers=self.layers, positions=self.pos,
                             tokens=[tokens[p] for p in self.pos], metric=self.metric_name, target=self.tid,
                             kind=kind, info=info, latents=list(self.latents))
        result.info["target_text"] = token_text(self.tid, self.tokenizer)
        return result

    def exact(self, indices: Sequence[int], batch_size: Optional[int], memory_budget: Optional[int],
              progress: Optional[bool]) -> Tuple[torch.Tensor, Dict[str, Any]]:
        tick, close = _progress(len(indices), progress)
        try:
            return run_edits(self.model, self.ss, self.runs, [self.edits[i] for i in indices], self.base_ids, self.fn,
                             batch_size, memory_budget, tick)
        finally:
            close()


def feature_patching(model: nn.Module, saes: Any, base: Any, source: Any = None, target: Any = None, *,
                     positions: Optional[Sequence[int]] = None, latents: LatentSpec = None, value: float = 0.0,
                     metric: Metric = "prob", foil: Any = None, tokenizer: Any = None,
                     errors: bool = False, batch_size: Optional[int] = None, memory_budget: Optional[int] = None,
                     fast: Optional[bool] = None, progress: Optional[bool] = False) -> SweepResult:
    """The metric after editing each latent of ``saes`` at each position, one cell at a time, exactly.

    ``saes``: an SAE, an ``SAEIntervention`` or a list (each at its own site, its error held).
    Each cell sets one latent at one position to its value in the ``source`` run, or to ``value``
    (0: ablation) without a source, and reads ``metric`` (``"prob"``, ``"logprob"``, ``"logit"``,
    ``"logit_diff"`` with ``foil``, or ``f(logits[rows, vocab]) -> [rows]``) of ``target`` at the
    last position. ``latents``: None (every latent an edit changes at a swept position), ``"all"``,
    or ids; ``positions``: default all. Cells whose edit changes nothing hold the base score without
    a run. ``errors=True`` adds each SAE's error node as latent ``-1`` (set to its source value, or 0
    without a source: the activation becomes the reconstruction). Returns ``SweepResult``
    ``values[component, layer, position, latent]`` (NaN where an SAE has no such latent);
    ``result.latents`` are the ids.
    """
    sweep = _Sweep(model, saes, base, source, target, positions, latents, value, metric, foil, tokenizer, fast,
                   errors)
    scores, info = sweep.exact(range(len(sweep.edits)), batch_size, memory_budget, progress)
    values = sweep.values
    for score, cell in zip(scores.tolist(), sweep.where):
        values[cell] = score
    return sweep.result("feature_patching", values, info)


def feature_attribution(model: nn.Module, saes: Any, base: Any, source: Any = None, target: Any = None, *,
                        positions: Optional[Sequence[int]] = None, latents: LatentSpec = None, value: float = 0.0,
                        metric: Metric = "prob", foil: Any = None, tokenizer: Any = None, method: str = "atp",
                        steps: Optional[int] = None, verify: Optional[int] = None, errors: bool = False,
                        batch_size: Optional[int] = None, memory_budget: Optional[int] = None,
                        fast: Optional[bool] = None, progress: Optional[bool] = False) -> SweepResult:
    """Estimate ``feature_patching(...)`` (same arguments, same cells) from gradients.

    ``method="atp"``: ``base score + (z_target - z_base) * dMetric/dz`` for every latent and position
    from one backward; ``"ig"``: the gradient averaged over ``steps`` (default 8) midpoints of the path on
    which all latents of one SAE move to their targets together (``steps`` rows per SAE). The gradient
    with respect to a latent is the site's gradient along its decoder direction, the error held; an
    error node's (``errors=True``, latent ``-1``) is the site's gradient itself.
    ``verify=k`` reruns the ``k`` cells with the largest ``|estimate - base score|`` exactly, into
    ``result.tensors["exact"]`` (NaN elsewhere). Parameters are frozen meanwhile and left as found.
    """
    if method not in METHODS:
        raise ConfigError(f"Unknown method {method!r}: use 'atp' or 'ig' (for exact values, feature_patching).")
    if steps is not None and method == "atp":
        raise ConfigError("steps=... applies to method='ig' only: drop it, or pass method='ig'.")
    n_steps = 8 if steps is None else int(steps)
    if n_steps < 1:
        raise ConfigError(f"steps must be a positive number of points on the path; got {steps!r}.")
    if verify is not None and (isinstance(verify, bool) or int(verify) < 1):
        raise ConfigError(f"verify must be a positive number of cells to rerun exactly (or None); got {verify!r}.")
    sweep = _Sweep(model, saes, base, source, target, positions, latents, value, metric, foil, tokenizer, fast,
                   errors)
    grads, site_grads, backwards = _latent_gradients(sweep, method, n_steps)
    values = sweep.values
    estimates = []
    for e, cell in zip(sweep.edits, sweep.where):
        s = sweep.ss[e.sae]
        if e.latent == ERROR:
            change_x = error_change(sweep.runs, s.key, e.pos).float().cpu()
            estimates.append(sweep.base_score + float(change_x @ site_grads[s.key][e.pos]))
        else:
            change = e.target - float(sweep.runs.z_base[s.key][e.pos, e.latent])
            estimates.append(sweep.base_score + change * float(grads[s.key][e.pos, e.latent]))
        values[cell] = estimates[-1]
    info: Dict[str, Any] = {"path": method, "method": method, "backwards": backwards}
    if method == "ig":
        info["steps"] = n_steps
    result = sweep.result("feature_attribution", values, info)
    if verify:
        est = torch.tensor(estimates, dtype=torch.float64)
        top = torch.argsort((est - sweep.base_score).abs(), descending=True, stable=True)[: int(verify)].tolist()
        exact, run_info = sweep.exact(top, batch_size, memory_budget, progress)
        table = torch.full_like(values, float("nan"))
        for v, i in zip(exact.tolist(), top):
            table[sweep.where[i]] = v
        result.tensors["exact"] = table
        err = (exact.double() - est[top]).abs()
        result.info.update(verified=len(top), verify_path=run_info["path"], verify_forwards=run_info["forwards"],
                           verify_max_abs_error=float(err.max()) if len(top) else 0.0)
    return result


def _latent_gradients(sweep: _Sweep, method: str, steps: int):
    """Per SAE, ``dMetric/dz`` ``[T, d_sae]`` and ``dMetric/dx`` at its site ``[T, d_out]`` (``ig``: averaged
    along the path), and the number of backwards run."""
    model, ss, runs = sweep.model, sweep.ss, sweep.runs
    sites = {s.key: s.site for s in ss}
    site_grads: Dict[str, torch.Tensor] = {}
    with activations_only(model):
        if method == "atp":
            _, _, grads = site_gradients(model, sweep.base_ids, sites, sweep.fn)
            site_grads, backwards = {k: g for k, g in grads.items()}, 1
        else:
            alphas = ((torch.arange(steps, dtype=torch.float32) + 0.5) / steps).tolist()
            T = sweep.base_ids.shape[1]
            backwards = 0
            for s in ss:
                dz = torch.zeros_like(runs.z_base[s.key])
                dz[sweep.pos] = (sweep.targets[s.key] - runs.z_base[s.key])[sweep.pos]
                with torch.no_grad():
                    change = s.sae.decode_change(dz, runs.norm[s.key])  # [T, d_out]: the whole path's length
                raw = runs.base_values[s.key]
                delta = s.site.from_view(torch.zeros_like(raw), change.unsqueeze(0).to(raw))
                deltas = {k: (delta if k == s.key else torch.zeros_like(runs.base_values[k])) for k in sites}
                coefs = {k: torch.zeros(steps, T, device=sweep.base_ids.device) for k in sites}
                for r, a in enumerate(alphas):
                    coefs[s.key][r, sweep.pos] = a
                grads = site_path_gradients(model, sweep.base_ids, sites, sweep.fn, deltas, coefs)
                site_grads[s.key] = grads[s.key] / steps  # summed over the rows that move it, averaged
                backwards += 1
    out: Dict[str, torch.Tensor] = {}
    at_sites: Dict[str, torch.Tensor] = {}
    for s in ss:
        g = s.site.to_view(site_grads[s.key].float())[0].to(s.sae.W_dec.device)  # [T, d_out], where the SAE is
        at_sites[s.key] = g.cpu()
        scale = s.sae.output_scale(runs.norm[s.key])
        if scale is not None:
            g = g * scale
        out[s.key] = (g @ s.sae.directions().detach().float().T).cpu()  # [T, d_sae]
    return out, at_sites, backwards
