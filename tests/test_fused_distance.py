"""The fused CPU d_sym kernels (hf_task2vec._dsym_kernels) against the float64 reference, to 1e-6."""

from __future__ import annotations

import numpy as np
import torch

from hf_task2vec import _dsym_kernels as kernels
from hf_task2vec.distance import FUSED_MIN_ELEMENTS, _sym_pairs, distance_matrix, pairwise_distances, sym_rows


def _reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float64, broadcasting, the paper's formula (0/0 filters count 1/2)."""
    return _sym_pairs(torch.from_numpy(a[:, None, :]), torch.from_numpy(b[None, :, :])).numpy()


def _hard_rows(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.gamma(0.5, size=(n, dim)) * np.exp(rng.normal(0, 6, size=dim))  # 1e-8 .. 1e8 per filter
    x[:, :7] = 0.0  # filters zero in every row: 1/2 in both normalised vectors
    x[::3, 10:40] = 0.0  # zero in some rows only
    x[1 % n, 50:60] *= 1e-30  # tiny but non-zero against normal values
    x[2 % n, 60:70] *= 1e30
    return x


def test_pairwise_and_rowwise_kernels_match_float64_to_1e6():
    a, b = _hard_rows(23, 3001, 0), _hard_rows(9, 3001, 1)
    np.testing.assert_allclose(kernels.pairwise_sym(a, b), _reference(a, b), atol=1e-6, rtol=0)
    np.testing.assert_allclose(kernels.rowwise_sym(a[:9], b), np.diag(_reference(a[:9], b)), atol=1e-6, rtol=0)
    np.testing.assert_allclose(kernels.rowwise_sym(a, b[:1]), _reference(a, b[:1])[:, 0], atol=1e-6, rtol=0)
    assert np.all(np.abs(np.diag(kernels.pairwise_sym(a, a))) < 1e-6)


def test_prepared_rows_and_16_bit_codes():
    a = _hard_rows(40, 2000, 2).astype(np.float32)
    q = _hard_rows(1, 2000, 3)[0] * 0.7
    prepared = kernels.ScaledRows(a)
    ref = _reference(a.astype(np.float64), q[None])[:, 0]
    np.testing.assert_allclose(prepared.to_query(q), ref, atol=1e-6, rtol=0)
    codes = prepared.encode(a)
    decoded = prepared.decode(codes)
    nz = a > 0
    rel = np.abs(decoded[nz] - a[nz]) / a[nz]
    assert rel[a[nz] / np.broadcast_to(prepared.scale, a.shape)[nz] > 2**-120].max() < 2**-10
    np.testing.assert_allclose(prepared.codes_to_query(codes, np.arange(40), q), ref, atol=2e-4, rtol=0)


def test_distance_module_uses_the_fused_kernel_for_large_problems_with_the_same_results():
    a = _hard_rows(40, 3000, 4)
    assert a.shape[0] * a.shape[0] * a.shape[1] >= FUSED_MIN_ELEMENTS
    fast = pairwise_distances(a, a)
    np.testing.assert_allclose(fast, _reference(a, a), atol=1e-6, rtol=0)
    np.testing.assert_allclose(sym_rows(a.astype(np.float32), a[:1]), _reference(a, a[:1])[:, 0], atol=1e-6)
    assert callable(distance_matrix)


def test_small_calls_run_on_one_thread_with_the_same_results_and_leave_the_thread_count():
    import numba

    a = _hard_rows(30, 2000, 4).astype(np.float32)
    q = _hard_rows(1, 2000, 5)[0]
    prepared = kernels.ScaledRows(a)
    ref = _reference(a.astype(np.float64), q[None])[:, 0]
    before = numba.get_num_threads()
    small = prepared.rows_to_query(a[[3, 7, 11]], q)  # 6,000 elements: the one-thread path
    assert numba.get_num_threads() == before
    np.testing.assert_allclose(small, ref[[3, 7, 11]], atol=1e-6, rtol=0)
    old = kernels.SERIAL_MAX_ELEMENTS
    kernels.SERIAL_MAX_ELEMENTS = 0  # force the threaded path: the same numbers
    try:
        np.testing.assert_allclose(prepared.rows_to_query(a[[3, 7, 11]], q), small, atol=1e-12, rtol=0)
    finally:
        kernels.SERIAL_MAX_ELEMENTS = old
