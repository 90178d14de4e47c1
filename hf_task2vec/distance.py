"""Distances between task embeddings, exactly as in the paper (DESIGN.md).

* symmetric: ``d_sym(Fa, Fb) = d_cos(Fa / (Fa + Fb), Fb / (Fa + Fb))`` with element-wise division;
  a filter where both Fisher values are 0 contributes 1/2 to both normalised vectors.
* asymmetric: ``d_asym(a -> b) = d_sym(a, b) - alpha * d_sym(a, a.trivial)``, ``a`` the source
  (the expert's task) and ``b`` the target; it favours sources that are more complex.
* cosine: plain cosine distance of the raw values (a baseline, and for domain embeddings).
* taxonomic: ``D_tax`` - the minimum over class pairs of a distance between classes.

`distance_matrix` is vectorised in blocks (no python loop over pairs).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Literal

import numpy as np
import torch

from .embedding import TaskEmbedding

Kind = Literal["symmetric", "asymmetric", "cosine"]
KINDS: tuple[str, ...] = ("symmetric", "asymmetric", "cosine")
DEFAULT_ALPHA = 0.15


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown distance kind {kind!r}; use one of {', '.join(KINDS)}")


def _as_arrays(embeddings: Sequence[TaskEmbedding]) -> tuple[np.ndarray, np.ndarray]:
    if len(embeddings) == 0:
        raise ValueError("need at least one embedding")
    first = embeddings[0]
    for other in embeddings[1:]:
        first.check_compatible(other)
    values = np.stack([e.values for e in embeddings]).astype(np.float64)
    trivial = np.stack([e.trivial for e in embeddings]).astype(np.float64)
    return values, trivial


def _sym_pairs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """d_sym along the last axis of two broadcastable tensors [..., D] -> [...].

    With ``w = 1 / (a + b)^2``: ``u.v = sum a b w``, ``|u|^2 = sum a^2 w``, ``|v|^2 = sum b^2 w``; a
    coordinate where ``a = b = 0`` counts as ``u = v = 1/2``.
    """
    s = a + b
    both_zero = s == 0
    w = s.square_().reciprocal_()
    w.masked_fill_(both_zero, 0.0)
    uv = (a * b * w).sum(-1)
    uu = (a.square() * w).sum(-1)
    vv = (b.square() * w).sum(-1)
    extra = both_zero.sum(-1).to(uv.dtype) * 0.25
    uv, uu, vv = uv + extra, uu + extra, vv + extra
    den = torch.sqrt(uu * vv)
    return 1.0 - uv / den.clamp_min(torch.finfo(den.dtype).tiny)


def _sym_block(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """d_sym for every pair of rows of a [n, D] and b [m, D] -> [n, m]."""
    return _sym_pairs(a[:, None, :], b[None, :, :])


def _cos_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    na = a / a.norm(dim=1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)
    nb = b / b.norm(dim=1, keepdim=True).clamp_min(torch.finfo(b.dtype).tiny)
    return 1.0 - na @ nb.T


def _sym_matrix(
    a: np.ndarray, b: np.ndarray, block_bytes: int = 256 * 2**20, device: str | torch.device | None = None
) -> np.ndarray:
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    if device is not None and torch.device(device).type != "cpu":
        # float32 on accelerators (throughput), in larger blocks
        ta, tb = ta.to(device, torch.float32), tb.to(device, torch.float32)
        block_bytes = max(block_bytes, 4 * 2**30)
    dim = max(a.shape[1], 1)
    # rows per block so that one [rows, cols, D] float64 temporary stays under block_bytes
    cols = min(b.shape[0], max(1, block_bytes // (8 * dim * 4)))
    rows = max(1, block_bytes // (8 * dim * 4 * cols))
    out = torch.empty(a.shape[0], b.shape[0], dtype=torch.float64)
    for i in range(0, a.shape[0], rows):
        for j in range(0, b.shape[0], cols):
            out[i : i + rows, j : j + cols] = _sym_block(ta[i : i + rows], tb[j : j + cols]).to("cpu", torch.float64)
    return out.numpy()


def rowwise_symmetric(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``d_sym(a[i], b[i])`` for every row i (e.g. each source against its trivial embedding)."""
    ta = torch.from_numpy(np.atleast_2d(np.asarray(a, np.float64)))
    tb = torch.from_numpy(np.atleast_2d(np.asarray(b, np.float64)))
    return _sym_pairs(ta, tb).numpy()


