"""Heatmaps and bar charts with matplotlib's Agg canvas (no pyplot, no global backend change)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch

_CMAPS = {"block_output": "Purples", "mlp_output": "Greens", "attention_output": "Reds"}


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def heatmap(ax: Any, values: torch.Tensor, row_labels: Sequence[str], col_labels: Sequence[Any],
            title: str = "", cmap: str = "Purples", xlabel: str = "layer", colorbar_label: str = "") -> Any:
    """Draw ``values[rows, cols]`` on ``ax`` with labelled rows (tokens) and columns (layers)."""
    data = values.detach().float().cpu().numpy()
    image = ax.pcolormesh(data, cmap=cmap, shading="flat")
    ax.invert_yaxis()
    ax.set_yticks([i + 0.5 for i in range(len(row_labels))])
    ax.set_yticklabels(list(row_labels), fontsize=8)
    step = max(1, len(col_labels) // 12)
    ax.set_xticks([i + 0.5 for i in range(0, len(col_labels), step)])
    ax.set_xticklabels([str(c) for c in list(col_labels)[::step]], fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=9)
    bar = ax.figure.colorbar(image, ax=ax)
    if colorbar_label:
        bar.set_label(colorbar_label, fontsize=8)
    return image


def colorbar_label(result: Any) -> str:
    """``prob of ' Paris'``: the metric and the target token's text (its id only without a tokenizer)."""
    label = f"{result.metric}"
    if result.target is not None:
        text = result.info.get("target_text")
        label += f" of {text!r}" if text is not None else f" of token {result.target}"
    return label


def plot_sweep(result: Any, path: Union[str, Path, None] = None, title: Optional[str] = None) -> Any:
    """One heatmap per component of a ``SweepResult`` (heads are averaged); saved when ``path`` is given.

    Each panel is headed by its component; ``title`` (optional) heads the whole figure.
    """
    n = len(result.components)
    rows = len(result.tokens)
    fig = _figure(4.2 * n, 1.2 + 0.28 * rows)
    labels = list(result.tokens)
    if result.subject is not None:
        s, e = result.subject
        labels = [f"{t}*" if s <= p < e else t for t, p in zip(labels, result.positions)]
    for c, comp in enumerate(result.components):
        ax = fig.add_subplot(1, n, c + 1)
        v = result[comp]
        if v.dim() == 3:
            v = v.mean(-1)
        name = comp if comp in _CMAPS else "block_output"
        heading = f"{result.kind}: {comp}"  # each panel keeps its component; ``title`` heads the figure
        if result.info.get("window", 1) != 1 and comp != "block_output":
            heading += f" (window {result.info['window']})"
        heatmap(ax, v.T, labels, result.layers, heading, _CMAPS[name],
                colorbar_label=colorbar_label(result))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(str(path))
    return fig


def bar_chart(values: Sequence[float], labels: Sequence[str], path: Union[str, Path, None] = None,
              title: str = "", ylabel: str = "") -> Any:
    """A simple labelled bar chart (e.g. scores per layer); saved when ``path`` is given."""
    fig = _figure(max(3.0, 0.35 * len(values) + 1.5), 3.0)
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(range(len(values)), [float(v) for v in values])
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(list(labels), rotation=60, fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    if path is not None:
        fig.savefig(str(path))
    return fig
