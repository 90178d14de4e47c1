"""Tests for hf_task2vec.transferability (LogME, LEEP, NCE, H-score, SFDA, N-LEEP, k-NN).

Reference values are computed independently here: by hand from each paper's definition,
or by brute force (explicit inverses/determinants and a generic optimiser for LogME).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from scipy.linalg import eigh
from scipy.optimize import minimize
from scipy.stats import multivariate_normal

from hf_task2vec.transferability import (
    TRANSFERABILITY_METRICS,
    h_score,
    knn_accuracy,
    leep,
    logme,
    nce,
    nleep,
    score_expert,
    sfda,
    sfda_shrinkage,
)

# --------------------------------------------------------------------------- helpers


def _separable(rng: np.random.Generator, n: int = 240, d: int = 8, k: int = 3, gap: float = 3.0):
    labels = np.arange(n) % k
    means = gap * rng.normal(size=(k, d))
    return means[labels] + rng.normal(size=(n, d)), labels


def _grid_then_lbfgs(neg, log_alphas: np.ndarray, log_betas: np.ndarray) -> float:
    """Minimise ``neg(log_alpha, log_beta)``: coarse grid, then L-BFGS from the best point."""
    start = min(((la, lb) for la in log_alphas for lb in log_betas), key=lambda p: neg(np.array(p)))
    res = minimize(neg, np.array(start), method="L-BFGS-B")
    return min(float(res.fun), neg(np.array(start)))


def _brute_logme_class(f: np.ndarray, y: np.ndarray) -> float:
    """max over (alpha, beta) of the LogME evidence / N, from the textbook formula.

    L = N/2 log b + D/2 log a - N/2 log 2pi - b/2 ||F m - y||^2 - a/2 m^T m - 1/2 log|A|,
    A = a I + b F^T F, m = b A^-1 F^T y -- with an explicit inverse and determinant,
    maximised by L-BFGS over (log a, log b) from a grid of starting points.
    """
    n, d = f.shape

    def neg(p: np.ndarray) -> float:
        a, b = math.exp(p[0]), math.exp(p[1])
        big_a = a * np.eye(d) + b * f.T @ f
        m = b * np.linalg.inv(big_a) @ f.T @ y
        _, logdet = np.linalg.slogdet(big_a)
        ev = (
            n / 2 * math.log(b)
            + d / 2 * math.log(a)
            - n / 2 * math.log(2 * math.pi)
            - b / 2 * float(np.sum((f @ m - y) ** 2))
            - a / 2 * float(m @ m)
            - logdet / 2
        )
        return -ev / n

    return -_grid_then_lbfgs(neg, np.linspace(-6.0, 12.0, 10), np.linspace(-4.0, 10.0, 8))


def _brute_logme_kernel_class(f: np.ndarray, y: np.ndarray) -> float:
    """Same evidence written as the Gaussian marginal y ~ N(0, a^-1 F F^T + b^-1 I)."""
    n = f.shape[0]
    gram = f @ f.T

    def neg(p: np.ndarray) -> float:
        cov = math.exp(-p[0]) * gram + math.exp(-p[1]) * np.eye(n)
        return -multivariate_normal(np.zeros(n), cov).logpdf(y) / n

    return -_grid_then_lbfgs(neg, np.linspace(-6.0, 12.0, 10), np.linspace(-4.0, 16.0, 11))


# --------------------------------------------------------------------------- NCE


def test_nce_hand_computed() -> None:
    # z (source prediction):  0 0 0 1 1 2
    # y (target label):       0 0 1 1 1 0
    # counts: z=0 -> {y0: 2, y1: 1}; z=1 -> {y1: 2}; z=2 -> {y0: 1};  N = 6
    # -H(Y|Z) = sum P(y,z) log P(y|z)
    #         = 2/6 log(2/3) + 1/6 log(1/3) + 2/6 log(2/2) + 1/6 log(1/1)
    expected = (2 / 6) * math.log(2 / 3) + (1 / 6) * math.log(1 / 3)
    z = np.array([0, 0, 0, 1, 1, 2])
    y = np.array([0, 0, 1, 1, 1, 0])
    assert nce(z, y) == pytest.approx(expected, abs=1e-12)
    # arbitrary integer ids for both label sets give the same value
    assert nce(np.array([5, 5, 5, 9, 9, 100]), np.array([7, 7, 3, 3, 3, 7])) == pytest.approx(expected, abs=1e-12)
    assert nce(z, y) < 0


def test_nce_perfect_mapping_is_zero() -> None:
    # y is a (many-to-one) function of z: source 3 and 5 -> target 0, 7 -> 1, 1 -> 2
    z = np.array([3, 3, 7, 7, 1, 1, 5, 5, 5])
    y = np.array([0, 0, 1, 1, 2, 2, 0, 0, 0])
    assert nce(z, y) == pytest.approx(0.0, abs=1e-12)
    # independent z and y: -H(Y|Z) = -H(Y) = log(1/2) for balanced binary y
    z = np.array([0, 0, 1, 1])
    y = np.array([0, 1, 0, 1])
    assert nce(z, y) == pytest.approx(math.log(0.5), abs=1e-12)


# --------------------------------------------------------------------------- LEEP


def test_leep_hand_computed() -> None:
    theta = np.array([[0.9, 0.1], [0.8, 0.2], [0.5, 0.5], [0.4, 0.6], [0.1, 0.9]])
    y = np.array([0, 0, 0, 1, 1])
    # joint P(y, z) = 1/N sum_{i: y_i = y} theta_iz, N = 5
    #   P(0, 0) = (0.9 + 0.8 + 0.5) / 5 = 0.44    P(0, 1) = (0.1 + 0.2 + 0.5) / 5 = 0.16
    #   P(1, 0) = (0.4 + 0.1) / 5       = 0.10    P(1, 1) = (0.6 + 0.9) / 5       = 0.30
    # P(z=0) = 0.54, P(z=1) = 0.46
    # P(0|0) = 0.44/0.54 = 22/27, P(1|0) = 0.10/0.54 = 5/27
    # P(0|1) = 0.16/0.46 = 8/23,  P(1|1) = 0.30/0.46 = 15/23
    eep = [
        22 / 27 * 0.9 + 8 / 23 * 0.1,
        22 / 27 * 0.8 + 8 / 23 * 0.2,
        22 / 27 * 0.5 + 8 / 23 * 0.5,
        5 / 27 * 0.4 + 15 / 23 * 0.6,
        5 / 27 * 0.1 + 15 / 23 * 0.9,
    ]
    expected = sum(math.log(p) for p in eep) / 5
    assert leep(theta, y) == pytest.approx(expected, abs=1e-12)
    # (P(z|y) in place of P(y|z) would give a different value: guard the test itself)
    wrong = [0.44 / 0.6 * 0.9 + 0.16 / 0.6 * 0.1]
    assert math.log(wrong[0]) != pytest.approx(math.log(eep[0]), abs=1e-3)


def test_leep_perfect_mapping() -> None:
    z = np.array([3, 3, 0, 0, 1, 1, 2, 2])  # source classes; target = z // 2 (many-to-one)
    y = z // 2
    onehot = np.eye(4)[z]
    assert leep(onehot, y) == pytest.approx(0.0, abs=1e-12)
    # confident but soft predictions: close to 0, and far above an uninformative expert
    soft = 0.96 * onehot + 0.01  # rows: 0.97 on the true source class, 0.01 elsewhere
    score = leep(soft, y)
    assert -0.05 < score <= 0.0
    uniform = np.full((8, 4), 0.25)
    assert leep(uniform, y) == pytest.approx(math.log(0.5), abs=1e-12)  # P(y|z) = P(y) = 1/2
    assert score > leep(uniform, y)


def test_leep_accepts_float32_and_tiny_normalisation_error() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(30, 5))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = rng.integers(0, 3, 30)
    assert leep(p.astype(np.float32), y) == pytest.approx(leep(p, y), abs=1e-6)


# --------------------------------------------------------------------------- LogME


@pytest.mark.parametrize(
    ("n", "d", "k", "seed", "duplicate_column"),
    [(40, 4, 3, 0, False), (30, 6, 2, 1, True), (50, 3, 4, 2, False)],
)
def test_logme_matches_brute_force(n: int, d: int, k: int, seed: int, duplicate_column: bool) -> None:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    rng.shuffle(y)
    f = rng.normal(size=(n, d)) + 0.8 * rng.normal(size=(k, d))[y]
    if duplicate_column:  # rank-deficient F^T F
        f[:, -1] = f[:, 0]
    expected = np.mean([_brute_logme_class(f, (y == c).astype(float)) for c in range(k)])
    got = logme(f, y)
    assert got == pytest.approx(expected, abs=1e-4)
    assert got >= expected - 1e-7  # LogME is the maximum: a local optimiser can't beat it


def test_logme_more_dims_than_samples_matches_kernel_form() -> None:
    # N < D: every target is interpolated exactly, the optimum has beta -> inf for some
    # classes and alpha -> inf for others; compare against the marginal-likelihood form.
    rng = np.random.default_rng(0)
    f = rng.normal(size=(12, 20))
    y = np.arange(12) % 3
    expected = np.mean([_brute_logme_kernel_class(f, (y == c).astype(float)) for c in range(3)])
    got = logme(f, y)
    assert np.isfinite(got)
    assert got == pytest.approx(expected, abs=1e-4)
    assert got >= expected - 1e-7


def test_logme_uninformative_class_reaches_boundary() -> None:
    # A class whose indicator is orthogonal to every feature column: the best model ignores
    # the features (alpha -> inf) and the evidence is that of N(0, beta^-1 I) with
    # beta = N / ||y||^2:  1/N [N/2 log(N/n_c) - N/2 - N/2 log 2pi].
    n, n_c = 8, 4
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    f = np.array([[1.0], [-1.0], [2.0], [-2.0], [1.0], [-1.0], [3.0], [-3.0]])  # sums to 0 per class
    per_class = 0.5 * math.log(n / n_c) - 0.5 - 0.5 * math.log(2 * math.pi)
    assert logme(f, y) == pytest.approx(per_class, abs=1e-8)


def test_logme_separable_beats_random() -> None:
    rng = np.random.default_rng(3)
    f_sep, y = _separable(rng)
    f_rand = rng.normal(size=f_sep.shape)
    assert logme(f_sep, y) > logme(f_rand, y) + 0.1


def test_logme_label_remap_and_dtypes() -> None:
    rng = np.random.default_rng(4)
    f, y = _separable(rng, n=60)
    base = logme(f, y)
    assert logme(f.astype(np.float32), y) == pytest.approx(base, abs=1e-5)
    assert logme(f, y * 10 + 3) == pytest.approx(base, abs=1e-12)
    assert logme(f, y.astype(float)) == pytest.approx(base, abs=1e-12)


# --------------------------------------------------------------------------- H-score


def test_h_score_one_dimensional_by_hand() -> None:
    # f = 0, 2 | 4, 6: class means 1 and 5, overall mean 3
    # cov(E[f|y]) = ((1-3)^2 + (5-3)^2) / 2 = 4;  cov(f) = (9 + 1 + 1 + 9) / 4 = 5
    f = np.array([[0.0], [2.0], [4.0], [6.0]])
    y = np.array([0, 0, 1, 1])
    assert h_score(f, y) == pytest.approx(4 / 5, abs=1e-12)


def test_h_score_matches_direct_covariances() -> None:
    rng = np.random.default_rng(5)
    n, d, k = 90, 5, 3
    y = rng.integers(0, k, n)
    f = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + rng.normal(size=(k, d))[y]
    g = np.stack([f[y == y_i].mean(axis=0) for y_i in y])  # E[f | y_i], sample by sample
    cov_f = np.cov(f, rowvar=False, bias=True)
    cov_g = np.cov(g, rowvar=False, bias=True)
    expected = float(np.trace(np.linalg.inv(cov_f) @ cov_g))
    assert h_score(f, y) == pytest.approx(expected, rel=1e-9)
    # invariant to invertible linear maps of the features
    mix = rng.normal(size=(d, d)) + 3 * np.eye(d)
    assert h_score(f @ mix, y) == pytest.approx(expected, rel=1e-7)
    # pseudo-inverse: a duplicated feature carries no new information
    assert h_score(np.hstack([f, f[:, :1]]), y) == pytest.approx(expected, rel=1e-7)
    # bounds: 0 <= H <= K - 1 (whitened between-class covariance has rank <= K - 1)
    assert 0 < expected <= k - 1


def test_h_score_shrinkage_matches_direct_ledoit_wolf() -> None:
    rng = np.random.default_rng(6)
    n, d, k = 40, 12, 3
    y = np.arange(n) % k
    f = rng.normal(size=(n, d)) + rng.normal(size=(k, d))[y]
    x = f - f.mean(axis=0)
    s = x.T @ x / n
    mu = np.trace(s) / d
    # Ledoit & Wolf (2004): a = min(b2, d2) / d2, d2 = ||S - mu I||_F^2,
    # b2 = 1/n^2 sum_i ||x_i x_i^T - S||_F^2
    d2 = np.sum((s - mu * np.eye(d)) ** 2)
    b2 = sum(np.sum((np.outer(xi, xi) - s) ** 2) for xi in x) / n**2
    a = min(b2, d2) / d2
    from sklearn.covariance import ledoit_wolf

    assert a == pytest.approx(ledoit_wolf(f)[1], rel=1e-9)  # our reference agrees with sklearn
    g = np.stack([f[y == y_i].mean(axis=0) for y_i in y])
    cov_g = np.cov(g, rowvar=False, bias=True)
    shrunk = (1 - a) * s + a * mu * np.eye(d)
    expected = float(np.trace(np.linalg.inv(shrunk) @ ((1 - a) * cov_g)))
    assert h_score(f, y, shrinkage=True) == pytest.approx(expected, rel=1e-9)
    assert h_score(f, y, shrinkage=True) != pytest.approx(h_score(f, y), rel=1e-3)


def test_h_score_separable_beats_random() -> None:
    rng = np.random.default_rng(7)
    f_sep, y = _separable(rng)
    f_rand = rng.normal(size=f_sep.shape)
    assert h_score(f_sep, y) > h_score(f_rand, y) + 0.5
    assert h_score(f_sep, y, shrinkage=True) > h_score(f_rand, y, shrinkage=True) + 0.5


def test_h_score_saturates_in_high_dimension_but_shrinkage_does_not() -> None:
    # With D >= N - 1 the plain H-score of *any* features reaches its maximum K - 1
    # (the class means are always in the span): the failure the shrinkage variant fixes.
    rng = np.random.default_rng(8)
    n, d, k = 30, 60, 3
    y = np.arange(n) % k
    f_rand = rng.normal(size=(n, d))
    f_sep = f_rand + 2.0 * rng.normal(size=(k, d))[y]
    assert h_score(f_rand, y) == pytest.approx(k - 1, abs=1e-6)
    assert h_score(f_sep, y) == pytest.approx(k - 1, abs=1e-6)
    assert h_score(f_sep, y, shrinkage=True) > h_score(f_rand, y, shrinkage=True) + 0.3


# --------------------------------------------------------------------------- SFDA


def _softmax_rows(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_sfda_one_dimensional_by_hand() -> None:
    # x = 0, 1 | 3, 6; class means 0.5 and 4.5, overall mean 2.5, priors 1/2
    # S_W = (0.25 + 0.25 + 2.25 + 2.25) / 4 = 1.25;  S_B = (1/2)(-2)^2 + (1/2)(2)^2 = 4
    x = [0.0, 1.0, 3.0, 6.0]
    y = [0, 0, 1, 1]
    f = np.array(x)[:, None]
    assert sfda_shrinkage(f, np.array(y)) == pytest.approx(math.exp(-4.0), rel=1e-12)  # exp(-a sigma_max(S_B))
    lam = 0.5

    def posterior(xs: list[float]) -> list[list[float]]:
        m = [(xs[0] + xs[1]) / 2, (xs[2] + xs[3]) / 2]
        s_w = sum((xi - m[yi]) ** 2 for xi, yi in zip(xs, y, strict=True)) / 4
        s = (1 - lam) * s_w + lam  # the regularised within-class variance
        out = []
        for xi in xs:  # linear discriminant: x mu_c / s - mu_c^2 / (2 s) + log pi_c
            logit = [xi * mc / s - mc**2 / (2 * s) + math.log(0.5) for mc in m]
            z = [math.exp(v - max(logit)) for v in logit]
            out.append([v / sum(z) for v in z])
        return out

    p1 = posterior(x)
    # ConfMix: w_i = softmax(p1_i)[y_i]; mix with the mean of the other class (4.5 for class 0, 0.5 for class 1)
    other = [4.5, 0.5]
    mixed = []
    for xi, yi, p in zip(x, y, p1, strict=True):
        w = math.exp(p[yi]) / (math.exp(p[0]) + math.exp(p[1]))
        mixed.append(w * xi + (1 - w) * other[yi])
    p2 = posterior(mixed)
    expected = sum(p[yi] for p, yi in zip(p2, y, strict=True)) / 4
    assert sfda(f, np.array(y), shrinkage=lam) == pytest.approx(expected, abs=1e-12)
    assert 0.5 < expected < 1.0


def _sfda_reference(f: np.ndarray, y: np.ndarray, lam: float, released: bool = False) -> float:
    """SFDA with the explicit Fisher projection: generalised eigenvectors of (S_B, S_W'), keep K - 1.
    ``released``: the authors' code's S_W' = (1 - lam) S_W + lam tr(S_W)/D I and ConfMix towards the
    unweighted mean of the other classes' means."""
    n, d = f.shape
    k = int(y.max()) + 1

    def stage(x: np.ndarray) -> np.ndarray:
        pi = np.array([np.mean(y == c) for c in range(k)])
        mu = np.stack([x[y == c].mean(0) for c in range(k)])
        s_w = sum(pi[c] * np.cov(x[y == c], rowvar=False, bias=True) for c in range(k))
        s_b = sum(pi[c] * np.outer(mu[c] - x.mean(0), mu[c] - x.mean(0)) for c in range(k))
        ridge_scale = np.trace(s_w) / d if released else 1.0  # each stage's own S_W (the released code refits)
        s_reg = (1 - lam) * s_w + lam * ridge_scale * np.eye(d)
        evals, evecs = eigh(s_b, s_reg)  # evecs^T s_reg evecs = I
        u = evecs[:, np.argsort(evals)[::-1][: k - 1]]
        z, zm = x @ u, mu @ u  # Fisher space, identity within-class covariance
        logits = z @ zm.T - 0.5 * np.sum(zm**2, 1)[None] + np.log(pi)[None]
        return _softmax_rows(logits)

    p1 = stage(f)
    w = _softmax_rows(p1)[np.arange(n), y][:, None]
    if released:
        mu = np.stack([f[y == c].mean(0) for c in range(k)])
        other = np.stack([np.delete(mu, c, axis=0).mean(0) for c in range(k)])
    else:
        other = np.stack([f[y != c].mean(0) for c in range(k)])
    p2 = stage(w * f + (1 - w) * other[y])
    return float(p2[np.arange(n), y].mean())


@pytest.mark.parametrize(("n", "d", "k"), [(45, 6, 3), (14, 20, 3)])
def test_sfda_released_variant_matches_its_explicit_form(n: int, d: int, k: int) -> None:
    # imbalanced classes, so the two ConfMix targets differ; (14, 20): singular within-class scatter
    rng = np.random.default_rng(3 * n + d)
    y = np.minimum(np.arange(n) % (k + 1), k - 1)  # the last class twice as large
    f = 0.3 * (rng.normal(size=(n, d)) + 1.5 * rng.normal(size=(k, d))[y])
    s_w = sum(np.mean(y == c) * np.cov(f[y == c], rowvar=False, bias=True) for c in range(k))
    lam = max(math.exp(-5.0 * np.linalg.eigvalsh(s_w).max()), 1e-10)  # the released code's rule
    assert sfda_shrinkage(f, y, variant="released") == pytest.approx(lam, rel=1e-9)
    got = sfda(f, y, variant="released")
    assert got == pytest.approx(_sfda_reference(f, y, lam, released=True), abs=1e-8)
    # the variants differ on these inputs (rule, ridge scale and ConfMix target all change)
    assert abs(got - sfda(f, y)) > 1e-4
    with pytest.raises(ValueError, match="variant"):
        sfda(f, y, variant="official")


@pytest.mark.parametrize(("n", "d", "k", "lam"), [(40, 6, 3, 0.3), (60, 4, 4, 0.05), (12, 20, 3, 0.2)])
def test_sfda_matches_explicit_fisher_projection(n: int, d: int, k: int, lam: float) -> None:
    # (12, 20): fewer samples than dimensions, the within-class scatter is singular
    rng = np.random.default_rng(n + d)
    y = np.arange(n) % k
    f = rng.normal(size=(n, d)) + 1.2 * rng.normal(size=(k, d))[y]
    assert sfda(f, y, shrinkage=lam) == pytest.approx(_sfda_reference(f, y, lam), abs=1e-9)
    # adaptive lambda: exp(-sigma_max(S_B)) computed directly
    pi = np.bincount(y) / n
    mu = np.stack([f[y == c].mean(0) for c in range(k)])
    s_b = sum(pi[c] * np.outer(mu[c] - f.mean(0), mu[c] - f.mean(0)) for c in range(k))
    lam_auto = max(math.exp(-np.linalg.eigvalsh(s_b).max()), 1e-10)
    assert sfda_shrinkage(f, y) == pytest.approx(lam_auto, rel=1e-9)
    assert sfda(f, y) == pytest.approx(_sfda_reference(f, y, lam_auto), abs=1e-8)


def test_sfda_separable_beats_random_and_rejects_bad_shrinkage() -> None:
    rng = np.random.default_rng(11)
    f_sep, y = _separable(rng, gap=1.0)
    f_rand = rng.normal(size=f_sep.shape)
    assert sfda(f_sep, y) > sfda(f_rand, y) + 0.2
    with pytest.raises(ValueError, match="shrinkage"):
        sfda(f_sep, y, shrinkage=0.0)


# --------------------------------------------------------------------------- N-LEEP


def test_nleep_equals_conditional_entropy_for_separated_clusters() -> None:
    # three tight clusters on a line (the PCA keeps one dimension); the GMM posterior is one-hot on
    # the clusters, so N-LEEP = LEEP(one-hot z) = sum P(y, z) log P(y | z) = -H(Y | Z)
    rng = np.random.default_rng(12)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [20.0, 0.0]])
    z = np.repeat([0, 1, 2], 10)
    f = centres[z] + 0.05 * rng.normal(size=(30, 2))
    y = np.array([0] * 7 + [1] * 3 + [1] * 10 + [0] * 5 + [1] * 5)
    expected = (7 / 30) * math.log(0.7) + (3 / 30) * math.log(0.3) + (10 / 30) * math.log(0.5)
    assert nleep(f, y, n_components=3) == pytest.approx(expected, abs=1e-6)
    # default: as many components as target classes (2); still a valid LEEP value
    assert nleep(f, y) <= 0.0
    assert nleep(f, y, n_components=3) > nleep(rng.normal(size=(30, 2)), y, n_components=3)
    with pytest.raises(ValueError, match="variance"):
        nleep(f, y, variance=1.5)


