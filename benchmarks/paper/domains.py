"""5. Task vs domain embedding [Fig. 1].

Relabelings of the *same* Fashion-MNIST images (``FASHION_GROUPS``), mixed with Animal-MNIST and
digits tasks: the task embedding (d_sym) against the domain embedding (cosine).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

import hf_task2vec as t2v
from hf_task2vec import plots
from hf_task2vec.distance import distance_matrix
from hf_task2vec.task2vec import DEFAULT_METHOD

from .agreement import agreement
from .harness import Config, RealData, RealTask, fig_path, nn_index

FASHION_GROUPS: dict[str, list[list[str]]] = {
    # name -> classes of label 1 (binary "x vs not") or a list of groups (multi-class)
    "footwear": [["Sandal", "Sneaker", "Ankle boot"]],
    "tops": [["T-shirt/top", "Pullover", "Coat", "Shirt"]],
    "bags": [["Bag"]],
    "trousers": [["Trouser"]],
    "dresses": [["Dress"]],
    "warm": [["Pullover", "Coat"]],
    "4-way": [["T-shirt/top", "Pullover", "Coat", "Shirt"], ["Trouser", "Dress"], ["Sandal", "Sneaker", "Ankle boot"],
              ["Bag"]],  # fmt: skip
    "10-way": [[c] for c in ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                             "Bag", "Ankle boot"]],  # fmt: skip
}


def domain_tasks(data: RealData, cfg: Config) -> list[RealTask]:
    per_class = cfg.max_samples // 10
    fashion_imgs = data.fixed_images("fashion-mnist", per_class, cfg.seed + 5)
    fashion = [data.relabeled("fashion-mnist", g, FASHION_GROUPS[g], fashion_imgs) for g in cfg.fashion_groupings]
    animals = [data.subtask("animal-mnist", c, "pair", "") for c in cfg.animal_tasks_in_domains]
    digits_imgs = data.fixed_images("digits", per_class, cfg.seed + 6)
    digits = []
    for spec in cfg.digits_tasks:
        if spec == "odd-even":
            digits.append(data.relabeled("digits", "odd", [["1", "3", "5", "7", "9"]], digits_imgs))
        elif spec == "small-large":
            digits.append(data.relabeled("digits", "small", [["0", "1", "2", "3", "4"]], digits_imgs))
        else:
            a, b = spec.split("-vs-")
            digits.append(data.subtask("digits", [a, b], "pair", "digits:"))
    return fashion + animals + digits


def separation(dist: np.ndarray, datasets_: list[str], same_domain: str) -> dict:
    """Within-domain vs between-dataset distances and dataset purity of nearest neighbours."""
    ds = np.array(datasets_)
    n = len(ds)
    iu = np.triu_indices(n, 1)
    within = [dist[i, j] for i, j in zip(*iu, strict=True) if ds[i] == ds[j] == same_domain]
    between = [dist[i, j] for i, j in zip(*iu, strict=True) if (ds[i] == same_domain) != (ds[j] == same_domain)]
    nn = nn_index(dist)
    return {
        "within_same_domain_mean": float(np.mean(within)),
        "between_datasets_mean": float(np.mean(between)),
        "within_over_between": float(np.mean(within) / np.mean(between)),
        "dataset_nn_purity": float(np.mean(ds[nn] == ds)),
        "same_domain_pairs_at_zero": int(np.sum(np.asarray(within) < 1e-9)),
        "same_domain_pairs": len(within),
    }


def merge_identical(dist: np.ndarray, names: list[str], tol: float = 1e-9) -> tuple[list[int], list[str]]:
    """Indices of one representative per group of tasks at distance <= ``tol`` from each other and a
    label per group, so that a map shows identical embeddings as one point (t-SNE would spread them)."""
    group_of = [-1] * len(names)
    keep: list[int] = []
    labels: list[str] = []
    for i in range(len(names)):
        if group_of[i] >= 0:
            continue
        same = [j for j in range(len(names)) if group_of[j] < 0 and dist[i, j] <= tol]
        for j in same:
            group_of[j] = len(keep)
        keep.append(i)
        if len(same) == 1:
            labels.append(names[i])
        else:
            parts = [names[j] for j in same]
            lines = [", ".join(parts[k : k + 3]) for k in range(0, len(parts), 3)]
            labels.append(f"{len(same)} identical:\n" + ",\n".join(lines))
    return keep, labels


def exp_domains(cfg: Config, data: RealData, tasks: list[RealTask], fig_dir: Path, prefix: str) -> dict:
    data.embed(tasks, "task vs domain")
    domain = [
        t2v.domain_embedding(t.task, data.probe, max_samples=cfg.max_samples, seed=cfg.seed, device="cpu",
                             progress=False, image_size=cfg.image_size)  # fmt: skip
        for t in tqdm(tasks, desc="domain embeddings", leave=False)
    ]
    names = [t.name.replace("fashion-mnist:", "F:").replace("digits:", "D:") for t in tasks]
    dsets = [t.dataset for t in tasks]
    dists = {m: distance_matrix([t.embeddings[m] for t in tasks]) for m in cfg.methods}
    dists["domain"] = distance_matrix(domain, kind="cosine")
    res: dict = {
        "seed": cfg.seed + 5,
        "tasks": len(tasks),
        "task_names": [t.name for t in tasks],
        "fashion_images": cfg.max_samples // 10 * 10,
        "examples_per_task": cfg.max_samples,
        "separation": {k: separation(d, dsets, "fashion-mnist") for k, d in dists.items()},
    }
    res["agreement"] = agreement({m: [t.embeddings[m] for t in tasks] for m in cfg.methods})
    plt = plots._pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(15, 6.5))
    perplexity = 4.0
    for ax, (key, title) in zip(
        axes,
        (
            (DEFAULT_METHOD, f"task embedding (Task2Vec {DEFAULT_METHOD}, d_sym)"),
            ("domain", "domain embedding (mean activations, cosine)"),
        ),
        strict=True,
    ):
        keep, labels = merge_identical(dists[key], names)
        coords = plots.tsne_coordinates(dists[key][np.ix_(keep, keep)], perplexity=perplexity, seed=cfg.seed)
        if len(keep) < len(names):
            title += f"\n{len(names)} tasks, {len(keep)} distinct points"
        plots.task_map(coords, labels=labels, groups=[dsets[i] for i in keep], title=title, ax=ax)
    res["figure"] = str(plots.save_figure(fig, fig_path(fig_dir, prefix, "task_vs_domain")))
    res["_dists"] = dists  # used by experiment 6, dropped from the JSON
    res["_names"] = names
    return res
