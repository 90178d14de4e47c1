"""How sure a ranking is, and the words the page uses for it.

A Task2Vec embedding is an estimate from a finite sample of the user's images (and, with the Monte
Carlo estimator, from random label draws), so the expert scores move when the same task is embedded
from another sample. `resample_scores` measures that: it embeds the task again on a few resamples
of the user's data - a different class-balanced subsample when the task is larger than ``max
samples``, else a class-balanced bootstrap (each class's images drawn with replacement, same counts)
- with other seeds, and scores every expert against each. `summarize` turns the score matrix into
what the page shows: each expert's score spread, the range of ranks it takes, which experts are
tied with the best (they score as well as it in some resample), and a warning when the task is too small.

Ties are judged on the ranks, not on overlapping score ranges: most of the movement of the scores
is a shift shared by all experts (measured on the offline index: the mean score moved by up to 0.1
between seeds while the best expert stayed first), which says nothing about the order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Fewer images than this in some class and the ranking gets a warning: the Fisher of a class
#: seen a handful of times is mostly noise (the issue saw the ranking collapse at 16 images for 3 classes).
MIN_PER_CLASS = 20
#: How many embeddings the confidence uses (the shown one plus ``RESAMPLES - 1`` resamples).
RESAMPLES = 3
DECIMALS = 3

METRIC_WORDS = {
    "asymmetric": (
        "asymmetric Task2Vec distance from the expert's training task to yours, minus a small bonus for experts "
        "trained on richer tasks (the paper's selection rule)"
    ),
    "symmetric": "symmetric Task2Vec distance between the expert's training task and yours",
    "model2vec": (
        "Model2Vec distance: the asymmetric distance from the expert's learned position (fitted to the experts' "
        "measured fine-tuning errors) to your task"
    ),
}


def fmt(x: float) -> str:
    """A score as the page shows it: three decimals."""
    return f"{x:.{DECIMALS}f}"


def score_meaning(metric: str) -> str:
    """One sentence saying what the score column is, for the metric used."""
    words = METRIC_WORDS.get(metric, f"{metric} distance")
    return f"score = {words}; lower is better"


def bootstrap_indices(labels: np.ndarray, seed: int) -> np.ndarray:
    """A class-balanced bootstrap of ``0..N-1``: within each class, as many indices as it has, drawn
    with replacement (the classic estimate of how much a statistic of the sample varies)."""
    rng = np.random.default_rng(seed)
    out = [rng.choice(np.nonzero(labels == c)[0], int((labels == c).sum()), replace=True) for c in np.unique(labels)]
    return np.sort(np.concatenate(out))


def resample_scores(
    task: Any,
    make_embedder: Callable[[int], Any],
    score: Callable[[Any], np.ndarray],
    *,
    max_samples: int,
    base_seed: int = 0,
    resamples: int = RESAMPLES - 1,
    on_step: Callable[[int], None] | None = None,
) -> np.ndarray:
    """``[resamples, N]`` expert scores of ``resamples`` re-embeddings of ``task``.

    Args:
        task: the user's `hf_task2vec.Task`.
        make_embedder: ``seed -> Task2Vec`` configured like the index (`ExpertIndex.embedder`).
        score: ``embedding -> [N]`` scores of every expert (`ExpertIndex.distances`).
        max_samples: the images the shown embedding used at most; when the task is larger, each
            resample is another class-balanced subsample (another seed), else a bootstrap.
        base_seed: the seed of the shown embedding; resample ``r`` uses ``base_seed + r``.
        on_step: called with ``r`` before resample ``r`` (1-based), for progress text.
    """
    rows = []
    for r in range(1, resamples + 1):
        if on_step is not None:
            on_step(r)
        seed = base_seed + r
        embedder = make_embedder(seed)
        part = task if len(task) > max_samples else task.subset(bootstrap_indices(task.labels, seed))
        rows.append(np.asarray(score(embedder.embed(part)), np.float64))
    return np.stack(rows) if rows else np.zeros((0, 0))


@dataclass
class Confidence:
    """How sure the ranking is (see the module docstring).

    Attributes:
        scores: ``[R, N]`` scores of every expert (index order) over the ``R`` embeddings; row 0 is
            the shown one.
        order: expert positions (index order), best first by the shown scores.
        spread: ``[N]`` half the range of each expert's score over the embeddings.
        rank_lo, rank_hi: ``[N]`` the best and worst rank each expert takes over the embeddings.
        tied: positions (index order) of the experts that score as well as the best one in at least
            one embedding (the best included): tied for first place.
        per_class: the smallest number of images of one class that were used.
        warnings: sentences for the page (too few images, a ranking within the noise).
    """

    scores: np.ndarray
    order: np.ndarray
    spread: np.ndarray
    rank_lo: np.ndarray
    rank_hi: np.ndarray
    tied: list[int]
    per_class: int
    warnings: list[str] = field(default_factory=list)

    @property
    def resamples(self) -> int:
        return int(self.scores.shape[0])

    def label(self, pos: int) -> str:
        """The 'rank over resamples' cell of one expert: ``always #1``, ``#1–#3 (tied)``, ``#2–#4``."""
        if self.resamples < 2:
            return "not measured"
        lo, hi = int(self.rank_lo[pos]), int(self.rank_hi[pos])
        text = f"always #{lo}" if lo == hi else f"#{lo}–#{hi}"
        return text + (" (tied)" if pos in self.tied and len(self.tied) > 1 else "")

    def verdict(self, top_name: str) -> str:
        """One or two sentences about the top of the ranking."""
        if self.resamples < 2:
            return "How sure: not measured (a single embedding)."
        r = self.resamples
        best = int(self.order[0])
        moves = f"± {fmt(float(np.median(self.spread)))}"
        common = (
            f" The scores themselves move by about {moves} between resamples, mostly all together, so the order is "
            "steadier than the scores."
        )
        if len(self.tied) == 1:
            gaps = self.scores[:, int(self.order[1])] - self.scores[:, best] if self.order.size > 1 else np.zeros(1)
            return (
                f"How sure: **{top_name}** is first in all {r} resamples of your images (its lead over the next "
                f"expert: {fmt(float(gaps.min()))} to {fmt(float(gaps.max()))}).{common}"
            )
        return (
            f"How sure: **{len(self.tied)} experts are tied for first place**: each scores as well as the best in "
            f"at least one of {r} resamples of your images. Any of them is a reasonable choice; more images per "
            f"class would separate them.{common}"
        )


