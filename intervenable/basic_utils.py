"""Small helpers the reference library exports at top level (tutorial utilities).

Same names and behaviour as ``pyvene``'s ``basic_utils``: turning a hidden
state into a distribution over the vocabulary (``embed_to_distrib``), printing
the top tokens (``top_vals``), seeding, soft boundary masks for Boundless DAS,
permutation helpers, list depth and batch size of inputs, and ``GET_LOC`` for
the nested ``unit_locations`` of one (source, base) position pair.
"""
from __future__ import annotations

import os
import random
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .interventions.rotations import sigmoid_boundary  # defined with Boundless DAS, its user

__all__ = [
    "GET_LOC",
    "build_intervenable_model",
    "closeness_to_permutation_loss",
    "count_parameters",
    "create_directory",
    "embed_to_distrib",
    "format_token",
    "get_batch_size",
    "get_list_depth",
    "get_type_from_string",
    "harmonic_sigmoid_boundary",
    "lsm",
    "random_permutation_matrix",
    "set_seed",
    "sigmoid_boundary",
    "sm",
    "top_vals",
]

# The reference's module-level normalisers over dim 2 ([batch, positions, vocab]).
lsm = nn.LogSoftmax(dim=2)
sm = nn.Softmax(dim=2)


def _unembedding(model: nn.Module) -> torch.Tensor:
    """The ``[vocab, hidden]`` matrix that maps a hidden state to vocabulary scores."""
    wte = getattr(model, "wte", None)  # GPT2Model, as in the reference
    if isinstance(wte, nn.Embedding):
        return wte.weight
    get_out = getattr(model, "get_output_embeddings", None)
    head = get_out() if callable(get_out) else None
    if head is not None and getattr(head, "weight", None) is not None:
        return head.weight
    get_in = getattr(model, "get_input_embeddings", None)
    emb = get_in() if callable(get_in) else None
    if emb is not None and getattr(emb, "weight", None) is not None:
        return emb.weight
    raise TypeError(
        f"embed_to_distrib: {type(model).__name__} has no token embedding to project onto; "
        "pass a GPT-2 style model (with .wte) or a Hugging Face model with output or input embeddings."
    )


def embed_to_distrib(model: nn.Module, embed: torch.Tensor, log: bool = False, logits: bool = False) -> torch.Tensor:
    """Project hidden states onto the vocabulary: ``embed @ W_E.T``, then softmax (or log-softmax).

    As in the reference, a GPT-2 model's input embedding ``wte`` is the
    projection (GPT-2 ties it to the LM head) and the result is computed under
    ``torch.inference_mode``. Other models use their output embedding (LM
    head), or else their input embedding. The softmax is over the last
    dimension (the reference's is over dim 2, the same for its
    ``[batch, positions, hidden]`` inputs).
    """
    weight = _unembedding(model)
    with torch.inference_mode():
        vocab = torch.matmul(embed, weight.t())
        if logits:
            return vocab
        return torch.log_softmax(vocab, dim=-1) if log else torch.softmax(vocab, dim=-1)


def set_seed(seed: int) -> None:
    """Seed Python's ``random``, NumPy (when installed) and torch on every device."""
    random.seed(seed)
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy ships with torch wheels
        np = None
    if np is not None:
        np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def harmonic_sigmoid_boundary(_input: torch.Tensor, boundary_x: Any, boundary_y: Any, temperature: Any) -> torch.Tensor:
    """Soft boundary mask whose inside uses the harmonic mean of the distances to both edges.

    At or outside an edge it is ``sigmoid(-(distance past the edge) / temperature)``;
    strictly inside it is ``sigmoid(hm / temperature)`` with ``hm`` the harmonic
    mean ``1 / (0.5 * (1/|x - bx| + 1/|x - by|))``, as in the reference.
    """
    below = _input <= boundary_x
    above = _input >= boundary_y
    inside = (_input > boundary_x) & (_input < boundary_y)
    harmonic = 1.0 / (0.5 * (1.0 / torch.abs(_input - boundary_x) + 1.0 / torch.abs(_input - boundary_y)))
    return (
        below * torch.sigmoid((_input - boundary_x) / temperature)
        + above * torch.sigmoid((boundary_y - _input) / temperature)
        + inside * torch.sigmoid(harmonic / temperature)
    )


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements that require gradients."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def random_permutation_matrix(n: int) -> torch.Tensor:
    """A random ``n x n`` permutation matrix (rows of the identity, shuffled with torch's RNG)."""
    return torch.eye(n)[torch.randperm(n)]


