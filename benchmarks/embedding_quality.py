#!/usr/bin/env python
"""Embedding quality (issue 11): does an embedding tell a task from another far beyond its own noise?

For every estimator of `ESTIMATORS` (a table of named `Task2Vec` keyword dicts; ``"default"`` is
``Task2Vec()`` with no options but the grid point's ``image_size`` / ``max_samples``) and every grid
point of `GRID` (image side in px x examples per task), on real tasks cut from the three offline
image datasets (`TASKS`: 2-4 classes each), this script measures:

* **SNR** = mean d_sym between embeddings of *different* tasks / mean d_sym between *resamples of the
  same task* (the noise). Resample ``s`` = ``Task2Vec(seed=s, max_samples=N)``: a different
  class-balanced subsample of the task *and* different label draws. Spreads: a 95% bootstrap interval
  over tasks, and the std over seed pairs (with 3 or more seeds). ``SNR same dataset`` only counts
  pairs of different tasks cut from the same dataset (the harder half).
* **Label-permuted copies**: the seed-0 resample with its labels permuted by a cyclic class
  permutation (same images, same order), embedded with seed 0; ``perm / noise`` = mean d_sym of a task
  to its permuted copy / the noise. The embedding should not see the class names: at most 1.
* **Content** (the other half of quality, issue 21: the SNR alone also rewards an embedding that only
  sees difficulty, which is stable across resamples):
  - *nearest task from the same dataset*: for every resample embedding, its nearest embedding among the
    *other* tasks (any seed) under d_sym; ``k/n`` and the rate, next to chance (the mean share of other-task
    embeddings cut from the same dataset).
  - *label-noise copies*: for the first task of each dataset, the seed-0 resample with ``LABEL_NOISE`` of its
    labels flipped to another class (seeded, same images), embedded with seed 0: d_sym(task, noisy copy) /
    min and / median d_sym(task, any embedding of a task of another dataset). Same content, harder task:
    the target is < 1 against the min (nearer than any task of another dataset).
  - *dendrogram purity by dataset*: average-linkage clustering of the mean-over-seeds d_sym between tasks,
    purity as `reproduce_paper.dendrogram_purity` (Heller & Ghahramani 2005), next to its mean over random
    relabelings of the same tree.
* **Taxonomy**: Spearman rho between d_sym (mean over seeds) and the taxonomic distance D_tax of the
  Animal-MNIST tasks (the biological taxonomy of ``reproduce_paper.TAXONOMY``).
* **Cost**: the CPU seconds of one `Task2Vec.embed` (head fit included) divided by those of one plain
  training step (forward + backward of the probe with a head, on one batch of the same images at the
  same size, timed in the same process), reported per batch of the sample: ``cost = embed CPU s /
  (step CPU s x N / batch)``, i.e. in units of one plain training pass over the N examples.

A task enters a grid point only when it has at least ``MIN_POOL_RATIO x N`` examples (so that two
resamples are not mostly the same images); the ``overlap`` column is the mean expected share of
images two resamples have in common (N / task size): resampling noise is underestimated by about
sqrt(1 - overlap).

Embeddings are cached under ``benchmarks/cache/embedding_quality/`` (git-ignored), keyed by the task,
the resample, the embedder's effective settings and a digest of the library source, so an interrupted
run continues where it stopped and estimators with identical settings are computed once.

    python benchmarks/embedding_quality.py --quick          # CI: 5 tasks, 32 px, 160 examples (minutes)
    python benchmarks/embedding_quality.py                  # the full grid (hours on 2 CPU cores)
    python benchmarks/embedding_quality.py --only default --grid 32x500

Writes ``<out-dir>/embedding_quality.{json,md}`` (``embedding_quality_quick.*`` with ``--quick``) and
exits with status 1 when a science check fails (listed in the report).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import itertools
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr
from tqdm.auto import tqdm

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO, REPO / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import hf_task2vec as t2v  # noqa: E402
from hf_task2vec.distance import distance_matrix, taxonomic_distance  # noqa: E402
from hf_task2vec.embedding import TaskEmbedding, atomic_write_bytes  # noqa: E402
from hf_task2vec.sampling import balanced_sample  # noqa: E402
from hf_task2vec.task2vec import auto_batch_size  # noqa: E402

logger = logging.getLogger("embedding_quality")

# ================================================================================================
# what is measured: edit these tables
# ================================================================================================
# Named Task2Vec keyword dicts; every key goes straight to Task2Vec(...). "default" must stay {}:
# the library defaults. The grid point's image_size / max_samples and the resample's seed are added.
ESTIMATORS: dict[str, dict[str, Any]] = {
    "default": {},
    "montecarlo": dict(method="montecarlo", n_samples=1),  # the one-draw estimator (the old default)
    "exact": dict(method="exact"),
    "variational": dict(method="variational"),  # the paper's robust Fisher (fixed prior)
    "relative": dict(method="relative"),  # the library default, named
    "linear": dict(head="linear"),  # the head of every weight free (the default before 2026-12-08)
    "discriminant": dict(head="discriminant"),  # LDA with a Ledoit-Wolf covariance (issue 21: text taxonomy)
}
ALL = "*"  # every estimator of ESTIMATORS


@dataclass(frozen=True)
class GridPoint:
    """One setting: image side, examples per task, which estimators, which resample seeds."""

    px: int
    n: int
    estimators: str | tuple[str, ...]  # ALL or names of ESTIMATORS
    seeds: tuple[int, ...] = (0, 1)

    @property
    def key(self) -> str:
        return f"{self.px}x{self.n}"

    def names(self) -> list[str]:
        return list(ESTIMATORS) if self.estimators == ALL else [e for e in self.estimators if e in ESTIMATORS]


HEADLINE = (32, 500)  # the setting: the default must reach SNR >= TARGET_SNR here
TARGET_SNR = 4.0
# the default's SNR floor in --quick (160 examples, 5 tasks): if the noise shrinks as 1/sqrt(N) and adds to the
# signal in quadrature, SNR 4 at 500 examples is about 2.4 at 160; 2.2 leaves room for the 5-task spread
QUICK_SNR_FLOOR = 2.2
MAX_COST_VS_MONTECARLO = 3.0  # the default may cost at most this many one-draw montecarlo embeddings
MIN_POOL_RATIO = 1.5  # a task enters a grid point with at least this many times N examples
LABEL_NOISE = 0.25  # share of labels flipped in the label-noise copies (issue 21)
# "well above chance" for the nearest task from the same dataset: the rate closes at least this share of the gap
# from chance to 1 (the full run; --quick only asks for more than chance: 5 tasks, two of them alone in their dataset)
NN_GAP_CLOSED = 0.5

GRID: tuple[GridPoint, ...] = (
    GridPoint(32, 500, ALL, seeds=(0, 1, 2)),  # the headline: every estimator, 3 seeds
    GridPoint(32, 100, ALL),
    GridPoint(32, 300, ("default",)),
    GridPoint(32, 1000, ("default", "exact")),
    GridPoint(64, 100, ("default",)),
    GridPoint(64, 300, ("default", "montecarlo", "exact")),  # the second measurement
    GridPoint(64, 1000, ("default",)),
)
QUICK_GRID: tuple[GridPoint, ...] = (GridPoint(32, 160, ALL),)

# (dataset, classes): 2-4 classes each; the three Animal-MNIST triples first
TASKS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("animal-mnist", ("cat", "dog", "bear")),
    ("animal-mnist", ("cow", "zebra", "bird")),
    ("animal-mnist", ("horse", "sheep", "giraffe")),
    ("animal-mnist", ("cat", "dog")),
    ("animal-mnist", ("cow", "sheep")),
    ("animal-mnist", ("horse", "zebra")),
    ("animal-mnist", ("elephant", "bird")),
    ("animal-mnist", ("elephant", "giraffe")),
    ("fashion-mnist", ("T-shirt/top", "Shirt")),
    ("fashion-mnist", ("Sandal", "Sneaker", "Ankle boot")),
    ("fashion-mnist", ("Trouser", "Dress")),
    ("fashion-mnist", ("Pullover", "Coat", "Bag")),
    ("fashion-mnist", ("T-shirt/top", "Trouser", "Pullover", "Dress")),
    ("digits", ("3", "8")),
    ("digits", ("4", "9")),
    ("digits", ("0", "6", "8", "9")),
    ("digits", ("1", "2", "5", "7")),
)
QUICK_TASKS: tuple[tuple[str, tuple[str, ...]], ...] = (
    *TASKS[:3],
    ("fashion-mnist", ("Sandal", "Sneaker", "Ankle boot")),
    ("digits", ("0", "6", "8", "9")),
)
PROBE = "embedded"
BOOTSTRAP = 2000
STEP_REPEATS = 5  # timed plain training steps (median; one warm-up before)
# library modules that cannot change an embedding: editing them keeps the cache valid
NOT_IN_CODE_DIGEST = frozenset({
    "__init__.py", "__main__.py", "ann.py", "batch.py", "cli.py", "distributed.py", "diversity.py", "gateway.py",
    "lifeline.py", "locking.py", "model2vec.py", "plots.py", "rerank.py", "selection.py", "transferability.py",
})  # fmt: skip


def task_name(dataset: str, classes: Sequence[str]) -> str:
    return f"{dataset}:{'+'.join(classes)}"


# ================================================================================================
# embedding jobs (run in this process or in worker processes)
# ================================================================================================
@dataclass(frozen=True)
class Job:
    """One embedding: a resample (or its label-permuted or label-noise copy) of one task with one embedder."""

    dataset: str
    classes: tuple[str, ...]
    px: int
    n: int
    seed: int
    permuted: bool
    options: tuple[tuple[str, Any], ...]  # the estimator's Task2Vec keywords (sorted)
    key: str  # cache key
    label_noise: float = 0.0  # > 0: the resample with this share of its labels flipped (`flip_labels`)


def embedder_kwargs(options: dict[str, Any], px: int, n: int, seed: int) -> dict[str, Any]:
    return {**options, "image_size": px, "max_samples": n, "seed": seed, "device": "cpu", "progress": False}


def effective_settings(name: str, options: dict[str, Any], px: int, n: int, seed: int) -> dict[str, Any]:
    """Every setting of the embedder ``Task2Vec(**options, image_size=px, ...)`` as it stores it (the
    library's defaults filled in), without loading the probe."""
    try:
        embedder = t2v.Task2Vec(PROBE, **embedder_kwargs(options, px, n, seed))
    except TypeError as exc:
        raise SystemExit(f"estimator {name!r} of ESTIMATORS: Task2Vec refuses its options {options}: {exc}") from exc
    skip = {"probe_spec", "probe", "device", "progress"}
    out = {k: v for k, v in sorted(vars(embedder).items()) if k not in skip and not k.startswith("_")}
    if out.get("batch_size") is None:  # the automatic size, as the embedder will resolve it at this px
        out["batch_size"] = auto_batch_size(px, "cpu")
    return out


def code_digest() -> str:
    """sha256 (16 hex) of the library modules that can change an embedding."""
    h = hashlib.sha256()
    for path in sorted((REPO / "hf_task2vec").glob("*.py")):
        if path.name not in NOT_IN_CODE_DIGEST:
            h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def make_job(dataset: str, classes: tuple[str, ...], gp: GridPoint, seed: int, permuted: bool, name: str,
             digest: str, label_noise: float = 0.0) -> Job:  # fmt: skip
    if permuted and label_noise:
        raise ValueError("a job is a label-permuted copy or a label-noise copy, not both")
    options = ESTIMATORS[name]
    settings = effective_settings(name, options, gp.px, gp.n, seed)
    noise = {"label_noise": label_noise} if label_noise else {}  # absent when 0: the older keys stay valid
    material = json.dumps(
        {"probe": PROBE, "dataset": dataset, "classes": classes, "px": gp.px, "n": gp.n, "seed": seed,
         "permuted": permuted, **noise, "settings": settings, "code": digest, "torch": torch.__version__},
        sort_keys=True, default=str,
    )  # fmt: skip
    key = hashlib.sha256(material.encode()).hexdigest()[:24]
    return Job(dataset, classes, gp.px, gp.n, seed, permuted, tuple(sorted(options.items())), key, label_noise)


def flip_labels(task: t2v.Task, share: float, seed: int) -> t2v.Task:
    """The same examples in the same order with ``round(share x N)`` labels (a seeded choice) moved to another
    class, drawn uniformly among the other ``K - 1``: the same content, a harder task."""
    rng = np.random.default_rng([seed, round(share * 1000)])
    labels = task.labels.copy()
    idx = rng.choice(len(labels), round(share * len(labels)), replace=False)
    labels[idx] = (labels[idx] + rng.integers(1, task.num_classes, idx.size)) % task.num_classes
    return task._derive(np.arange(len(labels)), labels, task.label_names, f"{task.name}:noisy{round(share * 100)}")


class Embedder:
    """Datasets, probes and the plain-training-step reference of one process."""

    def __init__(self, threads: int) -> None:
        torch.set_num_threads(threads)
        from hf_task2vec.data import load_offline

        self._load_offline = load_offline
        self.full: dict[str, t2v.Task] = {}
        self.probes: dict[int, t2v.Probe] = {}
        self.steps: dict[tuple[int, int], dict] = {}

    def dataset(self, name: str) -> t2v.Task:
        if name not in self.full:
            self.full[name] = t2v.load_task(self._load_offline(name, "train"), name=name)
        return self.full[name]

    def task(self, dataset: str, classes: Sequence[str]) -> t2v.Task:
        return self.dataset(dataset).subtask(list(classes), name=task_name(dataset, classes))

    def probe(self, px: int) -> t2v.Probe:
        if px not in self.probes:
            self.probes[px] = t2v.load_probe(PROBE, image_size=px)
        return self.probes[px]

    def resample(self, job: Job) -> t2v.Task:
        """The examples ``Task2Vec(seed=job.seed, max_samples=job.n)`` embeds (a subset task, so that
        its permuted and label-noise copies have exactly the same images in the same order)."""
        task = self.task(job.dataset, job.classes)
        sub = task.subset(balanced_sample(task.labels, job.n, job.seed), name=f"{task.name}@{job.seed}")
        if job.label_noise:
            return flip_labels(sub, job.label_noise, job.seed)
        if not job.permuted:
            return sub
        rotated = sub.label_names[1:] + sub.label_names[:1]  # old label k -> (k - 1) mod K: no fixed point
        return sub.subtask(rotated, name=f"{sub.name}:permuted")

    def step_time(self, px: int, batch_size: int) -> dict:
        """CPU and wall seconds of one plain training step: forward + backward of the probe with a fresh
        linear head (train mode, every weight trainable), cross-entropy, on one batch of real images."""
        if (px, batch_size) in self.steps:
            return self.steps[(px, batch_size)]
        dataset, classes = TASKS[0]
        task = self.task(dataset, classes)
        idx = balanced_sample(task.labels, batch_size, 0)
        loader = t2v.Task2Vec(self.probe(px), image_size=px, batch_size=batch_size, device="cpu", progress=False)
        x, y = next(loader.batches(task, idx))
        model = copy.deepcopy(self.probe(px))
        model.reset_head(task.num_classes)
        model.train()
        for p in model.parameters():
            p.requires_grad_(True)
        cpu, wall = [], []
        for i in range(STEP_REPEATS + 1):
            c0, w0 = time.process_time(), time.perf_counter()
            model.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            if i:  # the first step warms up
                cpu.append(time.process_time() - c0)
                wall.append(time.perf_counter() - w0)
        self.steps[(px, batch_size)] = {"cpu_s": statistics.median(cpu), "wall_s": statistics.median(wall),
                                        "batch_size": batch_size}  # fmt: skip
        return self.steps[(px, batch_size)]

    def run(self, job: Job) -> tuple[bytes, dict]:
        embedder = t2v.Task2Vec(self.probe(job.px), **embedder_kwargs(dict(job.options), job.px, job.n, job.seed))
        step = self.step_time(job.px, embedder.pass_batch_size)
        task = self.resample(job)
        c0, w0 = time.process_time(), time.perf_counter()
        emb = embedder.embed(task)
        cost = {"cpu_s": time.process_time() - c0, "wall_s": time.perf_counter() - w0, "step": step,
                "load_avg_1min": os.getloadavg()[0]}  # fmt: skip
        cost["cost"] = cost["cpu_s"] / (step["cpu_s"] * len(task) / step["batch_size"])
        return emb.to_bytes(), cost


_WORKER: dict = {}


def _worker_init(threads: int) -> None:
    import datasets
    from threadpoolctl import threadpool_limits

    datasets.disable_progress_bars()
    logging.getLogger("hf_task2vec").setLevel(logging.WARNING)
    _WORKER["limits"] = threadpool_limits(threads)
    _WORKER["embedder"] = Embedder(threads)


def _worker_run(job: Job) -> tuple[bytes, dict]:
    return _WORKER["embedder"].run(job)


class Cache:
    """``<dir>/<key>.safetensors`` (the embedding) + ``<key>.json`` (its cost), written atomically."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self.memory: dict[str, tuple[TaskEmbedding, dict]] = {}

    def get(self, key: str) -> tuple[TaskEmbedding, dict] | None:
        if key in self.memory:
            return self.memory[key]
        if self.root is None:
            return None
        emb_path, cost_path = self.root / f"{key}.safetensors", self.root / f"{key}.json"
        if not (emb_path.is_file() and cost_path.is_file()):
            return None
        try:
            found = TaskEmbedding.load(emb_path), json.loads(cost_path.read_text())
        except (OSError, ValueError) as exc:
            logger.warning("ignoring the damaged cache entry %s (%s)", emb_path, exc)
            return None
        self.memory[key] = found
        return found

    def put(self, key: str, data: bytes, cost: dict) -> None:
        emb = TaskEmbedding.from_bytes(data, source=f"job {key}")
        self.memory[key] = (emb, cost)
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.root / f"{key}.json", json.dumps(cost).encode())
            atomic_write_bytes(self.root / f"{key}.safetensors", data)


def run_jobs(jobs: Sequence[Job], cache: Cache, workers: int, threads: int) -> int:
    """Embed every job not in the cache (longest first); returns how many were computed."""
    todo = list({j.key: j for j in jobs if cache.get(j.key) is None}.values())
    todo.sort(key=lambda j: -(j.n * j.px**2) * (3 if dict(j.options).get("method") == "variational" else 1))
    if not todo:
        return 0
    logger.info("%d embeddings to compute (%d cached)", len(todo), len({j.key for j in jobs}) - len(todo))
    bar = tqdm(total=len(todo), desc="embeddings", unit="emb")
    try:
        if workers <= 1:
            _worker_init(threads)
            for job in todo:
                cache.put(job.key, *_worker_run(job))
                bar.update(1)
            return len(todo)
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init, initargs=(threads,)) as pool:
            futures = {pool.submit(_worker_run, job): job for job in todo}
            for fut in as_completed(futures):
                cache.put(futures[fut].key, *fut.result())
                bar.update(1)
        return len(todo)
    finally:
        bar.close()


# ================================================================================================
# statistics
# ================================================================================================
def snr_stats(dist: np.ndarray, task_of: np.ndarray, seed_of: np.ndarray, dataset_of: Sequence[str],
              rng: np.random.Generator, bootstrap: int = BOOTSTRAP) -> dict:  # fmt: skip
    """SNR and its spreads from a distance matrix over resample embeddings.

    Args:
        dist: ``[M, M]`` d_sym between the M embeddings (T tasks x S seeds, S >= 2).
        task_of, seed_of: ``[M]`` task index ``0..T-1`` and seed of each embedding.
        dataset_of: ``[T]`` the dataset each task was cut from.
    """
    tasks, seeds = np.unique(task_of), np.unique(seed_of)
    if len(seeds) < 2 or len(tasks) < 2:
        raise ValueError("the SNR needs at least 2 tasks and 2 seeds")
    t_n = len(tasks)
    pos = {(int(t), int(s)): i for i, (t, s) in enumerate(zip(task_of, seed_of, strict=True))}
    pairs = list(itertools.combinations(seeds.tolist(), 2))
    # within[i, p]: d between the two resamples of seed pair p of task i
    within = np.array([[dist[pos[(i, s)], pos[(i, t)]] for s, t in pairs] for i in range(t_n)])
    # between[i, j]: mean d over every seed combination of tasks i != j
    between = np.zeros((t_n, t_n))
    for i, j in itertools.product(range(t_n), repeat=2):
        if i != j:
            between[i, j] = np.mean([dist[pos[(i, s)], pos[(j, t)]] for s in seeds for t in seeds])
    off = ~np.eye(t_n, dtype=bool)
    same_ds = np.array([[dataset_of[i] == dataset_of[j] for j in range(t_n)] for i in range(t_n)]) & off
    noise = float(within.mean())
    out = {
        "tasks": t_n,
        "seeds": len(seeds),
        "noise": noise,
        "noise_per_task": within.mean(1).tolist(),
        "between": float(between[off].mean()),
        "snr": float(between[off].mean() / noise),
        "snr_same_dataset": float(between[same_ds].mean() / noise) if same_ds.any() else float("nan"),
    }
    # std over seed pairs: the SNR seen by one pair of resample seeds
    per_pair = []
    for s, t in pairs:
        w = np.mean([dist[pos[(i, s)], pos[(i, t)]] for i in range(t_n)])
        b = np.mean([dist[pos[(i, s)], pos[(j, t)]] for i in range(t_n) for j in range(t_n) if i != j])
        per_pair.append(b / w)
    out["snr_per_seed_pair"] = per_pair
    out["snr_seed_pair_std"] = float(np.std(per_pair, ddof=1)) if len(per_pair) > 1 else float("nan")
    # bootstrap over tasks: draw T tasks with replacement; between = pairs of draws of different tasks
    boots = []
    w_task = within.mean(1)
    for _ in range(bootstrap):
        idx = rng.integers(0, t_n, t_n)
        mask = idx[:, None] != idx[None, :]
        if not mask.any():
            continue
        boots.append(between[idx][:, idx][mask].mean() / w_task[idx].mean())
    lo, hi = np.percentile(boots, [2.5, 97.5]) if boots else (float("nan"), float("nan"))
    out["snr_ci95"] = [float(lo), float(hi)]
    return out


def spearman(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan"), float("nan")
    res = spearmanr(a, b)
    return float(res[0]), float(res[1])


def taxonomy_stats(between: np.ndarray, classes: Sequence[tuple[str, ...]]) -> dict:
    """Spearman rho of d_sym (``between[i, j]``, tasks i != j) with D_tax over the pairs of tasks."""
    from reproduce_paper import tree_distance

    d, tax = [], []
    for i, j in itertools.combinations(range(len(classes)), 2):
        d.append(between[i, j])
        tax.append(taxonomic_distance(classes[i], classes[j], tree_distance))
    rho, p = spearman(d, tax)
    return {"pairs": len(d), "spearman": rho, "p_value": p}


def nearest_same_dataset(dist: np.ndarray, task_of: np.ndarray, dataset_of: Sequence[str]) -> dict:
    """For each embedding, is its nearest embedding among the *other* tasks (any seed) cut from the same dataset?

    Args:
        dist: ``[M, M]`` d_sym between the M resample embeddings; ``task_of``: ``[M]`` task index of each.
        dataset_of: ``[T]`` the dataset each task was cut from.

    ``chance``: the mean, over embeddings, of the share of other-task embeddings from the same dataset.
    """
    ds = np.asarray(dataset_of)[task_of]
    hits, chance = [], []
    for a in range(len(task_of)):
        others = np.nonzero(task_of != task_of[a])[0]
        nearest = others[np.argmin(dist[a, others])]
        hits.append(bool(ds[nearest] == ds[a]))
        chance.append(float(np.mean(ds[others] == ds[a])))
    return {"hits": int(sum(hits)), "n": len(hits), "rate": float(np.mean(hits)), "chance": float(np.mean(chance))}


def noisy_copy_stats(dist: np.ndarray, task_of: np.ndarray, dataset_of: Sequence[str],
                     copies: dict[int, tuple[int, int]]) -> dict:  # fmt: skip
    """How far a task's label-noise copy is, against the tasks of the other datasets.

    Args:
        dist: d_sym over the resample embeddings ``0..M-1`` (``task_of``: ``[M]``) and the copies after them.
        copies: ``{task index: (row of its seed-0 resample, row of its noisy copy)}``.

    Per task: ``d`` = d_sym(resample, copy) over the min and over the median d_sym of that resample to every
    embedding of a task from another dataset (< 1 against the min: nearer than any of them).
    """
    ds = np.asarray(dataset_of)
    per_task = []
    for ti, (a, c) in copies.items():
        other = np.nonzero(ds[task_of] != ds[ti])[0]
        d, d_other = float(dist[a, c]), dist[a, other]
        per_task.append({"task": ti, "d": d, "over_min_other_dataset": d / float(d_other.min()),
                         "over_median_other_dataset": d / float(np.median(d_other))})  # fmt: skip
    over_min = [t["over_min_other_dataset"] for t in per_task]
    over_median = [t["over_median_other_dataset"] for t in per_task]
    return {
        "label_noise": LABEL_NOISE,
        "per_task": per_task,
        "over_min_max": float(max(over_min)),
        "over_median_max": float(max(over_median)),
        "nearer_than_any_other_dataset": int(sum(r < 1 for r in over_min)),
        "copies": len(per_task),
    }


def dataset_purity(between: np.ndarray, dataset_of: Sequence[str], seed: int = 0) -> dict:
    """Dendrogram purity by dataset of the average-linkage tree over ``between`` (tasks x tasks, d_sym mean over
    seeds), with its mean and p-value over random relabelings of the tree (`reproduce_paper.purity_test`)."""
    from reproduce_paper import purity_test
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import squareform

    d = 0.5 * (between + between.T)
    np.fill_diagonal(d, 0.0)
    z = linkage(squareform(d, checks=False), method="average")
    return purity_test(z, list(dataset_of), seed)


def noisy_tasks(tasks: Sequence[tuple[str, tuple[str, ...]]]) -> list[tuple[str, tuple[str, ...]]]:
    """The tasks that get a label-noise copy: the first of each dataset."""
    first: dict[str, tuple[str, ...]] = {}
    for dataset, classes in tasks:
        first.setdefault(dataset, classes)
    return list(first.items())


def setting_stats(gp: GridPoint, name: str, tasks: Sequence[tuple[str, tuple[str, ...]]], jobs: dict, cache: Cache,
                  rng: np.random.Generator) -> dict:  # fmt: skip
    """Every statistic of one estimator at one grid point (its embeddings are in ``cache``)."""
    embs, task_of, seed_of = [], [], []
    for ti, (dataset, classes) in enumerate(tasks):
        for s in gp.seeds:
            embs.append(cache.get(jobs[(dataset, classes, s, "plain")].key)[0])
            task_of.append(ti)
            seed_of.append(s)
    perm = [cache.get(jobs[(dataset, classes, gp.seeds[0], "permuted")].key)[0] for dataset, classes in tasks]
    noisy = {ti: cache.get(jobs[(d, c, gp.seeds[0], "noisy")].key)[0] for ti, (d, c) in enumerate(tasks)
             if (d, c, gp.seeds[0], "noisy") in jobs}  # fmt: skip
    dist = distance_matrix(embs + perm + list(noisy.values()))
    m = len(embs)
    task_of_a, seed_of_a = np.array(task_of), np.array(seed_of)
    dataset_of = [d for d, _ in tasks]
    out = snr_stats(dist[:m, :m], task_of_a, seed_of_a, dataset_of, rng)
    out["estimator"] = name
    out["options"] = ESTIMATORS[name]
    out["task_names"] = [task_name(d, c) for d, c in tasks]
    out["overlap"] = float(np.mean([gp.n / task_size(d, c) for d, c in tasks]))
    # label-permuted copies against the seed-0 resample of the same task
    first = [i for i in range(m) if seed_of[i] == gp.seeds[0]]
    d_perm = np.array([dist[first[ti], m + ti] for ti in range(len(tasks))])
    noise_task = np.array(out["noise_per_task"])
    out["permuted"] = {
        "d_mean": float(d_perm.mean()),
        "per_task": d_perm.tolist(),
        "over_noise": float(d_perm.mean() / out["noise"]),
        "share_within_task_noise": float(np.mean(d_perm <= noise_task)),
    }
    # content: nearest other task, label-noise copies (after the permuted copies in dist)
    out["nearest_same_dataset"] = nearest_same_dataset(dist[:m, :m], task_of_a, dataset_of)
    if noisy:
        rows = {ti: (first[ti], m + len(tasks) + k) for k, ti in enumerate(noisy)}
        out["noisy_copy"] = noisy_copy_stats(dist, task_of_a, dataset_of, rows)
        for t in out["noisy_copy"]["per_task"]:  # and against the task's own resampling noise
            t["over_task_noise"] = t["d"] / noise_task[t["task"]]
            t["task"] = out["task_names"][t["task"]]
    # taxonomy over the Animal-MNIST tasks
    animal = [ti for ti, (d, _) in enumerate(tasks) if d == "animal-mnist"]
    t_n = len(tasks)
    between = np.zeros((t_n, t_n))
    for i, j in itertools.combinations(range(t_n), 2):
        vals = [dist[a, b] for a in range(m) for b in range(m) if task_of[a] == i and task_of[b] == j]
        between[i, j] = between[j, i] = float(np.mean(vals))
    if len(animal) >= 3:
        out["taxonomy"] = taxonomy_stats(between[np.ix_(animal, animal)], [tasks[i][1] for i in animal])
    out["dendrogram_purity"] = dataset_purity(between, dataset_of)
    # cost (every embedding of the setting, permuted and noisy copies included)
    costs = [cache.get(jobs[k].key)[1] for k in jobs]
    out["cost"] = {
        "per_training_pass_median": float(np.median([c["cost"] for c in costs])),
        "embed_cpu_s_median": float(np.median([c["cpu_s"] for c in costs])),
        "embed_wall_s_median": float(np.median([c["wall_s"] for c in costs])),
        "step_cpu_s_median": float(np.median([c["step"]["cpu_s"] for c in costs])),
        "batch_size": costs[0]["step"]["batch_size"],
    }
    out["head_train_accuracy_mean"] = float(np.mean([float(e.meta.get("head_train_accuracy", "nan")) for e in embs]))
    out["provenance"] = {k: v for k, v in embs[0].meta.items() if k in ("method", "method_options", "trivial")}
    return out


_LABELS: dict[str, tuple[list[str], np.ndarray]] = {}


def task_size(dataset: str, classes: tuple[str, ...]) -> int:
    """Examples of a task (from the label column: no image decoded)."""
    if dataset not in _LABELS:
        from hf_task2vec.data import load_offline

        ds = load_offline(dataset, "train")
        _LABELS[dataset] = (list(ds.features["label"].names), np.asarray(ds["label"]))
    names, labels = _LABELS[dataset]
    return int(np.isin(labels, [names.index(c) for c in classes]).sum())


# ================================================================================================
# checks and report
# ================================================================================================
def checks(r: dict) -> list[tuple[str, bool, str]]:
    """The science checks (a failing one makes the script exit with status 1)."""
    out: list[tuple[str, bool, str]] = []
    quick = r["config"]["quick"]
    head_key = r["config"]["headline"]
    res = r["results"].get(head_key, {})
    default = res.get("default")
    if default is not None:
        floor = QUICK_SNR_FLOOR if quick else TARGET_SNR
        out.append((f"default SNR at {head_key} >= {floor}", default["snr"] >= floor, f"SNR {default['snr']:.2f}"))
        ratio = default["permuted"]["over_noise"]
        out.append((f"default at {head_key}: label-permuted copies within the resampling noise", ratio <= 1.0,
                    f"d_sym(task, permuted copy) / noise = {ratio:.2f}"))  # fmt: skip
        tax = default.get("taxonomy")
        if not quick and tax is not None:
            rho = tax["spearman"]
            out.append((f"default at {head_key}: d_sym grows with the taxonomic distance", rho == rho and rho > 0,
                        f"Spearman rho {rho:.2f} over {tax['pairs']} Animal-MNIST task pairs"))  # fmt: skip
        out += content_checks(default, res.get("exact"), head_key, quick)
        mc = res.get("montecarlo")
        if not quick and mc is not None:
            ratio = default["cost"]["per_training_pass_median"] / mc["cost"]["per_training_pass_median"]
            out.append((f"default at {head_key} costs <= {MAX_COST_VS_MONTECARLO}x one-draw montecarlo",
                        ratio <= MAX_COST_VS_MONTECARLO, f"{ratio:.2f}x"))  # fmt: skip
    return out


def content_checks(default: dict, exact: dict | None, key: str, quick: bool) -> list[tuple[str, bool, str]]:
    """The content half (issue 21): the nearest other task comes from the same dataset well above chance (--quick:
    above chance; two of its 5 tasks are alone in their dataset); every label-noise copy is nearer than any task
    of another dataset; the dendrogram purity by dataset reaches the `exact` estimator's (when it ran)."""
    out: list[tuple[str, bool, str]] = []
    nn = default.get("nearest_same_dataset")
    if nn is not None:
        need = nn["chance"] + (0 if quick else NN_GAP_CLOSED) * (1 - nn["chance"])
        what = "above chance" if quick else f"closes >= {NN_GAP_CLOSED:.0%} of the gap from chance to 1"
        out.append((f"default at {key}: nearest other task from the same dataset {what}",
                    nn["rate"] > need if quick else nn["rate"] >= need,
                    f"{nn['hits']}/{nn['n']} = {nn['rate']:.2f}, chance {nn['chance']:.2f}"))  # fmt: skip
    noisy = default.get("noisy_copy")
    if noisy is not None:
        out.append((f"default at {key}: every {noisy['label_noise']:.0%}-label-noise copy nearer than any task of "
                    "another dataset", noisy["over_min_max"] < 1.0,
                    f"max over {noisy['copies']} copies of d(task, copy) / min d(task, other dataset) = "
                    f"{noisy['over_min_max']:.2f}"))  # fmt: skip
    pur = default.get("dendrogram_purity")
    if pur is not None and exact is not None and "dendrogram_purity" in exact:
        p_ex, p_rand = exact["dendrogram_purity"]["purity"], pur["random_purity_mean"]
        out.append((f"default at {key}: dendrogram purity by dataset >= the exact estimator's",
                    pur["purity"] >= p_ex, f"{pur['purity']:.2f} vs {p_ex:.2f} (random {p_rand:.2f})"))  # fmt: skip
    return out


def fmt(x: float | None, digits: int = 2) -> str:
    if x is None or x != x:
        return "-"
    return f"{x:.{digits}f}"


def content_cells(s: dict) -> list[str]:
    """The report's content columns of one estimator: nearest same dataset, label-noise copies, purity."""
    nn, noisy, pur = s.get("nearest_same_dataset"), s.get("noisy_copy"), s.get("dendrogram_purity")
    return [
        "-" if nn is None else f"{nn['hits']}/{nn['n']} ({fmt(nn['chance'])})",
        "-" if noisy is None else f"{fmt(noisy['over_min_max'])} / {fmt(noisy['over_median_max'])}",
        "-" if pur is None else f"{fmt(pur['purity'])} ({fmt(pur['random_purity_mean'])})",
    ]


def headline(r: dict) -> str:
    px, n = r["config"]["headline"].split("x")
    default = r["results"].get(r["config"]["headline"], {}).get("default")
    value = "not run" if default is None else fmt(default["snr"])
    target = f"quick floor {QUICK_SNR_FLOOR}; target >= {TARGET_SNR} at 500" if r["config"]["quick"] else \
        f"target >= {TARGET_SNR}"  # fmt: skip
    line = f"default SNR at {px} px, {n} examples: {value} ({target})"
    nn, noisy = (None, None) if default is None else (default.get("nearest_same_dataset"), default.get("noisy_copy"))
    if nn is not None:
        line += f"; nearest other task from the same dataset {nn['hits']}/{nn['n']} (chance {fmt(nn['chance'])})"
    if noisy is not None:
        line += f"; label-noise copy / nearest other-dataset task {fmt(noisy['over_min_max'])} (target < 1)"
    return line


def write_report(r: dict, out_dir: Path, stem: str) -> Path:
    env = r["environment"]
    lines = [
        "# Embedding quality (issue 11)" + (" - quick run" if r["config"]["quick"] else ""),
        "",
        f"**{headline(r)}**",
        "",
        "SNR = mean d_sym between embeddings of different tasks / mean d_sym between two resamples of the same "
        "task (a different class-balanced subsample and different label draws: `Task2Vec(seed=s)`). "
        "`[95% CI]`: bootstrap over tasks; `± seeds`: std of the SNR over seed pairs (3+ seeds). "
        "`same ds`: only pairs of tasks cut from the same dataset. `perm / noise`: d_sym between a task and "
        "its label-permuted copy (same images) over the noise (should be <= 1). `NN same ds (chance)`: embeddings "
        "whose nearest embedding of another task comes from the same dataset (chance level). `noisy copy`: d_sym "
        f"between a task and its copy with {LABEL_NOISE:.0%} of the labels flipped (same images) over the min / "
        "the median d_sym to the tasks of other datasets, worst of the first task of each dataset (< 1: nearer "
        "than any of them). `purity (random)`: dendrogram purity by dataset of the average-linkage tree of the "
        "mean-over-seeds d_sym (its mean over random relabelings). `tax rho`: Spearman of "
        "d_sym with the taxonomic distance over the Animal-MNIST task pairs. `cost`: embed CPU seconds / "
        "(CPU seconds of one plain training step x N / batch), i.e. in plain training passes over the N "
        "examples, timed in the same process. `overlap`: mean share of images two resamples have in common "
        "(noise is underestimated by about sqrt(1 - overlap)).",
        "",
        f"Machine: {env['cpu']} ({env['cpu_count']} cores), {r['config']['threads']} thread(s) per process, "
        f"{r['config']['workers']} process(es), load average {env['load_start']} -> {env['load_end']}; "
        f"torch {env['torch']}, hf_task2vec {env['hf_task2vec']}; {r['total']['computed']} embeddings "
        f"computed, {r['total']['cached']} from the cache, {r['total']['wall_s']:.0f} s wall.",
        "",
    ]
    for key, res in r["results"].items():
        if not res:
            continue
        first = next(iter(res.values()))
        px, n = key.split("x")
        lines += [
            f"## {px} px, {n} examples per task ({first['tasks']} tasks, {first['seeds']} seeds, "
            f"overlap {fmt(first['overlap'])})",
            "",
            "| estimator | noise (same task) | different tasks | SNR [95% CI] | ± seeds | same ds | perm / noise "
            "| NN same ds (chance) | noisy copy: / min, / median | purity (random) | tax rho | cost | head acc |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, s in res.items():
            tax = s.get("taxonomy", {}).get("spearman")
            lo, hi = s["snr_ci95"]
            lines.append(
                f"| {name} | {fmt(s['noise'], 3)} | {fmt(s['between'], 3)} | **{fmt(s['snr'])}** [{fmt(lo)}, "
                f"{fmt(hi)}] | {fmt(s['snr_seed_pair_std'])} | {fmt(s['snr_same_dataset'])} | "
                f"{fmt(s['permuted']['over_noise'])} | {' | '.join(content_cells(s))} | {fmt(tax)} | "
                f"{fmt(s['cost']['per_training_pass_median'], 1)} | {fmt(s['head_train_accuracy_mean'])} |"
            )
        lines.append("")
    lines += ["## Estimators", ""]
    for name, opts in ESTIMATORS.items():
        lines.append(f"- `{name}`: `Task2Vec({', '.join(f'{k}={v!r}' for k, v in opts.items())})`")
    lines += ["", "## Checks", ""]
    for name, ok, detail in r["checks"]:
        lines.append(f"- {'PASS' if ok else 'FAIL'} {name}: {detail}")
    lines.append("")
    path = out_dir / f"{stem}.md"
    atomic_write_bytes(path, "\n".join(lines).encode())
    return path


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating | float):
        return None if np.isnan(obj) else float(obj)
    return obj


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


# ================================================================================================
# main
# ================================================================================================
def plan(grid: Sequence[GridPoint], tasks: Sequence[tuple[str, tuple[str, ...]]], only: set[str] | None,
         digest: str) -> dict:  # fmt: skip
    """``{grid key: {estimator: (grid point, tasks, {(dataset, classes, seed, variant): Job})}}``; variant is
    ``"plain"`` (every seed), ``"permuted"`` (first seed) or ``"noisy"`` (first seed, `noisy_tasks` only)."""
    out: dict = {}
    for gp in grid:
        eligible = [(d, c) for d, c in tasks if task_size(d, c) >= MIN_POOL_RATIO * gp.n]
        skipped = [task_name(d, c) for d, c in tasks if (d, c) not in eligible]
        if skipped:
            logger.info("%s: %d tasks too small for %d examples: %s", gp.key, len(skipped), gp.n, ", ".join(skipped))
        out[gp.key] = {}
        for name in gp.names():
            if only is not None and name not in only:
                continue
            jobs, s0 = {}, gp.seeds[0]
            for dataset, classes in eligible:
                for s in gp.seeds:
                    jobs[(dataset, classes, s, "plain")] = make_job(dataset, classes, gp, s, False, name, digest)
                jobs[(dataset, classes, s0, "permuted")] = make_job(dataset, classes, gp, s0, True, name, digest)
            for dataset, classes in noisy_tasks(eligible):
                jobs[(dataset, classes, s0, "noisy")] = make_job(dataset, classes, gp, s0, False, name, digest,
                                                                 label_noise=LABEL_NOISE)  # fmt: skip
            out[gp.key][name] = (gp, eligible, jobs)
    return out


def run(args: argparse.Namespace) -> dict:
    grid = QUICK_GRID if args.quick else GRID
    if args.grid:
        wanted = {g.strip() for g in args.grid.split(",") if g.strip()}
        unknown = wanted - {g.key for g in grid}
        if unknown:
            raise SystemExit(f"--grid: unknown grid points {sorted(unknown)}; choose from {[g.key for g in grid]}")
        grid = tuple(g for g in grid if g.key in wanted)
    only = None
    if args.only:
        only = {s.strip() for s in args.only.split(",") if s.strip()}
        unknown = only - set(ESTIMATORS)
        if unknown:
            raise SystemExit(f"--only: unknown estimators {sorted(unknown)}; ESTIMATORS has {list(ESTIMATORS)}")
    tasks = QUICK_TASKS if args.quick else TASKS
    headline_key = grid[0].key if args.quick else f"{HEADLINE[0]}x{HEADLINE[1]}"
    digest = code_digest()
    cache = Cache(None if args.no_cache else args.cache_dir)
    load_start = os.getloadavg()[0]
    t0 = time.perf_counter()
    planned = plan(grid, tasks, only, digest)
    all_jobs = [j for per in planned.values() for (_, _, jobs) in per.values() for j in jobs.values()]
    computed = run_jobs(all_jobs, cache, args.workers, args.threads)
    rng = np.random.default_rng(0)
    results: dict = {}
    for key, per in planned.items():
        results[key] = {}
        for name, (gp, eligible, jobs) in per.items():
            results[key][name] = setting_stats(gp, name, eligible, jobs, cache, rng)
        mc = results[key].get("montecarlo")
        for s in results[key].values():
            s["cost"]["vs_montecarlo"] = (
                s["cost"]["per_training_pass_median"] / mc["cost"]["per_training_pass_median"] if mc else None
            )
    r = {
        "config": {
            "quick": args.quick, "threads": args.threads, "workers": args.workers, "probe": PROBE,
            "headline": headline_key, "grid": [vars(g) for g in grid], "estimators": ESTIMATORS,
            "tasks": [task_name(d, c) for d, c in tasks], "min_pool_ratio": MIN_POOL_RATIO,
            "target_snr": TARGET_SNR, "quick_snr_floor": QUICK_SNR_FLOOR, "code_digest": digest,
            "label_noise": LABEL_NOISE, "nn_gap_closed": NN_GAP_CLOSED,
        },
        "environment": {
            "date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_name(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__, "hf_task2vec": t2v.__version__,
            "load_start": round(load_start, 2), "load_end": round(os.getloadavg()[0], 2),
        },
        "total": {"wall_s": time.perf_counter() - t0, "computed": computed,
                  "cached": len({j.key for j in all_jobs}) - computed},
        "results": results,
    }  # fmt: skip
    r["checks"] = checks(r)
    r["headline"] = headline(r)
    stem = "embedding_quality_quick" if args.quick else "embedding_quality"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out_dir / f"{stem}.json", json.dumps(_jsonable(r), indent=1, default=str).encode())
    write_report(r, args.out_dir, stem)
    return r


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI-sized run: 5 tasks, 32 px, 160 examples")
    parser.add_argument("--only", default="", help=f"comma-separated estimators (default all: {','.join(ESTIMATORS)})")
    parser.add_argument("--grid", default="", help="comma-separated grid points PXxN (default: the whole grid)")
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results", help="results folder")
    parser.add_argument("--cache-dir", type=Path, default=REPO / "benchmarks" / "cache" / "embedding_quality",
                        help="embedding cache (resumable runs)")  # fmt: skip
    parser.add_argument("--no-cache", action="store_true", help="compute everything, keep nothing on disk")
    parser.add_argument("--workers", type=int, default=1, help="processes embedding in parallel")
    parser.add_argument("--threads", type=int, default=1, help="torch / BLAS threads per process")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("hf_task2vec").setLevel(logging.WARNING)
    import datasets

    datasets.disable_progress_bars()
    r = run(args)
    print(r["headline"])
    for key, res in r["results"].items():
        for name, s in res.items():
            print(f"{key:>8} {name:<12} SNR {s['snr']:5.2f} [{s['snr_ci95'][0]:.2f}, {s['snr_ci95'][1]:.2f}]  "
                  f"noise {s['noise']:.3f}  perm/noise {s['permuted']['over_noise']:.2f}  "
                  f"NN same ds {content_cells(s)[0]}  noisy/min,median {content_cells(s)[1]}  "
                  f"purity {content_cells(s)[2]}  cost {s['cost']['per_training_pass_median']:.1f}")  # fmt: skip
    for name, ok, detail in r["checks"]:
        print(f"check {'ok  ' if ok else 'FAIL'} {name}: {detail}")
    stem = "embedding_quality_quick" if args.quick else "embedding_quality"
    print(f"total {r['total']['wall_s']:.0f} s wall; report: {args.out_dir / (stem + '.md')}")
    return 1 if any(not ok for _, ok, _ in r["checks"]) else 0


if __name__ == "__main__":
    sys.exit(main())
