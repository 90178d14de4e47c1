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
from typing import Any

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


# -- interactive figures of an expert search (Plotly; the expert-finder Space draws them) ----------------
FONT_PX = 13
MIN_TEXT_PX = 11  # the smallest text the figures write: smaller is not readable on a phone
LABELLED = 5  # the top experts whose tasks get a text label on the map
_SUB = "<br><span style='font-size:12px'>"  # a subtitle line (Plotly's <sup> would be under 11 px)
_CHAR_EM = 0.6  # the width of a digit or a label character, in ems (Inter / Arial digits: about 0.55)
_COLORBAR_PX = 80  # the heatmap's colour bar with its tick labels and title


def classical_mds(d: np.ndarray, dims: int = 2) -> tuple[np.ndarray, float]:
    """Torgerson's classical MDS of a symmetric distance matrix: points whose Euclidean distances
    best match ``d`` (exactly, when ``d`` is Euclidean), and the share of the (positive) spectrum
    the ``dims`` axes keep - how faithful the picture is."""
    d = np.asarray(d, np.float64)
    n = d.shape[0]
    j = np.eye(n) - np.full((n, n), 1.0 / n)
    b = -0.5 * j @ (d**2) @ j
    vals, vecs = np.linalg.eigh(b)
    order = np.argsort(vals)[::-1][:dims]
    kept = np.clip(vals[order], 0.0, None)
    coords = vecs[:, order] * np.sqrt(kept)
    if coords.shape[1] < dims:
        coords = np.pad(coords, ((0, 0), (0, dims - coords.shape[1])))
    for c in range(dims):  # fix the sign so that the picture is deterministic
        i = int(np.argmax(np.abs(coords[:, c])))
        if coords[i, c] < 0:
            coords[:, c] *= -1
    positive = float(np.clip(vals, 0.0, None).sum())
    return coords, float(kept.sum()) / positive if positive > 0 else 1.0


def short_names(model_ids: Sequence[str], max_chars: int = 28) -> dict[str, str]:
    """Short display names: the part after the namespace, without a prefix every name shares up to a
    ``-`` (``bench/efficientnet-lite0-fashion-all`` -> ``fashion-all`` when every expert is an
    ``efficientnet-lite0-...``), at most ``max_chars``. Full ids stay in the hover text."""
    tails = [m.rsplit("/", 1)[-1] for m in model_ids]
    prefix = os.path.commonprefix(tails) if len(tails) > 1 else ""
    prefix = prefix[: prefix.rfind("-") + 1] if "-" in prefix else ""
    out = {}
    for mid, tail in zip(model_ids, tails, strict=True):
        short = tail[len(prefix):] if prefix and len(tail) > len(prefix) else tail
        out[mid] = short if len(short) <= max_chars else short[: max_chars - 1] + "…"
    return out


def place_labels(xy: np.ndarray) -> list[str]:
    """A Plotly ``textposition`` (above or below) for each point, chosen greedily so that labels of
    nearby points do not sit on top of each other; labels stay centred on their point, so that a
    margin of half a label keeps every label inside the plot."""
    xy = np.asarray(xy, np.float64)
    if len(xy) == 0:
        return []
    span = np.ptp(xy, axis=0)
    norm = (xy - xy.min(0)) / np.where(span > 0, span, 1.0)
    offsets = {"top center": 0.05, "bottom center": -0.05}
    placed: list[np.ndarray] = []
    out = []
    for i, pt in enumerate(norm):
        others = [q for j, q in enumerate(norm) if j != i] + placed
        best, best_score = "top center", -1.0
        for name, dy in offsets.items():
            c = pt + np.array([0.0, dy])
            score = min((np.hypot(0.4 * (c[0] - q[0]), c[1] - q[1]) for q in others), default=1.0)
            if score > best_score + 1e-9:
                best, best_score = name, score
        out.append(best)
        placed.append(pt + np.array([0.0, offsets[best]]))
    return out


