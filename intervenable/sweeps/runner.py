"""The general batched path: cache the clean run once, then pack many patched runs into the batch.

Works for any model whose sites resolve (abstract components or raw module
paths). Each batch row gets its own writes through one hook per site.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..engine import read_input, rewrite_hook
from ..hooks import HookSet
from ..sites.site import Site, extract
from .spec import Row, Write

Values = Dict[str, Dict[str, torch.Tensor]]  # source -> site key -> raw full tensor [1, T, ...]


def embedding_noise_hook(noise: torch.Tensor, start: int, end: int) -> Callable[..., Any]:
    """A forward hook adding ``noise[start:end]`` to the token embeddings at those positions (ROME)."""

    def hook(module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor:
        out = output.clone()
        out[:, start:end] = out[:, start:end] + noise.to(out.dtype)
        return out

    return hook


def capture(model: nn.Module, ids: torch.Tensor, sites: Dict[str, Site], keys: Iterable[str],
            noise: Optional[Tuple[torch.Tensor, int, int]] = None,
            extra: Optional[Callable[[HookSet], None]] = None,
            model_kwargs: Optional[Dict[str, Any]] = None) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Run ``ids`` once; return last-position logits and the raw value of each site in ``keys``.

    ``extra`` adds more hooks for the same forward; ``model_kwargs`` go to the model's call.
    """
    out, store = capture_output(model, ids, sites, keys, noise, extra, model_kwargs)
    return logits_of(out)[:, -1], store


def capture_output(model: nn.Module, ids: torch.Tensor, sites: Dict[str, Site], keys: Iterable[str],
                   noise: Optional[Tuple[torch.Tensor, int, int]] = None,
                   extra: Optional[Callable[[HookSet], None]] = None,
                   model_kwargs: Optional[Dict[str, Any]] = None) -> Tuple[Any, Dict[str, torch.Tensor]]:
    """As ``capture``, but return the model's whole output (not only its last logits) and the site values."""
    store: Dict[str, torch.Tensor] = {}

    def reader(key: str, site: Site) -> Callable[..., Any]:
        if site.hook == "input":
            def pre(module, args, kwargs):
                store[key] = read_input(site, args, kwargs).detach()
            return pre

        def post(module, args, kwargs, output):
            store[key] = extract(site, output).detach()
        return post

    with HookSet() as hooks:
        if noise is not None:
            hooks.add(model.get_input_embeddings(), "output", embedding_noise_hook(*noise))
        for key in keys:
            hooks.add(sites[key].module, sites[key].hook, reader(key, sites[key]))
        if extra is not None:
            extra(hooks)
        out = model(input_ids=ids, **logits_kwargs(model), **(model_kwargs or {}))
    return out, store


def logits_of(out: Any) -> torch.Tensor:
    logits = getattr(out, "logits", None)
    if logits is None:
        logits = out[0] if isinstance(out, (tuple, list)) else out
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise TypeError(
            "The model's output has no [batch, positions, vocab] logits: sweeps need a language-model head "
            "(e.g. GPT2LMHeadModel, LlamaForCausalLM)."
        )
    return logits


def logits_kwargs(model: nn.Module) -> Dict[str, Any]:
    """``logits_to_keep=1`` when the model's forward accepts it (the head then runs on the last position)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return {}
    return {"logits_to_keep": 1} if "logits_to_keep" in params else {}


def write_value(values: Values, sites: Dict[str, Site], w: Write) -> torch.Tensor:
    """The cached value a write copies: ``[width]`` (or ``[head_dim]`` for a head)."""
    view = sites[w.site].to_view(values[w.source][w.site])
    if w.head is not None:
        return view[0, w.head, w.pos]
    return view[0, w.pos]


def write_hook(site: Site, rows: torch.Tensor, pos: torch.Tensor, heads: Optional[torch.Tensor],
               vals: torch.Tensor) -> Callable[..., Any]:
    """One hook writing ``vals[k]`` at ``(rows[k], pos[k][, heads[k]])`` of ``site``'s view."""

    def apply(full: torch.Tensor) -> torch.Tensor:
        view = site.to_view(full).clone()
        v = vals.to(device=view.device, dtype=view.dtype)
        if heads is not None:
            view[rows, heads, pos] = v
        else:
            view[rows, pos] = v
        return site.from_view(full, view)

    return rewrite_hook(site, apply)


