"""``faithfulness``: how much of the model's behaviour a circuit keeps, per circuit size, beside random edges.

A circuit runs the base prompt with its edges reading their node's value in that very run and every
other edge reading the node's ablation value (the source run's output for ``ablation="patch"``, as
EAP-IG's ``evaluate_graph``). ``f(C) = (m(C) - m(empty)) / (m(full) - m(empty))``: 1 for the full
graph and 0 for the empty one (both computed by the same runs, so exactly), the metric averaged over
the pairs. Areas as MIB defines them (Mueller et al. 2025, its ``evaluate_area_under_curve``): with
``x`` the fraction of the graph's edges and the trapezoid rule over the sizes (``x`` divided by the
largest), ``cpr`` is the area under ``f`` and ``cmd`` the area under ``|1 - f|``. MIB selects CPR's
circuits by signed scores (``absolute=False``) and CMD's by ``|score|``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from ..errors import ConfigError, InputError
from ..sweeps.gradients import activations_only
from ..sweeps.spec import Metric
from .circuit import Circuit, _count
from .data import prompt_pairs, row_scores
from .forward import EdgeMask, EdgeRun
from .scoring import ABLATIONS, ROW_TOKENS, Setup

#: MIB's circuit sizes, as fractions of the graph's edges
MIB_SIZES = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


@dataclass
class FaithfulnessResult:
    """One faithfulness value per circuit size (and for random circuits of the same sizes)."""

    sizes: List[int]  # edges asked for
    edges: List[int]  # edges kept (after pruning)
    faithfulness: List[float]
    random: Optional[List[float]]
    full: float  # m(full graph)
    empty: float  # m(empty graph)
    n_edges: int
    info: Dict[str, Any] = field(default_factory=dict)

    @property
    def fractions(self) -> List[float]:
        return [s / self.n_edges for s in self.sizes]

    @property
    def cpr(self) -> Optional[float]:
        """MIB's CPR: area under the faithfulness curve (None with fewer than two sizes)."""
        return _area(self.fractions, self.faithfulness)

    @property
    def cmd(self) -> Optional[float]:
        """MIB's CMD: area between the curve and 1, ``|1 - f|`` (None with fewer than two sizes)."""
        return _area(self.fractions, [abs(1.0 - f) for f in self.faithfulness])

    @property
    def random_cpr(self) -> Optional[float]:
        return None if self.random is None else _area(self.fractions, self.random)

    def summary(self) -> str:
        lines = [f"faithfulness over {len(self.sizes)} sizes (m(full) {self.full:.4f}, m(empty) {self.empty:.4f}):"]
        for i, (s, k, f) in enumerate(zip(self.sizes, self.edges, self.faithfulness)):
            rnd = f", random {self.random[i]:.3f}" if self.random is not None else ""
            lines.append(f"  {s:>7} edges ({k} after pruning): {f:.3f}{rnd}")
        if self.cpr is not None:
            lines.append(f"CPR {self.cpr:.3f}, CMD {self.cmd:.3f}"
                         + (f", random CPR {self.random_cpr:.3f}" if self.random is not None else ""))
        return "\n".join(lines)

    def plot(self, path: Optional[str] = None, title: Optional[str] = None) -> Any:
        """The curve beside the random baseline (x: fraction of edges, log scale)."""
        from .plot import plot_faithfulness
        return plot_faithfulness(self, path, title)


def _area(x: Sequence[float], y: Sequence[float]) -> Optional[float]:
    if len(x) < 2:
        return None
    pts = sorted(zip(x, y))
    top = pts[-1][0]
    return float(sum((b[0] - a[0]) / top * (a[1] + b[1]) / 2 for a, b in zip(pts, pts[1:])))


