"""Pictures of circuits and faithfulness curves (matplotlib's Agg canvas, no pyplot)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

from ..plot import _figure

_LETTER_STYLE = {"": "-", "q": "-", "k": "--", "v": ":"}


def _positions(layout: Any) -> Dict[str, Tuple[float, float]]:
    """Node name -> (x, y): input at the bottom, each layer's heads in a row, its MLP above (parallel: beside)."""
    H = layout.n_heads
    pos = {"input": ((H - 1) / 2, 0.0)}
    for layer in range(layout.n_layers):
        y = 1.0 + 2 * layer
        for h in range(H):
            pos[f"a{layer}.h{h}"] = (float(h), y)
        pos[f"m{layer}"] = (H + 0.5, y) if layout.parallel else ((H - 1) / 2, y + 1.0)
    pos["logits"] = ((H - 1) / 2, 1.0 + 2 * layout.n_layers)
    return pos


def plot_circuit(circuit: Any, path: Union[str, Path, None] = None, title: Optional[str] = None,
                 max_edges: int = 400) -> Any:
    """The circuit's nodes and edges; blue edges raise the metric, red ones lower it, width ~ |score|;
    key inputs dashed, value inputs dotted. At most ``max_edges`` (the largest) are drawn."""
    lay = circuit.layout
    pos = _positions(lay)
    edges = circuit.edges
    scores = circuit.scores
    edges = sorted(edges, key=lambda e: -abs(scores[e]))[:max_edges]
    top = max([abs(scores[e]) for e in edges] + [1e-12])
    fig = _figure(min(14.0, 2.0 + 0.7 * (lay.n_heads + 2)), min(14.0, 1.5 + 0.55 * (2 * lay.n_layers + 2)))
    ax = fig.add_subplot(1, 1, 1)
    for name in reversed(edges):
        parent, _, child = name.partition("->")
        child, _, letter = child.partition("<")
        (x0, y0), (x1, y1) = pos[parent], pos[child]
        s = scores[name]
        ax.plot([x0, x1], [y0, y1], color="tab:blue" if s >= 0 else "tab:red", alpha=0.75,
                linewidth=0.4 + 3.6 * abs(s) / top, linestyle=_LETTER_STYLE[letter.rstrip(">")], zorder=1)
    for name in circuit.nodes:
        x, y = pos[name]
        colour = "#f4d03f" if name in ("input", "logits") else "#aed6f1" if name.startswith("a") else "#a9dfbf"
        ax.text(x, y, name, ha="center", va="center", fontsize=7, zorder=2,
                bbox=dict(boxstyle="round,pad=0.25", facecolor=colour, edgecolor="black", linewidth=0.5))
    ax.set_xlim(-1, lay.n_heads + 1.5)
    ax.set_ylim(-0.8, 1.8 + 2 * lay.n_layers)
    ax.set_axis_off()
    method = circuit.info.get("method", "")
    ax.set_title(title or f"{len(circuit)} edges, {len(circuit.nodes)} nodes" + (f" ({method})" if method else ""),
                 fontsize=9)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, bbox_inches="tight")
    return fig


def plot_faithfulness(result: Any, path: Union[str, Path, None] = None, title: Optional[str] = None) -> Any:
    """Faithfulness against the fraction of edges kept, with the random-edge baseline."""
    fig = _figure(5.0, 3.4)
    ax = fig.add_subplot(1, 1, 1)
    x = [max(f, 1e-6) for f in result.fractions]
    ax.plot(x, result.faithfulness, marker="o", label="circuit")
    if result.random is not None:
        ax.plot(x, result.random, marker="x", linestyle="--", color="gray", label="random edges")
    ax.axhline(1.0, color="black", linewidth=0.6)
    ax.axhline(0.0, color="black", linewidth=0.6)
    if len(set(x)) > 1 and min(x) > 0:
        ax.set_xscale("log")
    ax.set_xlabel("fraction of edges")
    ax.set_ylabel("faithfulness")
    cpr = result.cpr
    ax.set_title(title or ("faithfulness" + (f" (CPR {cpr:.2f}, CMD {result.cmd:.2f})" if cpr is not None else "")),
                 fontsize=9)
    ax.legend(fontsize=8)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, bbox_inches="tight")
    return fig