def _plotly_layout(fig: Any, title: str, height: int) -> None:
    fig.update_layout(
        title=dict(text=title, font=dict(size=FONT_PX + 1), x=0.01, xanchor="left"),
        font=dict(size=FONT_PX, family="Inter, Arial, sans-serif"),
        height=height,
        autosize=True,
        margin=dict(l=8, r=8, t=64, b=8),
        paper_bgcolor="white",
        plot_bgcolor="white",
        hoverlabel=dict(font=dict(size=FONT_PX)),
    )


def _map_points(index: Any, top: Sequence[str], max_points: int) -> list[tuple[str, str]]:
    """``(training task, a model id trained on it)``: the distinct training tasks of the experts, the
    top experts' first, then the others in index order, at most ``max_points``."""
    task_of = {row["model_id"]: str(row.get("task") or row["model_id"]) for row in index.rows()}
    by_task: dict[str, str] = {}
    for mid in [*top, *task_of]:
        by_task.setdefault(task_of[mid], mid)
        if len(by_task) >= max_points:
            break
    return list(by_task.items())


def expert_task_map(
    embedding: Any,
    index: Any,
    top: Sequence[str],
    *,
    projection: str = "mds",
    seed: int = 0,
    max_points: int = 200,
    labelled: int = LABELLED,
    label_chars: int = 18,
) -> tuple[Any, dict[str, Any]]:
    """Your task among the experts' distinct training tasks, placed by classical MDS (or t-SNE) of
    the symmetric Task2Vec distances: a Plotly figure that takes the width it is given, with labels
    (at most ``label_chars`` characters) only for the ``labelled`` top experts and your task, kept
    inside the plot; full names on hover. Returns the figure and its data (``labels``, ``xy``,
    ``labelled``, ``kept``)."""
    import html

    import plotly.graph_objects as go

    from .distance import pairwise_distances

    points = _map_points(index, top, max_points)
    rank_of = {mid: i + 1 for i, mid in enumerate(top)}
    values = np.stack([embedding.values] + [index.embedding(mid).values for _, mid in points]).astype(np.float64)
    d = pairwise_distances(values, values, kind="symmetric")
    d = 0.5 * (d + d.T)
    np.fill_diagonal(d, 0.0)
    kept = None
    if projection == "tsne" and len(values) >= 4:
        from sklearn.manifold import TSNE

        xy = TSNE(
            n_components=2, metric="precomputed", init="random", perplexity=max(1.0, min(30.0, (len(values) - 1) / 3)),
            random_state=seed,
        ).fit_transform(d)
        how = "t-SNE of the symmetric distances (only neighbours count)"
    else:
        xy, kept = classical_mds(d)
        how = f"MDS of the symmetric distances; keeps {kept:.0%} of the variance"
    title = f"Your task among the experts' tasks{_SUB}{how}</span>"

    def cut(text: str) -> str:
        return text if len(text) <= label_chars else text[: label_chars - 1] + "…"

    shown = set(top[:labelled])
    hover = [
        f"<b>{html.escape(task)}</b><br>expert: {html.escape(mid)}"
        + (f" (rank {rank_of[mid]})" if mid in rank_of else "")
        + f"<br>symmetric distance to yours: {d[0, i + 1]:.3g}"
        for i, (task, mid) in enumerate(points)
    ]
    is_top = np.array([mid in shown for _, mid in points], bool)
    best = np.nonzero(is_top)[0]
    rest = np.nonzero(~is_top)[0]
    where = place_labels(np.vstack([xy[:1], xy[1:][best]]))
    fig = go.Figure()
    # your task first: the experts' dots are drawn over the star, so a top expert at the same place stays visible
    fig.add_trace(go.Scatter(
        x=[xy[0, 0]], y=[xy[0, 1]], mode="markers+text", name="your task",
        marker=dict(size=20, color="#d62728", symbol="star", opacity=0.85), text=[cut(f"you: {embedding.name}")],
        textposition=where[0], textfont=dict(size=FONT_PX, color="#9b1c1c"), cliponaxis=False,
        hovertext=[f"<b>your task: {html.escape(embedding.name)}</b>"], hoverinfo="text",
    ))
    fig.add_trace(go.Scatter(
        x=xy[1:][rest, 0], y=xy[1:][rest, 1], mode="markers", name="other experts' tasks",
        marker=dict(size=10, color="#9aa5b1"), hovertext=[hover[i] for i in rest], hoverinfo="text",
    ))
    fig.add_trace(go.Scatter(
        x=xy[1:][best, 0], y=xy[1:][best, 1], mode="markers+text", name=f"top {len(best)} experts' tasks",
        marker=dict(size=12, color="#2b6cb0", line=dict(width=1.5, color="white")),
        text=[cut(f"#{rank_of[points[i][1]]} {points[i][0]}") for i in best], textposition=where[1:],
        textfont=dict(size=FONT_PX, color="#1a365d"), cliponaxis=False,
        hovertext=[hover[i] for i in best], hoverinfo="text",
    ))
    _plotly_layout(fig, title, 460)
    # room for the labels: centred labels need half their width beside the outermost points
    span = np.ptp(xy, axis=0)
    span = np.where(span > 0, span, 1.0)
    lo, hi = xy.min(0), xy.max(0)
    fig.update_xaxes(visible=False, zeroline=False, range=[lo[0] - 0.3 * span[0], hi[0] + 0.3 * span[0]])
    fig.update_yaxes(visible=False, zeroline=False, range=[lo[1] - 0.15 * span[1], hi[1] + 0.15 * span[1]])
    fig.update_layout(legend=dict(orientation="h", y=-0.02, x=0.5, xanchor="center", yanchor="top"))
    data = {"labels": [embedding.name] + [t for t, _ in points], "xy": xy, "labelled": sorted(shown), "kept": kept}
    return fig, data


