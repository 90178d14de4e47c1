"""Distances against hand-computed values and the paper's asymmetric ordering."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hf_task2vec import IncompatibleEmbeddingsError, TaskEmbedding, distance, distance_matrix, taxonomic_distance
from hf_task2vec.distance import pairwise_distances


def emb(values, trivial=None, **meta) -> TaskEmbedding:
    values = np.asarray(values, dtype=np.float32)
    trivial = np.full_like(values, 0.5) if trivial is None else trivial
    base = {"probe": "p", "probe_revision": "r", "method": "montecarlo", "image_size": "32", "task": "t"}
    base.update(meta)
    return TaskEmbedding(values, trivial, [("layer", 0, values.size)], base)


def test_symmetric_by_hand():
    a, b = emb([1.0, 2.0, 0.0, 4.0]), emb([3.0, 2.0, 0.0, 1.0])
    # a/(a+b) = [1/4, 1/2, 1/2 (0/0 -> 1/2), 4/5];  b/(a+b) = [3/4, 1/2, 1/2, 1/5]
    u = [0.25, 0.5, 0.5, 0.8]
    v = [0.75, 0.5, 0.5, 0.2]
    dot = 0.25 * 0.75 + 0.25 + 0.25 + 0.8 * 0.2
    nu = math.sqrt(sum(x * x for x in u))
    nv = math.sqrt(sum(x * x for x in v))
    assert distance(a, b) == pytest.approx(1 - dot / (nu * nv), rel=1e-12)
    assert distance(a, b) == pytest.approx(distance(b, a), rel=1e-12)
    assert distance(a, a) == pytest.approx(0.0, abs=1e-12)


def test_symmetric_is_scale_sensitive_per_coordinate_not_globally():
    a = emb([1.0, 2.0, 3.0])
    # scaling one task by a constant changes a/(a+b): d_sym is not the cosine distance
    assert distance(a, emb([2.0, 4.0, 6.0])) == pytest.approx(0.0, abs=1e-12)
    assert distance(a, emb([2.0, 4.0, 6.0]), kind="cosine") == pytest.approx(0.0, abs=1e-7)


def test_cosine_by_hand():
    a, b = emb([1.0, 0.0, 1.0]), emb([0.0, 1.0, 1.0])
    assert distance(a, b, kind="cosine") == pytest.approx(1 - 1 / 2, rel=1e-7)


def test_asymmetric_by_hand_and_ordering():
    """d_asym(a -> b) = d_sym(a, b) - alpha d_sym(a, t0); among sources equally far from a target, the
    more complex one (further from the trivial embedding) is preferred (paper, Sect. 3)."""
    from scipy.optimize import brentq

    trivial = np.ones(4, dtype=np.float32)
    target = emb([1.0, 2.0, 3.0, 4.0], trivial)
    simple = emb([0.3, 0.1, 0.1, 0.1], trivial)  # everywhere below the prior
    d_simple = distance(simple, target)

    def complex_source(theta: float) -> TaskEmbedding:  # one filter far above the prior
        return emb([0.1, 0.1, 0.1, theta], trivial)

    theta = brentq(lambda th: distance(complex_source(th), target) - d_simple, 1.0, 100.0)
    complex_ = complex_source(theta)
    assert distance(complex_, target) == pytest.approx(d_simple, abs=1e-6)
    c_simple = distance(simple, emb(trivial, trivial))
    c_complex = distance(complex_, emb(trivial, trivial))
    assert c_complex > c_simple
    a_simple = distance(simple, target, kind="asymmetric", alpha=0.15)
    a_complex = distance(complex_, target, kind="asymmetric", alpha=0.15)
    assert a_simple == pytest.approx(d_simple - 0.15 * c_simple, rel=1e-9)
    assert a_complex < a_simple
    # alpha = 0 gives back the symmetric distance; the asymmetric distance is not symmetric
    assert distance(simple, target, kind="asymmetric", alpha=0.0) == pytest.approx(d_simple)
    assert distance(target, simple, kind="asymmetric") != pytest.approx(a_simple)


def test_distance_matrix_matches_pairs_and_is_vectorised():
    rng = np.random.default_rng(0)
    embs = [emb(rng.gamma(1.0, size=50), trivial=rng.gamma(1.0, size=50).astype(np.float32)) for _ in range(7)]
    for kind in ("symmetric", "asymmetric", "cosine"):
        m = distance_matrix(embs, kind=kind)
        loop = np.array([[distance(a, b, kind=kind) for b in embs] for a in embs])
        np.testing.assert_allclose(m, loop, rtol=1e-10, atol=1e-12)
    rect = distance_matrix(embs[:3], embs[3:], kind="asymmetric")
    assert rect.shape == (3, 4)
    np.testing.assert_allclose(rect, distance_matrix(embs, kind="asymmetric")[:3, 3:], rtol=1e-12)
    # tiny blocks exercise the blocking code
    a = np.stack([e.values for e in embs]).astype(np.float64)
    from hf_task2vec.distance import _sym_matrix

    np.testing.assert_allclose(_sym_matrix(a, a, block_bytes=1), distance_matrix(embs), rtol=1e-12)
    assert pairwise_distances(a, a).shape == (7, 7)


def test_mismatched_probes_raise():
    a = emb([1.0, 2.0])
    b = emb([1.0, 2.0], probe="other")
    with pytest.raises(IncompatibleEmbeddingsError, match="probe"):
        distance(a, b)
    with pytest.raises(IncompatibleEmbeddingsError, match="method"):
        distance_matrix([a, emb([1.0, 2.0], method="variational")])
    with pytest.raises(IncompatibleEmbeddingsError, match="dimension"):
        distance(a, emb([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="kind"):
        distance(a, a, kind="euclid")


def test_text_embeddings_with_other_truncation_or_pooling_raise():
    a = emb([1.0, 2.0], modality="text", max_length="64", pooling="mean")
    with pytest.raises(IncompatibleEmbeddingsError, match=r"max_length 64 vs 128 \(.*the same --max-length\)"):
        distance(a, emb([1.0, 2.0], modality="text", max_length="128", pooling="mean"))
    with pytest.raises(IncompatibleEmbeddingsError, match="pooling"):
        distance(a, emb([1.0, 2.0], modality="text", max_length="64", pooling="cls"))
    assert distance(a, emb([2.0, 1.0], modality="text", max_length="64", pooling="mean")) > 0
    assert distance(a, emb([2.0, 1.0])) > 0  # a file that does not record them (older format) still compares


def test_taxonomic_distance_min_over_pairs():
    tree = {
        ("cat", "dog"): 2,
        ("cat", "cow"): 4,
        ("dog", "cow"): 4,
        ("cat", "bird"): 6,
        ("dog", "bird"): 6,
        ("cow", "bird"): 6,
    }

    def d(a, b):
        return 0 if a == b else tree.get((a, b), tree.get((b, a)))

    assert taxonomic_distance(["cat", "bird"], ["dog", "cow"], d) == 2
    assert taxonomic_distance(["bird"], ["cow", "dog"], d) == 6
    assert taxonomic_distance(["cow"], ["cow", "bird"], d) == 0
    with pytest.raises(ValueError):
        taxonomic_distance([], ["cow"], d)
