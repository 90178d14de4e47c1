"""Distances between task embeddings, exactly as in the paper (DESIGN.md).

* symmetric: ``d_sym(Fa, Fb) = d_cos(Fa / (Fa + Fb), Fb / (Fa + Fb))`` with element-wise division;
  a filter where both Fisher values are 0 contributes 1/2 to both normalised vectors.
* asymmetric: ``d_asym(a -> b) = d_sym(a, b) - alpha * d_sym(a, a.trivial)``, ``a`` the source
  (the expert's task) and ``b`` the target; it favours sources that are more complex.
* cosine: plain cosine distance of the raw values (a baseline, and for domain embeddings).
* taxonomic: ``D_tax`` - the minimum over class pairs of a distance between classes.

`distance_matrix` is vectorised in blocks (no python loop over pairs). On the CPU, problems of more
than ``FUSED_MIN_ELEMENTS`` pair-filters go to the fused, threaded numba kernel of `_dsym_kernels`
(one pass per pair, float32 elements after an exact per-filter rescaling, float64 sums: within ~1e-8
of the float64 reference, tested to 1e-6); smaller ones stay in float64.

This module is the one home of the d_sym kernels: `_sym_pairs` (float64, broadcasting; the
reference), the fused CPU kernels in `_dsym_kernels` (`_sym_matrix`, `rowwise_symmetric`, `sym_rows`:
pairwise matrices, row against row or query),
`torch_symmetric_distance` (differentiable) and `pairwise_symmetric_distance` /
`PairwiseSymWorkspace` (every pair, fused forward and hand-written backward: Model2Vec).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Literal

import numpy as np
import torch

from . import _dsym_kernels
from .checks import check_float
from .embedding import TaskEmbedding

Kind = Literal["symmetric", "asymmetric", "cosine"]
KINDS: tuple[str, ...] = ("symmetric", "asymmetric", "cosine")
DEFAULT_ALPHA = 0.15
ROWS_PER_CHUNK = 32  # kept for callers of `sym_rows(..., chunk=)`; the fused kernel needs no buffers
FUSED_MIN_ELEMENTS = 2**22  # pairs x filters above which the CPU uses the fused kernel (~1e-8 from float64)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown distance kind {kind!r}; use one of {', '.join(KINDS)}")


def _as_arrays(embeddings: Sequence[TaskEmbedding]) -> tuple[np.ndarray, np.ndarray]:
    if len(embeddings) == 0:
        raise ValueError("need at least one embedding")
    first = embeddings[0]
    for other in embeddings[1:]:
        first.check_compatible(other)
    for e in embeddings:
        e.check_finite()  # a NaN filter would turn every distance to it into NaN
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
    on_cpu = device is None or torch.device(device).type == "cpu"
    if on_cpu and a.shape[0] * b.shape[0] * a.shape[1] >= FUSED_MIN_ELEMENTS:
        return _dsym_kernels.pairwise_sym(a, b)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    if not on_cpu:
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
    """``d_sym(a[i], b[i])`` for every row i (e.g. each source against its trivial embedding); ``b`` is
    ``[n, D]`` or one shared ``[1, D]`` row."""
    a2, b2 = np.atleast_2d(np.asarray(a, np.float64)), np.atleast_2d(np.asarray(b, np.float64))
    if b2.shape[0] not in (1, a2.shape[0]) or a2.shape[1] != b2.shape[1]:
        raise ValueError(f"rowwise_symmetric: shapes {a2.shape} and {b2.shape} do not pair row by row")
    if a2.size >= FUSED_MIN_ELEMENTS:
        return _dsym_kernels.rowwise_sym(a2, b2)
    return _sym_pairs(torch.from_numpy(a2), torch.from_numpy(b2)).numpy()


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
    if kind == "asymmetric":
        check_float("alpha", alpha)
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


# -- float32 and differentiable kernels (expert search, Model2Vec) ------------------------------
def torch_symmetric_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``d_sym`` along the last axis of two broadcastable tensors ``[..., D] -> [...]``, differentiable.

    The same formula as `hf_task2vec.distance`: ``u = a / (a + b)``, ``v = b / (a + b)``
    (both 1/2 where ``a + b = 0``) and ``d = 1 - <u, v> / (|u| |v|)``; since ``v = 1 - u``, only
    ``u`` is materialised.
    """
    s = a + b
    zero = s == 0
    u = torch.where(zero, torch.full_like(s, 0.5), a / torch.where(zero, torch.ones_like(s), s))
    v = 1.0 - u
    num = (u * v).sum(-1)
    den = torch.sqrt((u * u).sum(-1) * (v * v).sum(-1))
    return 1.0 - num / den.clamp_min(torch.finfo(den.dtype).tiny)


