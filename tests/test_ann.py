"""Two-stage expert search (hf_task2vec.ann): faiss HNSW candidates + exact re-ranking return the exact top-k."""

from __future__ import annotations

import numpy as np
import pytest

from hf_task2vec import ExpertIndex, TaskEmbedding
from hf_task2vec.ann import TwoStageIndex
from hf_task2vec.distance import pairwise_distances

pytest.importorskip("faiss")

META = {"probe": "embedded", "probe_revision": "sha256:abc", "method": "montecarlo", "image_size": "32"}


def _clustered(n: int, dim: int, seed: int, n_queries: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Heavy-tailed Fisher-like rows (log-normal per filter, ~20% zeros, task clusters), and queries
    drawn near random clusters (new tasks, not copies of experts)."""
    rng = np.random.default_rng(seed)
    mu = rng.normal(-8, 3, size=dim)
    sd = rng.uniform(0.5, 4.0, size=dim)
    centres = rng.standard_normal((max(2, n // 15), dim))
    masks = rng.random((centres.shape[0], dim)) < 0.2

    def draw(clusters: np.ndarray) -> np.ndarray:
        logs = mu + sd * (0.8 * centres[clusters] + 0.6 * rng.standard_normal((clusters.size, dim)))
        return np.where(masks[clusters], 0.0, np.exp(logs))

    return draw(rng.integers(0, centres.shape[0], n)), draw(rng.integers(0, centres.shape[0], n_queries))


def _exact_top(values, query, k, bias):
    d = pairwise_distances(values, query[None], kind="symmetric")[:, 0] + bias
    return np.lexsort((np.arange(d.size), d))[:k], d


def test_two_stage_returns_the_exact_top_k_on_a_seeded_index():
    values, queries = _clustered(1500, 384, seed=0, n_queries=25)
    values32 = values.astype(np.float32)
    trivial = np.full((1, values.shape[1]), 1e-6)
    index = TwoStageIndex.build(values32, trivial=trivial, exact_values=values32, n_components=32)
    bias = -0.15 * index.complexity
    ref_c = pairwise_distances(values32, trivial, kind="symmetric")[:, 0]
    np.testing.assert_allclose(index.complexity, ref_c, atol=1e-6)
    for q in queries:
        got, scores = index.search(q, 10, candidates=128, bias=bias)
        want, d = _exact_top(values32, q, 10, bias)
        assert got.tolist() == want.tolist()
        np.testing.assert_allclose(scores, d[want], atol=1e-6)


def test_candidates_alone_are_approximate_and_the_re_ranking_is_what_makes_it_exact():
    """The stage-1 order differs from the exact order (the test above would pass trivially otherwise)."""
    values, queries = _clustered(1500, 384, seed=1, n_queries=10)
    index = TwoStageIndex.build(values.astype(np.float32), n_components=32)
    differs = 0
    for q in queries:
        want, _ = _exact_top(values.astype(np.float32), q, 10, 0.0)
        differs += index.candidates(q, 10).tolist() != want.tolist()
    assert differs > 0


def test_default_candidates_grow_with_the_index_and_with_k():
    from hf_task2vec.ann import SMALL_INDEX, default_candidates

    assert default_candidates(10_000, 10) == 256 and default_candidates(SMALL_INDEX, 10) == 256
    assert default_candidates(SMALL_INDEX + 1, 10) == 1024 and default_candidates(100_000, 10) == 1024
    assert default_candidates(10_000, 100) == 1600  # never fewer than 16 per expert asked for
    # a search without candidates= uses them: here all 300 experts, so the top-5 is the exact one
    values, queries = _clustered(300, 128, seed=4, n_queries=2)
    index = TwoStageIndex.build(values, n_components=8)
    for q in queries:
        ref = pairwise_distances(values, q[None], kind="symmetric")[:, 0]
        assert index.search(q, 5)[0].tolist() == np.lexsort((np.arange(300), ref))[:5].tolist()


def test_codes_only_scores_are_within_1e5_and_a_full_scan_ranks_like_exact():
    values, queries = _clustered(400, 256, seed=2, n_queries=5)
    index = TwoStageIndex.build(values, n_components=16)
    for q in queries:
        ref = pairwise_distances(values, q[None], kind="symmetric")[:, 0]
        np.testing.assert_allclose(index.exact(q), ref, atol=2e-5)


def test_storage_round_trip_and_hash_checks():
    values, queries = _clustered(300, 128, seed=3, n_queries=3)
    index = TwoStageIndex.build(values, n_components=8)
    tensors, meta = index.to_tensors()
    back = TwoStageIndex.from_tensors(dict(tensors), dict(meta))
    assert back is not None
    for q in queries:
        assert back.search(q, 5)[0].tolist() == index.search(q, 5)[0].tolist()
    tampered = dict(tensors)
    tampered["ann.codes"] = tensors["ann.codes"].copy()
    tampered["ann.codes"][0, 0] ^= 1
    assert TwoStageIndex.from_tensors(tampered, dict(meta)) is None  # data changed: rebuild
    assert TwoStageIndex.from_tensors(dict(tensors), {**meta, "ann_format_version": "0"}) is None


def test_expert_index_two_stage_matches_exact_and_is_the_default_for_large_indexes(monkeypatch):
    values, queries = _clustered(600, 256, seed=4, n_queries=8)
    index = ExpertIndex()
    rng = np.random.default_rng(0)
    for i, v in enumerate(values):
        triv = np.full(v.shape, 1e-6, np.float32) if i % 2 else rng.gamma(2.0, 1e-4, v.shape).astype(np.float32)
        index.add(f"expert-{i}", TaskEmbedding(v.astype(np.float32), triv, [], {**META, "task": f"t{i}"}))
    for metric in ("asymmetric", "symmetric"):
        for q in queries:
            emb = TaskEmbedding(q.astype(np.float32), np.full(q.shape, 1e-6, np.float32), [], {**META, "task": "q"})
            exact = index.select(emb, k=10, metric=metric, exact=True)
            fast = index.select(emb, k=10, metric=metric, exact=False, candidates=96)
            assert [m.model_id for m in fast] == [m.model_id for m in exact]
            np.testing.assert_allclose([m.score for m in fast], [m.score for m in exact], atol=1e-6)
    import hf_task2vec.selection as selection

    monkeypatch.setattr(selection, "EXACT_MAX_FILTER_PAIRS", 1000)  # a size knob, not our function
    built = index._cache.get("ann:asymmetric:0.15")
    index.select(emb, k=3)
    assert index._cache.get("ann:asymmetric:0.15") is built is not None  # the two-stage index served the default call
    with pytest.raises(ValueError, match="needs a k"):
        index.select(emb, k=None, exact=False)
    index.remove("expert-0")
    assert not any(k.startswith("ann:") for k in index._cache)  # rebuilt after the experts change
