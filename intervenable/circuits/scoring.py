"""``edge_attribution_patching``: a score for every edge of the graph, from gradients or exact patching.

With ``u_b`` / ``u_s`` a node's output in the base run and its ablation value (the source run's
output for ``ablation="patch"``, its mean over the prompts for ``"mean"``, zero for ``"zero"``), and
``g_v`` the metric's gradient with respect to receiver ``v``'s input:

* ``eap`` (Syed et al. 2023): ``(u_s - u_b) . g_v`` at the base run, summed over positions: one base
  forward and one backward for every edge at once (plus one forward per prompt to record outputs);
* ``eap-ig-inputs`` (Hanna et al. 2024): ``g_v`` averaged over ``steps`` midpoints of the straight
  path from the base run's input embeddings to the ablated ones (``steps`` forwards + backwards);
* ``eap-ig-activations``: for the edges out of each node group (the input, one layer's heads, one
  MLP), ``g_v`` averaged over ``steps`` points where that group's outputs move from base to ablated
  as all receivers read them (``(2 L + 1) steps`` rows; EAP-IG averages every group's gradients over
  all edges instead, we keep each group's own);
* ``eap-ig-blocks``: the same, but each group's outputs move only as one layer's receivers read them,
  so the edges of each block (group -> layer) get the gradients of their own path (about
  ``L^2 steps`` rows: it grows with the layers, not with the edges). The estimate closest to exact
  edge patching (docs/circuits.md: rank correlation 0.92-0.93 on the demo model, 0.79-0.82 for
  ``eap-ig-activations`` and ``eap``, 0.59-0.63 for ``eap-ig-inputs``);
* ``exact``: the change in the metric when only that edge carries ``u_s`` instead of ``u_b``
  (``v`` reads ``stream + u_s - u_b``, nothing else changes); one batch row per edge and prompt.

Scores are averaged over the prompt pairs; pairs of equal length share forwards.
"""
from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import ConfigError
from ..sweeps.gradients import activations_only
from ..sweeps.spec import Metric
from .circuit import Circuit
from .data import Pair, by_length, prompt_pairs, row_scores
from .forward import EdgeRun, RowDeltas, Wiring, wire
from .graph import GraphLayout, layout_of

METHODS = ("eap", "eap-ig-inputs", "eap-ig-activations", "eap-ig-blocks", "exact")
ABLATIONS = ("patch", "mean", "zero")
DEFAULT_STEPS = 8
ROW_TOKENS = 4096  # tokens per forward of exact edge patching (gradient runs: a quarter of it)


