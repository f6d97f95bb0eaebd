"""``run_with_cache``: one forward of the model with a reading hook per requested site.

Without gradients the forward runs under ``torch.no_grad()`` and each hook keeps its site's tensor
(detached; positions, heads, dtype and device applied at once, so memory holds only what was asked).
With ``grads=True`` each hook adds a zero probe (a leaf that requires grad) to its site, the model's
parameters are frozen for the call (``requires_grad`` restored after, ``.grad`` never touched), and
one ``torch.autograd.grad`` of ``metric(outputs)`` gives every site's gradient. The hooks are
registered through ``HookSet`` and removed whatever happens.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..engine import read_input, rewrite_hook
from ..errors import ConfigError, InputError, ShapeError
from ..hooks import HookSet
from ..inputs import call_model, check_batched
from ..sites.resolve import GroupedSliceSite
from ..sites.site import extract
from .request import CacheSite, Key, Positions, head_index, input_length, position_index, resolve_sites
from .store import ActivationCache


class Recorder:
    """Reads each cached site's raw tensor into the cache's layout, selecting positions and heads."""

    def __init__(self, sites: List[CacheSite], positions: Positions, heads: Any,
                 dtype: Optional[torch.dtype], device: Any) -> None:
        self.sites = sites
        self.positions = positions
        self.heads = {cs.key: head_index(heads, cs) for cs in sites}
        self.dtype, self.device = dtype, device
        self.kept: Optional[torch.Tensor] = None  # absolute positions kept (the last call's)

    def select(self, cs: CacheSite, raw: torch.Tensor, keep_last: Optional[int] = None) -> torch.Tensor:
        """``raw`` in the cache layout; ``keep_last``: only the last that many positions (generation steps)."""
        t = cs.layout(raw.detach())
        dim = cs.seq_dim
        if t.dim() <= dim:
            raise ShapeError(f"{cs.key} at {cs.site.describe()} has shape {tuple(t.shape)}: no sequence axis to "
                             "cache positions of.")
        copy = cs.site.slice is not None or isinstance(cs.site, GroupedSliceSite)
        if keep_last is not None and keep_last < t.shape[dim]:
            t = t.narrow(dim, t.shape[dim] - keep_last, keep_last)
        idx = position_index(self.positions, t.shape[dim], f"{cs.key[0]} (sequence axis)")
        if idx is not None:
            self.kept = idx
            t, copy = t.index_select(dim, idx.to(t.device)), False
        hidx = self.heads.get(cs.key)
        if hidx is not None:
            t, copy = t.index_select(cs.head_dim, hidx.to(t.device)), False
        dtype = self.dtype if self.dtype is not None and t.is_floating_point() else None
        if dtype is not None or self.device is not None:
            moved = t.to(device=self.device, dtype=dtype)
            copy = copy and moved.data_ptr() == t.data_ptr()
            t = moved
        # a slice of a fused projection would keep the whole projection alive: copy just the slice
        return t.clone() if copy else t


def _reading_hook(cs: CacheSite, recorder: Recorder, out: Dict[Key, torch.Tensor]) -> Callable[..., Any]:
    site = cs.site
    if site.hook == "input":
        def pre(module, args, kwargs):
            out[cs.key] = recorder.select(cs, read_input(site, args, kwargs))
        return pre

    def post(module, args, kwargs, output):
        out[cs.key] = recorder.select(cs, extract(site, output))
    return post


def _probe_hook(cs: CacheSite, raws: Dict[Key, torch.Tensor], probes: Dict[Key, torch.Tensor]) -> Callable[..., Any]:
    def apply(x: torch.Tensor) -> torch.Tensor:
        raws[cs.key] = x.detach()
        probe = torch.zeros_like(x, requires_grad=True)
        probes[cs.key] = probe
        return x + probe
    return rewrite_hook(cs.site, apply)


def detached(value: Any) -> Any:
    """``value`` (a tensor, tuple, list, dict or transformers ModelOutput) with every tensor detached."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if hasattr(value, "to_tuple") and hasattr(value, "keys"):
        for key in list(value.keys()):
            value[key] = detached(value[key])
        return value
    if isinstance(value, tuple) and hasattr(type(value), "_fields"):
        return type(value)(*(detached(v) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(detached(v) for v in value)
    if isinstance(value, dict):
        return {k: detached(v) for k, v in value.items()}
    return value


def _check_model(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
    if type(model).__name__ == "IntervenableModel":
        raise ConfigError("run_with_cache takes the model itself: pass pv_model.model (an IntervenableModel's "
                          "interventions are not run by it; use CollectIntervention to read activations under them).")


def _scalar(value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise InputError(f"metric must return a tensor (a scalar, e.g. a logit difference summed over the batch); "
                         f"got {type(value).__name__}.")
    if value.numel() != 1:
        raise InputError(f"metric must return a scalar; got shape {tuple(value.shape)}. Reduce it, e.g. "
                         "metric=lambda out: (out.logits[:, -1, a] - out.logits[:, -1, b]).sum().")
    if not value.requires_grad:
        raise InputError("metric's value does not depend on the model's outputs (it needs no gradient): compute it "
                         "from the outputs passed to it, e.g. lambda out: out.logits[0, -1, token].")
    if not torch.isfinite(value.detach()).all():
        raise InputError(f"metric returned {value.item()}: its gradients would be meaningless. Check the metric.")
    return value.reshape(())


def run_with_cache(model: nn.Module, inputs: Any, components: Optional[Sequence[str]] = None, layers: Any = None,
                   positions: Positions = None, heads: Any = None, *, grads: bool = False,
                   metric: Optional[Callable[[Any], torch.Tensor]] = None, dtype: Optional[torch.dtype] = None,
                   device: Any = None, **model_kwargs: Any) -> Tuple[Any, ActivationCache]:
    """One forward of ``model`` on ``inputs``; returns ``(outputs, cache)``.

    ``components``: abstract names, ``attention_residual`` / ``mlp_residual``, TransformerLens aliases or
    raw module paths (default: ``block_input``, ``block_output``, ``attention_residual``, ``mlp_residual``
    where the family's stream is described, else ``block_input``, ``block_output``,
    ``attention_output``, ``mlp_output``); ``layers``: int, list or None (every layer);
    ``positions``: int, list, slice or None (every position; negative counts from the end);
    ``heads``: the heads kept of head components; ``dtype`` / ``device``: of the cached tensors.
    ``grads=True`` with ``metric(outputs) -> scalar``: ``cache.grads[component, layer]`` is the
    metric's gradient at each site (same layout). ``model_kwargs`` pass through to the model.
    """
    _check_model(model)
    if grads and metric is None:
        raise ConfigError("grads=True needs metric=: a function of the model's outputs returning a scalar, "
                          "e.g. lambda out: out.logits[0, -1, token].")
    if metric is not None and not grads:
        raise ConfigError("metric= is only used with grads=True: pass grads=True to get its gradients.")
    check_batched(inputs, model, "run_with_cache")
    sites = resolve_sites(model, components, layers)
    length = input_length(inputs)
    if length is not None:
        position_index(positions, length, "the input")  # a position past the sequence fails before the forward
    recorder = Recorder(sites, positions, heads, dtype, device)
    values: Dict[Key, torch.Tensor] = {}
    if not grads:
        with HookSet() as hooks, torch.no_grad():
            for cs in sites:
                hooks.add(cs.site.module, cs.site.hook, _reading_hook(cs, recorder, values))
            outputs = call_model(model, inputs, model_kwargs)
        _check_reached(sites, values)
        return outputs, ActivationCache(_ordered(sites, values), model, recorder.kept)
    from ..sweeps.gradients import activations_only

    raws: Dict[Key, torch.Tensor] = {}
    probes: Dict[Key, torch.Tensor] = {}
    with activations_only(model):
        with HookSet() as hooks:
            for cs in sites:
                hooks.add(cs.site.module, cs.site.hook, _probe_hook(cs, raws, probes))
            outputs = call_model(model, inputs, model_kwargs)
        _check_reached(sites, raws)
        value = _scalar(metric(outputs))
        keys = [cs.key for cs in sites]
        found = torch.autograd.grad(value, [probes[k] for k in keys], allow_unused=True)
    gradients = {}
    for cs, g in zip(sites, found):
        g = torch.zeros_like(probes[cs.key]) if g is None else g
        values[cs.key] = recorder.select(cs, raws[cs.key])
        gradients[cs.key] = recorder.select(cs, g)
    return detached(outputs), ActivationCache(_ordered(sites, values), model, recorder.kept, _ordered(sites, gradients))


def _ordered(sites: List[CacheSite], values: Dict[Key, torch.Tensor]) -> Dict[Key, torch.Tensor]:
    return {cs.key: values[cs.key] for cs in sites}


def _check_reached(sites: List[CacheSite], values: Dict[Key, torch.Tensor]) -> None:
    missing = [cs.key for cs in sites if cs.key not in values]
    if missing:
        raise ConfigError(f"The forward pass never reached {missing} (module "
                          f"{[cs.site.module_path for cs in sites if cs.key in missing][0]!r}): check the components "
                          "(a module the model does not call, or one of another stack).")
