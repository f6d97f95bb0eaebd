"""What a sweep does, as data: prompts, targets, metrics, and one ``Row`` per patched run.

A row is a tuple of ``Write``s; each write copies the value of one site at one
position (and head) from the clean run (``source="clean"``) or freezes it at
the corrupted run's value (``source="corrupted"``, used by severed traces).
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..errors import InputError
from ..sites.resolve import resolve_component
from ..sites.site import Site

Metric = Union[str, Callable[[torch.Tensor], torch.Tensor]]


@dataclass(frozen=True)
class Write:
    """Set ``site`` (a key into the plan's sites) at ``pos`` (and ``head``) to a cached value."""

    site: str
    pos: int
    head: Optional[int] = None
    source: str = "clean"  # "clean" or "corrupted"


Row = Tuple[Write, ...]


@dataclass
class Plan:
    """Sites, rows (one patched run each) and where each row's score goes in the result."""

    sites: "dict[str, Site]"
    layers: "dict[str, Optional[int]]"  # layer index of each site (None: unknown)
    rows: List[Row]
    cells: List[Tuple[int, ...]]  # result index of each row


def site_key(component: str, layer: Optional[int]) -> str:
    return component if layer is None else f"{component}@{layer}"


def add_site(plan_sites: "dict[str, Site]", layers: "dict[str, Optional[int]]", model: nn.Module,
             component: str, layer: Optional[int]) -> str:
    """Resolve ``component`` at ``layer`` once (through the architecture registry) and return its key."""
    key = site_key(component, layer)
    if key not in plan_sites:
        is_raw = "." in component or "[" in component
        plan_sites[key] = resolve_component(model, component, None if is_raw else layer)
        layers[key] = layer
    return key


# -- prompts -------------------------------------------------------------------
def as_ids(prompt: Any, tokenizer: Any = None, name: str = "prompt") -> torch.Tensor:
    """Token ids ``LongTensor[1, T]`` from a string (needs ``tokenizer``), ids, or a tokenizer dict."""
    if isinstance(prompt, (list, tuple)) and any(isinstance(p, str) for p in prompt):
        raise InputError(
            f"The {name} must be one prompt; got a {type(prompt).__name__} of {len(prompt)} texts. A sweep traces one "
            "prompt: run one sweep per prompt (or split them over processes with intervenable.distributed)."
        )
    if isinstance(prompt, str):
        if not prompt.strip():
            raise InputError(f"The {name} is empty: give a non-empty text.")
        if tokenizer is None:
            raise InputError(f"The {name} is text but no tokenizer was given: pass tokenizer=... or token ids.")
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    elif isinstance(prompt, dict) or hasattr(prompt, "keys"):
        if "input_ids" not in prompt:
            raise InputError(f"The {name} dict has no 'input_ids'; pass tokenizer(text, return_tensors='pt').")
        ids = prompt["input_ids"]
    else:
        ids = torch.as_tensor(prompt)
    ids = torch.as_tensor(ids, dtype=torch.long)
    if ids.dim() == 1:
        ids = ids.unsqueeze(0)
    if ids.dim() != 2 or ids.shape[0] != 1:
        raise InputError(f"The {name} must be one sequence; got token ids of shape {tuple(ids.shape)}.")
    if ids.shape[1] == 0:
        raise InputError(f"The {name} is empty (no tokens): give a non-empty text.")
    return ids


def token_strings(ids: torch.Tensor, tokenizer: Any = None) -> List[str]:
    """One readable label per token (the decoded token, or its id)."""
    if tokenizer is None:
        return [str(int(t)) for t in ids[0]]
    return [tokenizer.decode([int(t)]) for t in ids[0]]


def target_id(target: Any, tokenizer: Any = None) -> int:
    """The token id of ``target`` (an int, or a text that must be exactly one token)."""
    if isinstance(target, (int, torch.Tensor)) and not isinstance(target, bool):
        return int(target)
    if not isinstance(target, str) or not target.strip():
        raise InputError(f"The target must be a token id or a non-empty text; got {target!r}.")
    if tokenizer is None:
        raise InputError("The target is text but no tokenizer was given: pass tokenizer=... or a token id.")
    tried = []
    for text in (target, " " + target) if not target.startswith(" ") else (target,):
        ids = tokenizer.encode(text, add_special_tokens=False)
        if len(ids) == 1:
            unk = getattr(tokenizer, "unk_token_id", None)
            if unk is not None and int(ids[0]) == int(unk) and text.strip() != getattr(tokenizer, "unk_token", None):
                raise InputError(
                    f"The target {target!r} is not in the tokenizer's vocabulary: it is tokenised as the unknown "
                    f"token {tokenizer.decode([unk])!r} (id {unk}), whose probability says nothing about {target!r}. "
                    "Give a target word the model knows, or its token id if you really mean the unknown token."
                )
            return int(ids[0])
        tried.append(f"{text!r} -> {[tokenizer.decode([i]) for i in ids]} (ids {ids})")
    raise InputError(
        f"The target {target!r} is not a single token: it is tokenised as " + "; ".join(tried)
        + ". Give a one-token target (often with a leading space, e.g. ' Paris') or a token id."
    )


def subject_range(ids: torch.Tensor, subject: Any, tokenizer: Any = None) -> Tuple[int, int]:
    """Token range ``[start, end)`` of ``subject`` in the prompt: a text, a (start, end) pair, or positions."""
    T = ids.shape[1]
    if isinstance(subject, str):
        if tokenizer is None:
            raise InputError("The subject is text but no tokenizer was given: pass tokenizer=... or a token range.")
        # Match without whitespace, so that word-level and BPE tokenizers both work.
        toks = ["".join(t.split()) for t in token_strings(ids, tokenizer)]
        whole, needle = "".join(toks), "".join(subject.split())
        start_char = whole.find(needle) if needle else -1
        if start_char < 0:
            raise InputError(
                f"The subject {subject!r} does not occur in the prompt {tokenizer.decode(ids[0])!r}: give a "
                "substring of the prompt, or a token range (start, end)."
            )
        end_char = start_char + len(needle)
        pos, start, end = 0, None, None
        for i, tok in enumerate(toks):
            if start is None and pos + len(tok) > start_char:
                start = i
            if pos < end_char:
                end = i + 1
            pos += len(tok)
        return int(start), int(end)
    if isinstance(subject, tuple) and len(subject) == 2:
        start, end = int(subject[0]), int(subject[1])
    else:
        positions = sorted(int(p) % T for p in subject)
        start, end = positions[0], positions[-1] + 1
    if not 0 <= start < end <= T:
        raise InputError(f"Subject range ({start}, {end}) does not fit a prompt of {T} tokens.")
    return start, end


# -- metrics -------------------------------------------------------------------
def make_metric(metric: Metric, target: Optional[int], foil: Optional[int] = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function ``logits[rows, vocab] -> scores[rows]`` (logits of the last position)."""
    if callable(metric):
        return metric
    if metric not in ("prob", "logprob", "logit", "logit_diff"):
        raise InputError(
            f"Unknown metric {metric!r}: use 'prob', 'logprob', 'logit', 'logit_diff' or a callable "
            "f(logits[rows, vocab]) -> scores[rows]."
        )
    if target is None:
        raise InputError(f"Metric {metric!r} needs a target token: pass target=...")
    if metric == "prob":
        return lambda logits: logits.float().softmax(-1)[:, target]
    if metric == "logprob":
        return lambda logits: logits.float().log_softmax(-1)[:, target]
    if metric == "logit":
        return lambda logits: logits.float()[:, target]
    if foil is None:
        raise InputError("Metric 'logit_diff' needs a foil token (the wrong answer): pass foil=...")
    if int(foil) == int(target):
        raise InputError(f"Metric 'logit_diff': the foil is the target (token {target}), so every score would be 0. "
                         "Give a foil that is the wrong answer, a different token.")
    return lambda logits: logits.float()[:, target] - logits.float()[:, foil]


def window_layers(layer: int, window: int, n_layers: int) -> List[int]:
    """ROME's window of layers centred on ``layer``: ``[layer - w//2, layer + ceil(w/2))``, clipped."""
    return list(range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2))))


