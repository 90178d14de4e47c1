"""3. Taxonomy [Fig. 2 centre].

Animal-MNIST class pairs and triples against the real biological taxonomy of its ten animals
(``TAXONOMY``, ``tree_distance``): the mean taxonomic distance of the k nearest tasks under d_sym
(``knn_curve``), against random order and the taxonomic optimum.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from hf_task2vec import plots
from hf_task2vec.distance import distance_matrix, taxonomic_distance

from .agreement import agreement
from .harness import Config, RealData, RealTask, fig_path, nn_index, spearman, upper

# The biological taxonomy of Animal-MNIST's ten animals: (class, order, family).
TAXONOMY: dict[str, tuple[str, str | None, str | None]] = {
    "bear": ("Mammalia", "Carnivora", "Ursidae"),
    "cat": ("Mammalia", "Carnivora", "Felidae"),
    "dog": ("Mammalia", "Carnivora", "Canidae"),
    "cow": ("Mammalia", "Artiodactyla", "Bovidae"),
    "sheep": ("Mammalia", "Artiodactyla", "Bovidae"),
    "giraffe": ("Mammalia", "Artiodactyla", "Giraffidae"),
    "horse": ("Mammalia", "Perissodactyla", "Equidae"),
    "zebra": ("Mammalia", "Perissodactyla", "Equidae"),
    "elephant": ("Mammalia", "Proboscidea", "Elephantidae"),
    "bird": ("Aves", None, None),
}


def tree_distance(a: str, b: str) -> int:
    """Levels from two animals up to their lowest common ancestor in the taxonomy tree
    (0 same species, 1 same family, 2 same order, 3 same class, 4 only the root): half the
    path length in the tree with every leaf at depth 4 (bird's order/family are not split)."""
    if a == b:
        return 0
    shared = 0
    for ra, rb in zip(TAXONOMY[a], TAXONOMY[b], strict=True):
        if ra is None or ra != rb:
            break
        shared += 1
    return 4 - shared


def taxonomy_tasks(data: RealData, cfg: Config) -> list[RealTask]:
    pairs = [data.subtask("animal-mnist", c, "pair", "") for c in itertools.combinations(cfg.animals, 2)]
    rng = np.random.default_rng(cfg.seed + 3)
    all_triples = list(itertools.combinations(cfg.animals, 3))
    chosen = rng.choice(len(all_triples), size=min(cfg.triples, len(all_triples)), replace=False)
    triples = [data.subtask("animal-mnist", all_triples[i], "triple", "") for i in sorted(chosen)]
    return pairs + triples


def knn_curve(dist: np.ndarray, target: np.ndarray, allowed: np.ndarray | None = None) -> np.ndarray:
    """Mean over tasks of the mean ``target`` distance of its k nearest tasks under ``dist``.

    ``allowed[i, j]`` (default: every ``j != i``) restricts the candidate neighbours of task i; the
    curve runs for k = 1 .. the smallest number of candidates of any task."""
    n = dist.shape[0]
    allowed = ~np.eye(n, dtype=bool) if allowed is None else allowed & ~np.eye(n, dtype=bool)
    kmax = int(allowed.sum(1).min())
    curves = np.zeros((n, kmax))
    for i in range(n):
        others = np.nonzero(allowed[i])[0]
        order = others[np.lexsort((others, dist[i, others]))]  # ties broken by index: deterministic
        curves[i] = (np.cumsum(target[i, order]) / np.arange(1, len(order) + 1))[:kmax]
    return curves.mean(0)


def exp_taxonomy(cfg: Config, data: RealData, tasks: list[RealTask], fig_dir: Path, prefix: str) -> dict:
    data.embed(tasks, "taxonomy")
    n = len(tasks)
    dtax = np.array(
        [[taxonomic_distance(a.classes, b.classes, tree_distance) for b in tasks] for a in tasks], dtype=np.float64
    )
    offdiag = ~np.eye(n, dtype=bool)
    random_level = float(dtax[offdiag].mean())
    optimum = knn_curve(dtax, dtax)
    res: dict = {
        "seed": cfg.seed + 3,
        "tasks": n,
        "pairs": sum(t.kind == "pair" for t in tasks),
        "triples": sum(t.kind == "triple" for t in tasks),
        "animals": list(cfg.animals),
        "examples_per_task": cfg.max_samples,
        "random_mean_dtax": random_level,
        "optimum_curve": optimum.tolist(),
        "methods": {},
    }
    curves = {}
    disjoint = np.array([[not set(a.classes) & set(b.classes) for b in tasks] for a in tasks])
    disjoint_random = float(dtax[disjoint].mean())
    disjoint_optimum = knn_curve(dtax, dtax, disjoint)
    res["disjoint"] = {
        "note": "neighbours restricted to tasks sharing no class with the task (D_tax > 0 for all of them)",
        "random_mean_dtax": disjoint_random,
        "optimum_curve": disjoint_optimum.tolist(),
    }
    for m in cfg.methods:
        embs = [t.embeddings[m] for t in tasks]
        dist = distance_matrix(embs)
        curve = knn_curve(dist, dtax)
        curves[m] = curve
        dcurve = knn_curve(dist, dtax, disjoint)
        res["disjoint"][m] = {
            "curve": dcurve.tolist(),
            "curve_at": {str(k): float(dcurve[k - 1]) for k in (1, 3, 5) if k <= len(dcurve)},
            "dsym_vs_dtax_spearman": spearman(dist[np.triu(disjoint, 1)], dtax[np.triu(disjoint, 1)])[0],
        }
        ks = [k for k in (1, 3, 5, 10) if k <= n - 1]
        res["methods"][m] = {
            "curve": curve.tolist(),
            "curve_at": {str(k): float(curve[k - 1]) for k in ks},
            "optimum_at": {str(k): float(optimum[k - 1]) for k in ks},
            "below_random_up_to_k": int(np.argmax(curve >= random_level)) if (curve >= random_level).any() else n - 1,
            "dsym_vs_dtax_spearman": spearman(upper(dist), upper(dtax))[0],
            "nn_shares_class_fraction": float(np.mean([dtax[i, j] == 0 for i, j in enumerate(nn_index(dist))])),
        }
    res["agreement"] = agreement({m: [t.embeddings[m] for t in tasks] for m in cfg.methods})
    fig, axes = plots._pyplot().subplots(1, 2, figsize=(13, 4.8))
    plots.line_plot(
        np.arange(1, n),
        {
            **{f"Task2Vec d_sym ({m})": curves[m] for m in cfg.methods},
            "random order": np.full(n - 1, random_level),
            "taxonomic optimum": optimum,
        },
        styles={"random order": "k--", "taxonomic optimum": "g:"},
        logx=True,
        xlabel="k (nearest tasks)",
        ylabel="mean taxonomic distance of the k nearest tasks",
        title=f"Animal-MNIST: {res['pairs']} pairs + {res['triples']} triples (D_tax: 0 shared class .. 4 root)",
        ax=axes[0],
    )
    kd = len(disjoint_optimum)
    plots.line_plot(
        np.arange(1, kd + 1),
        {
            **{f"Task2Vec d_sym ({m})": res["disjoint"][m]["curve"] for m in cfg.methods},
            "random order": np.full(kd, disjoint_random),
            "taxonomic optimum": disjoint_optimum,
        },
        styles={"random order": "k--", "taxonomic optimum": "g:"},
        logx=True,
        xlabel="k (nearest tasks sharing no class)",
        ylabel="mean taxonomic distance of the k nearest tasks",
        title="only neighbours that share no class with the task",
        ax=axes[1],
    )
    res["figure"] = str(plots.save_figure(fig, fig_path(fig_dir, prefix, "taxonomy_curve")))
    return res