def _heatmap_cell_px(width: float, columns: int, row_labels: Sequence[str], colorbar: bool) -> float:
    """The width (px) of one cell of a heatmap drawn ``width`` px wide (an estimate that errs narrow):
    ``columns`` columns, ``row_labels`` on the left and, with ``colorbar``, a colour bar on the right."""
    labels_px = max((len(t) for t in row_labels), default=0) * _CHAR_EM * FONT_PX + 8
    cells_px = width - 16 - labels_px - (_COLORBAR_PX if colorbar else 0)  # 16: the figure's side margins
    return cells_px / max(1, columns) - 1  # 1: the gap between cells


def heatmap_text_size(
    width: float, columns: int, row_labels: Sequence[str], value_chars: int, *, colorbar: bool = True,
    font: int = FONT_PX,
) -> int | None:
    """The font size (px, at most ``font``) at which values of ``value_chars`` characters fit in the cells
    of a heatmap drawn ``width`` px wide: ``columns`` columns, ``row_labels`` on the left and, with
    ``colorbar``, a colour bar on the right. ``None`` when they would need less than `MIN_TEXT_PX`: the
    cells are too narrow to write in (a phone's, with a few experts), and the values are left to the hover
    text rather than printed over each other."""
    room = _heatmap_cell_px(width, columns, row_labels, colorbar) - 4  # 2 px clear on each side
    size = min(int(font), int(room / (max(1, value_chars) * _CHAR_EM)))
    return size if size >= MIN_TEXT_PX else None


