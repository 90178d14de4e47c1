"""Figures: the clustered distance heatmap with dendrogram (the paper's Fig. 2 left), task maps
(t-SNE of a distance matrix, optionally with a picture of each task as its marker: Fig. 1 and 5),
embedding norm against task error (Fig. 2 right) and plain curves (error vs samples, taxonomic
distance of the k nearest tasks).

matplotlib (Agg) for drawing, scipy for hierarchical clustering, scikit-learn for t-SNE.
`task_map`, `norm_vs_error` and `line_plot` take an optional ``ax`` (draw into an existing figure)
and ``path`` (save a PNG atomically) and return the figure.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
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


# -- task maps, scatter plots and curves -----------------------------------------------------------
def _figure_and_axes(ax, figsize: tuple[float, float]):
    plt = _pyplot()
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
    else:
        fig = ax.figure
    return fig, ax


def _group_colours(groups: Sequence[str]) -> dict[str, tuple]:
    palette = _pyplot().get_cmap("tab10")
    names = list(dict.fromkeys(groups))  # first-seen order, stable legend
    return {g: palette(i % 10) for i, g in enumerate(names)}


def tsne_coordinates(
    dist: np.ndarray,
    *,
    perplexity: float | None = None,
    seed: int = 0,
) -> np.ndarray:
    """2-D t-SNE coordinates ``[n, 2]`` of ``n`` items from their ``[n, n]`` distance matrix.

    The matrix is symmetrised and shifted to be non-negative (asymmetric distances may be
    negative). ``perplexity`` defaults to ``min(30, (n - 1) / 3)`` (t-SNE needs it below ``n``).
    """
    from sklearn.manifold import TSNE

    d = np.asarray(dist, dtype=np.float64)
    n = d.shape[0]
    if d.shape != (n, n) or n < 3:
        raise ValueError(f"t-SNE needs a square distance matrix of at least 3 items, got shape {d.shape}")
    d = 0.5 * (d + d.T)
    d = d - min(0.0, float(d.min()))
    np.fill_diagonal(d, 0.0)
    if perplexity is None:
        perplexity = max(1.0, min(30.0, (n - 1) / 3.0))
    if not 0 < perplexity < n:
        raise ValueError(f"perplexity must lie in (0, {n}), got {perplexity}")
    tsne = TSNE(n_components=2, metric="precomputed", init="random", perplexity=perplexity, random_state=seed)
    return tsne.fit_transform(d)


def task_map(
    coords: np.ndarray,
    path: str | os.PathLike[str] | None = None,
    *,
    labels: Sequence[str] | None = None,
    groups: Sequence[str] | None = None,
    values: Sequence[float] | None = None,
    value_label: str = "",
    images: Sequence[np.ndarray] | None = None,
    image_zoom: float = 1.0,
    title: str = "",
    ax=None,
    cmap: str = "viridis",
):
    """Scatter tasks at 2-D ``coords`` (e.g. `tsne_coordinates`): the paper's task maps.

    Args:
        coords: ``[n, 2]`` positions.
        labels: a short text next to each point.
        groups: a category per task (e.g. its dataset), shown by colour with a legend.
        values: a number per task (e.g. task complexity), shown by colour with a colour bar;
            exclusive with ``groups``.
        images: a small picture per task (``[h, w]`` grey or ``[h, w, 3|4]``) drawn as its marker
            (matplotlib ``OffsetImage``), framed in the task's colour.
        image_zoom: scale of the pictures.
    """
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    xy = np.asarray(coords, dtype=np.float64)
    n = xy.shape[0]
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"coords must be [n, 2], got {xy.shape}")
    for name, seq in (("labels", labels), ("groups", groups), ("values", values), ("images", images)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"{name} has {len(seq)} entries for {n} points")
    if groups is not None and values is not None:
        raise ValueError("give either groups (categories) or values (numbers) to colour the tasks, not both")
    plt = _pyplot()
    fig, ax = _figure_and_axes(ax, (7.0, 6.0))
    colours: list = ["tab:blue"] * n
    if groups is not None:
        table = _group_colours(groups)
        colours = [table[g] for g in groups]
        for g, c in table.items():
            ax.scatter([], [], color=c, label=g)
        ax.legend(loc="best", fontsize=8, framealpha=0.8)
    elif values is not None:
        v = np.asarray(values, dtype=np.float64)
        norm = plt.Normalize(float(v.min()), float(v.max()))
        colour_map = plt.get_cmap(cmap)
        colours = [colour_map(norm(x)) for x in v]
        mappable = plt.cm.ScalarMappable(norm=norm, cmap=colour_map)
        fig.colorbar(mappable, ax=ax, label=value_label, fraction=0.046, pad=0.02)
    ax.scatter(xy[:, 0], xy[:, 1], c=colours, s=36 if images is None else 4, zorder=2)
    if images is not None:
        for (x, y), img, c in zip(xy, images, colours, strict=True):
            arr = np.asarray(img)
            box = OffsetImage(arr, zoom=image_zoom, cmap="gray" if arr.ndim == 2 else None, interpolation="nearest")
            ab = AnnotationBbox(box, (x, y), frameon=True, pad=0.1, bboxprops={"edgecolor": c, "linewidth": 1.5})
            ax.add_artist(ab)
        pad = 0.08 * (np.ptp(xy, axis=0) + 1e-9)
        ax.set_xlim(xy[:, 0].min() - pad[0], xy[:, 0].max() + pad[0])
        ax.set_ylim(xy[:, 1].min() - pad[1], xy[:, 1].max() + pad[1])
    if labels is not None:
        for (x, y), text in zip(xy, labels, strict=True):
            ax.annotate(text, (x, y), xytext=(3, 3), textcoords="offset points", fontsize=6, alpha=0.85)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=10)
    if path is not None:
        save_figure(fig, path)
    return fig


def norm_vs_error(
    norms: Sequence[float],
    errors: Sequence[float],
    path: str | os.PathLike[str] | None = None,
    *,
    groups: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
    title: str = "Embedding norm vs task difficulty",
    xlabel: str = "embedding L1 norm",
    ylabel: str = "test error of a linear classifier",
    logx: bool = True,
    ax=None,
):
    """Scatter each task's embedding norm against its test error (the paper's Fig. 2 right), with
    the Spearman rank correlation in the title."""
    from scipy.stats import spearmanr

    x = np.asarray(norms, dtype=np.float64)
    y = np.asarray(errors, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"norms {x.shape} and errors {y.shape} must be 1-D of the same length")
    fig, ax = _figure_and_axes(ax, (6.0, 4.5))
    if groups is not None:
        table = _group_colours(groups)
        for g, c in table.items():
            sel = np.array([gg == g for gg in groups])
            ax.scatter(x[sel], y[sel], color=c, label=g, s=22, alpha=0.85)
        ax.legend(fontsize=8)
    else:
        ax.scatter(x, y, s=22, alpha=0.85)
    if labels is not None:
        for xi, yi, text in zip(x, y, labels, strict=True):
            ax.annotate(text, (xi, yi), xytext=(2, 2), textcoords="offset points", fontsize=5, alpha=0.7)
    if logx and np.all(x > 0):
        ax.set_xscale("log")
    rho = spearmanr(x, y)[0] if len(x) > 2 else float("nan")
    ax.set_title(f"{title}\nSpearman rho = {rho:.2f} (n = {len(x)})", fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if path is not None:
        save_figure(fig, path)
    return fig


def line_plot(
    x: Sequence[float],
    series: Mapping[str, Sequence[float]],
    path: str | os.PathLike[str] | None = None,
    *,
    bands: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
    styles: Mapping[str, str] | None = None,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    logx: bool = False,
    logy: bool = False,
    ax=None,
):
    """Curves sharing one x axis, e.g. estimator error vs number of samples (log-log) or the mean
    taxonomic distance of the k nearest tasks against random and optimal orderings.

    Args:
        series: ``{legend: y values}``, each as long as ``x``.
        bands: ``{legend: (low, high)}`` shaded around the curve of the same name.
        styles: ``{legend: matplotlib format string}`` such as ``"k--"``.
    """
    xs = np.asarray(x, dtype=np.float64)
    fig, ax = _figure_and_axes(ax, (6.0, 4.5))
    for name, ys in series.items():
        ys = np.asarray(ys, dtype=np.float64)
        if ys.shape != xs.shape:
            raise ValueError(f"series {name!r} has {ys.shape[0]} points for {xs.shape[0]} x values")
        fmt = (styles or {}).get(name, "-")
        (line,) = ax.plot(xs, ys, fmt, label=name, marker="o" if len(xs) <= 20 else None, markersize=3)
        if bands and name in bands:
            lo, hi = bands[name]
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    if path is not None:
        save_figure(fig, path)
    return fig
