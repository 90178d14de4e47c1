"""The words the page uses for a ranking and how sure it is.

The numbers come from the library (`hf_task2vec.expert_search.Confidence`: the ranking over resamples
of the user's data) and from the committed benchmark results (`measured`: how often the method picks
the best expert, read from ``benchmarks/results/*.json``, never typed in here). Stability over resamples
is reported for what it is: it says the answer would not change with another sample of the same data,
not that the answer is right.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from hf_task2vec.expert_search import MIN_PER_CLASS, RESAMPLES, Confidence, bootstrap_indices, summarize

DECIMALS = 3
__all__ = ["MIN_PER_CLASS", "RESAMPLES", "bootstrap_indices", "summarize"]

METRIC_WORDS = {
    "asymmetric": (
        "asymmetric Task2Vec distance from the expert's training task to yours, minus a small bonus for experts "
        "trained on richer tasks (the paper's selection rule; it can be negative)"
    ),
    "symmetric": "symmetric Task2Vec distance between the expert's training task and yours",
    "model2vec": (
        "Model2Vec distance: the asymmetric distance from the expert's learned position (fitted to the experts' "
        "measured fine-tuning errors) to your task"
    ),
}
RERANK_WORDS = {
    "logme": "LogME: the evidence of a linear model on the expert's features (an estimate of how well the expert "
    "fine-tunes on your data)",
    "leep": "LEEP: the log-likelihood of your labels through the expert's own classifier",
    "nce": "NCE: the negative conditional entropy of your labels given the expert's predicted classes",
    "sfda": "SFDA: how well the expert's features separate your classes after a regularised projection",
    "knn": "kNN: the leave-one-out accuracy of a nearest-neighbour classifier on the expert's features",
}


def fmt(x: float, scale: float = 1.0) -> str:
    """A score as the page shows it: three decimals (after multiplying by ``scale``)."""
    return f"{x * scale:.{DECIMALS}f}"


def fmt_spread(x: float, scale: float = 1.0) -> str:
    """A spread or a difference: three decimals, or one significant digit when those would read 0.000
    (a spread of 0.0004 is not zero, and the verdict must not say it is)."""
    v = x * scale
    return fmt(x, scale) if v == 0 or abs(v) >= 0.5 * 10.0**-DECIMALS else f"{v:.1g}"


def score_scale(values: Sequence[float]) -> tuple[float, str]:
    """``(factor, unit)`` that makes tiny scores readable with three decimals: text distances of the
    order of 1e-6 read ``0.000`` otherwise. ``(1, "")`` when they are readable as they are."""
    finite = [abs(v) for v in values if math.isfinite(v) and v != 0]
    if not finite or max(finite) >= 0.05:
        return 1.0, ""
    power = max(3, 3 * math.ceil(math.log10(0.05 / max(finite)) / 3))
    return 10.0**power, f"in units of 1e-{power}"


def score_meaning(metric: str, unit: str = "") -> str:
    """One sentence saying what the score column is, for the metric used."""
    words = METRIC_WORDS.get(metric, f"{metric} distance")
    return f"score{f' ({unit})' if unit else ''} = {words}; lower is better"


def rerank_meaning(score: str) -> str:
    """What a re-rank score is: its name, what it estimates, and that higher is better."""
    words = RERANK_WORDS.get(score, score)
    return f"re-rank score = {words}; higher is better (compare it only between experts on this page)"


def verdict(conf: Confidence, top_name: str, what: str = "images", scale: tuple[float, str] = (1.0, "")) -> str:
    """How stable the top of the ranking is, said for what it is (score differences shown times
    ``scale[0]``, as the table shows the scores, with ``scale[1]`` naming the unit)."""
    if conf.resamples < 2:
        return "Stability: not measured (a single embedding)."
    r = conf.resamples
    factor, unit = scale
    units = f" {unit}" if unit else ""
    noise = float(np.median(conf.spread))
    if not conf.clear_winner():
        n = max(2, len(conf.tied))
        return (
            f"**No clear winner:** the top {n} experts' scores differ by less than they move when your {what} are "
            f"resampled (about ± {fmt_spread(noise, factor)}{units}); any of them is a reasonable choice, and more "
            f"{what} per class would separate them."
        )
    lo, hi = conf.lead()
    return (
        f"Stable across resamples: **{top_name}** is first in all {r} resamples of your {what} (its lead over the "
        f"next: {fmt_spread(lo, factor)} to {fmt_spread(hi, factor)}, more than the ± {fmt_spread(noise, factor)} "
        f"the scores move{units}). "
        "Stable means another sample of the same data gives the same answer, not that the answer is right: see "
        "*How often it is right* below."
    )


def warnings(conf: Confidence, what: str = "images") -> list[str]:
    out = []
    if conf.too_few:
        out.append(
            f"Too few {what} to rank reliably: the smallest class has {conf.per_class} {what[:-1]}(s) (at least "
            f"{MIN_PER_CLASS} per class are advised). Add {what} or raise *max examples*."
        )
    if conf.unstable:
        n = conf.scores.shape[1]
        out.append(
            f"The order changes a lot when your {what} are resampled (a typical expert moves "
            f"{float(np.median(conf.rank_hi - conf.rank_lo)):.0f} places among {n}): below the top, it is mostly noise."
        )
    return out


def class_flags(label_names: Sequence[str], index: Any, conf: Confidence, top: int = 3) -> list[str]:
    """A warning for each training task that holds every class of the upload while the best of its experts
    ranks outside the ``top``: the distance may be wrong about it, and it deserves a look. The experts trained
    on one task (the zoo trains each task on several bases) share its task embedding and rank together, so
    they get one line, not one each."""
    mine = {str(n).strip().lower() for n in label_names}
    rank = {int(p): i + 1 for i, p in enumerate(conf.order)}
    by_task: dict[str, list[tuple[int, str]]] = {}
    for pos, mid in enumerate(index.model_ids):
        info = dict(index.info(mid))
        classes = info.get("classes")
        if not isinstance(classes, list) or not mine <= {str(c).strip().lower() for c in classes}:
            continue
        # the training task as the task map names it (plots._map_points): the card's task, else the expert
        by_task.setdefault(str(info.get("task") or mid), []).append((rank[pos], mid))
    yours = html.escape(", ".join(sorted(str(n) for n in label_names)))
    out = []
    for task, members in sorted(by_task.items(), key=lambda item: min(item[1])):
        best = min(r for r, _ in members)
        if best <= top:
            continue
        if len(members) == 1:
            out.append(
                f"**{html.escape(members[0][1])}** was trained on all of your classes ({yours}) but ranks #{best}: "
                "the Task2Vec distance may be wrong about it; consider it too."
            )
            continue
        names = ", ".join(html.escape(mid) for _, mid in sorted(members))
        out.append(
            f"**The {len(members)} experts trained on {html.escape(task)}** ({names}) were trained on all of your "
            f"classes ({yours}) but the best of them ranks #{best}: the Task2Vec distance may be wrong about that "
            "task; consider them too."
        )
    return out


def results_dir() -> Path:
    """Where the committed benchmark results are: ``$T2V_SPACE_RESULTS_DIR``, else ``results/`` beside
    the app (a deployed Space copies them there), else the repository's ``benchmarks/results``."""
    if os.environ.get("T2V_SPACE_RESULTS_DIR"):
        return Path(os.environ["T2V_SPACE_RESULTS_DIR"])
    here = Path(__file__).resolve().parent
    return here / "results" if (here / "results").is_dir() else here.parents[1] / "benchmarks" / "results"


