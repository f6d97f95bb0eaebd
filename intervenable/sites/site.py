"""``Site``: one resolved place in a model where activations are read or written.

A site is a module, a hook kind (its input or its output), which element of a
tuple output to use, and an optional *view* of the last dimension: a slice
(one of q/k/v in a fused projection) and a head split. The view is applied on
the way in and undone on the way out, so interventions see
``[batch, positions, width]`` or, for head views, ``[batch, heads, positions,
head_dim]``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Tuple

import torch
from torch import nn

from ..errors import ShapeError


@dataclass(frozen=True)
class Site:
    """A resolved intervention site."""

    module: nn.Module = field(repr=False, compare=False)
    module_path: str
    hook: str  # "output" or "input"
    component: str
    layer: Optional[int] = None
    width: Optional[int] = None  # width of the (sliced) activation, if known
    n_heads: Optional[int] = None  # head split of the sliced activation
    slice: Optional[Tuple[int, int]] = None  # [start, end) of the last dimension
    output_index: int = 0  # which element of a tuple output / positional input
    writable: bool = True  # False for read-only sites such as attention weights
    head_layout: str = "split"  # "split": [..., H*hd] on the last dim; "bhsd": already [b, H, s, ...]

    @property
    def head_dim(self) -> Optional[int]:
        if self.n_heads is None or self.width is None:
            return None
        return self.width // self.n_heads

    @property
    def has_heads(self) -> bool:
        return self.n_heads is not None

    def describe(self) -> str:
        """A one-line, human-readable description used in listings and errors."""
        view = []
        if self.slice is not None:
            view.append(f"dims {self.slice[0]}:{self.slice[1]}")
        if self.n_heads is not None:
            view.append(f"{self.n_heads} heads")
        extra = f" [{', '.join(view)}]" if view else ""
        idx = f"[{self.output_index}]" if self.output_index else ""
        return f"{self.module_path}.{self.hook}{idx}{extra}"

    # -- views -----------------------------------------------------------------
    def to_view(self, full: torch.Tensor) -> torch.Tensor:
        """The tensor an intervention sees, from the raw hooked tensor.

        Non-head sites: the (sliced) tensor itself, ``[batch, positions, ...]``.
        Head sites: ``[batch, heads, positions, head_dim]``.
        """
        x = full
        if self.slice is not None:
            x = x[..., self.slice[0]:self.slice[1]]
        if self.n_heads is None or self.head_layout == "bhsd":
            return x
        if x.dim() < 3:
            raise ShapeError(
                f"Site {self.describe()} expects a [batch, positions, width] activation for a head "
                f"view but got shape {tuple(full.shape)}."
            )
        if x.shape[-1] % self.n_heads:
            raise ShapeError(
                f"Site {self.describe()}: width {x.shape[-1]} is not divisible by {self.n_heads} heads."
            )
        b, s = x.shape[0], x.shape[1]
        return x.reshape(b, s, self.n_heads, -1).transpose(1, 2)

    def from_view(self, full: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
        """Put an edited view back into a copy of the raw tensor (out of place)."""
        x = view
        if self.n_heads is not None and self.head_layout != "bhsd":
            b, h, s, d = x.shape
            x = x.transpose(1, 2).reshape(b, s, h * d)
        if self.slice is None:
            return x.to(full.dtype) if x.dtype != full.dtype else x
        out = full.clone()
        out[..., self.slice[0]:self.slice[1]] = x
        return out


def extract(site: Site, value: Any) -> torch.Tensor:
    """The tensor at ``site.output_index`` of a hook's value (tensor, tuple, list or ModelOutput)."""
    if isinstance(value, torch.Tensor):
        if site.output_index != 0:
            raise ShapeError(f"Site {site.describe()} expects a tuple output but the module returned one tensor.")
        return value
    if isinstance(value, (tuple, list)) or hasattr(value, "to_tuple"):
        try:
            item = value[site.output_index]
        except (IndexError, KeyError) as exc:
            raise ShapeError(
                f"Site {site.describe()}: the module returned {len(value)} values, no index {site.output_index}."
                + (" Attention weights are only returned when asked: call the model with output_attentions=True."
                   if site.head_layout == "bhsd" else "")
            ) from exc
        if isinstance(item, torch.Tensor):
            return item
        raise ShapeError(
            f"Site {site.describe()}: element {site.output_index} of the module's "
            f"{site.hook} is {type(item).__name__}, not a tensor. "
            + (
                "Attention weights are only returned by eager attention with output_attentions=True: "
                "load the model with attn_implementation='eager'."
                if item is None
                else "Pick another component."
            )
        )
    raise ShapeError(
        f"Site {site.describe()}: cannot find a tensor in a value of type {type(value).__name__}."
    )


def replace(site: Site, value: Any, new: torch.Tensor) -> Any:
    """``value`` with the tensor at ``site.output_index`` replaced by ``new``."""
    if isinstance(value, torch.Tensor):
        return new
    if hasattr(value, "to_tuple") and hasattr(value, "keys"):  # a transformers ModelOutput
        key = list(value.keys())[site.output_index]
        value[key] = new
        return value
    items = list(value)
    items[site.output_index] = new
    if isinstance(value, list):
        return items
    if hasattr(type(value), "_fields"):  # a namedtuple
        return type(value)(*items)
    return tuple(items)
