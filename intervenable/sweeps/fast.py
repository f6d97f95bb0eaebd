"""The fast path: reuse everything a patch cannot change.

A patch at (layer l, position p) leaves every layer below l and, under causal
attention, every position before p exactly as in the corrupted run. So the
corrupted run is computed once (by the model's own forward), keeping each
layer's input hidden states and keys/values; a patched row then starts from
the corrupted hidden state at its first patched layer, recomputes only
positions ``>= p`` (the corrupted keys/values of positions ``< p`` are fed
through a small cache object), and runs the output head on the last position
only. Bidirectional stacks (encoders) skip the layers below the patch but
recompute every position.

How a family's layers are called comes from its stack description
(``sites/archs``, built by ``stack.py``). Before use it is checked: the
corrupted run's last positions are recomputed through the description over the
cached prefix and the logits must equal the model's own; otherwise the sweep
falls back to the general batched path.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..hooks import HookSet
from ..sites.site import Site
from .runner import Values, capture_output, group_writes, logits_of, write_hook
from .spec import Row, Write
from .stack import PrefixCache, Stack


@dataclass
class Corrupted:
    """The corrupted run, kept for reuse: each layer's input (and the last output) and keys/values."""

    inputs: List[torch.Tensor]  # L + 1 tensors [1, T, d]
    kv: Dict[int, Tuple[torch.Tensor, torch.Tensor]]  # empty for bidirectional stacks
    logits: torch.Tensor  # [1, vocab] at the last position (the model's own forward)
    values: Dict[str, torch.Tensor]  # site values read during the same forward


def _cached_kv(cache: Any, j: int) -> Tuple[torch.Tensor, torch.Tensor]:
    if isinstance(cache, (tuple, list)):  # legacy per-layer (keys, values) pairs
        return cache[j][0], cache[j][1]
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return layers[j].keys, layers[j].values
    return cache.key_cache[j], cache.value_cache[j]  # transformers < 4.56


def record_corrupted(model: nn.Module, stack: Stack, ids: torch.Tensor, sites: Dict[str, Site], keys: Sequence[str],
                     noise: Optional[Tuple[torch.Tensor, int, int]]) -> Corrupted:
    """One forward of the model's own code, reading every layer's input, the keys/values and ``keys``' sites."""
    L = len(stack.layers)
    inputs: Dict[int, torch.Tensor] = {}

    def pre(j: int):
        def hook(module, args, kwargs):
            inputs[j] = (args[0] if args else kwargs["hidden_states"]).detach()
        return hook

    def post(module, args, kwargs, output):
        inputs[L] = (output[0] if isinstance(output, (tuple, list)) else output).detach()

    def extra(hooks: HookSet) -> None:
        for j, layer in enumerate(stack.layers):
            hooks.add(layer, "input", pre(j))
        hooks.add(stack.layers[-1], "output", post)

    model_kwargs: Dict[str, Any] = {}
    cache: Any = None
    if not stack.bidirectional and stack.legacy_cache:
        model_kwargs = {"use_cache": True}  # the model returns its keys/values as per-layer tuples
    elif not stack.bidirectional:
        from transformers.cache_utils import DynamicCache

        cache = DynamicCache()
        params = inspect.signature(model.forward).parameters
        model_kwargs = {"cache" if "cache" in params else "past_key_values": cache, "use_cache": True}
    out, values = capture_output(model, ids, sites, keys, noise, extra=extra, model_kwargs=model_kwargs)
    logits = logits_of(out)[:, -1]
    if not stack.bidirectional and stack.legacy_cache:
        cache = out.past_key_values
    kv = {j: tuple(t.detach() for t in _cached_kv(cache, j)) for j in range(L)} if cache is not None else {}
    return Corrupted([inputs[j] for j in range(L + 1)], kv, logits, values)


