"""How far the Fisher estimators agree (relative, the library default; montecarlo; variational, the
paper's fixed prior; exact, the reference), measured in experiments 1-5.

Spearman of the embedding values, of the distance matrices and of the norms (the data part,
``harness.l1``) for every pair of estimators, and how much of each robust embedding (relative,
variational) is its prior. The report's table of these numbers is ``report.agreement_rows``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from hf_task2vec.distance import distance_matrix
from hf_task2vec.embedding import TaskEmbedding
from hf_task2vec.task2vec import ROBUST_METHODS

from .harness import l1, spearman, upper


def agreement_pair(first: Sequence[TaskEmbedding], second: Sequence[TaskEmbedding]) -> dict:
    """How much two estimators agree: Spearman of the embedding values (per task), of the symmetric
    distance matrices (upper triangles) and of the L1 norms."""
    per_task = [spearman(a.values, b.values)[0] for a, b in zip(first, second, strict=True)]
    out = {
        "values_spearman_median": float(np.nanmedian(per_task)),
        "values_spearman_min": float(np.nanmin(per_task)),
        "norm_spearman": spearman([l1(e) for e in first], [l1(e) for e in second])[0],
        "distance_spearman": float("nan"),
    }
    if len(first) > 2:
        out["distance_spearman"] = spearman(upper(distance_matrix(first)), upper(distance_matrix(second)))[0]
    return out


def prior_share(embs: Sequence[TaskEmbedding]) -> dict:
    """How much of robust embeddings (relative, variational) is their prior (the trivial embedding)."""
    share = [float(e.trivial.astype(np.float64).sum() / e.values.astype(np.float64).sum()) for e in embs]
    above = [float(np.mean(e.values > 2 * e.trivial)) for e in embs]
    return {"trivial_share_of_l1_median": float(np.median(share)),
            "filters_above_2x_prior_median": float(np.median(above))}  # fmt: skip


def agreement(embs: dict[str, Sequence[TaskEmbedding]]) -> dict:
    """Agreement of every pair of estimators in ``embs`` (keys like ``montecarlo_vs_variational``)."""
    out: dict = {}
    for a, b in itertools.combinations(list(embs), 2):
        out[f"{a}_vs_{b}"] = agreement_pair(embs[a], embs[b])
    for m in ROBUST_METHODS:
        if m in embs:
            out[f"{m}_prior"] = prior_share(embs[m])
    if "variational" in embs and "exact" in embs:
        minus = [spearman(e.values - e.trivial, x.values)[0] for e, x in zip(embs["variational"], embs["exact"],
                                                                            strict=True)]
        out["variational_minus_prior_vs_exact_values_spearman_median"] = float(np.nanmedian(minus))
    return out
