"""4. Difficulty [Fig. 2 right].

The embedding L1 norm (its data part, ``harness.l1``) of every estimator against the held-out error
of a linear classifier on the probe's features, over the real-image tasks of experiments 3 and 5.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import hf_task2vec as t2v
from hf_task2vec import plots
from hf_task2vec.data import load_offline

from .agreement import agreement
from .harness import Config, RealData, RealTask, fig_path, l1, spearman


def feature_pools(cfg: Config, data: RealData, datasets_used: set[str]) -> dict:
    """Probe features of a class-balanced train sample and test sample of every dataset (computed
    once per run; the linear classifiers of all sub-tasks of a dataset read them)."""
    feats = data.embedders[cfg.methods[0]]  # probe features: the same for every estimator
    pools = {}
    for name in sorted(datasets_used):
        pool = {}
        for split, per_class in (("train", cfg.clf_train_per_class), ("test", cfg.clf_test_per_class)):
            task = data.full[name] if split == "train" else t2v.load_task(load_offline(name, split), name=name)
            rng = np.random.default_rng(cfg.seed + 4)
            members = [np.nonzero(task.labels == c)[0] for c in range(task.num_classes)]
            idx = np.sort(np.concatenate([rng.choice(m, min(per_class, len(m)), replace=False) for m in members]))
            x = feats.features(task, idx).double().numpy()
            pool[split] = (x, task.labels[idx])
        pools[name] = pool
    return pools


def test_error(cfg: Config, pools: dict, rt: RealTask) -> float:
    """Balanced held-out error of a logistic-regression classifier on the probe's features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def rows(split: str) -> tuple[np.ndarray, np.ndarray]:
        x, y = pools[rt.dataset][split]
        keep = np.array([int(v) in rt.mapping for v in y])
        return x[keep], np.array([rt.mapping[int(v)] for v in y[keep]])

    xtr, ytr = rows("train")
    xte, yte = rows("test")
    clf = make_pipeline(
        StandardScaler(), LogisticRegression(C=cfg.clf_C, max_iter=3000, class_weight="balanced")
    ).fit(xtr, ytr)
    return float(1.0 - balanced_accuracy_score(yte, clf.predict(xte)))


def exp_difficulty(cfg: Config, data: RealData, tasks: list[RealTask], fig_dir: Path, prefix: str) -> dict:
    data.embed(tasks, "difficulty")
    pools = feature_pools(cfg, data, {t.dataset for t in tasks})
    for t in tasks:
        t.test_error = test_error(cfg, pools, t)
    errors = np.array([t.test_error for t in tasks])
    res: dict = {
        "seed": cfg.seed + 4,
        "tasks": len(tasks),
        "classifier": f"StandardScaler + LogisticRegression(C={cfg.clf_C}, class_weight=balanced) on pooled probe "
        f"features; {cfg.clf_train_per_class} train / {cfg.clf_test_per_class} test images per class "
        "(test images from the held-out test split); balanced error",
        "test_error": {t.name: t.test_error for t in tasks},
        "methods": {},
    }
    plt = plots._pyplot()
    fig, axes = plt.subplots(1, len(cfg.methods), figsize=(6.5 * len(cfg.methods), 4.8))
    for ax, m in zip(axes, cfg.methods, strict=True):
        norms = np.array([l1(t.embeddings[m]) for t in tasks])
        rho, p = spearman(norms, errors)
        within = {}
        for kind in sorted({t.kind for t in tasks}):
            sel = np.array([t.kind == kind for t in tasks])
            if sel.sum() > 3:
                within[kind] = spearman(norms[sel], errors[sel])[0]
        res["methods"][m] = {
            "norm_vs_error_spearman": rho,
            "p_value": p,
            "spearman_within_kind": within,
            "norms": {t.name: float(nv) for t, nv in zip(tasks, norms, strict=True)},
        }
        groups = [f"{t.dataset} {t.kind}" for t in tasks]
        plots.norm_vs_error(norms, errors, groups=groups, title=f"{m} estimator", ax=ax)
    res["figure"] = str(plots.save_figure(fig, fig_path(fig_dir, prefix, "norm_vs_error")))
    res["agreement"] = agreement({m: [t.embeddings[m] for t in tasks] for m in cfg.methods})
    return res
