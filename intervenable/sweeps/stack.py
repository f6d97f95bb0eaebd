"""A family's layer stack, ready for the fast sweep path, built from its ``LayerStack`` description.

The description lives in the family's file under ``sites/archs`` (the contract is in
``sites/registry.py``); this module only turns it into modules and call arguments. Nothing
here knows a family by name.
"""
from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Set, Tuple

import torch
from torch import nn

from ..errors import ComponentError, FastPathFallbackWarning
from ..sites.paths import get_module
from ..sites.registry import Architecture, LayerStack, find_architecture
from ..sites.residual import Readout, readout
from ..sites.resolve import base_prefix, resolve_component

_CACHE_ARGS = ("cache", "past_key_values", "past_key_value", "layer_past")
_TOLD: Set[str] = set()  # families already told that they have no stack description


class PrefixCache:
    """Duck-typed KV cache: prepends fixed keys/values (positions ``< p``) to each layer's new ones."""

    def __init__(self, prefix: Dict[int, Tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.prefix = prefix

    def prefix_kv(self, layer_idx: int, rows: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Layer ``layer_idx``'s fixed keys/values for ``rows`` batch rows."""
        pk, pv = self.prefix[layer_idx]
        return pk.expand(rows, *pk.shape[1:]), pv.expand(rows, *pv.shape[1:])

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any):
        if self.get_seq_length(layer_idx) == 0:
            return key_states, value_states
        pk, pv = self.prefix_kv(layer_idx, key_states.shape[0])
        return torch.cat([pk, key_states], dim=-2), torch.cat([pv, value_states], dim=-2)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        pk = self.prefix.get(layer_idx)
        return 0 if pk is None else int(pk[0].shape[-2])

    def get_usable_length(self, new_seq_length: int, layer_idx: int = 0) -> int:
        """The prefix length (transformers < 4.46 Mixtral / Phi-3 attention asks for it)."""
        return self.get_seq_length(layer_idx)

    def layer_past(self, layer_idx: int, rows: int) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """The prefix as a legacy ``(keys, values)`` pair for ``rows`` rows (GPT-2, OPT); None when empty."""
        return None if self.get_seq_length(layer_idx) == 0 else self.prefix_kv(layer_idx, rows)


def takes_cache_objects(model: nn.Module) -> bool:
    """False for models whose layers take legacy per-layer ``(keys, values)`` tuples (GPT-2 and OPT before
    transformers 4.46 say so with ``_supports_cache_class = False``; later versions dropped the flag)."""
    return getattr(model, "_supports_cache_class", True) is not False


@dataclass
class Context:
    """Per-call arguments shared by every layer for queries ``start..end-1`` (keys ``0..end-1``)."""

    positions: torch.Tensor
    masks: Dict[Optional[int], Optional[torch.Tensor]]  # sliding window (None: full) -> additive mask
    rotary: Any = None


@dataclass
class Stack:
    """The layers (``block_output`` modules), what runs after them, and how each layer is called."""

    layers: List[nn.Module]
    readout: Readout
    rotary: Optional[nn.Module]
    windows: List[Optional[int]]
    bidirectional: bool
    cache_arg: str
    params: List[Set[str]]  # names each layer's forward takes
    fixed: Dict[str, Any] = field(default_factory=dict)
    legacy_cache: bool = False  # layers take a (keys, values) tuple, not a cache object

    def context(self, start: int, end: int, like: torch.Tensor) -> Context:
        q = torch.arange(start, end, device=like.device)
        masks: Dict[Optional[int], Optional[torch.Tensor]] = {}
        for w in set(self.windows):
            masks[w] = None if self.bidirectional else _mask(q, end, w, like)
        rot = self.rotary(like[:1, : q.numel()], q[None]) if self.rotary is not None else None
        return Context(q, masks, rot)

    def call(self, j: int, h: torch.Tensor, cache: Optional[PrefixCache], ctx: Context) -> torch.Tensor:
        kwargs: Dict[str, Any] = dict(self.fixed)
        mask = ctx.masks[self.windows[j]]
        # One mask row per batch row: OPT before transformers 4.46 checks the batch dimension.
        kwargs["attention_mask"] = None if mask is None else mask.expand(h.shape[0], -1, -1, -1)
        params = self.params[j]
        if not self.bidirectional:
            kwargs[self.cache_arg] = cache.layer_past(j, h.shape[0]) if self.legacy_cache and cache is not None else cache
            if "use_cache" in params:
                kwargs["use_cache"] = True
            if "position_ids" in params:
                kwargs["position_ids"] = ctx.positions[None]
            if "cache_position" in params:
                kwargs["cache_position"] = ctx.positions
        if ctx.rotary is not None:
            kwargs["position_embeddings"] = ctx.rotary
        out = self.layers[j](h, **kwargs)
        return out[0] if isinstance(out, (tuple, list)) else out

    def logits(self, last: torch.Tensor) -> torch.Tensor:
        """Final modules, head and soft-capping on hidden states ``[rows, width]`` -> ``[rows, vocab]``."""
        return self.readout.logits(last)


def _mask(q: torch.Tensor, end: int, window: Optional[int], like: torch.Tensor) -> torch.Tensor:
    """Additive ``[1, 1, q, end]`` mask: key k is visible from query i when ``i - window < k <= i``."""
    k = torch.arange(0, end, device=like.device)
    hidden = k[None, :] > q[:, None]
    if window is not None:
        hidden |= k[None, :] <= q[:, None] - int(window)
    mask = torch.zeros(q.numel(), end, dtype=like.dtype, device=like.device)
    return mask.masked_fill_(hidden, torch.finfo(like.dtype).min)[None, None]


def _params(module: nn.Module) -> Set[str]:
    forward = getattr(module, "_old_forward", module.forward)  # accelerate's dispatch wraps forward
    try:
        return set(inspect.signature(forward).parameters)
    except (TypeError, ValueError):
        return set()


def _tell_once(arch: Architecture) -> None:
    if arch.name in _TOLD:
        return
    _TOLD.add(arch.name)
    warnings.warn(
        f"The {arch.name!r} family has no stack description for the fast sweep path, so sweeps on it use the "
        "general batched path (same results, slower). Describe its stack with a LayerStack in its "
        "sites/archs file to enable the fast path.", stacklevel=5)


def _misfit(arch: Architecture, reason: str) -> Tuple[None, str]:
    """A described family that does not fit the model: warned (``FastPathFallbackWarning``), not just noted."""
    warnings.warn(f"The {arch.name!r} stack description does not fit this model ({reason}); the sweep uses the "
                  "general batched path (same results, slower).", FastPathFallbackWarning, stacklevel=6)
    return None, reason


def build_stack(model: nn.Module) -> Tuple[Optional[Stack], str]:
    """The model's ``Stack`` from its family's description, or None and the reason it cannot be used.

    Variants the description excludes (``unsupported``, cross-attention, other attention kernels) are
    only noted in the reason; a description that should apply but does not fit also warns.
    """
    arch = find_architecture(model)
    config = getattr(model, "config", None)
    if arch is None or config is None:
        return None, "the model's family is not registered"
    desc: Optional[LayerStack] = arch.stack
    if desc is None:
        _tell_once(arch)
        return None, f"the {arch.name!r} family has no stack description"
    if getattr(config, "is_encoder_decoder", False) or getattr(config, "add_cross_attention", False):
        return None, "the model has cross-attention (encoder-decoder), which stack descriptions do not cover"
    why = desc.unsupported(config) if desc.unsupported is not None else ""
    if why:
        return None, f"{why} is not covered by the {arch.name!r} stack description"
    impl = getattr(config, "_attn_implementation", None) or "eager"
    if impl not in ("eager", "sdpa"):
        return None, f"attention implementation {impl!r} (the fast path passes additive masks: 'eager' or 'sdpa')"
    try:
        n = int(arch.num_layers(config))
        layers = [resolve_component(model, "block_output", j).module for j in range(n)]
    except Exception as exc:  # noqa: BLE001 - any resolution problem means "not understood"
        return _misfit(arch, f"the layers could not be resolved ({exc})")
    prefix = base_prefix(model, arch).rstrip(".")
    base = get_module(model, prefix) if prefix else model
    try:
        read = readout(model)
    except ComponentError:
        return None, "the model has no output head (a language-model class is needed)"
    params = [_params(layer) for layer in layers]
    rotary = None
    if desc.rotary:
        rotary = get_module(base, desc.rotary)
        if not isinstance(rotary, nn.Module):
            if not desc.rotary_in_layers or "position_embeddings" in params[0]:
                return _misfit(arch, f"the model has no rotary module at {desc.rotary!r}")
            rotary = None  # an older layout: each layer computes rotary from position_ids
    cache_arg = desc.cache_arg or next((a for a in _CACHE_ARGS if a in params[0]), "")
    if not desc.bidirectional and not cache_arg:
        return _misfit(arch, "the layers take no key/value cache argument")
    windows = [desc.window(config, j) if desc.window is not None else None for j in range(n)]
    fixed = desc.layer_kwargs(config) if desc.layer_kwargs is not None else {}
    return Stack(layers, read, rotary, windows, desc.bidirectional, cache_arg, params, fixed,
                 legacy_cache=not takes_cache_objects(model)), ""