def summarize(scores: np.ndarray, class_counts: Sequence[int], *, min_per_class: int = MIN_PER_CLASS) -> Confidence:
    """The `Confidence` of a ranking from its ``[R, N]`` score matrix (row 0: the shown embedding)
    and the per-class image counts that were used."""
    s = np.atleast_2d(np.asarray(scores, np.float64))
    n = s.shape[1]
    order = np.lexsort((np.arange(n), s[0]))
    lo, hi = s.min(0), s.max(0)
    spread = 0.5 * (hi - lo)
    ranks = np.empty_like(s, dtype=np.int64)
    for r in range(s.shape[0]):
        ranks[r, np.lexsort((np.arange(n), s[r]))] = np.arange(1, n + 1)
    best = int(order[0])
    rank_lo, rank_hi = ranks.min(0), ranks.max(0)
    tied = [int(p) for p in order if p == best or bool(np.any(s[:, p] <= s[:, best]))]
    per_class = int(min(class_counts)) if len(class_counts) else 0
    warnings = []
    if per_class < min_per_class:
        warnings.append(
            f"Too few images to rank reliably: the smallest class has {per_class} image(s) (at least {min_per_class} "
            "per class are advised). Add images or raise *max images*."
        )
    if s.shape[0] > 1 and n > 2 and float(np.median(rank_hi - rank_lo)) >= n / 3:
        warnings.append(
            "The order changes a lot when your images are resampled (a typical expert moves "
            f"{float(np.median(rank_hi - rank_lo)):.0f} places among {n}): below the top, the order is mostly noise."
        )
    return Confidence(s, order, spread, rank_lo, rank_hi, tied, per_class, warnings)
