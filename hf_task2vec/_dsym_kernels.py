"""Fused CPU kernels of the symmetric Task2Vec distance (numba; `hf_task2vec.distance` dispatches here).

``d_sym(a, b) = 1 - u.v / (|u| |v|)`` with ``u = a / (a + b)``, ``v = b / (a + b)`` element-wise. Per pair
the kernel makes one pass over the filters: one division and five multiply-adds per element in float32
(SIMD), partial sums over chunks of filters in float32 and their totals in float64. Everything else is
exact bookkeeping:

* ``u`` and ``v`` are invariant under scaling column ``k`` of *both* operands by the same factor, so every
  column is first divided by its maximum over both operands (float64) and only then cast to float32:
  no underflow or overflow whatever the Fisher's magnitude.
* a filter where both values are 0 must count ``u = v = 1/2``: a constant ``EPS = 1e-37`` is added to both
  operands (branch-free, so the loop vectorises); after the column scaling it changes no value above
  ``1e-30`` of its column's maximum by more than one float32 ulp.
* `ScaledRows` prepares an expert matrix once (scaled float32 rows, and optionally 16-bit codes for the
  candidate re-ranking of `hf_task2vec.ann`) so that each query costs one pass over the rows.

Agreement with the float64 reference (`hf_task2vec.distance` on float64 arrays) is ~1e-8 on
float32 inputs; ``tests/test_distance.py`` checks 1e-6.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numba
import numpy as np
from numba import njit, prange

EPS = np.float32(1e-37)  # a normal float32 (no denormal slow path), far below any scaled value that matters
_CODE_SHIFT = 14  # 16-bit codes = float32 bits 14..29 (7 exponent + 9 mantissa bits) of values in [0, 1]
_CHUNK = 1024  # filters per float32 partial sum (4 KB per operand row: stays in L1)
_TILE = 4  # rows x rows per task of the pairwise kernel
# below this many elements a call runs on one thread: waking the pool costs more than a second core
# gives back (re-scoring the k + 10 best candidates: 0.1 ms on one thread, 8-16 ms on two busy cores)
SERIAL_MAX_ELEMENTS = 2**21


@contextmanager
def _threads_for(elements: int) -> Iterator[None]:
    """Run the kernels of this block on one thread when the work is small (numba's thread count is
    thread-local, so other threads are not affected)."""
    if elements >= SERIAL_MAX_ELEMENTS:
        yield
        return
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


@njit(fastmath=True, inline="always", nogil=True, cache=True)
def _dot3(x, y):  # pragma: no cover - compiled
    rr = np.float32(0.0)
    qq = np.float32(0.0)
    rq = np.float32(0.0)
    for k in range(x.shape[0]):
        xa = x[k] + EPS
        yb = y[k] + EPS
        inv = np.float32(1.0) / (xa + yb)
        r = xa * inv
        q = yb * inv
        rr += r * r
        qq += q * q
        rq += r * q
    return rr, qq, rq


@njit(inline="always", nogil=True, cache=True)
def _finish(uu, vv, uv):  # pragma: no cover - compiled
    den = np.sqrt(uu * vv)
    return 1.0 - uv / den if den > 0.0 else 1.0


@njit(parallel=True, fastmath=True, nogil=True, cache=True)
def _pairwise_kernel(a, b, out, tile, chunk):  # pragma: no cover - compiled
    n, dim = a.shape
    m = b.shape[0]
    nj = (m + tile - 1) // tile
    ntasks = ((n + tile - 1) // tile) * nj
    for t in prange(ntasks):
        i0 = (t // nj) * tile
        j0 = (t % nj) * tile
        i1 = min(i0 + tile, n)
        j1 = min(j0 + tile, m)
        acc = np.zeros((tile, tile, 3), np.float64)
        for k0 in range(0, dim, chunk):
            k1 = min(k0 + chunk, dim)
            for i in range(i0, i1):
                x = a[i, k0:k1]
                for j in range(j0, j1):
                    rr, qq, rq = _dot3(x, b[j, k0:k1])
                    acc[i - i0, j - j0, 0] += rr
                    acc[i - i0, j - j0, 1] += qq
                    acc[i - i0, j - j0, 2] += rq
        for i in range(i0, i1):
            for j in range(j0, j1):
                out[i, j] = _finish(acc[i - i0, j - j0, 0], acc[i - i0, j - j0, 1], acc[i - i0, j - j0, 2])


@njit(parallel=True, fastmath=True, nogil=True, cache=True)
def _rowwise_kernel(a, b, out, chunk, step):  # pragma: no cover - compiled
    n, dim = a.shape
    for i in prange(n):
        j = i * step  # step 0: one shared row of b
        uu = 0.0
        vv = 0.0
        uv = 0.0
        for k0 in range(0, dim, chunk):
            k1 = min(k0 + chunk, dim)
            rr, qq, rq = _dot3(a[i, k0:k1], b[j, k0:k1])
            uu += rr
            vv += qq
            uv += rq
        out[i] = _finish(uu, vv, uv)


@njit(parallel=True, fastmath=True, nogil=True, cache=True)
def _coded_rows_kernel(codes, rows, query, out, chunk):  # pragma: no cover - compiled
    dim = codes.shape[1]
    for t in prange(rows.shape[0]):
        i = rows[t]
        buf = np.empty(chunk, np.uint32)
        vals = buf.view(np.float32)
        uu = 0.0
        vv = 0.0
        uv = 0.0
        for k0 in range(0, dim, chunk):
            k1 = min(k0 + chunk, dim)
            w = k1 - k0
            for k in range(w):
                buf[k] = np.uint32(codes[i, k0 + k]) << np.uint32(_CODE_SHIFT)
            rr, qq, rq = _dot3(vals[:w], query[k0:k1])
            uu += rr
            vv += qq
            uv += rq
        out[t] = _finish(uu, vv, uv)


@njit(fastmath=True, inline="always", nogil=True, cache=True)
def _dot3_scaled(x, inv, y):  # pragma: no cover - compiled
    rr = np.float32(0.0)
    qq = np.float32(0.0)
    rq = np.float32(0.0)
    for k in range(x.shape[0]):
        xa = x[k] * inv[k] + EPS
        yb = y[k] + EPS
        r_ = np.float32(1.0) / (xa + yb)
        r = xa * r_
        q = yb * r_
        rr += r * r
        qq += q * q
        rq += r * q
    return rr, qq, rq


@njit(parallel=True, fastmath=True, nogil=True, cache=True)
def _scaled_rows_kernel(rows, inv, query, out, chunk):  # pragma: no cover - compiled
    n, dim = rows.shape
    for i in prange(n):
        uu = 0.0
        vv = 0.0
        uv = 0.0
        for k0 in range(0, dim, chunk):
            k1 = min(k0 + chunk, dim)
            rr, qq, rq = _dot3_scaled(rows[i, k0:k1], inv[k0:k1], query[k0:k1])
            uu += rr
            vv += qq
            uv += rq
        out[i] = _finish(uu, vv, uv)


def column_scale(*arrays: np.ndarray) -> np.ndarray:
    """Per-column maximum over the rows of all ``arrays`` (float64 ``[D]``; 1 where a column is all 0)."""
    scale = np.max(np.stack([np.asarray(x, np.float64).max(axis=0) for x in arrays]), axis=0)
    scale[~(scale > 0)] = 1.0
    return scale


def _scaled32(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x, np.float64) / scale, dtype=np.float32)


def pairwise_sym(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``d_sym(a[i], b[j])`` for every pair of rows (``[n, D]`` x ``[m, D]`` -> float64 ``[n, m]``)."""
    scale = column_scale(a, b)
    out = np.empty((a.shape[0], b.shape[0]), np.float64)
    if out.size:
        with _threads_for(out.size * a.shape[1]):
            _pairwise_kernel(_scaled32(a, scale), _scaled32(b, scale), out, _TILE, _CHUNK)
    return out


