"""The runs behind feature sweeps: SAE sites, their latents in the base and source runs, exact edits.

A feature edit sets latent ``i`` of one SAE at position ``p`` to a target value
(the source run's latent, or a constant such as 0), the SAE's error held: the
site's activation becomes ``x + (target - z_i) * d_i`` at ``p`` (``d_i`` the
latent's decoder direction, times the input's norm for SAEs that normalise at
run time). Each edit is one row of the sweeps' batched runner (``sweeps/fast.py``
when the model has a stack description: the base run is recorded once and each
row restarts at its layer and position; else ``sweeps/runner.py``), whose write
values are built here one row at a time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import ConfigError
from ..sites.resolve import resolve_component
from ..sites.site import Site
from ..sweeps.fast import check_stack, classify, record_corrupted, run_fast
from ..sweeps.runner import auto_batch_size, capture, run_general
from ..sweeps.spec import Row, Write
from ..sweeps.stack import build_stack
from .intervention import SAEIntervention, transcoder_reads
from .sae import SAE, Norm


@dataclass
class SAESite:
    """One SAE in a feature sweep: where it writes (``site``) and reads (``reads``; its own site for SAEs)."""

    key: str
    sae: SAE
    layer: Optional[int]
    component: str
    site: Site
    reads: Site


def sae_sites(model: nn.Module, saes: Any) -> List[SAESite]:
    """``SAESite``s of an SAE, an ``SAEIntervention`` or a list of them (sites from their metadata)."""
    items = list(saes) if isinstance(saes, (list, tuple)) else [saes]
    if not items:
        raise ConfigError("No SAE given: pass an SAE (pv.load_sae(...)), an SAEIntervention, or a list of them.")
    out: List[SAESite] = []
    for n, item in enumerate(items):
        if isinstance(item, SAEIntervention):
            sae, layer, component = item.sae, item.layer, item.component
        elif isinstance(item, SAE):
            sae, layer, component = item, item.layer, item.component
        else:
            raise ConfigError(f"Item {n} is a {type(item).__name__}, not an SAE or SAEIntervention.")
        if not component:
            from .hook_names import SITE_HINT

            raise ConfigError(f"SAE {n} does not say where it acts: {SITE_HINT.replace('pv.SAEIntervention(sae', 'pass pv.SAEIntervention(sae')}.")
        raw = "." in component or "[" in component
        site = resolve_component(model, component, None if raw else layer)
        reads = site
        if sae.is_transcoder:  # the MLP's own input, as SAEIntervention reads it
            reads = transcoder_reads(model, sae, site, f"SAE {n} ({sae.hook_name_out!r})")
        if site.width is not None and site.width != sae.d_out:
            raise ConfigError(f"SAE {n} writes vectors of width {sae.d_out} but {site.describe()} has width "
                              f"{site.width}: check its site (layer, component) against the model.")
        key = f"sae{n}:{component}" + ("" if layer is None else f"@{layer}")
        out.append(SAESite(key, sae, layer, component, site, reads))
    return out


@dataclass
class Runs:
    """The base and source runs of a feature sweep, per SAE: latents ``[T, d_sae]``, input norms, site values."""

    base_logits: torch.Tensor
    base_values: Dict[str, torch.Tensor]  # raw site values of the base run, [1, T, ...]
    z_base: Dict[str, torch.Tensor]
    norm: Dict[str, Norm]
    z_source: Dict[str, Optional[torch.Tensor]]
    error_base: Dict[str, torch.Tensor]  # the SAE's error node [T, d_out]: written value - its reconstruction
    error_source: Dict[str, Optional[torch.Tensor]]
    source_logits: Optional[torch.Tensor]
    recorded: Any  # the fast path's record of the base run (None: general path)
    stack: Any
    kinds: Any
    reason: str


def _inputs(ss: Sequence[SAESite]) -> Tuple[Dict[str, Site], Dict[str, Site]]:
    written = {s.key: s.site for s in ss}
    read = {s.key + ":in": s.reads for s in ss if s.reads is not s.site}
    return written, read


def _encode(s: SAESite, values: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, Norm, torch.Tensor]:
    """Latents ``[T, d_sae]``, input norm and error node ``[T, d_out]`` of one run from its site values."""
    device = s.sae.W_enc.device
    raw = values[s.key + ":in"] if s.reads is not s.site else s.site.to_view(values[s.key])
    for site, value in ((s.reads, raw), (s.site, values[s.key])):
        if value.dim() < 3:
            raise ConfigError(
                f"{site.describe()} holds {tuple(value.shape)}: tokens flattened into one axis (OPT's MLP), so a "
                "feature sweep cannot address its positions. Sweep an SAE on the residual stream (block_output) "
                "there, or splice this one with pv.IntervenableModel(pv.SAEIntervention(...), model).")
    reads = raw[0].to(device)
    z, norm = s.sae.encode_with_norm(reads)
    recon = s.sae.decode(z, norm)
    skip = s.sae.skip(reads)
    recon = recon if skip is None else recon + skip
    written = s.site.to_view(values[s.key])[0].to(device=device, dtype=recon.dtype)
    return z, norm, written - recon


def record_runs(model: nn.Module, ss: Sequence[SAESite], base_ids: torch.Tensor, source_ids: Optional[torch.Tensor],
                fast: Optional[bool]) -> Runs:
    """Run the base (recorded for the fast path when possible) and the source; encode every SAE's input."""
    written, read = _inputs(ss)
    every = {**written, **read}
    stack, reason = build_stack(model) if fast is not False else (None, "fast=False")
    kinds = classify(stack, written) if stack is not None else None
    if stack is not None and kinds is None:
        stack, reason = None, "an SAE site lies outside the model's layers"
    recorded = None
    with torch.no_grad():
        if stack is not None:
            recorded = record_corrupted(model, stack, base_ids, every, list(every), None)
            why = check_stack(stack, recorded)
            if why:
                recorded, reason = None, why
            base_logits, base_values = recorded.logits if recorded is not None else None, None
            if recorded is not None:
                base_values = recorded.values
        if recorded is None:
            base_logits, base_values = capture(model, base_ids, every, list(every))
        source_logits, source_values = (None, None)
        if source_ids is not None:
            source_logits, source_values = capture(model, source_ids, every, list(every))
        z_base, norms, z_source, e_base, e_source = {}, {}, {}, {}, {}
        for s in ss:
            z_base[s.key], norms[s.key], e_base[s.key] = _encode(s, base_values)
            z_source[s.key], e_source[s.key] = None, None
            if source_values is not None:
                z_source[s.key], _, e_source[s.key] = _encode(s, source_values)
    if fast and recorded is None:
        raise ConfigError(f"fast=True, but the fast path cannot run this sweep: {reason}. Use fast=None.")
    return Runs(base_logits, base_values, z_base, norms, z_source, e_base, e_source, source_logits, recorded, stack,
                kinds, reason)


