"""The fast path for decoder-only language models: reuse everything a patch cannot change.

A patch at (layer l, position p) leaves every layer below l and, under causal
attention, every position before p exactly as in the corrupted run. So the
corrupted run is computed once, keeping each layer's input hidden states and
keys/values; a patched row then starts from the corrupted hidden state at its
first patched layer, recomputes only positions ``>= p`` (the corrupted
keys/values of positions ``< p`` are fed through a small cache object), and
runs the output head on the last position only.

The layers come from the same ``Site`` resolution as everywhere else
(``block_output`` of each layer). A family is "understood" when it has a
``Stack`` adapter below; the adapter is checked on every sweep by comparing its
corrupted-run logits with the model's own forward, and the sweep falls back
to the general batched path when they differ.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..hooks import HookSet
from ..sites.paths import get_module
from ..sites.registry import find_architecture
from ..sites.resolve import base_prefix, resolve_component
from ..sites.site import Site
from .runner import Values, embedding_noise_hook, group_writes, write_hook
from .spec import Row, Write


class PrefixCache:
    """Duck-typed KV cache: prepends fixed keys/values (positions ``< p``) to each layer's new ones.

    With ``record=True`` it instead stores the keys/values it is given (the corrupted run).
    """

    def __init__(self, prefix: Optional[Dict[int, Tuple[torch.Tensor, torch.Tensor]]] = None, record: bool = False) -> None:
        self.prefix = prefix or {}
        self.record = record
        self.stored: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any):
        if self.record:
            self.stored[layer_idx] = (key_states, value_states)
            return key_states, value_states
        pk, pv = self.prefix[layer_idx]
        if pk.shape[-2] == 0:
            return key_states, value_states
        b = key_states.shape[0]
        return (torch.cat([pk.expand(b, -1, -1, -1), key_states], dim=-2),
                torch.cat([pv.expand(b, -1, -1, -1), value_states], dim=-2))

    def get_seq_length(self, layer_idx: int = 0) -> int:
        pk = self.prefix.get(layer_idx)
        return 0 if pk is None else int(pk[0].shape[-2])


@dataclass
class Stack:
    """A decoder stack run layer by layer: the layers (from Sites), final norm, head and call style."""

    layers: List[nn.Module]
    norm: nn.Module
    head: nn.Module
    style: str  # "gpt2" or "llama"
    rotary: Optional[nn.Module] = None

    def context(self, start: int, end: int, like: torch.Tensor) -> Dict[str, Any]:
        """Per-group keyword arguments: position ids, an additive causal mask for keys ``0..end``."""
        q = torch.arange(start, end, device=like.device)
        k = torch.arange(0, end, device=like.device)
        mask = torch.zeros(q.numel(), k.numel(), dtype=like.dtype, device=like.device)
        mask.masked_fill_(k[None, :] > q[:, None], torch.finfo(like.dtype).min)
        ctx: Dict[str, Any] = {"position_ids": q[None], "attention_mask": mask[None, None]}
        if self.style == "llama":
            ctx["cache_position"] = q
            ctx["position_embeddings"] = self.rotary(like[:1, : q.numel()], q[None])
        return ctx

    def call(self, j: int, h: torch.Tensor, cache: PrefixCache, ctx: Dict[str, Any]) -> torch.Tensor:
        out = self.layers[j](h, past_key_values=cache, use_cache=True, **ctx)
        return out[0] if isinstance(out, (tuple, list)) else out

    def logits(self, last: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(last))


def find_stack(model: nn.Module) -> Optional[Stack]:
    """A ``Stack`` for GPT-2- and LLaMA-style decoders, or None (the general path is used)."""
    arch = find_architecture(model)
    config = getattr(model, "config", None)
    if arch is None or "block_output" not in arch.components or config is None:
        return None
    if getattr(config, "is_encoder_decoder", False) or getattr(config, "add_cross_attention", False):
        return None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        return None
    try:
        n = int(arch.num_layers(config))
        layers = [resolve_component(model, "block_output", j).module for j in range(n)]
    except Exception:  # noqa: BLE001 - any resolution problem means "not understood"
        return None
    prefix = base_prefix(model, arch).rstrip(".")
    base = get_module(model, prefix) if prefix else model
    if base is None:
        return None
    if isinstance(getattr(base, "ln_f", None), nn.Module) and arch.name == "gpt2":
        return Stack(layers, base.ln_f, head, "gpt2")
    norm, rotary = getattr(base, "norm", None), getattr(base, "rotary_emb", None)
    if isinstance(norm, nn.Module) and isinstance(rotary, nn.Module):
        return Stack(layers, norm, head, "llama", rotary)
    return None


@dataclass
class Corrupted:
    """The corrupted run, kept for reuse: each layer's input (and the last output) and keys/values."""

    inputs: List[torch.Tensor]  # L + 1 tensors [1, T, d]
    kv: Dict[int, Tuple[torch.Tensor, torch.Tensor]]
    logits: torch.Tensor  # [1, vocab] at the last position