def rowwise_sym(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``d_sym(a[i], b[i])`` for every row (``b`` is ``[n, D]`` or one shared ``[1, D]`` row)."""
    scale = column_scale(a, b)
    out = np.empty(a.shape[0], np.float64)
    if out.size:
        with _threads_for(a.size):
            _rowwise_kernel(_scaled32(a, scale), _scaled32(b, scale), out, _CHUNK, 0 if b.shape[0] == 1 else 1)
    return out


class ScaledRows:
    """Experts prepared once for many queries, without a copy: float32 rows ``[N, D]`` and the maximum
    of every column (the kernel multiplies each element by ``1 / max`` on the fly), plus 16-bit codes.

    The 16-bit code of a scaled value ``x`` in ``[0, 1]`` is the top 16 bits below the sign of its float32
    (rounded): 7 exponent bits and 9 mantissa bits, decoded by a shift (``float32(code << 14)``). It keeps
    every value down to ``2**-126`` of its column's maximum with a relative error under ``2**-10``
    (float16 keeps only 2**-24, while one filter's Fisher spans up to ~40 nats across tasks).
    """

    def __init__(self, values: np.ndarray | None = None, *, scale: np.ndarray | None = None) -> None:
        self.rows = None if values is None else np.ascontiguousarray(values, dtype=np.float32)
        if scale is None:
            if self.rows is None:
                raise ValueError("ScaledRows needs values or a scale")
            scale = self.rows.max(axis=0).astype(np.float64) if self.rows.shape[0] else np.ones(self.rows.shape[1])
        self.scale = np.asarray(scale, np.float64).copy()
        self.scale[~(self.scale > 0)] = 1.0
        self.inv = (1.0 / self.scale).astype(np.float32)

    def query(self, query: np.ndarray) -> np.ndarray:
        q = np.asarray(query, np.float64).reshape(-1) / self.scale
        return np.ascontiguousarray(np.minimum(q, 1e37), dtype=np.float32)

    def encode(self, values: np.ndarray) -> np.ndarray:
        """16-bit codes of ``values`` (rows of the experts, in this scale)."""
        x = np.clip(np.asarray(values, np.float64) / self.scale, 0.0, 1.0).astype(np.float32)
        bits = (x.view(np.uint32).astype(np.uint64) + (1 << (_CODE_SHIFT - 1))) >> _CODE_SHIFT
        return np.ascontiguousarray(np.minimum(bits, 0xFFFF), dtype=np.uint16)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        x = (np.asarray(codes, np.uint32) << _CODE_SHIFT).view(np.float32)
        return x.astype(np.float64) * self.scale

    def to_query(self, query: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """``d_sym(expert_i, query)`` from the float32 rows (all, or the indices ``rows``)."""
        if self.rows is None:
            raise ValueError("these ScaledRows hold no float32 rows (codes only)")
        return self.rows_to_query(self.rows if rows is None else self.rows[np.asarray(rows, np.int64)], query)

    def rows_to_query(self, rows: np.ndarray, query: np.ndarray) -> np.ndarray:
        """``d_sym(rows[t], query)`` for float32 rows given in this (unscaled) form, e.g. a few rows read
        from a memory map: the rows are scaled on the fly by this object's column scale (no float64
        copy, which dominated the cost of scoring a handful of rows)."""
        sel = np.ascontiguousarray(rows, dtype=np.float32)
        out = np.empty(sel.shape[0], np.float64)
        if out.size:
            with _threads_for(sel.size):
                _scaled_rows_kernel(sel, self.inv, self.query(query), out, _CHUNK)
        return out

    def codes_to_query(self, codes: np.ndarray, rows: np.ndarray, query: np.ndarray) -> np.ndarray:
        """``d_sym(decoded codes[rows[t]], query)`` (the candidate re-ranking of `hf_task2vec.ann`)."""
        idx = np.ascontiguousarray(rows, dtype=np.int64)
        out = np.empty(idx.shape[0], np.float64)
        if out.size:
            with _threads_for(idx.shape[0] * codes.shape[1]):
                _coded_rows_kernel(codes, idx, self.query(query), out, _CHUNK)
        return out
