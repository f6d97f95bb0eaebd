"""Gradients of a metric with respect to the activations at chosen sites, never the weights.

One forward of the base input with a hook per site that adds a zero "probe"
tensor (a leaf that requires grad) to the site's activation, then one
``torch.autograd.grad`` of the summed metric with respect to the probes: the
probe's gradient is the metric's gradient at that activation. The model's
parameters are frozen meanwhile (``requires_grad=False``, restored after), so
no weight gradient is computed or stored, and ``.grad`` of the parameters is
never touched.

For integrated gradients the same forward runs ``len(alphas)`` rows at once;
row ``k`` replaces the token embeddings by ``e_base + alphas[k] * (e_source -
e_base)``, the straight path between the two prompts' inputs (EAP-IG, Hanna et
al. 2024), so every site's activation moves from its base to its source value
together, as the model computes it. The path does not depend on which sites
are swept.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn

from ..engine import read_input, write_input
from ..errors import ConfigError
from ..hooks import HookSet
from ..sites.site import Site, extract, replace
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


def _probe_hook(key: str, site: Site, probes: Acts, seen: Acts) -> Callable[..., Any]:
    """A hook adding a zero leaf probe to the site's activation (and keeping the activation in ``seen``)."""

    def apply(x: torch.Tensor) -> torch.Tensor:
        seen[key] = x.detach()
        probe = torch.zeros_like(x, requires_grad=True)
        probes[key] = probe
        return x + probe

    if site.hook == "input":
        def pre(module, args, kwargs):
            return write_input(site, args, kwargs, apply(read_input(site, args, kwargs)))
        return pre

    def post(module, args, kwargs, output):
        return replace(site, output, apply(extract(site, output)))
    return post


def _embedding_path(alphas: torch.Tensor, base: torch.Tensor, source: torch.Tensor) -> Callable[..., Any]:
    """A hook on the input embeddings: row ``k`` gets ``base + alphas[k] * (source - base)``."""

    def post(module, args, kwargs, output):
        a = alphas.to(device=output.device, dtype=output.dtype).view(-1, *([1] * (output.dim() - 1)))
        return base.to(output.dtype) + a * (source - base).to(output.dtype)
    return post


def site_gradients(model: nn.Module, ids: torch.Tensor, sites: Dict[str, Site],
                   metric: Callable[[torch.Tensor], torch.Tensor],
                   path: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None) -> Tuple[torch.Tensor, Acts, Acts]:
    """One forward and one backward of ``ids`` (one row per alpha when ``path`` is given).

    Returns (metric per row, activation per site, gradient per site summed over rows). ``path``:
    (alphas, base token embeddings, source token embeddings) for integrated gradients.
    Call inside ``activations_only(model)``.
    """
    probes: Acts = {}
    seen: Acts = {}
    rows = 1 if path is None else int(path[0].numel())
    with HookSet() as hooks:
        if path is not None:
            hooks.add(model.get_input_embeddings(), "output", _embedding_path(*path))
        for key, site in sites.items():
            hooks.add(site.module, site.hook, _probe_hook(key, site, probes, seen))
        out = model(input_ids=ids.expand(rows, -1), **logits_kwargs(model))
    scores = metric(logits_of(out)[:, -1])
    missing = [k for k in sites if k not in probes]
    if missing:
        raise ConfigError(f"The sites {missing} were never reached by the forward pass: check the components.")
    keys = list(sites)
    grads = torch.autograd.grad(scores.sum(), [probes[k] for k in keys], allow_unused=True)
    out_grads = {k: (g.detach().sum(0, keepdim=True) if g is not None else torch.zeros_like(probes[k][:1]))
                 for k, g in zip(keys, grads)}
    return scores.detach().float(), seen, out_grads


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