# --------------------------------------------------------------------------- k-NN


def test_knn_accuracy_by_hand() -> None:
    # x = 0, 1, 2, 10, 11, 12.5 with labels 0 0 1 1 1 0 (leave-one-out)
    # k=1: 0->1 ok, 1->0 (tie with 2 at distance 1, lower index first) ok, 2->1 wrong, 10->11 ok, 11->10 ok,
    #      12.5->11 wrong: 4/6
    # k=2: tied votes go to the nearest: 0:{1,2}->0 ok, 1:{0,2}->0 ok, 2:{1,0}->0 wrong, 10:{11,12.5}->1 ok,
    #      11:{10,12.5}->1 ok, 12.5:{11,10}->1 wrong: 4/6
    # k=3: 0:{1,2,10}->1 wrong, 1:{0,2,10}->1 wrong, 2:{1,0,10}->0 wrong, 10:{11,12.5,2}->1 ok,
    #      11:{10,12.5,2}->1 ok, 12.5:{11,10,2}->1 wrong: 2/6
    f = np.array([0.0, 1.0, 2.0, 10.0, 11.0, 12.5])[:, None]
    y = np.array([0, 0, 1, 1, 1, 0])
    assert knn_accuracy(f, y, k=1, metric="euclidean") == pytest.approx(4 / 6)
    assert knn_accuracy(f, y, k=2, metric="euclidean") == pytest.approx(4 / 6)
    assert knn_accuracy(f, y, k=3, metric="euclidean") == pytest.approx(2 / 6)
    # cosine: only directions count (scaling a row changes nothing); k is capped at N - 1
    rng = np.random.default_rng(13)
    g, labels = _separable(rng, n=60)
    scaled = g * rng.uniform(0.1, 10.0, size=(60, 1))
    assert knn_accuracy(scaled, labels) == knn_accuracy(g, labels)
    assert knn_accuracy(g, labels) > 0.9 > knn_accuracy(rng.normal(size=g.shape), labels)
    assert knn_accuracy(f, y, k=50, metric="euclidean") == knn_accuracy(f, y, k=5, metric="euclidean")
    with pytest.raises(ValueError, match="k-NN metric"):
        knn_accuracy(f, y, metric="manhattan")