def normalise_positions(positions: Optional[Sequence[int]], T: int) -> List[int]:
    if positions is None:
        return list(range(T))
    out = []
    for p in positions:
        q = int(p) + T if int(p) < 0 else int(p)
        if not 0 <= q < T:
            raise InputError(f"Position {p} is out of range for a prompt of {T} tokens (use 0..{T - 1} or negatives).")
        out.append(q)
    return out


# -- argument checks (before any forward) ----------------------------------------
def check_count(value: Any, name: str, meaning: str) -> int:
    """``value`` as an int >= 1, or ``InputError`` naming ``name`` and what it means."""
    try:
        count = operator.index(value)  # ints, numpy ints, integer 0-d tensors; not floats
    except TypeError:
        count = None
    if isinstance(value, bool) or count is None or count < 1:
        raise InputError(f"{name} must be a whole number >= 1 ({meaning}); got {value!r}.")
    return count


def check_layers(layers: Optional[Sequence[int]], n_layers: Optional[int]) -> Optional[List[int]]:
    """Explicit ``layers`` as a list of ints in ``[0, n_layers)`` (not checked when the count is unknown)."""
    if layers is None:
        return None
    if isinstance(layers, (int, str)):
        raise InputError(f"layers must be a list of layer indices, e.g. layers=[{layers}]; got {layers!r}.")
    try:
        out = [operator.index(layer) for layer in layers]
    except TypeError:
        raise InputError(f"layers must be a list of whole-number layer indices; got {layers!r}.") from None
    if not out:
        raise InputError("layers is empty: give at least one layer index, or layers=None for every layer.")
    bad = [layer for layer in out if layer < 0 or (n_layers is not None and layer >= n_layers)]
    if bad:
        where = f"0..{n_layers - 1}" if n_layers is not None else "indices >= 0"
        raise InputError(f"Layer {bad[0]} is out of range: the model has {n_layers} layers (use {where}).")
    return out