class Setup:
    """Per call: the graph, its wiring, the pairs, each pair's recorded base outputs and ablation values."""

    def __init__(self, model: nn.Module, layout: GraphLayout, pairs: List[Pair], ablation: str) -> None:
        self.model, self.layout, self.pairs, self.ablation = model, layout, pairs, ablation
        self.wiring: Wiring = wire(model, layout)
        self.device = next(model.parameters()).device
        self.groups = by_length(pairs)
        self.base: Dict[int, torch.Tensor] = {}  # pair -> [T, N, d]
        self.abl: Dict[int, torch.Tensor] = {}  # pair -> [T, N, d] (mean / zero: broadcast [1, N, d])
        self.base_score: Dict[int, float] = {}
        self.info_forwards = 0  # forwards run by exact edge patching
        sources: Dict[int, torch.Tensor] = {}
        with torch.no_grad():
            for idx in self.groups.values():
                logits, rec = self.record([pairs[i].base for i in idx])
                scores = row_scores(pairs, idx, logits)
                for j, i in enumerate(idx):
                    self.base[i], self.base_score[i] = rec[j], float(scores[j])
                if ablation != "zero" and all(pairs[i].source is not None for i in idx):
                    _, rec = self.record([pairs[i].source for i in idx])
                    sources.update({i: rec[j] for j, i in enumerate(idx)})
        if ablation == "patch":
            self.abl = sources
        else:
            if ablation == "mean":
                pool = sources if len(sources) == len(pairs) else self.base
                flat = torch.cat([v for v in pool.values()], 0)  # [sum T, N, d]
                value = flat.mean(0, keepdim=True)
            else:
                value = torch.zeros_like(self.base[0][:1])
            self.abl = {i: value for i in range(len(pairs))}

    def record(self, prompts: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        run = EdgeRun(self.model, self.wiring, record=True)
        logits = run.run(torch.cat(list(prompts), 0).to(self.device))
        return logits, run.recorded

    def delta(self, i: int) -> torch.Tensor:
        """``[T, N, d]``: each node's ablation value minus its base output, for pair ``i``."""
        return self.abl[i] - self.base[i]

    def ids(self, rows: Sequence[int]) -> torch.Tensor:
        return torch.cat([self.pairs[i].base for i in rows], 0).to(self.device)


def edge_attribution_patching(model: nn.Module, base: Any, source: Any = None, target: Any = None, *,
                              method: str = "eap", steps: Optional[int] = None, metric: Metric = "logit_diff",
                              foil: Any = None, tokenizer: Any = None, ablation: str = "patch", qkv: bool = False,
                              verify: Optional[int] = None, batch_size: Optional[int] = None) -> Circuit:
    """Score every edge ``u->v`` of ``model``'s graph: the change in ``metric`` when ``v`` reads ``u``'s ablation
    value (``ablation="patch"``: its output in the ``source`` run) instead of its base output.

    ``base`` / ``source``: one prompt or lists (texts with ``tokenizer``, ids, tokenizer dicts), with one
    ``target`` / ``foil`` or one per pair; scores are averaged over the pairs. ``method``: ``"eap"``,
    ``"eap-ig-inputs"``, ``"eap-ig-activations"`` (``steps``, default 8) or ``"exact"``. ``qkv=True`` splits
    each head's input into query, key and value receivers. ``verify=k`` reruns the ``k`` edges with the
    largest ``|score|`` exactly (``circuit.exact``, ``info["verify_max_abs_error"]``). Returns a ``Circuit``
    holding every edge. ``batch_size``: rows per forward (default: about 4,096 tokens per forward for exact
    patching, fewer for the gradient methods, whose rows also hold the receivers' probes). Parameters are
    frozen meanwhile and left as found; no hook is left behind.
    """
    if method not in METHODS:
        raise ConfigError(f"Unknown method {method!r}: use one of {', '.join(METHODS)}.")
    if ablation not in ABLATIONS:
        raise ConfigError(f"Unknown ablation {ablation!r}: use 'patch' (the source run's outputs), 'mean' or 'zero'.")
    if steps is not None and not method.startswith("eap-ig"):
        raise ConfigError(f"steps=... applies to the eap-ig methods only, not {method!r}: drop it.")
    n_steps = DEFAULT_STEPS if steps is None else int(steps)
    if n_steps < 1:
        raise ConfigError(f"steps must be a positive number of points on the path; got {steps!r}.")
    if verify is not None and (isinstance(verify, bool) or int(verify) < 1):
        raise ConfigError(f"verify must be a positive number of edges to rerun exactly (or None); got {verify!r}.")
    if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) < 1):
        raise ConfigError(f"batch_size must be a positive number of rows per forward; got {batch_size!r}.")
    layout = layout_of(model, qkv)
    pairs = prompt_pairs(model, base, source, target, foil, metric=metric, tokenizer=tokenizer,
                         need_source=ablation == "patch")
    t0 = time.perf_counter()
    with activations_only(model):
        setup = Setup(model, layout, pairs, ablation)
        if method == "exact":
            u, r = layout.edge_index[:, 0], layout.edge_index[:, 1]
            matrix = torch.zeros(layout.n_forward, layout.n_receivers, dtype=torch.float64)
            matrix[u, r] = exact_scores(setup, layout.edge_index, batch_size)
            forwards = setup.info_forwards
        else:
            matrix, forwards = gradient_scores(setup, method, n_steps, batch_size)
    info: Dict[str, Any] = {"method": method, "ablation": ablation, "qkv": qkv, "pairs": len(pairs),
                            "forwards": forwards, "seconds": time.perf_counter() - t0,
                            "base_score": sum(setup.base_score.values()) / len(pairs)}
    if method.startswith("eap-ig"):
        info["steps"] = n_steps
    circuit = Circuit(layout, matrix, info=info)
    if verify:
        order = circuit._ranked(True)[:int(verify)]
        edges = layout.edge_index[order]
        with activations_only(model):
            exact = exact_scores(setup, edges, batch_size)
        names = [layout.edge_names[i] for i in order.tolist()]
        circuit.exact = dict(zip(names, exact.tolist()))
        estimate = circuit.matrix[edges[:, 0], edges[:, 1]]
        circuit.info.update(verified=len(names), verify_max_abs_error=float((estimate - exact).abs().max()))
    return circuit