# --------------------------------------------------------------------------- registry


def test_registry_and_score_expert_dispatch() -> None:
    assert set(TRANSFERABILITY_METRICS) == {
        "logme",
        "leep",
        "nce",
        "h_score",
        "h_score_shrinkage",
        "sfda",
        "nleep",
        "knn",
    }
    rng = np.random.default_rng(9)
    f, y = _separable(rng, n=60)
    logits = rng.normal(size=(60, 7))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert score_expert("logme", features=f, labels=y) == logme(f, y)
    assert score_expert("H-Score", features=f, labels=y) == h_score(f, y)
    assert score_expert("h_score_shrinkage", features=f, labels=y) == h_score(f, y, shrinkage=True)
    assert score_expert("LEEP", source_probs=probs, labels=y) == leep(probs, y)
    assert score_expert("nce", source_probs=probs, labels=y) == nce(probs.argmax(1), y)
    assert score_expert("SFDA", features=f, labels=y) == sfda(f, y)
    assert score_expert("n-leep", features=f, labels=y) == nleep(f, y)
    assert score_expert("knn", features=f, labels=y) == knn_accuracy(f, y)
    for name, fn in TRANSFERABILITY_METRICS.items():
        assert callable(fn), name


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("metric", ["logme", "h_score", "sfda", "nleep", "knn"])
def test_feature_metrics_reject_bad_input(metric: str) -> None:
    fn = TRANSFERABILITY_METRICS[metric]
    f = np.random.default_rng(0).normal(size=(10, 3))
    y = np.arange(10) % 2
    with pytest.raises(ValueError, match="length mismatch"):
        fn(f, y[:9])
    with pytest.raises(ValueError, match="single class"):
        fn(f, np.zeros(10, dtype=int))
    bad = f.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fn(bad, y)
    with pytest.raises(ValueError, match="empty"):
        fn(np.zeros((0, 3)), np.zeros(0, dtype=int))
    with pytest.raises(ValueError, match="empty"):
        fn(f, np.zeros(0, dtype=int))
    with pytest.raises(ValueError, match="reshape"):
        fn(f[:, 0], y)
    with pytest.raises(ValueError, match="integer"):
        fn(f, y + 0.5)
    with pytest.raises(ValueError, match="argmax"):
        fn(f, np.eye(2)[y])
    with pytest.raises(ValueError, match="np.unique"):
        fn(f, np.array(["a", "b"] * 5))


