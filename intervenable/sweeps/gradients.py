"""Gradients of a metric with respect to the activations at chosen sites, never the weights.

One forward of the base input with a hook per site that adds a zero "probe"
tensor (a leaf that requires grad) to the site's activation, then one
``torch.autograd.grad`` of the summed metric with respect to the probes: the
probe's gradient is the metric's gradient at that activation. The model's
parameters are frozen meanwhile (``requires_grad=False``, restored after), so
no weight gradient is computed or stored, and ``.grad`` of the parameters is
never touched.

Integrated gradients run many rows in one forward. ``site_path_gradients``
(``method="ig"``): each row moves one site's activation at some positions a
fraction ``alpha`` of the way from its base to its source value, everything
else computed by the base run; the gradient is read at the moved activation
only. ``site_gradients`` with ``path`` (``method="eap-ig"``, Hanna et al.
2024): row ``k`` replaces the token embeddings by ``e_base + alphas[k] *
(e_source - e_base)``, so every site moves at once, as the model computes it.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn

from ..engine import rewrite_hook
from ..errors import ConfigError
from ..hooks import HookSet
from ..sites.site import Site
from .runner import logits_kwargs, logits_of

Acts = Dict[str, torch.Tensor]  # site key -> raw activation [rows, T, ...]


@contextmanager
def activations_only(model: nn.Module) -> Iterator[None]:
    """Eval mode, grad enabled, parameters frozen; restores training mode and every ``requires_grad`` flag."""
    was_training = model.training
    flags: List[Tuple[nn.Parameter, bool]] = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        with torch.enable_grad():
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def _probe_hook(key: str, site: Site, probes: Acts, seen: Acts,
                shift: Optional[torch.Tensor] = None) -> Callable[..., Any]:
    """A hook adding a zero leaf probe (and ``shift``, if any) to the site's activation, kept in ``seen``."""

    def apply(x: torch.Tensor) -> torch.Tensor:
        seen[key] = x.detach()
        probe = torch.zeros_like(x, requires_grad=True)
        probes[key] = probe
        return x + probe if shift is None else x + shift.to(x.dtype) + probe

    return rewrite_hook(site, apply)


def _embedding_path(alphas: torch.Tensor, base: torch.Tensor, source: torch.Tensor) -> Callable[..., Any]:
    """A hook on the input embeddings: row ``k`` gets ``base + alphas[k] * (source - base)``."""

    def post(module, args, kwargs, output):
        a = alphas.to(device=output.device, dtype=output.dtype).view(-1, *([1] * (output.dim() - 1)))
        return base.to(output.dtype) + a * (source - base).to(output.dtype)
    return post


def _probed_forward(model: nn.Module, ids: torch.Tensor, rows: int, sites: Dict[str, Site],
                    metric: Callable[[torch.Tensor], torch.Tensor], shifts: Acts,
                    embeddings: Optional[Callable[..., Any]] = None) -> Tuple[torch.Tensor, Acts, Acts]:
    """One forward of ``rows`` copies of ``ids`` with a probe (plus its shift, if any) on every site.

    Returns (metric per row, probe per site, activation per site); ``embeddings``: a hook on the
    input embeddings (the eap-ig path).
    """
    probes: Acts = {}
    seen: Acts = {}
    with HookSet() as hooks:
        if embeddings is not None:
            hooks.add(model.get_input_embeddings(), "output", embeddings)
        for key, site in sites.items():
            hooks.add(site.module, site.hook, _probe_hook(key, site, probes, seen, shifts.get(key)))
        out = model(input_ids=ids.expand(rows, -1), **logits_kwargs(model))
    scores = metric(logits_of(out)[:, -1])
    missing = [k for k in sites if k not in probes]
    if missing:
        raise ConfigError(f"The sites {missing} were never reached by the forward pass: check the components.")
    return scores, probes, seen


def site_gradients(model: nn.Module, ids: torch.Tensor, sites: Dict[str, Site],
                   metric: Callable[[torch.Tensor], torch.Tensor],
                   path: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None) -> Tuple[torch.Tensor, Acts, Acts]:
    """One forward and one backward of ``ids`` (one row per alpha when ``path`` is given).

    Returns (metric per row, activation per site, gradient per site summed over rows). ``path``:
    (alphas, base token embeddings, source token embeddings) for integrated gradients.
    Call inside ``activations_only(model)``.
    """
    rows = 1 if path is None else int(path[0].numel())
    embeddings = None if path is None else _embedding_path(*path)
    scores, probes, seen = _probed_forward(model, ids, rows, sites, metric, {}, embeddings)
    keys = list(sites)
    grads = torch.autograd.grad(scores.sum(), [probes[k] for k in keys], allow_unused=True)
    out_grads = {k: (g.detach().sum(0, keepdim=True) if g is not None else torch.zeros_like(probes[k][:1]))
                 for k, g in zip(keys, grads)}
    return scores.detach().float(), seen, out_grads


