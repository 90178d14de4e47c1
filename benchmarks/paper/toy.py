"""2. Toy tasks on the unit square [Fig. 5].

64 binary k-means tasks (k in [3, 16]) embedded with 10 random ReLU features and with degree-3
polynomial features; t-SNE with task pictures; how the embedding norm and the nearest neighbours
follow the task complexity k.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

import hf_task2vec as t2v
from hf_task2vec import plots
from hf_task2vec.distance import distance_matrix

from .agreement import agreement
from .harness import ESTIMATORS, Config, embed_all, fig_path, l1, nn_index, spearman, upper

TOY_METHODS = ESTIMATORS  # the library default first; "exact" (summed over labels) is the reference


class ReLUFeatures(nn.Module):
    """10 random features ``max(0, a x + b y + c)``, a, b ~ U[-1/2, 1/2], c ~ U[-1, 1] (fixed)."""

    def __init__(self, n: int = 10, seed: int = 0) -> None:
        super().__init__()
        rng = np.random.default_rng(seed)
        self.linear = nn.Linear(2, n)
        with torch.no_grad():
            self.linear.weight.copy_(torch.as_tensor(rng.uniform(-0.5, 0.5, (n, 2))))
            self.linear.bias.copy_(torch.as_tensor(rng.uniform(-1.0, 1.0, n)))

    def forward(self, xy: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(xy))


class PolynomialFeatures(nn.Module):
    """The 9 monomials of degree 1..3 of the centred coordinates (2x-1, 2y-1), passed through a
    linear layer initialised to the identity: its rows are the probe's filters."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(9, 9, bias=False)
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(9))

    def forward(self, xy: torch.Tensor) -> torch.Tensor:
        a, b = 2 * xy[:, :1] - 1, 2 * xy[:, 1:2] - 1
        monomials = torch.cat([a, b, a * a, a * b, b * b, a**3, a * a * b, a * b * b, b**3], dim=1)
        return self.linear(monomials)


def make_toy_tasks(cfg: Config, seed: int) -> tuple[list[t2v.Task], np.ndarray, list[np.ndarray]]:
    """Binary tasks on a grid of the unit square: k-means into k clusters, half the clusters per class."""
    from sklearn.cluster import KMeans

    g = (np.arange(cfg.toy_grid) + 0.5) / cfg.toy_grid
    xy = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    rng = np.random.default_rng(seed)
    tasks, ks, pictures = [], [], []
    colours = np.array([[0.93, 0.62, 0.25], [0.18, 0.33, 0.62]])
    for i in range(cfg.toy_tasks):
        k = int(rng.integers(cfg.toy_k[0], cfg.toy_k[1] + 1))
        clusters = KMeans(k, n_init=4, random_state=int(rng.integers(2**31))).fit_predict(xy)
        side = np.zeros(k, dtype=np.int64)
        side[rng.permutation(k)[: k // 2]] = 1
        y = side[clusters]
        tasks.append(t2v.Task.from_tensors(torch.as_tensor(xy, dtype=torch.float32), y, name=f"toy{i:02d}-k{k}"))
        ks.append(k)
        pictures.append(colours[y.reshape(cfg.toy_grid, cfg.toy_grid)][::-1])  # row 0 = top = y near 1
    return tasks, np.asarray(ks), pictures


def exp_toy(cfg: Config, fig_dir: Path, prefix: str) -> dict:
    seed = cfg.seed + 2
    tasks, ks, pictures = make_toy_tasks(cfg, seed)
    probes = {
        "relu10": t2v.load_probe(ReLUFeatures(10, seed), name="relu10"),
        "poly3": t2v.load_probe(PolynomialFeatures(), name="poly3"),
    }
    res: dict = {
        "seed": seed,
        "tasks": len(tasks),
        "grid": f"{cfg.toy_grid}x{cfg.toy_grid}",
        "examples_per_task": cfg.toy_grid**2,
        "k": ks.tolist(),
        "probes": {},
    }
    rng = np.random.default_rng(seed)
    random_dk = float(np.abs(ks[:, None] - ks[None, :]).sum() / (len(ks) * (len(ks) - 1)))
    embs_by_probe = {}
    for pname, probe in probes.items():
        embedders = {
            m: t2v.Task2Vec(probe, method=m, max_samples=None, seed=seed, device="cpu", progress=False)
            for m in TOY_METHODS
        }
        embs = embed_all(tasks, embedders, f"toy {pname}")
        embs_by_probe[pname] = embs
        pres: dict = {"filters": probe.dim}
        for m in TOY_METHODS:
            norms = np.array([l1(e) for e in embs[m]])
            acc = np.array([float(e.meta["head_train_accuracy"]) for e in embs[m]])
            dist = distance_matrix(embs[m])
            nn_dk = float(np.abs(ks - ks[nn_index(dist)]).mean())
            # permutation test: is the neighbour's k closer than for random labellings of k?
            perm = np.array([np.abs(p - p[nn_index(dist)]).mean() for p in (rng.permutation(ks) for _ in range(999))])
            rho, pval = spearman(norms, ks)
            pres[m] = {
                "norm_vs_k_spearman": rho,
                "norm_vs_k_p": pval,
                "nn_mean_abs_dk": nn_dk,
                "random_mean_abs_dk": random_dk,
                "nn_dk_permutation_p": float((1 + (perm <= nn_dk).sum()) / (1 + len(perm))),
                "train_accuracy_vs_k_spearman": spearman(acc, ks)[0],
                "norm_vs_train_accuracy_spearman": spearman(norms, acc)[0],
                "distance_vs_abs_dk_spearman": spearman(upper(dist), upper(np.abs(ks[:, None] - ks[None, :])))[0],
            }
        pres["agreement"] = agreement(embs)
        res["probes"][pname] = pres
    # figures: t-SNE with the task pictures, frames coloured by k; norm vs k
    plt = plots._pyplot()
    fig, axes = plt.subplots(2, len(TOY_METHODS), figsize=(7.2 * len(TOY_METHODS), 13))
    for row, pname in enumerate(probes):
        for col, m in enumerate(TOY_METHODS):
            coords = plots.tsne_coordinates(distance_matrix(embs_by_probe[pname][m]), seed=seed)
            plots.task_map(
                coords,
                values=ks,
                value_label="k (clusters)",
                images=pictures,
                image_zoom=0.75 * 32 / cfg.toy_grid,
                title=f"{pname} probe, {m}: t-SNE of d_sym",
                ax=axes[row, col],
                cmap="plasma",
            )
    res["figure_tsne"] = str(plots.save_figure(fig, fig_path(fig_dir, prefix, "toy_tsne")))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.3))
    for ax, pname in zip(axes, probes, strict=True):
        for i, (m, marker) in enumerate(zip(TOY_METHODS, "ox+^", strict=False)):
            norms = [l1(e) for e in embs_by_probe[pname][m]]
            rho = res["probes"][pname][m]["norm_vs_k_spearman"]
            offset = 0.15 * (i - (len(TOY_METHODS) - 1) / 2)
            ax.scatter(ks + offset, norms, marker=marker, s=18, label=f"{m} (rho {rho:.2f})")
        ax.set_yscale("log")
        ax.set_xlabel("task complexity k (clusters)")
        ax.set_ylabel("embedding L1 norm (data part)")
        ax.set_title(f"{pname} probe", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    res["figure_norm"] = str(plots.save_figure(fig, fig_path(fig_dir, prefix, "toy_norm_vs_k")))
    return res