def test_prob_metrics_reject_bad_input() -> None:
    p = np.full((6, 3), 1 / 3)
    y = np.array([0, 1, 0, 1, 0, 1])
    with pytest.raises(ValueError, match="softmax"):
        leep(p - 0.5, y)
    with pytest.raises(ValueError, match="sum to 1"):
        leep(p * 2, y)
    with pytest.raises(ValueError, match="length mismatch"):
        leep(p, y[:5])
    with pytest.raises(ValueError, match="single class"):
        leep(p, np.ones(6, dtype=int))
    with pytest.raises(ValueError, match="length mismatch"):
        nce(np.array([0, 1, 2]), y)
    with pytest.raises(ValueError, match="single class"):
        nce(np.array([0, 1, 2, 0, 1, 2]), np.full(6, 4))
    with pytest.raises(ValueError, match="empty"):
        nce(np.array([], dtype=int), np.array([], dtype=int))


def test_score_expert_errors_name_the_fix() -> None:
    f = np.random.default_rng(0).normal(size=(6, 2))
    y = np.array([0, 1, 0, 1, 0, 1])
    with pytest.raises(ValueError, match="choose one of"):
        score_expert("task2vec", features=f, labels=y)
    with pytest.raises(ValueError, match="needs features"):
        score_expert("logme", source_probs=np.full((6, 2), 0.5), labels=y)
    with pytest.raises(ValueError, match="needs source_probs"):
        score_expert("leep", features=f, labels=y)
    with pytest.raises(ValueError, match="needs source_probs"):
        score_expert("nce", features=f, labels=y)


def test_non_contiguous_labels_are_remapped_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    z = np.array([0, 0, 0, 1, 1, 2])
    with caplog.at_level(logging.INFO, logger="hf_task2vec.transferability"):
        assert nce(z, np.array([4, 4, 9, 9, 9, 4])) == pytest.approx(nce(z, np.array([0, 0, 1, 1, 1, 0])))
    assert "re-indexing" in caplog.text
