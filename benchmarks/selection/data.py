"""The images, the target tasks and the ground truth: preprocessed pools of the offline datasets (``Pool``),
source-task examples, the held-out targets (``TargetSpec``, ``make_targets``, ``split_target``), the ground-truth
error of a linear classifier on an expert's features, and the cached Task2Vec embedding of a task."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import hf_task2vec as t2v
from hf_task2vec.data import load_offline

from .config import DATASETS, Config, SourceSpec


# -- data ---------------------------------------------------------------------------------------------
@dataclass
class Pool:
    """Preprocessed images of one dataset split: x01 [N, 1, S, S] in [0, 1] (grey), labels [N] (dataset ids)."""

    x01: torch.Tensor
    labels: np.ndarray
    names: list[str]


def _pixel_transform(image_size: int):
    """The probe's eval transform without its normalisation (all offline probes share resize/crop)."""
    from torchvision import transforms as T

    probe = t2v.load_probe("embedded", image_size=image_size)
    composed = probe.transform()
    steps = list(composed.transforms)
    if type(steps[-1]).__name__ != "Normalize":
        raise RuntimeError(f"unexpected probe transform {composed}")
    return T.Compose(steps[:-1])


def load_pool(dataset: str, split: str, per_class: int | None, image_size: int, seed: int = 0) -> Pool:
    ds = load_offline(DATASETS[dataset], split)
    names = list(ds.features["label"].names)
    labels = np.asarray(ds["label"], dtype=np.int64)
    rng = np.random.default_rng(seed)
    idx = []
    for c in range(len(names)):
        members = np.nonzero(labels == c)[0]
        if per_class is not None and members.size > per_class:
            members = np.sort(rng.choice(members, per_class, replace=False))
        idx.append(members)
    chosen = np.sort(np.concatenate(idx))
    transform = _pixel_transform(image_size)
    images = ds.select(chosen.tolist())["image"]
    x = torch.stack([transform(t2v.tasks.to_rgb(img))[:1] for img in images])
    return Pool(x, labels[chosen], names)


def normalise(x01: torch.Tensor, probe: t2v.Probe) -> torch.Tensor:
    mean = torch.tensor(probe.data_config["mean"], dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(probe.data_config["std"], dtype=torch.float32).view(1, 3, 1, 1)
    return (x01.expand(-1, 3, -1, -1) - mean) / std


def source_examples(spec: SourceSpec, pool: Pool) -> tuple[np.ndarray, np.ndarray]:
    """Indices into the pool and group labels of a source task."""
    idx, y = [], []
    for g, (_, classes) in enumerate(spec.groups):
        for c in classes:
            members = np.nonzero(pool.labels == pool.names.index(c))[0]
            idx.append(members)
            y.append(np.full(members.size, g))
    order = np.argsort(np.concatenate(idx), kind="stable")
    return np.concatenate(idx)[order], np.concatenate(y)[order]


# -- targets ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TargetSpec:
    name: str
    dataset: str
    classes: tuple[str, ...]
    per_class_train: int


def make_targets(cfg: Config, pools: dict[str, Pool]) -> list[TargetSpec]:
    rng = np.random.default_rng(1234)
    out: list[TargetSpec] = []
    for ds, pool in pools.items():
        seen: set[tuple[str, ...]] = set()
        counts = np.bincount(pool.labels, minlength=len(pool.names))
        while sum(t.dataset == ds for t in out) < cfg.targets_per_dataset:
            k = int(rng.integers(2, 6))
            classes = tuple(pool.names[i] for i in sorted(rng.choice(len(pool.names), k, replace=False)))
            if classes in seen:
                continue
            seen.add(classes)
            available = int(min(counts[pool.names.index(c)] for c in classes))
            per_class = int(rng.choice(cfg.per_class_train))
            per_class = min(per_class, available - 16)  # keep >= 16 test examples per class
            short = "/".join(c.replace("T-shirt/top", "T-shirt") for c in classes)
            out.append(TargetSpec(f"{ds}:{short} n={per_class * k}", ds, classes, per_class))
    return out


def split_target(t: TargetSpec, pool: Pool, cfg: Config, seed: int, index: int):
    rng = np.random.default_rng(10_000 * seed + index)
    tr, te, ytr, yte = [], [], [], []
    for k, c in enumerate(t.classes):
        members = rng.permutation(np.nonzero(pool.labels == pool.names.index(c))[0])
        tr.append(members[: t.per_class_train])
        te.append(members[t.per_class_train :][: cfg.max_test_per_class])
        ytr.append(np.full(len(tr[-1]), k))
        yte.append(np.full(len(te[-1]), k))
    return np.concatenate(tr), np.concatenate(ytr), np.concatenate(te), np.concatenate(yte)


def row_space(f: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """``f`` (and ``others``) in an orthonormal basis ``V`` of the row space of ``f`` (``[N, r]``, ``r <= N``).

    Used where it changes nothing but the cost (N is 20-500, D = 1280): an L2-regularised linear
    classifier's weights lie in the span of its training rows (representer theorem), and the H-score's
    between-class covariance lies in the span of the centred rows, so both give the same numbers on
    ``f V`` as on ``f`` (checked at run time for the H-score)."""
    _, sv, vt = np.linalg.svd(f, full_matrices=False)
    basis = vt[: int((sv > sv[0] * 1e-9).sum())].T
    return [x @ basis for x in (f, *others)]


def linear_probe_error(f_tr: np.ndarray, y_tr: np.ndarray, f_te: np.ndarray, y_te: np.ndarray) -> float:
    """Ground truth: test error of a linear classifier on standardised frozen features: class-balanced
    logistic regression with L2 weight ``1/N`` (sklearn's C=1), full-batch L-BFGS (`hf_task2vec.head`)."""
    from hf_task2vec.head import fit_linear_head

    mu, sd = f_tr.mean(0), f_tr.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    z_tr, z_te = row_space((f_tr - mu) / sd, (f_te - mu) / sd)
    k = int(y_tr.max()) + 1
    w, b, _ = fit_linear_head(torch.from_numpy(z_tr), torch.from_numpy(y_tr), k, l2=1.0 / len(y_tr), max_iter=300)
    pred = (torch.from_numpy(z_te) @ w.T + b).argmax(1).numpy()
    return float((pred != y_te).mean())


# -- embeddings ---------------------------------------------------------------------------------------
def load_bench_probe(name: str, cfg: Config) -> t2v.Probe:
    if name.endswith("-random-init"):
        torch.manual_seed(0)  # the same random network in every run
        return t2v.load_probe(name[: -len("-random-init")], pretrained=False, image_size=cfg.image_size)
    return t2v.load_probe(name, image_size=cfg.image_size)


def embed_cached(
    embedder: t2v.Task2Vec, x01: torch.Tensor, y: np.ndarray, label_names: list[str], name: str, source: str, path: Path
) -> tuple[t2v.TaskEmbedding, float]:
    """Embed a task given as preprocessed pixels (cached; the measured seconds are kept in the metadata)."""
    if path.is_file():
        emb = t2v.TaskEmbedding.load(path)
        return emb, float(emb.meta.get("bench_seconds", "nan"))
    task = t2v.Task.from_tensors(normalise(x01, embedder.probe), y, name=name, label_names=label_names)
    start = time.perf_counter()
    emb = embedder.embed(task)
    seconds = time.perf_counter() - start
    emb.meta.update(task_source=source, bench_seconds=f"{seconds:.4f}")
    emb.save(path)
    return emb, seconds