def symmetric_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The paper's symmetric Task2Vec distance between two raw Fisher vectors."""
    a64, b64 = np.asarray(a, np.float64)[None], np.asarray(b, np.float64)[None]
    return float(_sym_matrix(a64, b64)[0, 0])


def distance(a: TaskEmbedding, b: TaskEmbedding, kind: Kind = "symmetric", alpha: float = DEFAULT_ALPHA) -> float:
    """Distance between two task embeddings.

    Args:
        a: the first embedding; for ``asymmetric`` the *source* task (e.g. an expert's).
        b: the second embedding; for ``asymmetric`` the *target* task.
        kind: ``"symmetric"``, ``"asymmetric"`` or ``"cosine"``.
        alpha: weight of the complexity term of the asymmetric distance.

    Raises:
        IncompatibleEmbeddingsError: when the embeddings come from different probes/estimators.
    """
    return float(distance_matrix([a], [b], kind=kind, alpha=alpha)[0, 0])


def distance_matrix(
    embeddings: Sequence[TaskEmbedding],
    targets: Sequence[TaskEmbedding] | None = None,
    kind: Kind = "symmetric",
    alpha: float = DEFAULT_ALPHA,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """All pairwise distances, ``M[i, j] = distance(embeddings[i], targets[j])``.

    With ``targets=None`` the matrix is square over ``embeddings``. For ``asymmetric``, rows are
    sources and columns targets. Returns a float64 numpy array. ``device="cuda"`` computes the
    blocks on a GPU in float32 (for many thousands of embeddings).
    """
    _check_kind(kind)
    embeddings = list(embeddings)
    targets_list = embeddings if targets is None else list(targets)
    values, trivial = _as_arrays(embeddings + ([] if targets is None else targets_list))
    n = len(embeddings)
    src, tgt = values[:n], values[n:] if targets is not None else values
    return pairwise_distances(src, tgt, kind=kind, alpha=alpha, source_trivial=trivial[:n], device=device)


def pairwise_distances(
    sources: np.ndarray,
    targets: np.ndarray,
    kind: Kind = "symmetric",
    alpha: float = DEFAULT_ALPHA,
    source_trivial: np.ndarray | None = None,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """`distance_matrix` on raw ``[n, D]`` / ``[m, D]`` arrays (used by the expert index)."""
    _check_kind(kind)
    a = np.atleast_2d(np.asarray(sources, np.float64))
    b = np.atleast_2d(np.asarray(targets, np.float64))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"embedding dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    if kind == "cosine":
        return _cos_matrix(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    sym = _sym_matrix(a, b, device=device)
    if kind == "symmetric":
        return sym
    if source_trivial is None:
        raise ValueError("the asymmetric distance needs the trivial embedding of each source")
    t0 = np.atleast_2d(np.asarray(source_trivial, np.float64))
    return sym - alpha * rowwise_symmetric(a, t0)[:, None]


def taxonomic_distance(
    classes_a: Iterable[Hashable],
    classes_b: Iterable[Hashable],
    class_distance: Callable[[Hashable, Hashable], float],
) -> float:
    """The paper's ``D_tax(ta, tb) = min_{i in Sa, j in Sb} d(i, j)`` over the classes of two tasks,
    with ``class_distance`` a distance in the taxonomy (e.g. tree distance)."""
    a, b = list(classes_a), list(classes_b)
    if not a or not b:
        raise ValueError("both tasks need at least one class for the taxonomic distance")
    return float(min(class_distance(i, j) for i in a for j in b))