def _rows(batch_size: Optional[int], T: int, scale: int = 1) -> int:
    return int(batch_size) if batch_size is not None else max(1, ROW_TOKENS // (scale * T))


def exact_scores(setup: Setup, edges: torch.Tensor, batch_size: Optional[int] = None) -> torch.Tensor:
    """Exact edge patching of ``edges`` (``[E, 2]`` node, receiver): mean over pairs of the metric with only
    that edge reading the ablation value, minus the base metric. One row per (edge, pair)."""
    lay = setup.layout
    total = torch.zeros(len(edges), dtype=torch.float64)
    with torch.no_grad():
        for T, idx in setup.groups.items():
            deltas = {i: setup.delta(i).to(setup.device) for i in idx}
            jobs = [(e, i) for e in range(len(edges)) for i in idx]
            size = _rows(batch_size, T)
            for start in range(0, len(jobs), size):
                chunk = jobs[start:start + size]
                pair_of = [i for _, i in chunk]
                u = edges[[e for e, _ in chunk], 0]
                r = edges[[e for e, _ in chunk], 1]
                delta = torch.stack([deltas[i][:, int(n)].expand(T, -1) for (_, i), n in zip(chunk, u)])
                coef = torch.zeros(len(chunk), lay.n_receivers, device=setup.device)
                coef[torch.arange(len(chunk)), r.to(setup.device)] = 1.0
                run = EdgeRun(setup.model, setup.wiring, injection=RowDeltas(delta, coef))
                scores = row_scores(setup.pairs, pair_of, run.run(setup.ids(pair_of)))
                setup.info_forwards += 1
                base = torch.tensor([setup.base_score[i] for i in pair_of], dtype=torch.float64)
                total.index_add_(0, torch.tensor([e for e, _ in chunk]), scores.double().cpu() - base)
    return total / len(setup.pairs)


def gradient_scores(setup: Setup, method: str, steps: int, batch_size: Optional[int]) -> Tuple[torch.Tensor, int]:
    """``[n_forward, n_receivers]`` scores from gradients at the receivers (eap, eap-ig-*); and the forwards run."""
    lay = setup.layout
    matrix = torch.zeros(lay.n_forward, lay.n_receivers, dtype=torch.float64)
    forwards = 0
    alphas = ((torch.arange(steps, dtype=torch.float64) + 0.5) / steps).tolist()
    blocks = _blocks(lay, method)
    for T, idx in setup.groups.items():
        deltas = {i: setup.delta(i).to(setup.device) for i in idx}
        if method == "eap":
            jobs: List[Tuple[int, float, int]] = [(i, 1.0, -1) for i in idx]
        elif method == "eap-ig-inputs":
            jobs = [(i, a, -1) for i in idx for a in alphas]
        else:
            jobs = [(i, a, b) for i in idx for b in range(len(blocks)) for a in alphas]
        size = _rows(batch_size, T, 4 * lay.per_layer if lay.qkv else lay.per_layer)
        probed: Dict[Any, List[Tuple[int, float, int]]] = {}  # rows probing the same receivers share forwards
        for job in jobs:
            probed.setdefault(blocks[job[2]][3] if method == "eap-ig-blocks" else True, []).append(job)
        chunks = [(key, part[s:s + size]) for key, part in probed.items() for s in range(0, len(part), size)]
        for key, chunk in chunks:
            pair_of = [i for i, _, _ in chunk]
            run = _gradient_run(setup, method, chunk, deltas, blocks, T, key)
            total = row_scores(setup.pairs, pair_of, run.run(setup.ids(pair_of))).sum()
            grads = run.probe_grads(total).double()  # [rows, T, R, d]
            forwards += 1
            for g in sorted({g for _, _, g in chunk}):
                rows = [k for k, job in enumerate(chunk) if job[2] == g]
                diff = torch.stack([deltas[chunk[k][0]] for k in rows]).double()  # [rows, T, N, d]
                part = torch.einsum("btnd,btrd->nr", diff, grads[rows])
                if g >= 0:  # eap-ig-activations / -blocks: only the edges of the moved block
                    part = part * blocks[g][2].to(part)
                matrix += part.cpu()
    matrix = matrix * lay.real / len(setup.pairs)
    if method != "eap":
        matrix = matrix / steps
    return matrix, forwards


def _node_groups(lay: GraphLayout) -> List[List[int]]:
    """EAP-IG's interpolation groups: the input, each layer's heads together, each MLP."""
    out = [[0]]
    for layer in range(lay.n_layers):
        out.append([lay.head_node(layer, h) for h in range(lay.n_heads)])
        out.append([lay.mlp_node(layer)])
    return out


def _blocks(lay: GraphLayout, method: str) -> List[Tuple[List[int], torch.Tensor, torch.Tensor, Any]]:
    """The interpolation blocks: (group nodes, receivers they move at [n_receivers] 0/1, edge mask
    [n_forward, n_receivers], the receivers to probe). ``eap-ig-activations``: a group read by every later receiver;
    ``eap-ig-blocks``: a group read by one layer's receivers (the logits: a layer of their own)."""
    if not method.startswith("eap-ig-") or method == "eap-ig-inputs":
        return []
    out = []
    for group in _node_groups(lay):
        after = lay.upstream > max(group)
        layers = [after] if method == "eap-ig-activations" else [
            after & (torch.arange(lay.n_receivers) // lay.per_layer == l) for l in range(lay.n_layers + 1)]
        for recv in layers:
            if not bool(recv.any()):
                continue
            edges = torch.zeros(lay.n_forward, lay.n_receivers, dtype=torch.float64)
            edges[group] = recv.double()
            out.append((group, recv.float(), edges, frozenset(torch.nonzero(recv).flatten().tolist())))
    return out


def _gradient_run(setup: Setup, method: str, chunk: List[Tuple[int, float, int]], deltas: Dict[int, torch.Tensor],
                  blocks: List[Tuple[List[int], torch.Tensor, torch.Tensor, Any]], T: int, probes: Any = True) -> EdgeRun:
    lay = setup.layout
    if method == "eap":
        return EdgeRun(setup.model, setup.wiring, probes=True)
    if method == "eap-ig-inputs":
        start = torch.stack([setup.base[i][:, 0] for i, _, _ in chunk]).to(setup.device)
        move = torch.stack([deltas[i][:, 0] * a for i, a, _ in chunk])
        return EdgeRun(setup.model, setup.wiring, probes=True, input_value=start + move)
    delta = torch.stack([deltas[i][:, blocks[b][0]].sum(1) for i, _, b in chunk])
    coef = torch.stack([a * blocks[b][1] for _, a, b in chunk]).to(setup.device)
    return EdgeRun(setup.model, setup.wiring, probes=probes, injection=RowDeltas(delta, coef))
