"""The Space's two figures as interactive Plotly figures (Gradio's ``gr.Plot`` draws them with the
plotly.js it ships, offline): sized for the column they are shown in (>= 600 px wide), 13 px text,
labels only for the top experts and your task, full names on hover.

* `task_map`: your task among the experts' distinct training tasks, placed by classical MDS (or
  t-SNE) of the symmetric Task2Vec distances (a 2-D picture needs a symmetric distance).
* `distance_heatmap`: the distance *used for the ranking* from each of the top experts (rows) to
  your task and to the top experts' training tasks (columns), with the values written in. Its first
  column is the score column of the table.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

FONT_PX = 13
MAP_HEIGHT = 520
LABELLED = 5  # the top experts whose tasks get a text label on the map
_FONT = dict(size=FONT_PX, family="Inter, Arial, sans-serif")
_SUB = "<br><span style='font-size:12px'>"  # a subtitle line (Plotly's <sup> would be under 11 px)


def short_names(model_ids: Sequence[str]) -> dict[str, str]:
    """Short display names: the part after the namespace, without a prefix every name shares up to a
    ``-`` (``task2vec-bench/efficientnet-lite0-fashion-all`` -> ``fashion-all`` when every expert is an
    ``efficientnet-lite0-...``). Full ids stay in the hover text."""
    tails = [m.rsplit("/", 1)[-1] for m in model_ids]
    prefix = os.path.commonprefix(tails) if len(tails) > 1 else ""
    prefix = prefix[: prefix.rfind("-") + 1] if "-" in prefix else ""
    out = {}
    for mid, tail in zip(model_ids, tails, strict=True):
        short = tail[len(prefix):] if prefix and len(tail) > len(prefix) else tail
        out[mid] = short if len(short) <= 28 else short[:27] + "…"
    return out


_POSITIONS = {  # Plotly textposition -> where the label's centre lands, in units of the plot's extent
    "top center": (0.0, 0.045), "bottom center": (0.0, -0.045), "middle right": (0.16, 0.0),
    "middle left": (-0.16, 0.0), "top right": (0.13, 0.04), "bottom left": (-0.13, -0.04),
    "top left": (-0.13, 0.04), "bottom right": (0.13, -0.04),
}


def place_labels(xy: np.ndarray) -> list[str]:
    """A Plotly ``textposition`` for each point, chosen greedily so that labels of nearby points do
    not sit on top of each other: each label takes the position whose centre is farthest (labels
    are wide: horizontal distance counts half) from the labels placed before and from the points."""
    xy = np.asarray(xy, np.float64)
    if len(xy) == 0:
        return []
    span = np.ptp(xy, axis=0)
    norm = (xy - xy.min(0)) / np.where(span > 0, span, 1.0)
    placed: list[np.ndarray] = []
    out = []
    for i, pt in enumerate(norm):
        others = [q for j, q in enumerate(norm) if j != i] + placed
        best, best_score = "top center", -1.0
        for name, (dx, dy) in _POSITIONS.items():
            c = pt + np.array([dx, dy])
            score = min((np.hypot(0.5 * (c[0] - q[0]), c[1] - q[1]) for q in others), default=1.0)
            score -= 0.02 * (abs(dx) > 0)  # prefer above/below when it is as good
            if score > best_score + 1e-9:
                best, best_score = name, score
        out.append(best)
        placed.append(pt + np.array(_POSITIONS[best]))
    return out


def _layout(fig: Any, title: str, height: int) -> None:
    fig.update_layout(
        title=dict(text=title, font=dict(size=FONT_PX + 2), x=0.01, xanchor="left"),
        font=_FONT,
        height=height,
        autosize=True,
        margin=dict(l=10, r=10, t=60, b=10),
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


def task_map(
    embedding: Any,
    index: Any,
    top: Sequence[str],
    *,
    projection: str = "mds",
    seed: int = 0,
    max_points: int = 200,
    labelled: int = LABELLED,
) -> tuple[Any, dict[str, Any]]:
    """The 2-D map (a Plotly figure) and its data (``labels``, ``xy``, ``labelled``, ``kept``)."""
    import plotly.graph_objects as go
    from finder import classical_mds

    from hf_task2vec.distance import pairwise_distances

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
        title = f"Your task among the experts' tasks{_SUB}t-SNE of the symmetric distances (only neighbours count)"
        title += "</span>"
    else:
        xy, kept = classical_mds(d)
        title = (
            f"Your task among the experts' tasks{_SUB}classical MDS of the symmetric distances; the picture keeps "
            f"{kept:.0%} of the variance</span>"
        )
    experts = [(task, mid) for task, mid in points]
    shown = {mid for mid in top[:labelled]}
    hover = [
        f"<b>{html.escape(task)}</b><br>expert: {html.escape(mid)}"
        + (f" (rank {rank_of[mid]})" if mid in rank_of else "")
        + f"<br>symmetric distance to yours: {d[0, i + 1]:.3f}"
        for i, (task, mid) in enumerate(experts)
    ]
    is_top = np.array([mid in shown for _, mid in experts], bool)
    fig = go.Figure()
    rest = np.nonzero(~is_top)[0]
    fig.add_trace(go.Scatter(
        x=xy[1:][rest, 0], y=xy[1:][rest, 1], mode="markers", name="other experts' tasks",
        marker=dict(size=11, color="#9aa5b1"), hovertext=[hover[i] for i in rest], hoverinfo="text",
    ))
    best = np.nonzero(is_top)[0]
    where = place_labels(np.vstack([xy[:1], xy[1:][best]]))
    fig.add_trace(go.Scatter(
        x=xy[1:][best, 0], y=xy[1:][best, 1], mode="markers+text", name=f"top {len(best)} experts' tasks",
        marker=dict(size=14, color="#2b6cb0"), text=[f"#{rank_of[experts[i][1]]} {experts[i][0]}" for i in best],
        textposition=where[1:], textfont=dict(size=FONT_PX, color="#1a365d"),
        hovertext=[hover[i] for i in best], hoverinfo="text",
    ))
    fig.add_trace(go.Scatter(
        x=[xy[0, 0]], y=[xy[0, 1]], mode="markers+text", name="your task",
        marker=dict(size=22, color="#d62728", symbol="star"), text=[f"your task: {embedding.name}"],
        textposition=where[0], textfont=dict(size=FONT_PX, color="#9b1c1c"),
        hovertext=[f"<b>your task: {html.escape(embedding.name)}</b>"], hoverinfo="text",
    ))
    _layout(fig, title, MAP_HEIGHT)
    fig.update_xaxes(visible=False, zeroline=False)
    fig.update_yaxes(visible=False, zeroline=False, scaleanchor="x", scaleratio=1)
    fig.update_layout(legend=dict(orientation="h", y=-0.02, x=0.5, xanchor="center", yanchor="top"))
    data = {"labels": [embedding.name] + [t for t, _ in experts], "xy": xy, "labelled": sorted(shown), "kept": kept}
    return fig, data


def distance_heatmap(
    embedding: Any, index: Any, top: Sequence[str], *, metric: str = "asymmetric", max_rows: int = 10
) -> tuple[Any, np.ndarray]:
    """The heatmap (a Plotly figure) and its ``[rows, 1 + rows]`` matrix: row ``i`` = expert ``top[i]``,
    column 0 = your task, column ``1 + j`` = the training task of ``top[j]``; each value is the
    ranking's ``metric`` from the row's expert to the column's task (`ExpertIndex.distances`)."""
    import plotly.graph_objects as go

    rows = list(top[:max_rows])
    pos = [index.model_ids.index(m) for m in rows]
    columns = [embedding] + [index.embedding(m) for m in rows]
    z = np.stack([np.asarray(index.distances(c, metric), np.float64)[pos] for c in columns], axis=1)
    shown = z.copy()
    shown[np.arange(len(rows)), np.arange(1, len(rows) + 1)] = np.nan  # an expert against its own task: left blank
    names = short_names(index.model_ids)
    ylab = [f"#{i + 1} {names[m]}" for i, m in enumerate(rows)]
    xlab = ["<b>yours</b>"] + [f"#{i + 1}" for i in range(len(rows))]
    hover = [
        [
            f"from expert <b>{html.escape(m)}</b><br>to "
            + ("<b>your task</b>" if j == 0 else f"the training task of <b>{html.escape(rows[j - 1])}</b>")
            + (f"<br>{metric} distance: {z[i, j]:.3f}" + (" (its own training task)" if j == i + 1 else ""))
            for j in range(z.shape[1])
        ]
        for i, m in enumerate(rows)
    ]
    fig = go.Figure(go.Heatmap(
        z=shown, x=xlab, y=ylab, colorscale="Viridis", reversescale=True, texttemplate="%{z:.3f}",
        textfont=dict(size=max(11, FONT_PX - len(rows) // 4)), hovertext=hover, hoverinfo="text",
        colorbar=dict(title=dict(text=f"{metric}<br>distance", font=dict(size=FONT_PX)), thickness=14),
        xgap=1, ygap=1,
    ))
    _layout(
        fig, f"The {metric} distance the ranking uses{_SUB}from each top expert (row) to your task (the scores in "
        "the table) and to the other experts' training tasks; blank: an expert's own task</span>", 170 + 46 * len(rows),
    )
    fig.update_yaxes(autorange="reversed", tickfont=dict(size=FONT_PX))
    fig.update_xaxes(side="bottom", tickfont=dict(size=FONT_PX), tickangle=0,
                     title=dict(text="to: your task, then the training task of expert #1, #2, ...",
                                font=dict(size=FONT_PX)))
    fig.update_layout(margin=dict(l=10, r=10, t=90, b=10))
    return fig, z