def group_writes(rows: Sequence[Row], values: Values, sites: Dict[str, Site], offset: int = 0,
                 skip: Optional[Callable[[Write], bool]] = None) -> Dict[str, Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], torch.Tensor]]:
    """Per site: (row indices, positions - offset, heads or None, stacked values)."""
    acc: Dict[str, List[Tuple[int, int, Optional[int], torch.Tensor]]] = {}
    for r, row in enumerate(rows):
        for w in row:
            if skip is not None and skip(w):
                continue
            acc.setdefault(w.site, []).append((r, w.pos - offset, w.head, write_value(values, sites, w)))
    out = {}
    for key, items in acc.items():
        has_heads = items[0][2] is not None
        out[key] = (
            torch.tensor([i[0] for i in items]),
            torch.tensor([i[1] for i in items]),
            torch.tensor([i[2] for i in items]) if has_heads else None,
            torch.stack([i[3] for i in items]),
        )
    return out


def budget_bytes(model: nn.Module, memory_budget: Optional[int] = None) -> int:
    """``memory_budget`` when given, else 512 MiB on CPU or half the free memory of the model's GPU."""
    if memory_budget is not None:
        return int(memory_budget)
    param = next(iter(model.parameters()), None)
    if param is not None and param.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(param.device)
        return free // 2
    return 512 * 2**20


def auto_batch_size(model: nn.Module, T: int, n_rows: int, memory_budget: Optional[int] = None) -> int:
    """Rows per forward that fit ``memory_budget`` bytes (default: 512 MiB on CPU, half the free GPU memory)."""
    config = getattr(model, "config", None)
    d = int(getattr(config, "hidden_size", None) or getattr(config, "n_embd", 1024))
    heads = int(getattr(config, "num_attention_heads", None) or getattr(config, "n_head", 16))
    inner = int(getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * d)
    param = next(iter(model.parameters()), None)
    elem = param.element_size() if param is not None else 4
    memory_budget = budget_bytes(model, memory_budget)
    per_row = T * (8 * d + 2 * inner + 3 * heads * T) * elem + 4 * int(getattr(config, "vocab_size", 0) or 0)
    return int(max(1, min(n_rows, 1024, memory_budget // max(per_row, 1))))


def run_general(model: nn.Module, ids: torch.Tensor, sites: Dict[str, Site], rows: Sequence[Row],
                values: Values, metric: Callable[[torch.Tensor], torch.Tensor], batch_size: int,
                noise: Optional[Tuple[torch.Tensor, int, int]], tick: Callable[[int], None]) -> Tuple[torch.Tensor, int]:
    """Scores of every row, from full forwards of the corrupted input, ``batch_size`` rows at a time."""
    scores: List[torch.Tensor] = []
    kwargs = logits_kwargs(model)
    forwards = 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        grouped = group_writes(chunk, values, sites)
        with HookSet() as hooks:
            if noise is not None:
                hooks.add(model.get_input_embeddings(), "output", embedding_noise_hook(*noise))
            for key, (r, p, h, v) in grouped.items():
                hooks.add(sites[key].module, sites[key].hook, write_hook(sites[key], r, p, h, v))
            out = model(input_ids=ids.expand(len(chunk), -1), **kwargs)
        forwards += 1
        scores.append(metric(logits_of(out)[:, -1]).detach().float().cpu())
        tick(len(chunk))
    return torch.cat(scores) if scores else torch.zeros(0), forwards
