"""The shared harness of ``benchmarks/reproduce_paper.py``: what every paper check uses.

- ``Config``: every knob of a run (``--quick`` sizes included); recorded in the results. ``ESTIMATORS``:
  the Fisher estimators every check runs, the library default (``DEFAULT_METHOD``) first.
- small utilities: ``stopwatch`` (wall / CPU / load around a block, worker CPU included), ``spearman``,
  ``upper``, ``l1`` (the embedding norm the paper reads), ``embed_all``, ``fig_path``, ``nn_index``,
  ``cpu_name``.
- the real-image tasks of experiments 3-6: ``RealTask``, ``RealData`` (offline datasets, probe,
  embedders, built once per run) and the worker processes that embed them (``_worker_init``,
  ``_worker_embed``; ``--workers``). Nothing is cached between runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from tqdm.auto import tqdm

import hf_task2vec as t2v
from hf_task2vec.data import load_offline
from hf_task2vec.embedding import TaskEmbedding
from hf_task2vec.task2vec import DEFAULT_METHOD

# the estimators every check runs, the library default first: "relative" (the robust Fisher with its
# prior at the task's own level, docs/robust_fisher.md), "montecarlo" (1 label draw per input),
# "variational" (the paper's fixed-prior robust Fisher, round two's default) and "exact" (the label
# expectation summed exactly, the reference of the others). The verdicts judge DEFAULT_METHOD.
ESTIMATORS: tuple[str, ...] = (
    DEFAULT_METHOD, *(m for m in ("relative", "montecarlo", "variational", "exact") if m != DEFAULT_METHOD)
)


# ================================================================================================
# configuration
# ================================================================================================
@dataclass(frozen=True)
class Config:
    """Every knob of a run; recorded in the results."""

    quick: bool
    seed: int = 0
    threads: int = 1  # torch / BLAS threads per process
    workers: int = 1  # processes embedding real-image tasks in parallel
    probe: str = "embedded"
    image_size: int = 32
    max_samples: int = 300  # examples per real-image task (class-balanced)
    variational_epochs: int = 0  # the library default: the closed-form robust Fisher, no SGD refinement
    # estimators run on every real-image task, the library default first; "exact" is the reference
    methods: tuple[str, ...] = ESTIMATORS
    # 1. analytic
    analytic_inputs: int = 2000
    analytic_dims: tuple[int, int, int] = (10, 20, 4)  # inputs, hidden filters, classes
    analytic_draws: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
    analytic_repeats: int = 20
    analytic_var_epochs: tuple[int, ...] = (0, 1, 3, 10)
    # 2. toy
    toy_tasks: int = 64
    toy_grid: int = 32
    toy_k: tuple[int, int] = (3, 16)
    # 3. taxonomy
    animals: tuple[str, ...] = (
        "bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra",
    )  # fmt: skip
    triples: int = 30
    # 4. difficulty: linear classifier on probe features
    clf_train_per_class: int = 150
    clf_test_per_class: int = 150
    clf_C: float = 0.1
    # 5. task vs domain
    fashion_groupings: tuple[str, ...] = (
        "footwear", "tops", "bags", "trousers", "dresses", "warm", "4-way", "10-way",
    )  # fmt: skip
    animal_tasks_in_domains: tuple[tuple[str, ...], ...] = (
        ("cat", "dog"), ("cow", "sheep"), ("horse", "zebra"), ("bear", "bird"),
        ("elephant", "giraffe"), ("bird", "elephant"),
    )  # fmt: skip
    digits_tasks: tuple[str, ...] = ("0-vs-1", "3-vs-8", "4-vs-9", "1-vs-7", "odd-even", "small-large")

    @staticmethod
    def make(quick: bool, seed: int, threads: int, workers: int, image_size: int | None) -> Config:
        if not quick:
            return Config(quick=False, seed=seed, threads=threads, workers=workers, image_size=image_size or 32)
        return Config(
            quick=True,
            seed=seed,
            threads=threads,
            workers=workers,
            image_size=image_size or 32,
            max_samples=160,
            methods=tuple(m for m in ESTIMATORS if m != "exact"),
            analytic_inputs=1000,
            analytic_draws=(1, 4, 16, 64),
            analytic_repeats=10,
            analytic_var_epochs=(0, 1),
            toy_grid=24,
            animals=("bird", "cat", "cow", "dog", "horse", "sheep"),
            triples=3,
            clf_train_per_class=60,
            clf_test_per_class=60,
            fashion_groupings=("footwear", "tops", "bags", "10-way"),
            animal_tasks_in_domains=(("cat", "dog"), ("cow", "sheep"), ("bird", "horse")),
            digits_tasks=("3-vs-8", "4-vs-9", "odd-even"),
        )


# ================================================================================================
# small utilities
# ================================================================================================
WORKER_CPU = [0.0]  # CPU seconds spent by worker processes on jobs of this run


@contextlib.contextmanager
def stopwatch(record: dict) -> Iterator[None]:
    """Record wall time, CPU time (this process + the embedding jobs of worker processes) and the
    1-minute load average around a block."""
    load0 = os.getloadavg()[0]
    t0, c0, w0 = time.perf_counter(), time.process_time(), WORKER_CPU[0]
    try:
        yield
    finally:
        record["wall_s"] = round(time.perf_counter() - t0, 1)
        record["cpu_s"] = round(time.process_time() - c0 + WORKER_CPU[0] - w0, 1)
        record["load_avg_1min"] = [round(load0, 2), round(os.getloadavg()[0], 2)]


def spearman(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Spearman rho and its two-sided p-value (nan when a side is constant)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan"), float("nan")
    res = spearmanr(a, b)
    return float(res[0]), float(res[1])


def upper(m: np.ndarray) -> np.ndarray:
    return m[np.triu_indices(m.shape[0], 1)]


def l1(e: TaskEmbedding) -> float:
    """The norm the paper reads (Fig. 2 right): L1 of the data part, `TaskEmbedding.data_norm`."""
    return e.data_norm


def embed_all(tasks: Sequence[t2v.Task], embedders: dict[str, t2v.Task2Vec], desc: str) -> dict[str, list]:
    """Embed every task with every estimator (a tqdm bar over tasks; library bars off)."""
    out: dict[str, list] = {m: [] for m in embedders}
    for m, emb in embedders.items():
        for task in tqdm(tasks, desc=f"{desc} [{m}]", unit="task", leave=False):
            out[m].append(emb.embed(task))
    return out


def fig_path(fig_dir: Path, prefix: str, name: str) -> Path:
    return fig_dir / f"{prefix}{name}.png"


def nn_index(dist: np.ndarray) -> np.ndarray:
    d = np.array(dist, dtype=np.float64, copy=True)
    np.fill_diagonal(d, np.inf)
    return d.argmin(1)


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


# ================================================================================================
# real-image tasks shared by experiments 3-6, embedded in worker processes
# ================================================================================================
@dataclass
class RealTask:
    """A real-image task with what the experiments need to know about it."""

    name: str
    dataset: str  # offline dataset name
    mapping: dict[int, int]  # original class id -> task label
    task: t2v.Task
    classes: tuple[str, ...] = ()  # animal names (taxonomy)
    kind: str = ""  # pair / triple / grouping
    spec: tuple = ()  # how to rebuild the task (in a worker process)
    embeddings: dict[str, TaskEmbedding] = field(default_factory=dict)
    test_error: float = float("nan")


class RealData:
    """The offline datasets, the probe and the embedders, built once per run."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.probe = t2v.load_probe(cfg.probe, image_size=cfg.image_size)
        self.full = {
            name: t2v.load_task(load_offline(name, "train"), name=name)
            for name in ("animal-mnist", "fashion-mnist", "digits")
        }
        self.embedders = {
            m: t2v.Task2Vec(
                self.probe, method=m, max_samples=cfg.max_samples, seed=cfg.seed, device="cpu", progress=False,
                variational_epochs=cfg.variational_epochs, image_size=cfg.image_size,
            )  # fmt: skip
            for m in cfg.methods
        }
        self.tasks: dict[str, RealTask] = {}

    def label_id(self, dataset: str, name: str) -> int:
        return self.full[dataset].label_names.index(name)

    def subtask(self, dataset: str, classes: Sequence[str], kind: str, prefix: str) -> RealTask:
        name = f"{prefix}{'+'.join(classes)}"
        if name not in self.tasks:
            task = self.full[dataset].subtask(list(classes), name=name)
            mapping = {self.label_id(dataset, c): i for i, c in enumerate(classes)}
            spec = ("subtask", dataset, tuple(classes), kind, prefix)
            self.tasks[name] = RealTask(name, dataset, mapping, task, tuple(classes), kind, spec)
        return self.tasks[name]

    def fixed_images(self, dataset: str, per_class: int, seed: int) -> np.ndarray:
        """The same class-balanced set of images for every relabeling of one dataset (one domain)."""
        labels = self.full[dataset].labels
        rng = np.random.default_rng(seed)
        idx = [rng.choice(np.nonzero(labels == c)[0], per_class, replace=False) for c in np.unique(labels)]
        return np.sort(np.concatenate(idx))

    def relabeled(self, dataset: str, name: str, groups: list[list[str]], images: np.ndarray) -> RealTask:
        """A task on ``images`` whose labels are a grouping of the original classes (same domain)."""
        import datasets

        full = self.full[dataset]
        if len(groups) == 1:
            positive = {self.label_id(dataset, c) for c in groups[0]}
            mapping = {i: int(i in positive) for i in range(full.num_classes)}
            label_names = ["other", name]
        else:
            mapping = {self.label_id(dataset, c): g for g, grp in enumerate(groups) for c in grp}
            label_names = ["/".join(grp) for grp in groups]
        sub = full.dataset.select(images)
        new_labels = [mapping[int(v)] for v in full.labels[images]]
        sub = sub.add_column("task_label", new_labels, feature=datasets.ClassLabel(names=label_names))
        task = t2v.load_task(sub, input_column="image", label_column="task_label", name=f"{dataset}:{name}")
        spec = ("relabeled", dataset, name, tuple(tuple(g) for g in groups), tuple(int(i) for i in images))
        rt = RealTask(task.name, dataset, mapping, task, (), "grouping", spec)
        self.tasks[rt.name] = rt
        return rt

    def build(self, spec: tuple) -> RealTask:
        """Rebuild a task from its ``spec`` (what a worker process receives)."""
        if spec[0] == "subtask":
            return self.subtask(*spec[1:])
        _, dataset, name, groups, images = spec
        return self.relabeled(dataset, name, [list(g) for g in groups], np.asarray(images, dtype=np.int64))

    def embed(self, tasks: Sequence[RealTask], desc: str) -> None:
        """Embed ``tasks`` with every estimator, in ``cfg.workers`` processes when more than one."""
        todo = [t for t in tasks if not t.embeddings]
        if self.cfg.workers <= 1:
            embs = embed_all([t.task for t in todo], self.embedders, desc)
            for m in self.embedders:
                for t, e in zip(todo, embs[m], strict=True):
                    t.embeddings[m] = e
            return
        from concurrent.futures import as_completed

        cost = {"relative": 0, "variational": 0, "exact": 1, "montecarlo": 2}  # longest jobs first: balance
        jobs = sorted(((t, m) for t in todo for m in self.embedders), key=lambda j: cost.get(j[1], 3))
        futures = {self.pool().submit(_worker_embed, t.spec, m): (t, m) for t, m in jobs}
        for fut in tqdm(as_completed(futures), total=len(futures), desc=desc, unit="job", leave=False):
            t, m = futures[fut]
            data, cpu = fut.result()
            t.embeddings[m] = TaskEmbedding.from_bytes(data, source=f"worker: {t.name} {m}")
            WORKER_CPU[0] += cpu

    def pool(self):
        if getattr(self, "_pool", None) is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(
                self.cfg.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_init, initargs=(self.cfg,),
            )  # fmt: skip
        return self._pool

    def close(self) -> None:
        if getattr(self, "_pool", None) is not None:
            self._pool.shutdown()
            self._pool = None


_WORKER: dict = {}


def _worker_init(cfg: Config) -> None:
    """Set up a worker process: one thread, its own probe and datasets."""
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(cfg.threads)
    _WORKER["limits"] = threadpool_limits(cfg.threads)
    logging.getLogger("hf_task2vec").setLevel(logging.WARNING)
    import datasets

    datasets.disable_progress_bars()
    _WORKER["data"] = RealData(cfg)


def _worker_embed(spec: tuple, method: str) -> tuple[bytes, float]:
    """Embed one task with one estimator; returns the safetensors bytes and the CPU seconds used."""
    c0 = time.process_time()
    data: RealData = _WORKER["data"]
    task = data.build(spec)
    emb = data.embedders[method].embed(task.task)
    return emb.to_bytes(), time.process_time() - c0
