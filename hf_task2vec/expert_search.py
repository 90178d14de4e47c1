"""Find the experts for a task, and say how sure the answer is: what the expert-finder Space (and any
caller) runs on an `ExpertIndex`.

`find_experts` embeds the task like the index's experts (the index's probe, estimator and options;
another probe or estimator, or a task of the other modality, is refused with the reason), ranks the
experts by the index's distance, measures how stable that ranking is over resamples of the task's
examples (`resample_scores`, `summarize`: a `Confidence`), and, when asked, re-ranks the Task2Vec
shortlist by a transferability score from one forward pass of each shortlisted expert
(`ExpertIndex.select(..., rerank=...)`). Experts that cannot be loaded are found *before* the run
(`unloadable_experts`: no weights recorded, a missing checkpoint, no source classifier for a score
that needs one) and kept in the result with their Task2Vec rank; a re-ranking that fails keeps the
Task2Vec ranking. Nothing here raises for an expert the index cannot load.

Resampling: a Task2Vec embedding is an estimate from a finite sample of the examples (and, with the
Monte Carlo estimator, from random label draws), so the expert scores move when the task is embedded
from another sample. Each resample is a different class-balanced subsample when the task is larger
than ``max_samples``, else a class-balanced bootstrap, with another seed. Ties are judged on the
ranks, not on overlapping score ranges: most of the movement is a shift shared by all experts.
"""

from __future__ import annotations

import os
import re
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import IncompatibleEmbeddingsError, OptionError, Task2VecError, TaskError

_HUB_MODEL_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
#: Fewer examples than this in some class and the ranking gets a warning.
MIN_PER_CLASS = 20
#: How many embeddings the confidence uses (the shown one plus ``RESAMPLES - 1`` resamples).
RESAMPLES = 3
#: Re-rank scores that need the expert's source classifier (its head).
NEEDS_HEAD = ("leep", "nce")


def index_modality(index: Any) -> str:
    """What an index's experts read: ``"text"`` when their embeddings record a text task, else ``"image"``."""
    opts = getattr(index, "embedding_options", {}) or {}
    return "text" if opts.get("modality") == "text" else "image"


def task_modality(task: Any) -> str:
    return "text" if getattr(task, "is_text", False) else "image"


# -- how sure ------------------------------------------------------------------------------------------
def bootstrap_indices(labels: np.ndarray, seed: int) -> np.ndarray:
    """A class-balanced bootstrap of ``0..N-1``: within each class, as many indices as it has, drawn
    with replacement."""
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
    """``[resamples, N]`` expert scores of ``resamples`` re-embeddings of ``task`` (``make_embedder``:
    seed -> a `Task2Vec` configured like the index; ``score``: embedding -> ``[N]`` scores; resample
    ``r`` uses seed ``base_seed + r``; ``on_step(r)`` is called before resample ``r``)."""
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
    """How stable a ranking is over resamples of the task's examples.

    Attributes:
        scores: ``[R, N]`` scores of every expert (index order) over the ``R`` embeddings; row 0 is
            the shown one.
        order: expert positions, best first by the shown scores.
        spread: ``[N]`` half the range of each expert's score over the embeddings.
        rank_lo, rank_hi: ``[N]`` the best and worst rank each expert takes.
        tied: positions of the experts that score as well as the best one in at least one embedding.
        per_class: the smallest number of examples of one class that were used.
        too_few: ``per_class`` is under `MIN_PER_CLASS`.
        unstable: the order below the top changes a lot between resamples.
    """

    scores: np.ndarray
    order: np.ndarray
    spread: np.ndarray
    rank_lo: np.ndarray
    rank_hi: np.ndarray
    tied: list[int]
    per_class: int
    too_few: bool = False
    unstable: bool = False

    @property
    def resamples(self) -> int:
        return int(self.scores.shape[0])

    def label(self, pos: int) -> str:
        """The range of ranks one expert takes: ``always #1``, ``#1–#3 (tied)``, ``#2–#4``."""
        if self.resamples < 2:
            return "not measured"
        lo, hi = int(self.rank_lo[pos]), int(self.rank_hi[pos])
        text = f"always #{lo}" if lo == hi else f"#{lo}–#{hi}"
        return text + (" (tied)" if pos in self.tied and len(self.tied) > 1 else "")

    def lead(self) -> tuple[float, float]:
        """The best expert's lead over the second over the embeddings (min, max); (0, 0) with one expert."""
        if self.order.size < 2:
            return 0.0, 0.0
        gaps = self.scores[:, int(self.order[1])] - self.scores[:, int(self.order[0])]
        return float(gaps.min()), float(gaps.max())

    def clear_winner(self) -> bool:
        """Whether the top expert's lead over the second exceeds the resampling spread of the scores
        (one embedding: not measured, so no)."""
        if self.resamples < 2 or self.order.size < 2:
            return False
        noise = float(np.median(self.spread))
        return len(self.tied) == 1 and self.lead()[0] > noise