def run_corrupted(model: nn.Module, stack: Stack, ids: torch.Tensor,
                  noise: Optional[Tuple[torch.Tensor, int, int]]) -> Corrupted:
    """Layer 0's input from the model's own embedding code, then every layer through ``stack``."""
    first: Dict[str, torch.Tensor] = {}

    def grab(module, args, kwargs):
        first["h"] = args[0] if args else kwargs["hidden_states"]
        raise _Stop

    with HookSet() as hooks:
        if noise is not None:
            hooks.add(model.get_input_embeddings(), "output", embedding_noise_hook(*noise))
        hooks.add(stack.layers[0], "input", grab)
        try:
            model(input_ids=ids)
        except _Stop:
            pass
    h = first["h"]
    cache = PrefixCache(record=True)
    ctx = stack.context(0, ids.shape[1], h)
    inputs = [h]
    for j in range(len(stack.layers)):
        h = stack.call(j, h, cache, ctx)
        inputs.append(h)
    return Corrupted(inputs, cache.stored, stack.logits(h[:, -1]))


class _Stop(Exception):
    """Raised by a pre-hook to stop a forward once layer 0's input is known."""


def classify(stack: Stack, sites: Dict[str, Site]) -> Optional[Dict[str, Tuple[int, bool]]]:
    """Per site: (layer index, is the block output itself); None if a site lies outside the layers."""
    owner: Dict[int, int] = {}
    for j, layer in enumerate(stack.layers):
        for m in layer.modules():
            owner.setdefault(id(m), j)
    out: Dict[str, Tuple[int, bool]] = {}
    for key, site in sites.items():
        j = owner.get(id(site.module))
        if j is None:
            return None
        is_block = (site.module is stack.layers[j] and site.hook == "output" and site.output_index == 0
                    and site.slice is None and site.n_heads is None)
        out[key] = (j, is_block)
    return out


def run_fast(stack: Stack, kinds: Dict[str, Tuple[int, bool]], corrupted: Corrupted, sites: Dict[str, Site],
             rows: Sequence[Row], values: Values, metric: Callable[[torch.Tensor], torch.Tensor],
             batch_size: int, tick: Callable[[int], None]) -> Tuple[torch.Tensor, int]:
    """Scores of every row; rows are grouped by first patched position and sorted by first layer."""
    L = len(stack.layers)
    T = corrupted.inputs[0].shape[1]

    def start_layer(row: Row) -> int:
        return min(kinds[w.site][0] + (1 if kinds[w.site][1] else 0) for w in row)

    info = [(min(w.pos for w in row), start_layer(row), i) for i, row in enumerate(rows)]
    info.sort()
    scores = torch.zeros(len(rows))
    forwards = 0
    groups: Dict[int, List[Tuple[int, int]]] = {}
    for p, s, i in info:
        groups.setdefault(p, []).append((s, i))
    for p, members in groups.items():
        for c in range(0, len(members), batch_size):
            chunk = members[c:c + batch_size]
            scores[[i for _, i in chunk]] = _run_chunk(stack, kinds, corrupted, sites, rows, values, metric, p, chunk, L, T)
            forwards += 1
            tick(len(chunk))
    return scores, forwards


def _run_chunk(stack: Stack, kinds, corrupted: Corrupted, sites, rows, values, metric, p: int,
               chunk: List[Tuple[int, int]], L: int, T: int) -> torch.Tensor:
    chunk_rows = [rows[i] for _, i in chunk]
    starts = [s for s, _ in chunk]
    n = len(chunk)
    like = corrupted.inputs[0]
    H = like.new_empty((n, T - p, like.shape[-1]))
    ctx = stack.context(p, T, like)
    prefix = {j: (k[..., :p, :], v[..., :p, :]) for j, (k, v) in corrupted.kv.items()}
    cache = PrefixCache(prefix)
    # Writes at the block output of layer j, applied directly (no hook): per layer, (rows, pos, values).
    block: Dict[int, List[Tuple[int, int, Write]]] = {}
    for r, row in enumerate(chunk_rows):
        for w in row:
            j, is_block = kinds[w.site]
            if is_block:
                block.setdefault(j, []).append((r, w.pos - p, w))
    hooked = group_writes(chunk_rows, values, sites, offset=p, skip=lambda w: kinds[w.site][1])
    by_layer: Dict[int, List[str]] = {}
    for key in hooked:
        by_layer.setdefault(kinds[key][0], []).append(key)

    def apply_block(j: int, h: torch.Tensor, lo: int, hi: int) -> None:
        for r, pos, w in block.get(j, ()):
            if lo <= r < hi:
                view = sites[w.site].to_view(values[w.source][w.site])
                h[r - lo, pos] = view[0, w.pos].to(h.dtype)

    active = 0
    for j in range(L + 1):
        joined = active
        while active < n and starts[active] == j:
            active += 1
        if active > joined:
            H[joined:active] = corrupted.inputs[j][0, p:]
            if j > 0:
                apply_block(j - 1, H[joined:active], joined, active)
        if j == L or active == 0:
            continue
        with HookSet() as hooks:
            for key in by_layer.get(j, ()):
                r, pos, hd, v = hooked[key]
                hooks.add(sites[key].module, sites[key].hook, write_hook(sites[key], r, pos, hd, v))
            h = stack.call(j, H[:active], cache, ctx)
        apply_block(j, h, 0, active)
        H[:active] = h
    return metric(stack.logits(H[:, -1])).detach().float().cpu()
