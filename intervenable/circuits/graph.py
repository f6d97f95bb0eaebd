"""The computational graph of a transformer decomposed into the residual stream's writers and readers.

Nodes (EAP-IG / MIB names): ``input`` (the stream entering layer 0: token, position and scaling
embeddings), every attention head ``a{l}.h{h}`` (its slice of the output projection's input through
the projection, the projection's bias excluded), every MLP ``m{l}`` and ``logits``. Receivers are
the places a node's output is read: each head's input (``a{l}.h{h}``, or with ``qkv=True`` its query,
key and value inputs ``a{l}.h{h}<q>`` / ``<k>`` / ``<v>``), each MLP's input and the logits (the input
of the final norm). An edge ``u->v`` joins every node ``u`` to every later receiver ``v``: the stream a
receiver reads is the sum of the outputs of the nodes before it, plus constants (biases) that are
the same in every run.

Indices follow EAP-IG's: forward (node) index ``0`` for ``input``, ``1 + l (H + 1) + h`` for heads and
``1 + l (H + 1) + H`` for ``m{l}``; receivers layer by layer (heads letter by letter, then the MLP),
``logits`` last. A parallel-residual layer's MLP does not read its own layer's heads.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Dict, List, Tuple

import torch
from torch import nn

from ..errors import ComponentError, ConfigError
from ..sites.residual import ResidualStream, residual_stream


@dataclass(frozen=True)
class GraphLayout:
    """The shape of a model's edge graph; everything else (names, edges) is derived from it."""

    n_layers: int
    n_heads: int
    parallel: bool
    qkv: bool
    d_model: int

    @property
    def letters(self) -> Tuple[str, ...]:
        return ("q", "k", "v") if self.qkv else ("",)

    @property
    def n_forward(self) -> int:
        return 1 + self.n_layers * (self.n_heads + 1)

    @property
    def per_layer(self) -> int:
        """Receivers per layer: one per head (and letter), then the MLP."""
        return len(self.letters) * self.n_heads + 1

    @property
    def n_receivers(self) -> int:
        return self.n_layers * self.per_layer + 1

    # -- indices -------------------------------------------------------------------------------
    def head_node(self, layer: int, head: int) -> int:
        return 1 + layer * (self.n_heads + 1) + head

    def mlp_node(self, layer: int) -> int:
        return 1 + layer * (self.n_heads + 1) + self.n_heads

    def head_receiver(self, layer: int, head: int, letter: str = "") -> int:
        return layer * self.per_layer + self.letters.index(letter) * self.n_heads + head

    def mlp_receiver(self, layer: int) -> int:
        return layer * self.per_layer + self.per_layer - 1

    @property
    def logits_receiver(self) -> int:
        return self.n_receivers - 1

    @cached_property
    def upstream(self) -> torch.Tensor:
        """``[n_receivers]``: how many nodes (the first ones in forward order) each receiver reads."""
        out = torch.empty(self.n_receivers, dtype=torch.long)
        for layer in range(self.n_layers):
            first = 1 + layer * (self.n_heads + 1)
            start = layer * self.per_layer
            out[start:start + self.per_layer - 1] = first
            out[start + self.per_layer - 1] = first if self.parallel else first + self.n_heads
        out[-1] = self.n_forward
        return out

    @cached_property
    def real(self) -> torch.Tensor:
        """``[n_forward, n_receivers]`` bool: which (node, receiver) pairs are edges."""
        return torch.arange(self.n_forward).unsqueeze(1) < self.upstream.unsqueeze(0)

    @cached_property
    def receiver_owner(self) -> torch.Tensor:
        """``[n_receivers]``: the forward index of the node each receiver belongs to (``n_forward``: logits)."""
        out = torch.empty(self.n_receivers, dtype=torch.long)
        for r, name in enumerate(self.receiver_names):
            out[r] = self.n_forward if name == "logits" else self.node_index[name.split("<")[0]]
        return out

    # -- names ---------------------------------------------------------------------------------
    @cached_property
    def node_names(self) -> List[str]:
        names = ["input"]
        for layer in range(self.n_layers):
            names += [f"a{layer}.h{h}" for h in range(self.n_heads)] + [f"m{layer}"]
        return names

    @cached_property
    def node_index(self) -> Dict[str, int]:
        return {name: i for i, name in enumerate(self.node_names)}

    @cached_property
    def receiver_names(self) -> List[str]:
        names: List[str] = []
        for layer in range(self.n_layers):
            for letter in self.letters:
                names += [f"a{layer}.h{h}" + (f"<{letter}>" if letter else "") for h in range(self.n_heads)]
            names.append(f"m{layer}")
        return names + ["logits"]

    @cached_property
    def edge_index(self) -> torch.Tensor:
        """``[n_edges, 2]`` (node, receiver) pairs, receiver by receiver (in receiver order), each receiver's
        sources in forward order."""
        recv, node = torch.nonzero(self.real.T, as_tuple=True)
        return torch.stack([node, recv], 1)

    @cached_property
    def edge_names(self) -> List[str]:
        nodes, recvs = self.node_names, self.receiver_names
        return [self._edge_name(nodes[u], recvs[r]) for u, r in self.edge_index.tolist()]

    @staticmethod
    def _edge_name(node: str, receiver: str) -> str:
        child, _, letter = receiver.partition("<")
        return f"{node}->{child}" + (f"<{letter}" if letter else "")

    @cached_property
    def edge_lookup(self) -> Dict[str, Tuple[int, int]]:
        return {name: (int(u), int(r)) for name, (u, r) in zip(self.edge_names, self.edge_index.tolist())}

    @property
    def n_edges(self) -> int:
        return int(self.real.sum())

    def config(self) -> Dict[str, object]:
        """The graph's ``cfg`` in EAP-IG's JSON (plus ``qkv``)."""
        return {"n_layers": self.n_layers, "n_heads": self.n_heads, "parallel_attn_mlp": self.parallel,
                "d_model": self.d_model, "qkv": self.qkv}