class PairwiseSymWorkspace:
    """``d_sym`` for every pair of rows of ``a [n, D]`` and fixed ``b [m, D]``, with a hand-written backward.

    With ``u = a / (a + b)``, ``v = 1 - u``, ``A = <u, v>``, ``B = |u|^2``, ``C = |v|^2`` and
    ``d = 1 - A / sqrt(B C)``: ``dd/du_k = alpha + beta u_k`` with ``alpha = -(1 + A/C) / sqrt(BC)``,
    ``beta = (2 + A/B + A/C) / sqrt(BC)``, ``du_k/da_k = v_k / s_k`` and ``du_k/db_k = -u_k / s_k``
    (``s = a + b``; where ``s = 0`` both normalised entries are the constant 1/2). Three ``[n, m, D]``
    buffers are allocated once and reused: a Model2Vec step on 21k-filter embeddings then costs a
    handful of passes over memory instead of autograd's dozens of freshly allocated temporaries.
    """

    def __init__(self, b: torch.Tensor, n: int) -> None:
        self.b = b
        shape = (n, b.shape[0], b.shape[1])
        self.s = torch.empty(shape, dtype=b.dtype, device=b.device)
        self.u = torch.empty_like(self.s)
        self.x = torch.empty_like(self.s)
        self.b_zero = (b == 0).any(0)
        self.has_zero = False

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        s, u = self.s, self.u
        torch.add(a[:, None, :], self.b[None, :, :], out=s)
        torch.div(a[:, None, :].expand_as(s), s, out=u)
        self.has_zero = bool((self.b_zero & (a == 0).any(0)).any())
        if self.has_zero:
            zero = s == 0
            u.masked_fill_(zero, 0.5)
            s.masked_fill_(zero, float("inf"))  # no gradient through the constant 1/2
        s1 = u.sum(-1)
        bb = torch.linalg.vector_norm(u, dim=-1).square()
        aa = s1 - bb
        cc = (u.shape[-1] - 2.0 * s1 + bb).clamp_min(0.0)
        tiny = torch.finfo(u.dtype).tiny
        self.den = torch.sqrt(bb * cc).clamp_min(tiny)
        self.alpha = -(1.0 + aa / cc.clamp_min(tiny)) / self.den
        self.beta = (2.0 + aa / bb.clamp_min(tiny) + aa / cc.clamp_min(tiny)) / self.den
        return 1.0 - aa / self.den

    def backward(self, grad: torch.Tensor, need_b: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Gradients w.r.t. ``a`` (and ``b``) given ``grad = dL/dd`` ``[n, m]`` (call after `forward`)."""
        x = self.x
        torch.addcmul((grad * self.alpha)[..., None].expand_as(x), self.u, (grad * self.beta)[..., None], out=x)
        x.div_(self.s)  # dL/du * du/ds-part: dL/da = x * v, dL/db = -x * u
        total = x.sum(1)
        xu = x.mul_(self.u)
        grad_a = total - xu.sum(1)
        grad_b = -xu.sum(0) if need_b else None
        return grad_a, grad_b


class _PairwiseSymmetric(torch.autograd.Function):
    """Autograd wrapper of `PairwiseSymWorkspace` (buffers allocated per call)."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ws = PairwiseSymWorkspace(b.detach(), a.shape[0])
        ctx.ws = ws
        return ws.forward(a.detach())

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad_a, grad_b = ctx.ws.backward(grad, need_b=ctx.needs_input_grad[1])
        return (grad_a if ctx.needs_input_grad[0] else None), grad_b


def pairwise_symmetric_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``d_sym(a_i, b_j)`` for all pairs of rows, ``[n, D] x [m, D] -> [n, m]``, differentiable
    (a fused forward/backward; the same values as `torch_symmetric_distance` on broadcast inputs)."""
    return _PairwiseSymmetric.apply(a, b)


def sym_rows(rows: np.ndarray, other: np.ndarray, chunk: int = ROWS_PER_CHUNK) -> np.ndarray:
    """``d_sym(rows[i], other[i])`` for every row of ``rows [N, D]``; ``other`` is ``[N, D]`` or one
    shared ``[1, D]`` row (a query). The fused kernel (one pass per row, float32 elements, float64 sums):
    ~0.5 ns per filter on one core, so 10,000 experts x 21,008 filters take ~0.1 s. Agrees with the
    float64 reference to ~1e-8 (``chunk`` is accepted for compatibility and ignored)."""
    a = np.atleast_2d(np.asarray(rows))
    b = np.atleast_2d(np.asarray(other))
    if b.shape[0] not in (1, a.shape[0]) or a.shape[1] != b.shape[1]:
        raise ValueError(f"sym_rows: shapes {a.shape} and {b.shape} do not pair row by row")
    return _dsym_kernels.rowwise_sym(a, b)
