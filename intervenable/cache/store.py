"""``ActivationCache``: the activations of one run, keyed by ``(component, layer)``, and its toolkit.

``cache["block_output", 3]`` (our names, TransformerLens aliases such as ``"resid_post"``, or a raw
module path alone: ``cache["transformer.h.3.mlp.output"]``) gives ``[batch, seq, ...]``; negative
layers count from the end. ``stack(component)`` stacks the cached layers: ``[layers, batch, seq, ...]``.
The residual-stream methods (``logit_lens``, ``decompose_resid``, ``logit_attrs``, ...) are in
``lens.py``; they read the model's read-out and stream through ``sites/residual.py``.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..errors import ComponentError, ConfigError
from ..sites.registry import find_architecture
from ..sites.resolve import _layer_count, resolve_component
from .request import Key, canonical, raw_name

KeyLike = Union[str, Tuple[str, Optional[int]]]


class ActivationCache(Mapping):
    """Cached activations of one run (``run_with_cache``); ``grads`` holds their gradients when asked.

    ``positions``: the absolute positions kept (None: every position); every tensor's ``seq`` axis
    holds these, in this order. ``model``: the model that produced them (the toolkit reads its
    read-out); None for a cache rebuilt without one.
    """

    def __init__(self, values: Dict[Key, torch.Tensor], model: Optional[nn.Module] = None,
                 positions: Optional[torch.Tensor] = None, grads: Optional[Dict[Key, torch.Tensor]] = None) -> None:
        self._values: Dict[Key, torch.Tensor] = dict(values)
        self.model = model
        self.positions = positions
        self.grads: Optional[ActivationCache] = None if grads is None else ActivationCache(grads, None, positions)

    # -- mapping ----------------------------------------------------------------------
    def _n_layers(self, component: str) -> int:
        arch = find_architecture(self.model) if self.model is not None else None
        n = _layer_count(self.model, arch) if arch is not None else None
        if n is None:
            n = 1 + max((layer for c, layer in self._values if c == component and layer is not None), default=-1)
        return n

    def key(self, key: KeyLike) -> Key:
        """The canonical ``(component, layer)`` of ``key`` (aliases resolved, negative layers counted from the end)."""
        if isinstance(key, tuple):
            if len(key) != 2:
                raise ComponentError(f"Cache keys are (component, layer) or a module path; got {key!r}.")
            component, layer = key
        else:
            component, layer = key, None
        if not isinstance(component, str):
            raise ComponentError(f"Cache keys are (component, layer) or a module path; got {key!r}.")
        component = canonical(component)
        if layer is not None:
            if isinstance(layer, bool) or not isinstance(layer, int):
                raise ComponentError(f"The layer of a cache key must be an int; got {layer!r}.")
            if layer < 0:
                layer += self._n_layers(component)
        found = (component, layer)
        if found not in self._values and layer is None and self.model is not None and ("." in component or "[" in component):
            found = (raw_name(resolve_component(self.model, component)), None)  # another spelling of the path
        if found not in self._values:
            cached = sorted({c for c, _ in self._values})
            layers = self.layers(component)
            hint = f"{component!r} is cached at layers {layers}" if layers else f"cached components: {cached}"
            raise ComponentError(
                f"{found} is not in this cache ({hint}). Ask for it when running: "
                f"run_with_cache(model, inputs, components=[{component!r}, ...], layers=[...]).")
        return found

    def __getitem__(self, key: KeyLike) -> torch.Tensor:
        return self._values[self.key(key)]

    def __contains__(self, key: object) -> bool:
        try:
            self.key(key)  # type: ignore[arg-type]
        except ComponentError:
            return False
        return True

    def __iter__(self) -> Iterator[Key]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def components(self) -> List[str]:
        """The cached components, in the order they were requested."""
        return list(dict.fromkeys(c for c, _ in self._values))

    def layers(self, component: str) -> List[int]:
        """The layers at which ``component`` is cached, sorted."""
        component = canonical(component)
        return sorted(layer for c, layer in self._values if c == component and layer is not None)

    def stack(self, component: str, layers: Optional[Sequence[int]] = None) -> torch.Tensor:
        """``component`` at ``layers`` (default: every cached layer) stacked: ``[layers, batch, seq, ...]``."""
        component = canonical(component)
        layers = self.layers(component) if layers is None else list(layers)
        if not layers:
            raise ComponentError(f"{component!r} is not cached at any layer (cached: {self.components()}).")
        return torch.stack([self[component, layer] for layer in layers])

    def to(self, device: Any = None, dtype: Optional[torch.dtype] = None) -> "ActivationCache":
        """A copy with every tensor (and gradient) moved / cast (``dtype`` applies to floating tensors)."""
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype if dtype is not None and t.is_floating_point() else None)
        grads = None if self.grads is None else {k: move(v) for k, v in self.grads._values.items()}
        return ActivationCache({k: move(v) for k, v in self._values.items()}, self.model, self.positions, grads)

    def __repr__(self) -> str:
        counts: Dict[str, int] = {}
        for c, _ in self._values:
            counts[c] = counts.get(c, 0) + 1
        parts = ", ".join(f"{c} x{n}" for c, n in counts.items())
        grads = ", with gradients" if self.grads is not None else ""
        where = "" if self.positions is None else f", positions {self.positions.tolist()}"
        return f"ActivationCache({len(self)} tensors: {parts}{where}{grads})"

    # -- the residual-stream toolkit (lens.py) ------------------------------------------
    def _model(self) -> nn.Module:
        if self.model is None:
            raise ConfigError("This cache has no model, so its read-out is unknown: use a cache made by "
                              "run_with_cache / generate_with_cache.")
        return self.model

    def logit_lens(self, layers: Optional[Sequence[int]] = None, include_embed: bool = False) -> torch.Tensor:
        """Each layer's output through the final norm (recomputed) and the unembedding: ``[layers, batch, seq, vocab]``.

        The last layer's equals the model's logits. ``include_embed``: the stream entering layer 0 first."""
        from .lens import logit_lens

        return logit_lens(self, layers, include_embed)

    def accumulated_resid(self, layer: Optional[int] = None, apply_ln: Union[bool, str] = False,
                          return_labels: bool = False) -> Any:
        """The stream entering layer 0, then each layer's output up to ``layer`` (None: all): ``[n, batch, seq, width]``."""
        from .lens import accumulated_resid

        return accumulated_resid(self, layer, apply_ln, return_labels)

    def decompose_resid(self, layer: Optional[int] = None, return_labels: bool = False) -> Any:
        """Embeddings, then each layer's attention and MLP writes (below ``layer``; None: all): they sum to the stream."""
        from .lens import decompose_resid

        return decompose_resid(self, layer, return_labels)

    def head_results(self, layer: Optional[int] = None) -> torch.Tensor:
        """Each head's write through the output projection (no bias): ``[batch, seq, heads, width]`` (all layers: ``[layers, ...]``)."""
        from .lens import head_results

        return head_results(self, layer)

    def apply_ln_to_stack(self, stack: torch.Tensor, *, scale: str) -> torch.Tensor:
        """``stack`` ``[n, batch, seq, width]`` through the final norm: ``scale="recompute"`` or ``"frozen"`` (lens.py)."""
        from .lens import apply_ln_to_stack

        return apply_ln_to_stack(self, stack, scale)

    def logit_attrs(self, tokens: Any = None, incorrect_tokens: Any = None, *, direction: Optional[torch.Tensor] = None,
                    heads: bool = False, position: Optional[int] = -1, return_labels: bool = False) -> Any:
        """Direct logit attribution of every stream component (or head) through the frozen final norm (lens.py)."""
        from .lens import logit_attrs

        return logit_attrs(self, tokens, incorrect_tokens, direction, heads, position, return_labels)