def describe(model: nn.Module) -> ResidualStream:
    """The model's residual stream, refused with a clear error when its heads' outputs do not add up.

    Where the family norms the attention's output before adding it (Gemma2), a head's output is its
    share of that write: its output-projection term through the norm with the scale of the whole
    attention output in the same run (linear at that scale), so the heads' shares sum to the write."""
    stream = residual_stream(model)  # ComponentError naming what to add for undescribed families
    for lr in stream.layers:
        if lr.attention_norm is None or lr.mlp_norm is None:
            raise ComponentError(f"The {stream.family!r} residual description names no norm before layer "
                                 f"{lr.layer}'s attention or MLP; circuits need both (Residual.attention_norm / "
                                 "mlp_norm), since a receiver's changed input is read through its norm.")
        if lr.heads.slice is not None or lr.heads.n_heads is None:
            raise ComponentError(f"The {stream.family!r} family's head_attention_value_output is not a plain "
                                 "per-head split of the output projection's input; circuits need one.")
        bias = getattr(lr.out_proj, "bias", None)
        if lr.attention_post is not None and isinstance(bias, torch.Tensor) and bool(bias.detach().ne(0).any()):
            raise ComponentError(
                f"The {stream.family!r} family norms the attention output before adding it, and layer {lr.layer}'s "
                "output projection has a bias: through the norm's scale, which differs from run to run, the bias "
                "is not a constant of the stream, so the heads' shares do not decompose it.")
    return stream


def layout_of(model: nn.Module, qkv: bool = False) -> GraphLayout:
    """The edge graph of ``model`` (``qkv=True``: heads' query, key and value inputs are separate receivers)."""
    if not isinstance(qkv, bool):
        raise ConfigError(f"qkv must be True or False; got {qkv!r}.")
    stream = describe(model)
    heads = {int(lr.heads.n_heads) for lr in stream.layers}
    if len(heads) != 1:
        raise ComponentError(f"Layers of {stream.family!r} have different head counts {sorted(heads)}; the edge "
                             "graph needs one head count.")
    width = int(stream.layers[0].stream.width or 0)
    return GraphLayout(len(stream.layers), heads.pop(), stream.parallel, qkv, width)