def vocab_size(model: nn.Module) -> Optional[int]:
    """Rows of the model's output head (or ``config.vocab_size``); None when neither is known."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    weight = getattr(head, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return int(weight.shape[0])
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    return int(size) if isinstance(size, int) else None


def check_token_id(tid: Optional[int], size: Optional[int], name: str = "target") -> None:
    """A token id must index the model's vocabulary."""
    if tid is not None and size is not None and not 0 <= tid < size:
        raise InputError(f"The {name} token id {tid} is outside the model's vocabulary (ids 0..{size - 1}): "
                         f"give a token id below {size}, or the {name} as text with tokenizer=...")


def token_text(tid: Optional[int], tokenizer: Any = None) -> Optional[str]:
    """The decoded text of token ``tid`` (None without a tokenizer)."""
    if tid is None or tokenizer is None:
        return None
    return tokenizer.decode([int(tid)])


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two equally shaped tensors (ties broken by order), e.g. estimate vs exact.

    A constant input has no ranking: ``InputError`` rather than a meaningless value."""
    for name, x in (("first", a), ("second", b)):
        if x.numel() < 2 or bool((x.flatten() == x.flatten()[0]).all()):
            raise InputError(f"spearman: the {name} tensor is constant, so it has no ranking to correlate (the "
                             "correlation is undefined, not perfect). Compare tensors that vary.")

    def ranks(x: torch.Tensor) -> torch.Tensor:
        x = x.flatten().double()
        r = torch.empty_like(x)
        r[torch.argsort(x, stable=True)] = torch.arange(x.numel(), dtype=x.dtype)
        return r
    return float(torch.corrcoef(torch.stack([ranks(a), ranks(b)]))[0, 1])