def faithfulness(model: nn.Module, circuit: Circuit, data: Any, source: Any = None, target: Any = None, *,
                 sizes: Optional[Sequence[float]] = None, metric: Metric = "logit_diff", foil: Any = None,
                 tokenizer: Any = None, ablation: str = "patch", absolute: bool = True, selection: str = "top",
                 prune: bool = True, random_baseline: bool = True, random_draws: int = 3, seed: int = 0,
                 batch_size: Optional[int] = None) -> FaithfulnessResult:
    """Faithfulness of ``circuit`` on ``data`` (base prompts, or rows with base / source / target / foil).

    ``sizes``: circuit sizes (edge counts, or fractions of the graph's edges when in (0, 1]); each
    circuit is ``circuit.top(k)`` (``selection="greedy"``: ``circuit.greedy(k)``), pruned unless
    ``prune=False``. Without ``sizes``, MIB's sizes when ``circuit`` still holds every edge, otherwise
    the circuit as it is. The random baseline averages ``random_draws`` circuits of ``k`` random edges
    (seeded by ``seed``, not pruned) per size.
    """
    if ablation not in ABLATIONS:
        raise ConfigError(f"Unknown ablation {ablation!r}: use 'patch', 'mean' or 'zero'.")
    if selection not in ("top", "greedy"):
        raise ConfigError(f"selection must be 'top' or 'greedy'; got {selection!r}.")
    lay = circuit.layout
    from .graph import layout_of
    mine = layout_of(model, lay.qkv)
    if (mine.n_layers, mine.n_heads, mine.parallel) != (lay.n_layers, lay.n_heads, lay.parallel):
        raise InputError(f"The circuit's graph ({lay.n_layers} layers x {lay.n_heads} heads, parallel={lay.parallel}) "
                         f"is not this model's ({mine.n_layers} x {mine.n_heads}, parallel={mine.parallel}).")
    pairs = prompt_pairs(model, data, source, target, foil, metric=metric, tokenizer=tokenizer,
                         need_source=ablation == "patch")
    if sizes is None:
        whole = len(circuit) == lay.n_edges
        sizes = [_count(s, lay.n_edges) for s in MIB_SIZES] if whole else [len(circuit)]
        circuits = [_select(circuit, k, selection, absolute, prune) for k in sizes] if whole else [circuit]
    else:
        sizes = [_count(s, lay.n_edges) for s in sizes]
        circuits = [_select(circuit, k, selection, absolute, prune) for k in sizes]
    gen = torch.Generator().manual_seed(int(seed))
    with activations_only(model), torch.no_grad():
        setup = Setup(model, lay, pairs, ablation)
        full = _mean_metric(setup, lay.real, batch_size)
        empty = _mean_metric(setup, torch.zeros_like(lay.real), batch_size)
        if abs(full - empty) < 1e-12:
            raise InputError(f"The metric is the same with every edge ({full:.6g}) and with none ({empty:.6g}): "
                             "faithfulness is undefined. Pick source prompts that change the answer, or another metric.")
        span = full - empty
        values = [(_mean_metric(setup, c.in_graph, batch_size) - empty) / span for c in circuits]
        rand = None
        if random_baseline:
            rand = []
            for k in sizes:
                draws = []
                for _ in range(int(random_draws)):
                    pick = torch.randperm(lay.n_edges, generator=gen)[:k]
                    keep = torch.zeros_like(lay.real)
                    e = lay.edge_index[pick]
                    keep[e[:, 0], e[:, 1]] = True
                    draws.append((_mean_metric(setup, keep, batch_size) - empty) / span)
                rand.append(sum(draws) / len(draws))
    return FaithfulnessResult(list(sizes), [len(c) for c in circuits], values, rand, full, empty, lay.n_edges,
                              {"ablation": ablation, "selection": selection, "absolute": absolute, "prune": prune,
                               "pairs": len(pairs)})


def _select(circuit: Circuit, k: int, selection: str, absolute: bool, prune: bool) -> Circuit:
    c = circuit.top(k, absolute) if selection == "top" else circuit.greedy(k, absolute)
    return c.prune() if prune else c


def _mean_metric(setup: Setup, keep: torch.Tensor, batch_size: Optional[int]) -> float:
    """The metric averaged over the pairs with the edges outside ``keep`` reading their ablation values."""
    lay = setup.layout
    ablate = (lay.real & ~keep.bool()).T.float().to(setup.device)  # [n_receivers, n_forward]
    total = 0.0
    for T, idx in setup.groups.items():
        size = int(batch_size) if batch_size is not None else max(1, ROW_TOKENS // (4 * T))
        for start in range(0, len(idx), size):
            rows = idx[start:start + size]
            abl = torch.stack([setup.abl[i] for i in rows]).to(setup.device)
            mask = ablate.unsqueeze(0).expand(len(rows), -1, -1)
            run = EdgeRun(setup.model, setup.wiring, injection=EdgeMask(mask, abl, lay))
            total += float(row_scores(setup.pairs, rows, run.run(setup.ids(rows))).double().sum())
    return total / len(setup.pairs)