def check_stack(stack: Stack, corrupted: Corrupted) -> str:
    """Empty if the description reproduces the model's own logits, else why not.

    Decoders are checked on the last two positions over the cached prefix of the others (the
    prefix, the position offset and the causal mask within a recomputed block all take part),
    encoders on the whole prompt.
    """
    T = corrupted.inputs[0].shape[1]
    p = 0 if stack.bidirectional else max(0, T - 2)
    try:
        h = corrupted.inputs[0][:, p:]
        ctx = stack.context(p, T, h)
        cache = None if stack.bidirectional else PrefixCache({j: (k[..., :p, :], v[..., :p, :]) for j, (k, v) in corrupted.kv.items()})
        for j in range(len(stack.layers)):
            h = stack.call(j, h, cache, ctx)
        got = stack.logits(h[:, -1]).float()
    except Exception as exc:  # noqa: BLE001 - a description that does not fit this model
        return f"the stack description does not run on this model ({type(exc).__name__}: {exc})"
    ref = corrupted.logits.float()
    if got.shape != ref.shape or not torch.allclose(got, ref, atol=1e-4 * (1 + ref.abs().max().item()), rtol=1e-3):
        return "the layer-by-layer run did not reproduce the model's own logits"
    return ""


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

    def first_pos(row: Row) -> int:
        return 0 if stack.bidirectional else min(w.pos for w in row)

    by_pos: Dict[int, List[Tuple[int, int]]] = {}
    for i, row in enumerate(rows):
        by_pos.setdefault(first_pos(row), []).append((start_layer(row), i))
    last = corrupted.inputs[0].new_empty((len(rows), corrupted.inputs[0].shape[-1]))
    forwards = 0
    for p in sorted(by_pos):
        members = sorted(by_pos[p])
        for c in range(0, len(members), batch_size):
            chunk = members[c:c + batch_size]
            last[[i for _, i in chunk]] = _run_chunk(stack, kinds, corrupted, sites, rows, values, p, chunk, L, T)
            forwards += 1
            tick(len(chunk))
    # The head runs once over many rows: its weights (often the largest matrix) are read once per batch.
    scores = [metric(stack.logits(last[c:c + batch_size])).detach().float().cpu()
              for c in range(0, len(rows), batch_size)]
    return (torch.cat(scores) if scores else torch.zeros(0)), forwards


def _run_chunk(stack: Stack, kinds, corrupted: Corrupted, sites, rows, values, p: int,
               chunk: List[Tuple[int, int]], L: int, T: int) -> torch.Tensor:
    """The last position's hidden state after the last layer, for each row of ``chunk``."""
    chunk_rows = [rows[i] for _, i in chunk]
    starts = [s for s, _ in chunk]
    n = len(chunk)
    like = corrupted.inputs[0]
    H = like.new_empty((n, T - p, like.shape[-1]))
    ctx = stack.context(p, T, like)
    cache = None if stack.bidirectional else PrefixCache({j: (k[..., :p, :], v[..., :p, :]) for j, (k, v) in corrupted.kv.items()})
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

    return walk_layers(stack, sites, starts, H, lambda j, lo, hi: corrupted.inputs[j][0, p:], apply_block,
                       hooked, by_layer, cache, ctx, L)


def walk_layers(stack: Stack, sites: Dict[str, Site], starts: Sequence[int], H: torch.Tensor,
                layer_input: Callable[[int, int, int], torch.Tensor],
                apply_block: Callable[[int, torch.Tensor, int, int], None], hooked: Dict[str, Any],
                by_layer: Dict[str, List[str]], cache: Any, ctx: Any, L: int) -> torch.Tensor:
    """Run a chunk's rows (sorted by start layer) through layers ``0..L-1``; the last position after the last.

    Row ``r`` joins at layer ``starts[r]`` with ``layer_input(j, lo, hi)`` (the corrupted run's input of
    layer ``j`` for rows ``lo..hi-1``) and the block-output writes of layer ``j - 1`` applied
    (``apply_block``); hooked writes (``hooked``, keyed by site, listed per layer in ``by_layer``) are
    hooks for the layer's call only.
    """
    n = len(starts)
    active = 0
    for j in range(L + 1):
        joined = active
        while active < n and starts[active] == j:
            active += 1
        if active > joined:
            H[joined:active] = layer_input(j, joined, active)
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
    return H[:, -1]
