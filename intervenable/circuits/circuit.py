"""``Circuit``: edge scores over a model's graph, the edges kept, selection, pruning and EAP-IG's JSON.

Scores and membership are ``[n_forward, n_receivers]`` matrices (rows: nodes, columns: receivers,
EAP-IG's indices); selections return new circuits, the scores untouched.
"""
from __future__ import annotations

import heapq
import json
import os
from typing import Any, Dict, List, Optional, Union

import torch

from ..errors import ConfigError, InputError
from .graph import GraphLayout


class Circuit:
    """Edge scores (``scores["a0.h1->m1"]``), the edges in the circuit and the nodes they join."""

    def __init__(self, layout: GraphLayout, scores: torch.Tensor, in_graph: Optional[torch.Tensor] = None,
                 info: Optional[Dict[str, Any]] = None) -> None:
        if tuple(scores.shape) != (layout.n_forward, layout.n_receivers):
            raise InputError(f"Scores of shape {tuple(scores.shape)} do not fit a graph of {layout.n_forward} nodes x "
                             f"{layout.n_receivers} receivers.")
        self.layout = layout
        self.matrix = scores.detach().double().cpu() * layout.real
        self.in_graph = layout.real.clone() if in_graph is None else (in_graph.bool().cpu() & layout.real)
        self.info: Dict[str, Any] = dict(info or {})

    # -- reading -------------------------------------------------------------------------------
    @property
    def scores(self) -> Dict[str, float]:
        """Every edge of the graph -> its score."""
        u, r = self.layout.edge_index[:, 0], self.layout.edge_index[:, 1]
        return dict(zip(self.layout.edge_names, self.matrix[u, r].tolist()))

    @property
    def edges(self) -> List[str]:
        """The edges in the circuit (all of them for a freshly scored graph)."""
        u, r = self.layout.edge_index[:, 0], self.layout.edge_index[:, 1]
        keep = self.in_graph[u, r].tolist()
        return [name for name, k in zip(self.layout.edge_names, keep) if k]

    @property
    def nodes(self) -> List[str]:
        """Nodes joined by the circuit's edges (``logits`` always; ``input`` when it sends an edge)."""
        lay = self.layout
        sends = self.in_graph.any(1)
        reads = torch.zeros(lay.n_forward + 1, dtype=torch.bool)
        reads.index_put_((lay.receiver_owner,), self.in_graph.any(0), accumulate=True)
        present = sends | reads[:-1]
        return [n for n, p in zip(lay.node_names, present.tolist()) if p] + ["logits"]

    def __len__(self) -> int:
        return int(self.in_graph.sum())

    def __repr__(self) -> str:
        return (f"Circuit({len(self)} of {self.layout.n_edges} edges, {len(self.nodes)} nodes, "
                f"method={self.info.get('method', '?')!r})")

    # -- selection -----------------------------------------------------------------------------
    def _with(self, keep: torch.Tensor, how: str) -> "Circuit":
        return Circuit(self.layout, self.matrix, keep, {**self.info, "selection": how})

    def _ranked(self, absolute: bool) -> torch.Tensor:
        u, r = self.layout.edge_index[:, 0], self.layout.edge_index[:, 1]
        values = self.matrix[u, r]
        values = values.abs() if absolute else values
        return torch.argsort(values, descending=True, stable=True)

    def top(self, n: int, absolute: bool = True) -> "Circuit":
        """The ``n`` edges with the largest scores (``|score|`` with ``absolute``)."""
        n = _count(n, self.layout.n_edges)
        order = self._ranked(absolute)[:n]
        keep = torch.zeros_like(self.in_graph)
        e = self.layout.edge_index[order]
        keep[e[:, 0], e[:, 1]] = True
        return self._with(keep, f"top({n})")

    def threshold(self, t: float, absolute: bool = True) -> "Circuit":
        """The edges whose score (``|score|`` with ``absolute``) is at least ``t``."""
        values = self.matrix.abs() if absolute else self.matrix
        return self._with((values >= float(t)) & self.layout.real, f"threshold({t})")

    def greedy(self, n: int, absolute: bool = True) -> "Circuit":
        """EAP-IG's greedy search: from ``logits`` backwards, repeatedly add the best-scoring edge into a node
        already in the circuit, until ``n`` edges (every circuit it builds reaches the logits)."""
        lay = self.layout
        n = _count(n, lay.n_edges)
        values = self.matrix.abs() if absolute else self.matrix
        into: Dict[int, List[int]] = {}  # node (n_forward: logits) -> receivers owned
        for r, owner in enumerate(lay.receiver_owner.tolist()):
            into.setdefault(owner, []).append(r)
        keep = torch.zeros_like(self.in_graph)
        heap: List[Any] = []
        reached = set()

        def open_node(node: int) -> None:
            if node in reached:
                return
            reached.add(node)
            for r in into.get(node, []):
                for u in range(int(lay.upstream[r])):
                    heapq.heappush(heap, (-float(values[u, r]), u, r))

        open_node(lay.n_forward)
        count = 0
        while heap and count < n:
            _, u, r = heapq.heappop(heap)
            if keep[u, r]:
                continue
            keep[u, r] = True
            count += 1
            open_node(u)
        return self._with(keep, f"greedy({n})")

    def prune(self) -> "Circuit":
        """Drop nodes with no path from ``input`` to ``logits`` (and their edges) until nothing changes."""
        lay = self.layout
        keep = self.in_graph.clone()
        owner = lay.receiver_owner
        while True:
            sends = keep.any(1)
            reads = torch.zeros(lay.n_forward + 1, dtype=torch.bool)
            reads.index_put_((owner,), keep.any(0), accumulate=True)
            alive = sends & reads[:-1]
            alive[0] = bool(sends[0])  # the input reads nothing
            alive_recv = torch.cat([alive, torch.ones(1, dtype=torch.bool)])[owner]
            new = keep & alive.unsqueeze(1) & alive_recv.unsqueeze(0)
            if torch.equal(new, keep):
                return self._with(keep, self.info.get("selection", "all") + ".prune()")
            keep = new

    # -- plotting ------------------------------------------------------------------------------
    def plot(self, path: Optional[str] = None, **kwargs: Any) -> Any:
        """A picture of the circuit (matplotlib): nodes by layer, edges coloured by sign, width by |score|."""
        from .plot import plot_circuit
        return plot_circuit(self, path, **kwargs)

    # -- JSON (EAP-IG / MIB graph format) --------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        lay = self.layout
        u, r = lay.edge_index[:, 0], lay.edge_index[:, 1]
        nodes_in = set(self.nodes)
        return {
            "cfg": lay.config(),
            "nodes": {name: {"in_graph": name in nodes_in} for name in lay.node_names + ["logits"]},
            "edges": {name: {"score": s, "in_graph": bool(k)} for name, s, k in
                      zip(lay.edge_names, self.matrix[u, r].tolist(), self.in_graph[u, r].tolist())},
            "intervenable": {k: v for k, v in self.info.items() if isinstance(v, (str, int, float, bool, type(None)))},
        }

    def to_json(self, path: Union[None, str, os.PathLike] = None) -> str:
        """EAP-IG's graph JSON (``cfg``, ``nodes``, ``edges`` with ``score`` / ``in_graph``); written to ``path`` if given."""
        text = json.dumps(self.to_dict())
        if path is not None:
            tmp = f"{os.fspath(path)}.tmp"
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, path)
        return text

    @classmethod
    def from_json(cls, source: Union[str, os.PathLike, Dict[str, Any]]) -> "Circuit":
        """A circuit from ``to_json``'s text, a file path, or EAP-IG's own graph JSON."""
        if isinstance(source, dict):
            d = source
        else:
            text = os.fspath(source)
            if not text.lstrip().startswith("{"):
                with open(text, encoding="utf-8") as fh:
                    text = fh.read()
            try:
                d = json.loads(text)
            except json.JSONDecodeError as exc:
                raise InputError(f"Not a circuit JSON ({exc}).") from None
        missing = [k for k in ("cfg", "nodes", "edges") if k not in d]
        if missing:
            raise InputError(f"Circuit JSON lacks {missing}: it needs 'cfg', 'nodes' and 'edges' (EAP-IG's graph format).")
        cfg = d["cfg"]
        try:
            qkv = bool(cfg["qkv"]) if "qkv" in cfg else any("<" in name for name in d["edges"])
            lay = GraphLayout(int(cfg["n_layers"]), int(cfg["n_heads"]), bool(cfg.get("parallel_attn_mlp", False)),
                              qkv, int(cfg.get("d_model", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"Circuit JSON 'cfg' needs n_layers and n_heads ({exc}).") from None
        scores = torch.zeros(lay.n_forward, lay.n_receivers, dtype=torch.float64)
        keep = torch.zeros(lay.n_forward, lay.n_receivers, dtype=torch.bool)
        lookup = lay.edge_lookup
        unknown = [name for name in d["edges"] if name not in lookup]
        if unknown:
            raise InputError(f"Circuit JSON names edges the graph does not have, e.g. {unknown[:3]} (cfg: {cfg}).")
        if len(d["edges"]) != lay.n_edges:
            raise InputError(f"Circuit JSON has {len(d['edges'])} edges; a graph with cfg {cfg} has {lay.n_edges}.")
        for name, e in d["edges"].items():
            u, r = lookup[name]
            scores[u, r] = float(e.get("score", 0.0))
            keep[u, r] = bool(e.get("in_graph", True))
        return cls(lay, scores, keep, d.get("intervenable", {}))


def _count(n: Any, total: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, float)) or n < 0:
        raise ConfigError(f"A circuit size must be a number of edges >= 0 (or a fraction of them in (0, 1)); got {n!r}.")
    if isinstance(n, float) and n <= 1:
        return int(round(n * total))
    return min(int(n), total)
