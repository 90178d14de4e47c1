"""6. Clustered similarity matrix [Fig. 2 left]: hierarchical clustering of d_sym and its purity.

Heatmaps with dendrogram over the tasks of experiments 3 and 5; dendrogram purity
(``dendrogram_purity``, Heller & Ghahramani 2005) against random relabelings of the same tree
(``purity_test``), the adjusted Rand index of a cut, and the cophenetic distance against D_tax.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hf_task2vec import plots
from hf_task2vec.distance import distance_matrix, taxonomic_distance
from hf_task2vec.task2vec import DEFAULT_METHOD

from .harness import Config, RealTask, fig_path, spearman, upper
from .taxonomy import tree_distance


def dendrogram_purity(z: np.ndarray, labels: Sequence[str]) -> float:
    """Dendrogram purity (Heller & Ghahramani, 2005): over all pairs of leaves with the same label,
    the mean fraction of leaves with that label in the smallest subtree holding both (1 = perfect)."""
    from scipy.cluster.hierarchy import to_tree

    labels = np.asarray(labels)
    root = to_tree(z)
    lca_purity: dict[tuple[int, int], float] = {}

    def walk(node) -> list[int]:
        if node.is_leaf():
            return [node.id]
        left, right = walk(node.left), walk(node.right)
        members = labels[left + right]
        for i in left:
            for j in right:
                if labels[i] == labels[j]:
                    lca_purity[(i, j)] = float(np.mean(members == labels[i]))
        return left + right

    walk(root)
    return float(np.mean(list(lca_purity.values()))) if lca_purity else float("nan")


def purity_test(z: np.ndarray, labels: Sequence[str], seed: int, permutations: int = 999) -> dict:
    """Dendrogram purity of ``labels`` against random relabelings of the same tree."""
    rng = np.random.default_rng(seed)
    observed = dendrogram_purity(z, labels)
    null = np.array([dendrogram_purity(z, rng.permutation(np.asarray(labels))) for _ in range(permutations)])
    return {
        "purity": observed,
        "random_purity_mean": float(null.mean()),
        "p_value": float((1 + (null >= observed).sum()) / (1 + permutations)),
    }


def exp_heatmaps(
    cfg: Config, tax_tasks: list[RealTask], dom: dict, dom_tasks: list[RealTask], fig_dir: Path, prefix: str
) -> dict:
    from scipy.cluster.hierarchy import cophenet, fcluster
    from sklearn.metrics import adjusted_rand_score

    res: dict = {"methods": {}}
    dsets = [t.dataset for t in dom_tasks]
    pairs = [t for t in tax_tasks if t.kind == "pair"]
    dtax = np.array([[taxonomic_distance(a.classes, b.classes, tree_distance) for b in pairs] for a in pairs])
    level = {1: "same family", 2: "same order", 3: "same class", 4: "bird + mammal"}
    pair_groups = [level[tree_distance(*t.classes)] for t in pairs]
    for m in cfg.methods:
        d_dom = dom["_dists"][m]
        _, z = plots.cluster_order(d_dom)
        labels = fcluster(z, t=len(set(dsets)), criterion="maxclust")
        d_pairs = distance_matrix([t.embeddings[m] for t in pairs])
        _, zp = plots.cluster_order(d_pairs)
        res["methods"][m] = {
            "domains_cluster_ari_vs_dataset": float(adjusted_rand_score(dsets, labels)),
            "domains_dendrogram_purity": purity_test(z, dsets, cfg.seed + 6),
            "pairs_cophenetic_vs_dtax_spearman": spearman(cophenet(zp), upper(dtax))[0],
        }
        if m == DEFAULT_METHOD:  # the figures: the library default
            plots.distance_heatmap(
                d_dom, dom["_names"], fig_path(fig_dir, prefix, "heatmap_domains"), groups=dsets,
                title=f"Task2Vec d_sym ({m}): Fashion-MNIST relabelings, Animal-MNIST and digits tasks",
            )  # fmt: skip
            plots.distance_heatmap(
                d_pairs, [t.name for t in pairs], fig_path(fig_dir, prefix, "heatmap_taxonomy"), groups=pair_groups,
                title=f"Task2Vec d_sym ({m}): Animal-MNIST class pairs (colour: taxonomic level of the pair)",
            )  # fmt: skip
    res["figures"] = [str(fig_path(fig_dir, prefix, n)) for n in ("heatmap_domains", "heatmap_taxonomy")]
    res["domains_clusters"] = len(set(dsets))
    return res