def expert_distance_heatmap(
    embedding: Any,
    index: Any,
    top: Sequence[str],
    *,
    metric: str = "asymmetric",
    max_rows: int = 10,
    scale: float = 1.0,
    unit: str = "",
    width: float | None = None,
) -> tuple[Any, np.ndarray]:
    """The score the ranking uses from each of the top experts (rows) to your task (column 0: the
    table's scores) and to the top experts' training tasks, values written in; an expert against its
    own task is left blank. ``scale``/``unit``: the values are shown times ``scale`` (``unit`` says so,
    e.g. ``"×10⁶"``) when they are too small to read. ``width``: the width (px) the figure will be
    drawn at (it still takes the width it is given): the values are written in the cells only when they
    fit at `MIN_TEXT_PX` or more (`heatmap_text_size`), else they are on hover only; ``None`` writes
    them at the default size. Returns the figure and the ``[rows, 1 + rows]`` matrix (unscaled)."""
    import html

    import plotly.graph_objects as go

    rows = list(top[:max_rows])
    pos = [index.model_ids.index(m) for m in rows]
    columns = [embedding] + [index.embedding(m) for m in rows]
    z = np.stack([np.asarray(index.distances(c, metric), np.float64)[pos] for c in columns], axis=1)
    shown = z.copy() * scale
    shown[np.arange(len(rows)), np.arange(1, len(rows) + 1)] = np.nan
    names = short_names(index.model_ids, max_chars=16)
    ylab = [f"#{i + 1} {names[m]}" for i, m in enumerate(rows)]
    xlab = ["<b>yours</b>"] + [f"#{i + 1}" for i in range(len(rows))]
    what = f"{metric} score" + (f" {unit}" if unit else "")
    hover = [
        [
            f"from expert <b>{html.escape(m)}</b><br>to "
            + ("<b>your task</b>" if j == 0 else f"the training task of <b>{html.escape(rows[j - 1])}</b>")
            + f"<br>{what}: {z[i, j] * scale:.3f}" + (" (its own training task)" if j == i + 1 else "")
            for j in range(z.shape[1])
        ]
        for i, m in enumerate(rows)
    ]
    size: int | None = max(MIN_TEXT_PX, FONT_PX - len(rows) // 4)
    upright = True  # the column labels side by side (else turned, where the cells are narrower than "yours")
    if width is not None:
        chars = max((len(f"{v:.3f}") for v in shown[np.isfinite(shown)]), default=1)
        size = heatmap_text_size(width, len(xlab), ylab, chars, colorbar=len(rows) > 1, font=size)
        upright = len("yours") * _CHAR_EM * FONT_PX + 4 <= _heatmap_cell_px(width, len(xlab), ylab, len(rows) > 1)
    fig = go.Figure(go.Heatmap(
        z=shown, x=xlab, y=ylab, colorscale="Viridis", reversescale=True,
        texttemplate="%{z:.3f}" if size else None, textfont=dict(size=size) if size else None,
        hovertext=hover, hoverinfo="text", showscale=len(rows) > 1,
        # the title beside the bar, not above it, where the top tick's label runs into it
        colorbar=dict(title=dict(text="lower is better", font=dict(size=12), side="right"), thickness=12, nticks=4,
                      tickformat=".2f"),
        xgap=1, ygap=1,
    ))
    # short title lines (Plotly does not wrap a title): each fits a phone's 326 px figure
    lines = [f"{unit}, lower is better" if unit else "lower is better"]
    if metric == "asymmetric":
        lines.append("can be negative: a bonus for richer expert tasks")
    lines += ["rows: the experts; first column: your task", "(the table's scores), then the experts' own tasks"]
    if not size:
        lines.append("the cells are too narrow for their values: tap or hover")
    top_margin = 76 + 18 * len(lines)  # the title hangs from the top, below the label (not centred in the margin)
    _plotly_layout(
        fig, f"The {metric} score the ranking uses{_SUB}" + "<br>".join(lines) + "</span>",
        94 + top_margin + 44 * len(rows),
    )
    fig.update_yaxes(autorange="reversed", tickfont=dict(size=FONT_PX), automargin=True)
    fig.update_xaxes(side="bottom", tickfont=dict(size=FONT_PX), tickangle=0 if upright else -90, automargin=True)
    fig.update_layout(margin=dict(l=8, r=8, t=top_margin, b=8), title=dict(yref="container", y=1, yanchor="top",
                                                                         pad=dict(t=46)))
    return fig, z
