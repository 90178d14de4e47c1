"""Figures: the clustered distance heatmap with dendrogram (the paper's Fig. 2 left).

matplotlib (Agg) for drawing, scipy for hierarchical clustering.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def cluster_order(dist: np.ndarray, method: str = "average") -> tuple[np.ndarray, np.ndarray]:
    """Hierarchical clustering of a (symmetrised) distance matrix: ``(leaf order, linkage)``."""
    from scipy.cluster.hierarchy import leaves_list, linkage, optimal_leaf_ordering
    from scipy.spatial.distance import squareform

    d = np.asarray(dist, dtype=np.float64)
    d = 0.5 * (d + d.T)
    d = d - np.min(d)  # asymmetric distances may be negative; clustering needs d >= 0
    np.fill_diagonal(d, 0.0)
    condensed = squareform(d, checks=False)
    z = linkage(condensed, method=method)
    if len(d) > 2:
        z = optimal_leaf_ordering(z, condensed)
    return leaves_list(z), z


def distance_heatmap(
    dist: np.ndarray,
    labels: Sequence[str],
    path: str | os.PathLike[str] | None = None,
    *,
    title: str = "Task2Vec distances",
    groups: Sequence[str] | None = None,
    cmap: str = "viridis_r",
):
    """Draw the distance matrix re-ordered by hierarchical clustering, with the dendrogram on top.

    Args:
        dist: ``[n, n]`` distances.
        labels: one name per row.
        path: where to save a PNG (written atomically); ``None`` only returns the figure.
        groups: an optional group name per row (e.g. the source dataset), shown as a colour strip.

    Returns:
        The matplotlib figure.
    """
    from scipy.cluster.hierarchy import dendrogram

    plt = _pyplot()
    dist = np.asarray(dist, dtype=np.float64)
    n = len(labels)
    if dist.shape != (n, n):
        raise ValueError(f"distance matrix is {dist.shape} but {n} labels were given")
    order, z = cluster_order(dist)
    size = max(5.0, 0.38 * n + 2.5)
    fig = plt.figure(figsize=(size + 1.5, size + 1.2))
    ax_d = fig.add_axes((0.25, 0.78, 0.6, 0.17))
    dendrogram(z, ax=ax_d, no_labels=True, color_threshold=0, above_threshold_color="0.3")
    ax_d.set_axis_off()
    ax_h = fig.add_axes((0.25, 0.05, 0.6, 0.72))
    shown = dist[np.ix_(order, order)]
    im = ax_h.imshow(shown, cmap=cmap, aspect="auto", interpolation="nearest")
    ax_h.set_xticks(range(n))
    ax_h.set_yticks(range(n))
    ax_h.set_xticklabels([labels[i] for i in order], rotation=90, fontsize=8)
    ax_h.set_yticklabels([labels[i] for i in order], fontsize=8)
    if groups is not None:
        names = sorted(set(groups))
        palette = plt.get_cmap("tab10")
        colours = {g: palette(i % 10) for i, g in enumerate(names)}
        for tick, i in zip(ax_h.get_yticklabels(), order, strict=True):
            tick.set_color(colours[groups[i]])
        for tick, i in zip(ax_h.get_xticklabels(), order, strict=True):
            tick.set_color(colours[groups[i]])
    cax = fig.add_axes((0.87, 0.05, 0.025, 0.72))
    fig.colorbar(im, cax=cax, label="distance")
    fig.suptitle(title, x=0.55, y=0.985)
    if path is not None:
        save_figure(fig, path)
    return fig


def save_figure(fig, path: str | os.PathLike[str], dpi: int = 110) -> Path:
    """Save a figure as PNG through a temporary file and a rename; closes the figure."""
    import io

    from .embedding import atomic_write_bytes

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    _pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path
