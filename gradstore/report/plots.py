"""The report's figures, drawn server-side with matplotlib (Agg) and embedded as PNG data URIs.

Each function takes plain numbers and returns a ``data:image/png;base64,...`` string, so the
HTML page is one self-contained file (no static route, no JavaScript plotting library).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np

WIDTH, HEIGHT, DPI = 7.0, 3.0, 110


def _pyplot():
    """matplotlib's pyplot on the Agg backend; a clear error when the extra is missing."""
    from gradstore.extras import require_extra

    require_extra("report", "the HTML report")
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _figure():
    plt = _pyplot()
    return plt, *plt.subplots(figsize=(WIDTH, HEIGHT), dpi=DPI)


def _encode(plt, figure) -> str:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def score_histogram(scores_by_method: dict[str, Sequence[float]]) -> str:
    """One histogram of the selected examples' scores per method, side by side: methods'
    scores are on different scales (cosines, BM25, marginal gains), so never one axis."""
    plt = _pyplot()

    methods = list(scores_by_method)
    figure, axes = plt.subplots(1, len(methods), figsize=(WIDTH, HEIGHT), dpi=DPI, squeeze=False)
    for ax, method in zip(axes[0], methods, strict=True):
        scores = np.asarray(scores_by_method[method], dtype=float)
        if scores.size:
            ax.hist(scores, bins=20, color="#3b6ea5")
        ax.set_title(method, fontsize=9)
        ax.set_xlabel("score", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("selected examples")
    return _encode(plt, figure)


def bar_chart(labels: Sequence[str], values: Sequence[float], xlabel: str, ylabel: str) -> str:
    plt, figure, axes = _figure()
    positions = np.arange(len(labels))
    axes.bar(positions, values, color="#3b6ea5")
    axes.set_xticks(positions, [str(label) for label in labels], rotation=45, ha="right")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    return _encode(plt, figure)


def overlap_heatmap(methods: Sequence[str], jaccard: np.ndarray) -> str:
    plt, figure, axes = _figure()
    image = axes.imshow(jaccard, vmin=0, vmax=1, cmap="viridis")
    axes.set_xticks(range(len(methods)), methods, rotation=45, ha="right")
    axes.set_yticks(range(len(methods)), methods)
    for i in range(len(methods)):
        for j in range(len(methods)):
            colour = "white" if jaccard[i, j] < 0.6 else "black"
            axes.text(j, i, f"{jaccard[i, j]:.2f}", ha="center", va="center", color=colour)
    figure.colorbar(image, ax=axes, label="Jaccard overlap")
    return _encode(plt, figure)