def summarize(scores: np.ndarray, class_counts: Sequence[int], *, min_per_class: int = MIN_PER_CLASS) -> Confidence:
    """The `Confidence` of a ranking from its ``[R, N]`` score matrix (row 0: the shown embedding)
    and the per-class example counts that were used."""
    s = np.atleast_2d(np.asarray(scores, np.float64))
    n = s.shape[1]
    order = np.lexsort((np.arange(n), s[0]))
    spread = 0.5 * (s.max(0) - s.min(0))
    ranks = np.empty_like(s, dtype=np.int64)
    for r in range(s.shape[0]):
        ranks[r, np.lexsort((np.arange(n), s[r]))] = np.arange(1, n + 1)
    best = int(order[0])
    rank_lo, rank_hi = ranks.min(0), ranks.max(0)
    tied = [int(p) for p in order if p == best or bool(np.any(s[:, p] <= s[:, best]))]
    per_class = int(min(class_counts)) if len(class_counts) else 0
    unstable = s.shape[0] > 1 and n > 2 and float(np.median(rank_hi - rank_lo)) >= n / 3
    return Confidence(s, order, spread, rank_lo, rank_hi, tied, per_class, per_class < min_per_class, unstable)


# -- experts that cannot run ---------------------------------------------------------------------------
def unloadable_experts(
    index: Any, model_ids: Sequence[str], *, rerank: str | None = None, root: str | os.PathLike[str] | None = None
) -> dict[str, str]:
    """The experts of ``model_ids`` a re-ranking could not run, with the reason, found without
    loading any network: no ``weights`` recorded (and not a Hub model), a checkpoint file that is not
    there, or, for a score that needs it (`NEEDS_HEAD`), no source classifier. A checkpoint whose
    hash changed is only found when it is loaded (the re-ranking then lists it as skipped)."""
    out: dict[str, str] = {}
    needs_head = (rerank or "").lower() in NEEDS_HEAD
    for mid in model_ids:
        info = dict(index.info(mid))
        weights = info.get("weights")
        if weights is None:
            if info.get("source") != "hub":
                out[mid] = f"expert {mid!r} records no weights"
            elif needs_head:
                out[mid] = f"{rerank} needs the expert's source classifier and it has none"
            continue
        if not isinstance(weights, dict) or not ({"load_probe", "checkpoint", "expert_repo"} & set(weights)):
            out[mid] = f"expert {mid!r}: info['weights'] needs 'expert_repo', 'load_probe' or 'checkpoint'"
            continue
        if "expert_repo" in weights:  # an expert repo (base + adapter + head): a folder here, or a Hub model id
            from .experts import local_expert_folder

            repo = str(weights["expert_repo"])
            if local_expert_folder(repo, root=root) is None and not _HUB_MODEL_ID.fullmatch(repo):
                out[mid] = f"expert {mid!r}: expert repo folder {repo!r} not found"
            continue
        if "checkpoint" in weights:
            path = Path(str(weights["checkpoint"]))
            if not path.is_absolute() and root is not None:
                path = Path(root) / path
            if not path.is_file():
                out[mid] = f"expert {mid!r}: checkpoint {str(weights['checkpoint'])!r} not found"
                continue
        elif needs_head and not weights.get("source_head"):
            out[mid] = f"{rerank} needs the expert's source classifier and it has none"
    return out


# -- the search ------------------------------------------------------------------------------------------
@dataclass
class ExpertSearch:
    """What `find_experts` found.

    Attributes:
        embedding: the task's embedding (made like the experts').
        records: the Task2Vec ranking (`ExpertMatch`, best first, ``k`` of them).
        confidence: how stable the Task2Vec ranking is (`Confidence`).
        metric: the distance used.
        rerank: the re-rank score asked for (``None``: Task2Vec only).
        selection: the re-ranked `Selection` (``None`` when nothing could be re-ranked).
        shortlist: the model ids the re-ranking was asked to run (Task2Vec order).
        unloadable: experts of the shortlist known not to load before the run, with the reason.
        skipped: experts the re-ranking skipped (``unloadable`` included), with the library's reason.
        rerank_error: why the re-ranking failed as a whole (the Task2Vec ranking stands).
        embed_s, rerank_s: seconds spent embedding (resamples included) and re-ranking.
        used: the number of examples the shown embedding used.
    """

    embedding: Any
    records: list[Any]
    confidence: Confidence
    metric: str
    rerank: str | None = None
    selection: Any = None
    shortlist: list[str] = field(default_factory=list)
    unloadable: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    rerank_error: str | None = None
    embed_s: float = 0.0
    rerank_s: float = 0.0
    used: int = 0

    @property
    def reranked(self) -> bool:
        return self.selection is not None and bool(self.selection.reranked)


