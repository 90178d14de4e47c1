"""Two-stage expert search at Hub scale: approximate candidates, then the exact distance.

`ExpertIndex.select` ranks experts by ``d_asym(expert -> task) = d_sym(F_j, t) - alpha * c_j``. Exact
ranking reads every expert's 21,008 filters per query, which is ~0.1 s per 10,000 experts even with the
fused kernel. `TwoStageIndex` keeps the exact answer and makes it fast:

1. **Candidates** from a cheap representation. ``d_sym`` compares ``a / (a + b)`` filter by filter,
   which is ``sigmoid(log a - log b)``: for nearby tasks ``d_sym`` grows with the squared difference of
   the *log* Fisher values (``~ Var(log a - log b) / 8``). Each expert is therefore represented by its
   column-scaled log Fisher (zeros clamped at ``LOG_FLOOR``), projected on its top principal components
   (PCA fitted on a sample of experts), and indexed by a **faiss** HNSW graph (L2). A query fetches
   ``candidates`` experts (many more than ``k``).
2. **Re-ranking** of the candidates with the fused ``d_sym`` kernel on 16-bit copies of the experts
   (`hf_task2vec._dsym_kernels.ScaledRows`: each filter scaled by its maximum, 7 exponent and 9
   mantissa bits, decoded by a shift; relative error < 1e-3 per value, ~1e-6 on ``d_sym``), minus
   ``alpha * c_j`` with ``c_j`` computed exactly when the index was built.
3. **Exact final scores**: when the float32 values are available (in memory, or memory-mapped from
   disk for indexes larger than memory), the best ``k + refine`` candidates are scored again from
   them (~1e-8 from float64), so the order of the returned top-k is the exact one.

Memory per expert: ``2 * D`` bytes (codes) + ``4 * n_components`` (projection) + the HNSW links
(``~ 8 * M`` bytes) + 8 (complexity); for the embedded probe (D = 21,008, 512 components, M = 32)
~44 KB, plus ``4 * D`` bytes of float32 values that the final step reads for ``k + refine`` rows per query.

Why faiss (faiss-cpu) rather than hnswlib: it is actively maintained (hnswlib's last release is from
2023), ships HNSW, IVF and PCA in one wheel with the same API on CPU and GPU, and serialises an index
to bytes (`to_bytes` hashes them; a stored index whose hash does not match is rebuilt).

`benchmarks/expert_search.py` measures how often the top-10 equals the exact float64 top-10.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _dsym_kernels as kernels

logger = logging.getLogger(__name__)

__all__ = ["ANN_FORMAT_VERSION", "DEFAULT_COMPONENTS", "TwoStageIndex", "default_candidates"]

ANN_FORMAT_VERSION = "1"
LOG_FLOOR = 1e-6  # relative to each column's maximum: zeros (and anything smaller) sit at log(1e-6)
# The candidate stage's size, from benchmarks/results/expert_search.md (synthetic experts, 100 queries):
# with 128 components the exact top-10 was among the candidates in 80% of queries at 100,000 experts (256
# candidates) and 90% (1,024); with 512 components in 95% and 100%. At 10,000 experts 512 components and
# 256 candidates found it every time. The representation, not the HNSW graph, lost them: an exact scan
# of the 128-component projections found all ten among 256 in 71% of queries, among 1,024 in 91%
# (benchmarks/results/expert_search_candidates.md).
DEFAULT_COMPONENTS = 512
SMALL_INDEX = 20_000  # experts; up to here 256 candidates (measured at 10,000), above 1,024 (at 100,000)


def default_candidates(n_experts: int, k: int) -> int:
    """Stage-1 size when none is given: 256 candidates up to `SMALL_INDEX` experts, 1,024 above (a
    denser index has more experts between what the projection sees and the exact distance), and at
    least ``16 * k``."""
    return max(16 * int(k), 256 if n_experts <= SMALL_INDEX else 1024)

Chunks = Callable[[], Iterable[np.ndarray]]


def _as_chunks(values: np.ndarray | Chunks, chunk_rows: int = 2048) -> Chunks:
    if callable(values):
        return values
    arr = values

    def gen() -> Iterable[np.ndarray]:
        for i in range(0, arr.shape[0], chunk_rows):
            yield arr[i : i + chunk_rows]

    return gen


@dataclass
class _Pca:
    mean: np.ndarray  # float32 [D]
    components: np.ndarray  # float32 [d, D]

    def transform(self, logs: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray((logs - self.mean) @ self.components.T, dtype=np.float32)


def _fit_pca(sample: np.ndarray, n_components: int) -> _Pca:
    """Top principal components of ``sample [n, D]`` via the ``n x n`` Gram matrix (n << D)."""
    mean = sample.mean(axis=0, dtype=np.float64).astype(np.float32)
    centred = sample - mean
    gram = centred.astype(np.float64) @ centred.T.astype(np.float64)
    evals, evecs = np.linalg.eigh(gram)
    order = np.argsort(evals)[::-1][:n_components]
    evals, evecs = np.clip(evals[order], 1e-12, None), evecs[:, order]
    comps = (evecs.T @ centred.astype(np.float64)) / np.sqrt(evals)[:, None]
    return _Pca(mean, comps.astype(np.float32))


def _calibrate(proj: np.ndarray, codes: np.ndarray, coder: kernels.ScaledRows, rng: np.random.Generator) -> float:
    """``c`` with ``d_sym ~ c * ||proj_a - proj_b||^2`` over near pairs (least squares through 0): the
    exchange rate between the candidate space and the distance, so a per-expert bias can live in it."""
    n = proj.shape[0]
    if n < 3:
        return 1.0
    num = den = 0.0
    for i in rng.choice(n, size=min(48, n), replace=False):
        l2 = ((proj - proj[i]) ** 2).sum(axis=1)
        near = np.argpartition(l2, min(64, n - 1))[: min(65, n)]
        near = near[near != i]
        d = coder.codes_to_query(codes, near, coder.decode(codes[i : i + 1])[0])
        num += float(d @ l2[near])
        den += float(l2[near] @ l2[near])
    return num / den if den > 0 and num > 0 else 1.0


class TwoStageIndex:
    """Approximate candidates (PCA of log Fisher + faiss HNSW) re-ranked by the exact ``d_sym``.

    Build it with `build` (from an array or, for indexes that do not fit in memory twice, from a
    function returning an iterator of row chunks; it is called twice). `search` returns the ``k``
    best experts by ``d_sym(expert, query) + bias[expert]`` (for ``d_asym``: ``bias = -alpha * c``).

    Args of `build`:
        values: non-negative Fisher values ``[N, D]`` or ``() -> iterable of [n_i, D] chunks``.
        n_components: PCA dimension of the candidate representation.
        pca_sample: experts used to fit the PCA (evenly spaced).
        hnsw_m, ef_construction: HNSW graph parameters (faiss ``IndexHNSWFlat``).
        trivial: the trivial embedding(s) (``[1, D]`` shared or ``[N, D]``) for the complexities
            ``c_j = d_sym(F_j, trivial_j)``; ``None`` skips them.
        alpha, bias: the per-expert term of the score the graph should rank by (``bias``, or
            ``-alpha * c_j``): stored as one extra coordinate ``sqrt((bias_j - min bias) / c)``, with
            ``c`` the measured ``d_sym`` per squared candidate-space distance, so that candidates are
            near in ``d_sym + bias`` and not only in ``d_sym``. Search with the same bias.
        exact_values: float32 ``[N, D]`` (may be a memory map) for the final exact scores.
    """

    def __init__(
        self,
        scale: np.ndarray,
        codes: np.ndarray,
        pca: _Pca,
        ann: object,
        complexity: np.ndarray | None,
        params: dict[str, Any],
        values: np.ndarray | None = None,
    ) -> None:
        self.coder = kernels.ScaledRows(scale=scale)
        self.scale = self.coder.scale
        self.codes = codes
        self.pca = pca
        self.ann = ann
        self.complexity = complexity
        self.params = dict(params)
        self.values = values

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    def __repr__(self) -> str:
        d = self.pca.components.shape[0]
        return f"TwoStageIndex(experts={len(self)}, dim={self.codes.shape[1]}, components={d})"

    @property
    def bytes_per_expert(self) -> float:
        """Memory per expert: 16-bit codes + projection + HNSW links + complexity (bytes; the float32
        values of the final exact step are read only for a few rows per query and may be memory-mapped)."""
        d = self.pca.components.shape[0]
        links = 2 * self.params["hnsw_m"] * 4  # level-0 neighbours (int32), the bulk of the graph
        return 2.0 * self.codes.shape[1] + 4.0 * d + links + 8.0

    # -- building ---------------------------------------------------------------------------
    @staticmethod
    def _logs(chunk: np.ndarray, scale: np.ndarray) -> np.ndarray:
        x = np.asarray(chunk, np.float64) / scale
        return np.log(np.maximum(x, LOG_FLOOR)).astype(np.float32)

    @classmethod
    def build(
        cls,
        values: np.ndarray | Chunks,
        *,
        n_components: int = DEFAULT_COMPONENTS,
        pca_sample: int = 4096,
        hnsw_m: int = 32,
        ef_construction: int = 128,
        trivial: np.ndarray | None = None,
        alpha: float = 0.0,
        bias: np.ndarray | None = None,
        exact_values: np.ndarray | None = None,
        seed: int = 0,
    ) -> TwoStageIndex:
        import faiss

        chunks = _as_chunks(values)
        # pass 1: column maxima, row count, and a uniform random sample of rows for the PCA
        scale: np.ndarray | None = None
        n = 0
        rng = np.random.default_rng(seed)
        sample = keys = None
        for chunk in chunks():
            c = np.asarray(chunk)
            if c.ndim != 2 or not np.all(np.isfinite(c)) or c.min(initial=0.0) < 0:
                raise ValueError("TwoStageIndex.build: values must be finite, non-negative [N, D] Fisher embeddings")
            m = c.max(axis=0).astype(np.float64)
            scale = m if scale is None else np.maximum(scale, m)
            k = rng.random(c.shape[0])
            sample = c.copy() if sample is None else np.concatenate([sample, c])
            keys = k if keys is None else np.concatenate([keys, k])
            if keys.shape[0] > pca_sample:  # keep the rows with the smallest random keys
                keep = np.sort(np.argpartition(keys, pca_sample - 1)[:pca_sample])
                sample, keys = sample[keep], keys[keep]
            n += c.shape[0]
        if scale is None or sample is None or n == 0:
            raise ValueError("TwoStageIndex.build: no experts")
        scale[~(scale > 0)] = 1.0
        coder = kernels.ScaledRows(scale=scale)
        d = int(max(1, min(n_components, sample.shape[0] - 1, sample.shape[1])))
        pca = _fit_pca(cls._logs(sample, scale), d)
        del sample, keys
        # pass 2: 16-bit codes, projections, complexities
        dim = scale.shape[0]
        codes = np.empty((n, dim), np.uint16)
        proj = np.empty((n, d), np.float32)
        complexity = np.empty(n, np.float64) if trivial is not None else None
        triv = None if trivial is None else np.atleast_2d(np.asarray(trivial, np.float64))
        start = 0
        for chunk in chunks():
            c = np.asarray(chunk)
            stop = start + c.shape[0]
            if stop > n:
                raise ValueError("TwoStageIndex.build: the chunks changed between the two passes")
            codes[start:stop] = coder.encode(c)
            proj[start:stop] = pca.transform(cls._logs(c, scale))
            if complexity is not None and triv is not None:
                t = triv if triv.shape[0] == 1 else triv[start:stop]
                complexity[start:stop] = kernels.rowwise_sym(c, t)
            start = stop
        if start != n:
            raise ValueError("TwoStageIndex.build: the chunks changed between the two passes")
        if bias is None and alpha and complexity is not None:
            bias = -float(alpha) * complexity
        scale_l2 = _calibrate(proj, codes, coder, rng)
        extra = np.zeros((n, 1), np.float32)
        if bias is not None:  # d_sym ~ scale_l2 * L2^2, so the bias is a squared extra coordinate
            b = np.asarray(bias, np.float64).reshape(-1)
            if b.shape[0] != n:
                raise ValueError(f"TwoStageIndex.build: bias has {b.shape[0]} entries for {n} experts")
            extra[:, 0] = np.sqrt(np.maximum(b - b.min(), 0.0) / scale_l2)
        ann = faiss.IndexHNSWFlat(d + 1, hnsw_m)
        ann.hnsw.efConstruction = ef_construction
        ann.add(np.ascontiguousarray(np.hstack([proj, extra])))
        params = {
            "hnsw_m": hnsw_m,
            "ef_construction": ef_construction,
            "n_components": d,
            "l2_to_dsym": scale_l2,
            "graph_bias": bias is not None,
        }
        logger.info("two-stage index: %d experts, %d components, HNSW M=%d", n, d, hnsw_m)
        return cls(scale, codes, pca, ann, complexity, params, values=exact_values)

    # -- search -----------------------------------------------------------------------------
    def candidates(self, query: np.ndarray, count: int, ef_search: int | None = None) -> np.ndarray:
        """Indices of ``count`` experts nearest to ``query`` in the cheap representation (stage 1)."""
        import faiss

        count = int(min(max(count, 1), len(self)))
        q = self.pca.transform(self._logs(np.asarray(query).reshape(1, -1), self.scale))
        q = np.ascontiguousarray(np.hstack([q, np.zeros((1, 1), np.float32)]))
        params = faiss.SearchParametersHNSW()
        params.efSearch = int(ef_search or 2 * count + 32)
        _, idx = self.ann.search(q, count, params=params)
        idx = idx[0]
        return idx[idx >= 0].astype(np.int64)

    def search(
        self,
        query: np.ndarray,
        k: int,
        *,
        candidates: int | None = None,
        refine: int = 20,
        bias: np.ndarray | None = None,
        ef_search: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best experts by ``d_sym(expert, query) + bias``.

        ``candidates`` experts (default `default_candidates`) come from the HNSW graph and are scored
        from their 16-bit codes; when the index has ``values`` (float32, possibly memory-mapped), the
        best ``k + refine`` of them are scored again from those (agreement with float64 ~1e-8).
        Returns ``(indices, scores)``, best first (ties: lower index first).
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        candidates = default_candidates(len(self), k) if candidates is None else candidates
        cand = self.candidates(query, max(candidates, k), ef_search)
        scores = self.coder.codes_to_query(self.codes, cand, query)
        if bias is not None:
            scores = scores + np.asarray(bias, np.float64)[cand]
        if self.values is not None:
            keep = np.lexsort((cand, scores))[: k + refine]
            cand = cand[keep]
            rows = np.sort(cand)  # sorted reads of a memory map
            exact = self.coder.rows_to_query(self.values[rows], query)
            back = np.searchsorted(rows, cand)
            scores = exact[back] + (0.0 if bias is None else np.asarray(bias, np.float64)[cand])
        order = np.lexsort((cand, scores))[:k]
        return cand[order], scores[order]

    def exact(self, query: np.ndarray, *, bias: np.ndarray | None = None) -> np.ndarray:
        """``d_sym(expert, query) + bias`` for every expert from the 16-bit codes ``[N]`` (a full scan)."""
        scores = self.coder.codes_to_query(self.codes, np.arange(len(self)), query)
        return scores if bias is None else scores + np.asarray(bias, np.float64)

    # -- storage ----------------------------------------------------------------------------
    def to_tensors(self) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Tensors and metadata for a safetensors file: the codes, the projection, the HNSW graph as
        bytes, and the sha256 of the graph and of the data it indexes (`from_tensors` checks both)."""
        import faiss

        graph = np.frombuffer(faiss.serialize_index(self.ann).tobytes(), dtype=np.uint8)
        tensors = {
            "ann.scale": self.scale,
            "ann.codes": self.codes,
            "ann.pca_mean": self.pca.mean,
            "ann.pca_components": self.pca.components,
            "ann.graph": graph,
        }
        if self.complexity is not None:
            tensors["ann.complexity"] = self.complexity
        meta = {
            "ann_format_version": ANN_FORMAT_VERSION,
            "ann_params": json.dumps(self.params, sort_keys=True),
            "ann_graph_sha256": hashlib.sha256(graph.tobytes()).hexdigest(),
            "ann_data_sha256": self.data_hash(),
        }
        return tensors, meta

    def data_hash(self) -> str:
        """sha256 of the codes and their column scale (what the graph was built from)."""
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.scale).tobytes())
        h.update(memoryview(np.ascontiguousarray(self.codes)).cast("B"))
        return h.hexdigest()

    @classmethod
    def from_tensors(
        cls, tensors: dict[str, np.ndarray], meta: dict[str, str], values: np.ndarray | None = None
    ) -> TwoStageIndex | None:
        """The stored index, or ``None`` when its version or a hash does not match (rebuild it then)."""
        import faiss

        if meta.get("ann_format_version") != ANN_FORMAT_VERSION or "ann.graph" not in tensors:
            return None
        graph = np.ascontiguousarray(tensors["ann.graph"], dtype=np.uint8)
        if hashlib.sha256(graph.tobytes()).hexdigest() != meta.get("ann_graph_sha256"):
            logger.warning("the stored ANN graph does not match its hash; it will be rebuilt")
            return None
        out = cls(
            np.asarray(tensors["ann.scale"], np.float64),
            np.ascontiguousarray(tensors["ann.codes"]),
            _Pca(tensors["ann.pca_mean"], tensors["ann.pca_components"]),
            faiss.deserialize_index(graph),
            tensors.get("ann.complexity"),
            json.loads(meta.get("ann_params", "{}")),
            values=values,
        )
        if out.data_hash() != meta.get("ann_data_sha256"):
            logger.warning("the stored ANN data does not match its hash; it will be rebuilt")
            return None
        return out
