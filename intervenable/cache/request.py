"""What a cache run records: components x layers resolved to sites, and the positions / heads kept.

Names are the registry's abstract components (``block_output``, ``head_attention_value_output``, ...),
raw module paths (``"transformer.h.3.mlp.output"``, cached under layer ``None``), two names of the
residual stream's writers (``attention_residual`` / ``mlp_residual``: what the attention and the MLP add
to the stream, which is ``attention_output`` / ``mlp_output`` except where a family norms them
first, Gemma2 and OLMo2), and TransformerLens aliases (``ALIASES``).

Each cached tensor is ``[batch, seq, ...]``: ``[batch, seq, width]`` for plain sites and
``[batch, seq, heads, head_dim]`` for head components. Attention weights keep the model's
``[batch, heads, query, key]``. ``positions`` select along ``seq`` (the query axis of attention
weights), ``heads`` along the head axis of head components.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..errors import ComponentError, ConfigError, LocationError
from ..sites.registry import find_architecture
from ..sites.resolve import _layer_count, resolve_component
from ..sites.site import Site

Key = Tuple[str, Optional[int]]
Positions = Union[None, int, slice, Sequence[int], torch.Tensor]

#: TransformerLens hook names -> our components (ours are primary; these are read on lookup too).
ALIASES: Dict[str, str] = {
    "resid_pre": "block_input",
    "resid_post": "block_output",
    "attn_out": "attention_residual",
    "mlp_out": "mlp_residual",
    "z": "head_attention_value_output",
    "q": "head_query_output",
    "k": "head_key_output",
    "v": "head_value_output",
    "pattern": "attention_weight",
}
RESIDUAL_WRITERS = ("attention_residual", "mlp_residual")
#: what the residual toolkit reads: the stream into layer 0, every layer's output and both writers
RESIDUAL_COMPONENTS = ("block_input", "block_output", "attention_residual", "mlp_residual")
PLAIN_COMPONENTS = ("block_input", "block_output", "attention_output", "mlp_output")


def canonical(component: str) -> str:
    return ALIASES.get(component, component)


@dataclass(frozen=True)
class CacheSite:
    """One cached site: its key in the cache and where it is read."""

    key: Key
    site: Site

    @property
    def bhsd(self) -> bool:
        return self.site.has_heads and self.site.head_layout == "bhsd"

    @property
    def seq_dim(self) -> int:
        return 2 if self.bhsd else 1

    @property
    def head_dim(self) -> Optional[int]:
        if not self.site.has_heads:
            return None
        return 1 if self.bhsd else 2

    def layout(self, raw: torch.Tensor) -> torch.Tensor:
        """The raw hooked tensor in the cache's layout (see the module docstring)."""
        view = self.site.to_view(raw)
        if self.site.has_heads and not self.bhsd:
            view = view.transpose(1, 2)  # [b, H, s, d] -> [b, s, H, d]
        return view


def default_components(model: nn.Module) -> Tuple[str, ...]:
    """The residual toolkit's components where the family describes its stream, else the plain ones."""
    from ..sites.residual import residual_stream

    try:
        residual_stream(model)
    except ComponentError:  # an undescribed family: the plain components
        return PLAIN_COMPONENTS
    return RESIDUAL_COMPONENTS


def _layers_of(model: nn.Module, layers: Any) -> List[int]:
    arch = find_architecture(model)
    n = _layer_count(model, arch) if arch is not None else None
    if layers is None:
        if n is None:
            raise ConfigError(f"{type(model).__name__} has no layer count in the registry: pass layers=[...] "
                              "or raw module paths.")
        return list(range(n))
    items = [layers] if isinstance(layers, int) else list(layers)
    out = []
    for layer in items:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise ConfigError(f"layers must be ints; got {layer!r}.")
        if n is not None:
            if not -n <= layer < n:
                raise ConfigError(f"Layer {layer} is out of range for {type(model).__name__}, which has {n} layers: "
                                  f"use layers in 0..{n - 1} (negative counts from the end).")
            layer %= n
        out.append(layer)
    return out


def resolve_sites(model: nn.Module, components: Optional[Sequence[str]], layers: Any) -> List[CacheSite]:
    """Every requested (component, layer) as a ``CacheSite`` (raw paths once, under layer ``None``)."""
    if components is None:
        components = default_components(model)
    elif isinstance(components, str):
        components = (components,)
    out: List[CacheSite] = []
    seen = set()
    layer_list: Optional[List[int]] = None
    for given in components:
        if not isinstance(given, str):
            raise ConfigError(f"components must be strings (abstract names or module paths); got {given!r}.")
        name = canonical(given)
        arch = find_architecture(model)
        abstract = name in RESIDUAL_WRITERS or (arch is not None and name in arch.components)
        if not abstract:
            site = resolve_component(model, name)  # a raw module path (or a clear ComponentError)
            key: Key = (raw_name(site), None)
            if key not in seen:
                seen.add(key)
                out.append(CacheSite(key, site))
            continue
        if layer_list is None:
            layer_list = _layers_of(model, layers)
        for layer in layer_list:
            key = (name, layer)
            if key in seen:
                continue
            seen.add(key)
            out.append(CacheSite(key, resolve_component(model, name, layer)))
    return out


def raw_name(site: Site) -> str:
    """A raw module path's one spelling in the cache: ``"transformer.h.3.mlp.output"`` (dots, hook last)."""
    return f"{site.module_path}.{site.hook}"


def position_index(positions: Positions, length: int, where: str) -> Optional[torch.Tensor]:
    """``positions`` as a LongTensor of absolute indices into a length-``length`` axis (None: all)."""
    if positions is None:
        return None
    if isinstance(positions, slice):
        return torch.arange(length)[positions]
    if isinstance(positions, bool):
        raise LocationError(f"positions must be ints, a slice or None; got {positions!r}.")
    if isinstance(positions, int):
        idx = torch.tensor([positions])
    else:
        idx = torch.as_tensor(list(positions) if not isinstance(positions, torch.Tensor) else positions)
        if idx.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8) or idx.dim() != 1:
            raise LocationError(f"positions must be ints (a list or a 1-D integer tensor); got {positions!r}.")
        idx = idx.long()
    bad = idx[(idx < -length) | (idx >= length)]
    if bad.numel():
        raise LocationError(f"Position {int(bad[0])} is out of range for {where} of {length} positions: use "
                            f"positions in 0..{length - 1} (negative counts from the end).")
    return idx % length


def head_index(heads: Any, cache_site: CacheSite) -> Optional[torch.Tensor]:
    """``heads`` as indices into a head component's head axis (None: all heads, or not a head component)."""
    if heads is None or not cache_site.site.has_heads:
        return None
    items = [heads] if isinstance(heads, int) else list(heads)
    n = cache_site.site.n_heads
    for h in items:
        if isinstance(h, bool) or not isinstance(h, int) or not -n <= h < n:
            raise LocationError(f"Head {h!r} is out of range for {cache_site.key[0]} at layer {cache_site.key[1]}, "
                                f"which has {n} heads: use heads in 0..{n - 1}.")
    return torch.tensor([h % n for h in items])


def input_length(inputs: Any) -> Optional[int]:
    """The sequence length of a model input when it can be read (token ids, a dict with them), else None."""
    ids = inputs.get("input_ids", inputs.get("inputs_embeds")) if isinstance(inputs, dict) or hasattr(inputs, "keys") \
        else inputs
    if isinstance(ids, torch.Tensor) and ids.dim() >= 2:
        return int(ids.shape[1])
    return None