#: the latent id of an SAE's error node in a feature sweep (``errors=True``)
ERROR = -1


@dataclass(frozen=True)
class Edit:
    """Set latent ``latent`` of SAE ``sae`` (index into the sweep's SAEs) at ``pos`` to ``target``; latent
    ``ERROR``: set the SAE's error node at ``pos`` to its source value (0 without a source)."""

    sae: int
    pos: int
    latent: int
    target: float


class EditValues(dict):
    """The runner's ``values[source][site]`` for edit rows: ``values["edit:n"]`` is built on first read
    (the base run's value with edit ``n`` applied at its position), so no per-row tensor is stored."""

    def __init__(self, ss: Sequence[SAESite], runs: Runs, edits: Sequence[Edit]) -> None:
        super().__init__()
        self.ss, self.runs, self.edits = ss, runs, edits
        self.directions = {s.key: s.sae.directions().detach() for s in ss}

    def __missing__(self, source: str) -> Dict[str, torch.Tensor]:
        e = self.edits[int(source.split(":", 1)[1])]
        s = self.ss[e.sae]
        raw = self.runs.base_values[s.key]
        if e.latent == ERROR:
            change = error_change(self.runs, s.key, e.pos)
        else:
            change = (e.target - float(self.runs.z_base[s.key][e.pos, e.latent])) * self.directions[s.key][e.latent]
            scale = s.sae.output_scale(self.runs.norm[s.key])
            if scale is not None:
                change = change * scale[e.pos]
        view = s.site.to_view(raw)
        new = view[0, e.pos] + change.to(device=view.device, dtype=view.dtype)
        if s.site.slice is None and not s.site.has_heads:
            return {s.key: new.view(1, 1, -1).expand(1, raw.shape[1], -1)}  # only row e.pos is read
        full = s.site.from_view(raw, view.clone())
        edited = s.site.to_view(full)
        edited[0, e.pos] = new
        return {s.key: s.site.from_view(full, edited)}


def error_change(runs: Runs, key: str, pos: int) -> torch.Tensor:
    """What setting the error node at ``pos`` to its target (the source's error, else 0) adds: ``[d_out]``."""
    source = runs.error_source[key]
    target = source[pos] if source is not None else torch.zeros_like(runs.error_base[key][pos])
    return target - runs.error_base[key][pos]


def run_edits(model: nn.Module, ss: Sequence[SAESite], runs: Runs, edits: Sequence[Edit], base_ids: torch.Tensor,
              metric: Callable[[torch.Tensor], torch.Tensor], batch_size: Optional[int],
              memory_budget: Optional[int], tick: Callable[[int], None]) -> Tuple[torch.Tensor, Dict[str, Any]]:
    """Exact scores of every edit (one patched run each, batched), and run information."""
    written, _ = _inputs(ss)
    rows: List[Row] = [(Write(site=ss[e.sae].key, pos=e.pos, source=f"edit:{n}"),) for n, e in enumerate(edits)]
    values = EditValues(ss, runs, edits)
    T = base_ids.shape[1]
    bs = batch_size or auto_batch_size(model, T, max(1, len(rows)), memory_budget)
    with torch.no_grad():
        if not rows:
            scores, forwards = torch.zeros(0), 0
        elif runs.recorded is not None:
            scores, forwards = run_fast(runs.stack, runs.kinds, runs.recorded, written, rows, values, metric, bs, tick)
        else:
            scores, forwards = run_general(model, base_ids, written, rows, values, metric, bs, None, tick)
    path = "fast" if runs.recorded is not None else "general"
    return scores, {"path": path, "fallback_reason": runs.reason if path == "general" else "", "batch_size": bs,
                    "forwards": forwards}