@lru_cache(maxsize=8)
def _read(path: str) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def measured(modality: str, metric: str = "asymmetric", folder: Path | None = None) -> str:
    """What the committed benchmark measured for this kind of query, in one sentence (read from the
    results files; says so when there is no measurement)."""
    folder = folder or results_dir()
    if modality == "text":
        data = _read(str(folder / "text_expert_index.json"))
        checks = (data or {}).get("checks") or []
        if not checks:
            return "How often it is right: not measured for text (no benchmark results found)."
        same = sum(bool(c.get("same_dataset")) for c in checks)
        return (
            f"How often it is right, for text: not measured against fine-tuning yet. The benchmark checked only "
            f"that the nearest expert comes from the query's own corpus: {same} of {len(checks)} queries "
            "(`benchmarks/results/text_expert_index.json`)."
        )
    data = _read(str(folder / "model_selection.json"))
    key = {"asymmetric": "t2v_asym", "symmetric": "t2v_sym", "model2vec": "model2vec"}.get(metric, "t2v_asym")
    row = ((data or {}).get("table2") or {}).get(key)
    chance = ((data or {}).get("table2") or {}).get("chance")
    if not row:
        return "How often it is right: not measured here (no benchmark results found)."
    n = len((data or {}).get("targets") or [])
    text = (
        f"How often it is right, for images: on {n or 'the'} benchmark tasks the {metric} ranking put the expert "
        f"that fine-tuned best first in **{row['top1'][0]:.0%}** of them, and the expert it picked had on average "
        f"**{row['relative_increase'][0]:.0%}** more test error than the best one"
    )
    if chance:
        text += f" (a random pick: {chance['top1'][0]:.0%} and {chance['relative_increase'][0]:.0%})"
    return text + " (`benchmarks/results/model_selection.json`)."