def row_gradients(model: nn.Module, ids: torch.Tensor, sites: Dict[str, Site],
                  metric: Callable[[torch.Tensor], torch.Tensor]) -> Tuple[torch.Tensor, Acts, Acts]:
    """One forward and one backward of ``ids`` ``[n, T]`` (n different inputs, e.g. a dataset's examples).

    Returns (metric per row, activation per site, gradient per site and row): rows do not interact,
    so row ``k``'s gradient is that of its own metric. Call inside ``activations_only(model)``.
    """
    scores, probes, seen = _probed_forward(model, ids, int(ids.shape[0]), sites, metric, {})
    keys = list(sites)
    grads = torch.autograd.grad(scores.sum(), [probes[k] for k in keys], allow_unused=True)
    return (scores.detach().float(), seen,
            {k: (g.detach() if g is not None else torch.zeros_like(probes[k])) for k, g in zip(keys, grads)})


def attribution_per_site(sites: Dict[str, Site], base: Acts, source: Acts, grads: Acts) -> Dict[str, torch.Tensor]:
    """Per site, ``(source - base) . grad`` summed over the feature dims: ``[T]``, or ``[heads, T]`` for head views."""
    out: Dict[str, torch.Tensor] = {}
    for key, site in sites.items():
        diff = site.to_view((source[key] - base[key]).float())
        prod = diff * site.to_view(grads[key].float())
        if site.has_heads and prod.dim() == 4:
            out[key] = prod[0].sum(-1)  # [heads, T]
        else:
            out[key] = prod[0].reshape(prod.shape[1], -1).sum(-1)  # [T]
    return out


def _positions_view(site: Site, coef: torch.Tensor, view_dim: int) -> torch.Tensor:
    """``coef`` ``[rows, T]`` shaped to broadcast against the site's view (``[rows, (heads,) T, ...]``)."""
    if site.has_heads and view_dim == 4:
        return coef.view(coef.shape[0], 1, coef.shape[1], 1)
    return coef.view(*coef.shape, *([1] * (view_dim - 2)))


def site_path_gradients(model: nn.Module, ids: torch.Tensor, sites: Dict[str, Site],
                        metric: Callable[[torch.Tensor], torch.Tensor], deltas: Acts,
                        coefs: Dict[str, torch.Tensor]) -> Acts:
    """One forward of ``R`` rows of ``ids`` and one backward; per site, the gradient summed over the rows
    that move it.

    ``deltas[key]``: ``source - base``, raw-shaped ``[1, ...]``, zero outside the swept part (slice, heads). ``coefs[key]``: ``[R, T]``, how far row ``r`` moves the site at position ``t`` towards the
    source (0: not at all). Returns raw-shaped gradients ``[1, ...]`` summed over the rows with a nonzero
    coefficient at each position. Call inside ``activations_only(model)``.
    """
    R = next(iter(coefs.values())).shape[0]
    shifts: Acts = {}
    for key, site in sites.items():
        coef = coefs[key]
        if bool(coef.any()):
            delta = site.to_view(deltas[key])
            view = _positions_view(site, coef.to(delta), delta.dim()) * delta
            raw = deltas[key].new_zeros((R,) + tuple(deltas[key].shape[1:]))
            shifts[key] = site.from_view(raw, view)
    scores, probes, _ = _probed_forward(model, ids, R, sites, metric, shifts)
    keys = [k for k in sites if k in shifts]
    grads = torch.autograd.grad(scores.sum(), [probes[k] for k in keys], allow_unused=True)
    out_grads: Acts = {}
    for key, g in zip(keys, grads):
        site = sites[key]
        g = torch.zeros_like(probes[key]) if g is None else g.detach()
        view = site.to_view(g)
        moved = _positions_view(site, (coefs[key] != 0).to(view), view.dim())
        out_grads[key] = site.from_view(torch.zeros_like(g[:1]), (view * moved).sum(0, keepdim=True))
    for key in sites:
        if key not in out_grads:
            out_grads[key] = torch.zeros_like(probes[key][:1])
    return out_grads