def closeness_to_permutation_loss(rotation: torch.Tensor) -> torch.Tensor:
    """How far a square matrix is from a permutation matrix (0 for a permutation).

    ``0.5 * (mean |row sums - 1| + mean |column sums - 1|) + mean(m * (1 - m))``.
    """
    row_sum_diff = torch.abs(rotation.sum(dim=1) - 1.0).mean()
    col_sum_diff = torch.abs(rotation.sum(dim=0) - 1.0).mean()
    entry_diff = (rotation * (1 - rotation)).mean()
    return 0.5 * (row_sum_diff + col_sum_diff) + entry_diff


def format_token(tokenizer: Any, tok: Any) -> str:
    """Decode one token id, showing spaces as ``_`` and newlines as ``\\n``."""
    return tokenizer.decode(tok).replace(" ", "_").replace("\n", "\\n")


def top_vals(tokenizer: Any, res: torch.Tensor, n: int = 10, return_results: bool = False) -> Optional[List[Tuple[str, float]]]:
    """Print (or, with ``return_results=True``, return) the ``n`` most likely tokens of a 1-D distribution."""
    values, indices = torch.topk(res, n)
    results: List[Tuple[str, float]] = []
    for value, index in zip(values, indices):
        tok = format_token(tokenizer, index.item())
        results.append((tok, value.item()))
        if not return_results:
            print(f"{tok:<20} {value.item()}")
    return results if return_results else None


def get_list_depth(lst: Any) -> int:
    """Nesting depth of Python lists (``[] -> 1``, ``[[1]] -> 2``, a non-list -> 0)."""
    if isinstance(lst, list):
        return 1 + max((get_list_depth(item) for item in lst), default=0)
    return 0


def get_batch_size(model_input: Union[torch.Tensor, Mapping[str, torch.Tensor]]) -> int:
    """Batch size of a tensor, or of the first value of a dict of tensors (e.g. tokenizer output)."""
    if isinstance(model_input, torch.Tensor):
        return model_input.shape[0]
    for value in model_input.values():
        return value.shape[0]
    raise ValueError("get_batch_size: the input dict is empty, so it has no batch size.")


def GET_LOC(LOC: Sequence[int], unit: str = "h.pos", batch_size: int = 1) -> List[Any]:  # noqa: N802 - reference name
    """Nested ``h.pos`` unit locations of one (head, position) pair, for one intervention.

    ``GET_LOC((h, p), batch_size=2) == [[[[h], [h]], [[p], [p]]]]``: one
    intervention, whose head list and position list hold one unit per example
    (e.g. ``unit_locations={"base": GET_LOC((3, 3))}`` is head 3 at position 3).
    """
    if unit != "h.pos":
        raise NotImplementedError(f"GET_LOC supports unit='h.pos' only; got {unit!r}.")
    return [[[[LOC[0]]] * batch_size, [[LOC[1]]] * batch_size]]


def get_type_from_string(type_str: str) -> type:
    """The class named by ``"<class 'pkg.mod.Name'>"`` or ``"pkg.mod.Name"`` (imports ``pkg.mod``)."""
    import importlib

    type_str = type_str.replace("<class '", "").replace("'>", "")
    module_name, class_name = type_str.rsplit(".", 1)
    return getattr(importlib.import_module(module_name), class_name)


def create_directory(path: str) -> None:
    """Create ``path`` (and parents) if missing, printing what happened as the reference does."""
    if not os.path.exists(path):
        os.makedirs(path)
        print(f"Directory '{path}' created successfully.")
    else:
        print(f"Directory '{path}' already exists.")


def build_intervenable_model(config: Any, model: nn.Module, **kwargs: Any) -> Any:
    """``IntervenableModel(config, model, **kwargs)`` (the reference's factory).

    The reference returns its nnsight-backed model for an ``nnsight.LanguageModel``;
    intervenable has none, so such a model gets a clear error (see docs/remote.md).
    """
    if type(model).__module__.split(".")[0] == "nnsight":
        raise TypeError(
            "build_intervenable_model: nnsight models are not supported (the reference's "
            "IntervenableNdifModel has no counterpart here). Pass the underlying PyTorch model, "
            "e.g. nnsight_model._model; docs/remote.md covers remote execution."
        )
    from .model import IntervenableModel

    return IntervenableModel(config, model, **kwargs)