def check_settings(index: Any, task: Any, *, probe: str | None = None, method: str | None = None) -> dict[str, str]:
    """The index's settings, after checking that ``task`` can be ranked with it: the same probe and
    estimator (embeddings made differently cannot be compared) and the same modality."""
    if len(index) == 0:
        raise OptionError("the expert index is empty: add experts first")
    settings = dict(index.settings)
    pairs = (("probe", probe, settings.get("probe")), ("estimator", method, settings.get("method")))
    wrong = [f"{w} {mine!r} (the index uses {theirs!r})" for w, mine, theirs in pairs if mine not in (None, theirs)]
    if wrong:
        raise IncompatibleEmbeddingsError(
            "the experts were embedded with another setting: " + "; ".join(wrong)
            + ". Embeddings made differently cannot be compared: choose the index's probe and estimator."
        )
    mine, theirs = task_modality(task), index_modality(index)
    if mine != theirs:
        raise TaskError(
            f"this is {'a text' if mine == 'text' else 'an image'} task but the expert index holds {theirs} experts "
            f"(probe {settings.get('probe')!r}): rank it with a {mine} expert index"
        )
    return settings


def find_experts(
    task: Any,
    index: Any,
    *,
    probe: Any = None,
    max_samples: int = 256,
    k: int = 5,
    metric: str = "asymmetric",
    resamples: int = RESAMPLES,
    rerank: str | None = None,
    shortlist: int | None = None,
    root: str | os.PathLike[str] | None = None,
    progress: bool = False,
    on_step: Callable[[float, str], None] | None = None,
) -> ExpertSearch:
    """Embed ``task`` like the index's experts, rank the experts, measure the ranking's stability over
    ``resamples`` embeddings (the shown one included; 1 = not measured) and, with ``rerank`` (a score
    of `hf_task2vec.transferability`), re-rank the ``shortlist`` nearest experts on the task's examples.

    Args:
        probe: a loaded probe of the index's kind (a server keeps one); default: the index's.
        root: the folder relative expert checkpoints are resolved against.
        on_step: ``(fraction, text)`` progress callback (human words, for a page).

    Raises:
        IncompatibleEmbeddingsError, TaskError: the task cannot be ranked with this index.
    """
    step = on_step or (lambda fraction, text: None)
    check_settings(index, task)
    n_emb = max(1, int(resamples))
    what = "texts" if task_modality(task) == "text" else "images"

    def make_embedder(seed: int | None = None) -> Any:
        extra = {} if seed is None else {"seed": seed}
        return index.embedder(probe=probe, max_samples=int(max_samples), progress=progress, **extra)

    start = time.perf_counter()
    embedder = make_embedder()
    used = embedder.sample(task)
    counts = np.bincount(task.labels[used], minlength=task.num_classes)
    step(0.2, f"Embedding your {len(used)} {what} (1 of {n_emb})")
    emb = embedder.embed(task)
    records = list(index.select(emb, k=int(k), metric=metric))
    shown = np.asarray(index.distances(emb, metric), np.float64)
    extra = resample_scores(
        task, make_embedder, lambda e: index.distances(e, metric), max_samples=int(max_samples),
        base_seed=int(getattr(embedder, "seed", 0)), resamples=n_emb - 1,
        on_step=lambda r: step(0.2 + 0.6 * r / n_emb, f"Resampling your {what} to see how sure the ranking is "
                               f"({r + 1} of {n_emb})"),
    )
    scores = np.vstack([shown[None], extra]) if extra.size else shown[None]
    result = ExpertSearch(emb, records, summarize(scores, counts), metric, used=len(used))
    result.embed_s = time.perf_counter() - start
    if rerank:
        step(0.8, f"Re-ranking: running the shortlisted experts on your {what}")
        start = time.perf_counter()
        _rerank(result, index, task, rerank=rerank, shortlist=shortlist, k=k, max_samples=max_samples, root=root)
        result.rerank_s = time.perf_counter() - start
    return result


def _rerank(
    result: ExpertSearch, index: Any, task: Any, *, rerank: str, shortlist: int | None, k: int, max_samples: int,
    root: str | os.PathLike[str] | None,
) -> None:
    from .rerank import ExpertSkippedWarning

    m = max(1, min(len(index), int(shortlist or 4)))
    result.rerank = rerank
    result.shortlist = [r.model_id for r in index.select(result.embedding, k=m, metric=result.metric)]
    result.unloadable = unloadable_experts(index, result.shortlist, rerank=rerank, root=root)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExpertSkippedWarning)  # the result lists them instead
            selection = index.select(
                result.embedding, k=max(int(k), m), metric=result.metric, rerank=rerank, shortlist=m, examples=task,
                max_examples=int(max_samples), root=root,
            )
    except (Task2VecError, ValueError, RuntimeError, OSError) as exc:
        result.rerank_error = f"{type(exc).__name__}: {exc}"
        result.skipped = dict(result.unloadable)
        return
    result.skipped = {**result.unloadable, **dict(selection.skipped)}
    if selection.reranked:
        result.selection = selection


__all__ = [
    "Confidence",
    "ExpertSearch",
    "MIN_PER_CLASS",
    "RESAMPLES",
    "bootstrap_indices",
    "check_settings",
    "find_experts",
    "index_modality",
    "resample_scores",
    "summarize",
    "unloadable_experts",
]
