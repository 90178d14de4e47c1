"""Peer transferability metrics, used as model-selection baselines next to Task2Vec.

Each metric scores how well a frozen pre-trained *expert* (a feature extractor, or a
classifier over its own *source* label set) is expected to transfer to a labelled target
task, using only a forward pass over the target data. All scores are "higher = better".

Implemented from the papers:

* :func:`logme` -- LogME, You, Liu, Wang & Long, "LogME: Practical Assessment of
  Pre-trained Models for Transfer Learning", ICML 2021.
* :func:`leep` -- LEEP, Nguyen, Hassner, Seeger & Archambeau, "LEEP: A New Measure to
  Evaluate Transferability of Learned Representations", ICML 2020.
* :func:`nce` -- NCE, Tran, Nguyen & Hassner, "Transferability and Hardness of Supervised
  Classification Tasks", ICCV 2019.
* :func:`h_score` -- H-score, Bao, Li, Huang, Wang, Wornell & Zhang, "An
  Information-Theoretic Approach to Transferability in Task Transfer Learning", ICIP 2019;
  with ``shrinkage=True`` the regularised variant of Ibrahim, Ponomareva & Mazumder,
  "Newer is not always better: Rethinking transferability metrics, their peculiarities,
  stability and performance", ECML-PKDD 2022 (Ledoit-Wolf shrinkage of the feature
  covariance).
* :func:`sfda` -- SFDA, Shao, Zhao, Ge, Zhang, Yang, Wang, Shan & Luo, "Not All Models Are
  Equal: Predicting Model Transferability in a Self-challenging Fisher Space", ECCV 2022.
* :func:`nleep` -- N-LEEP, Li, Jia, Zhu, Zhang, Ren, Cao & Yang, "Ranking Neural
  Checkpoints", CVPR 2021 (LEEP with a Gaussian mixture on the PCA-reduced features in place
  of the expert's source classifier).
* :func:`knn_accuracy` -- leave-one-out k-nearest-neighbour accuracy on the expert's
  features: the simplest feature-only baseline.

:data:`TRANSFERABILITY_METRICS` maps metric names to the functions and
:func:`score_expert` dispatches by name, taking whichever of ``features`` /
``source_probs`` the metric needs.

Target labels may be any integers; they are re-indexed to ``0..K-1`` (all metrics are
invariant to renaming the classes). Every computation runs in float64.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "TRANSFERABILITY_METRICS",
    "h_score",
    "knn_accuracy",
    "leep",
    "logme",
    "nce",
    "nleep",
    "score_expert",
    "SFDA_VARIANTS",
    "sfda",
    "sfda_shrinkage",
]

logger = logging.getLogger(__name__)

_LOG_2PI = float(np.log(2.0 * np.pi))
_TINY = np.finfo(np.float64).tiny


# --------------------------------------------------------------------------- validation


def _as_labels(labels: object, name: str = "labels") -> tuple[np.ndarray, int]:
    """Validate a 1-D integer label vector and re-index it to ``0..K-1``.

    Returns the re-indexed labels (int64) and the number of distinct classes ``K``.
    """
    arr = np.asarray(labels)
    if arr.ndim != 1:
        hint = " (looks one-hot: pass labels.argmax(axis=1))" if arr.ndim == 2 else ""
        raise ValueError(f"{name} must be a 1-D array of class indices, got shape {arr.shape}{hint}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty: transferability needs at least two labelled samples")
    if arr.dtype == bool:
        arr = arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(
                f"{name} must be integer class indices, got dtype {arr.dtype}; "
                f"encode them first, e.g. `_, {name} = np.unique({name}, return_inverse=True)`"
            )
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(
                f"{name} must be integer class indices, got non-integral or non-finite floats; "
                f"encode them first, e.g. `_, {name} = np.unique({name}, return_inverse=True)`"
            )
    classes, inverse = np.unique(arr, return_inverse=True)
    k = int(classes.size)
    if not (classes[0] == 0 and classes[-1] == k - 1):
        logger.info(
            "%s are not 0..K-1 (values %s..%s, %d classes): re-indexing them to 0..%d",
            name,
            classes[0],
            classes[-1],
            k,
            k - 1,
        )
    return inverse.reshape(-1).astype(np.int64), k


def _target_labels(labels: object, n: int | None = None, what: str = "features") -> tuple[np.ndarray, int]:
    y, k = _as_labels(labels, "labels")
    if n is not None and y.shape[0] != n:
        raise ValueError(
            f"length mismatch: {what} has {n} rows but labels has {y.shape[0]} entries; "
            "pass one label per sample, in the same order"
        )
    if k < 2:
        raise ValueError(
            "labels contain a single class: transferability is undefined for a one-class task; "
            "score on a sample that covers at least two target classes"
        )
    return y, k


def _as_features(features: object, name: str = "features") -> np.ndarray:
    f = np.asarray(features)
    if f.ndim == 1:
        raise ValueError(f"{name} must be 2-D [N, D], got 1-D; use {name}.reshape(-1, 1) for one feature")
    if f.ndim != 2:
        raise ValueError(f"{name} must be 2-D [N, D], got shape {f.shape}; flatten/pool to one vector per sample")
    if f.shape[0] == 0 or f.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {f.shape}): need at least one sample and one dimension")
    if not (np.issubdtype(f.dtype, np.number) or f.dtype == bool) or np.iscomplexobj(f):
        raise ValueError(f"{name} must be real-valued, got dtype {f.dtype}")
    f = f.astype(np.float64, copy=False)
    if not np.all(np.isfinite(f)):
        bad = int(np.count_nonzero(~np.all(np.isfinite(f), axis=1)))
        raise ValueError(
            f"{name} contain NaN/inf values in {bad} row(s); drop or impute those samples "
            "(often a sign of a diverged forward pass or fp16 overflow)"
        )
    return f


def _as_probs(source_probs: object) -> np.ndarray:
    p = _as_features(source_probs, "source_probs")
    if np.any(p < 0):
        raise ValueError(
            "source_probs has negative entries: it must be the expert's softmax probabilities, "
            "not logits; apply scipy.special.softmax(logits, axis=1) first"
        )
    sums = p.sum(axis=1)
    if not np.allclose(sums, 1.0, rtol=0.0, atol=1e-3):
        worst = float(np.max(np.abs(sums - 1.0)))
        raise ValueError(
            f"source_probs rows must sum to 1 (max deviation {worst:.3g}): pass softmax probabilities "
            "over the expert's source labels, e.g. scipy.special.softmax(logits, axis=1)"
        )
    return p / sums[:, None]


# --------------------------------------------------------------------------- LogME


def logme(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    max_iter: int = 200,
    tol: float = 1e-10,
) -> float:
    """LogME score (You et al., "LogME: Practical Assessment of Pre-trained Models for
    Transfer Learning", ICML 2021). Higher = better.

    For every target class ``k`` the one-hot column ``y = 1[labels == k]`` is modelled by
    Bayesian linear regression on the features, ``y = F w + eps`` with prior
    ``w ~ N(0, alpha^-1 I)`` and noise ``eps ~ N(0, beta^-1 I)``. The log marginal evidence

    ``L(alpha, beta) = N/2 log beta + D/2 log alpha - N/2 log 2pi - beta/2 ||F m - y||^2
    - alpha/2 m^T m - 1/2 log|A|``,  ``A = alpha I + beta F^T F``, ``m = beta A^-1 F^T y``

    is maximised with the paper's fixed-point updates ``gamma = sum_i beta s_i^2 /
    (alpha + beta s_i^2)``, ``alpha <- gamma / m^T m``, ``beta <- (N - gamma) / ||F m - y||^2``
    (``s_i`` the singular values of ``F``), computed in the SVD basis of ``F`` and vectorised
    over classes. The updates are run on ``alpha / beta`` (with ``beta`` at its closed-form
    optimum), started from the best point of a log-grid and safeguarded by bisection, so the
    global maximum is found even when it lies on the boundary (``alpha -> inf``: the features
    carry no information on a class; ``beta -> inf``: they interpolate it, e.g. ``N <= D``).
    The score is ``L / N`` averaged over classes.

    Args:
        features: ``[N, D]`` features of the target samples (used as-is: no centring).
        labels: ``[N]`` integer target labels (re-indexed to ``0..K-1``; K >= 2).
        max_iter: maximum number of fixed-point iterations.
        tol: stop once the relative change of every ``alpha / beta`` is below ``tol``.

    Returns:
        The mean per-sample log evidence, averaged over the K classes.
    """
    f = _as_features(features)
    n = f.shape[0]
    y, k = _target_labels(labels, n)
    targets = np.zeros((n, k), dtype=np.float64)
    targets[np.arange(n), y] = 1.0
    return float(np.mean(_logme_evidence(f, targets, max_iter=max_iter, tol=tol)))


def _logme_evidence(f: np.ndarray, targets: np.ndarray, *, max_iter: int, tol: float) -> np.ndarray:
    """Maximised log evidence divided by N for each column of ``targets`` ``[N, K]``.

    In the SVD basis ``F = U diag(s) V^T`` (``r = min(N, D)`` singular values, ``z = U^T y``)
    and with ``lam = alpha / beta``, the paper's quantities are
    ``gamma = sum s^2 / (lam + s^2)``, ``m^T m = sum s^2 z^2 / (lam + s^2)^2`` and
    ``||F m - y||^2 = sum lam^2 z^2 / (lam + s^2)^2 + ||y - U z||^2``, so its update is a map
    ``lam <- alpha / beta = gamma ||F m - y||^2 / ((N - gamma) m^T m)``. For fixed ``lam`` the
    evidence is maximised by ``beta = N / q`` with ``q = ||F m - y||^2 + lam m^T m``, giving
    the profile ``P(lam) = -N/2 log q + r/2 log lam - 1/2 sum log(lam + s^2) + c`` whose
    stationary points are exactly the fixed points of that map, and the map moves ``lam``
    uphill on ``P``. We therefore locate the best basin of ``P`` on a log-grid of ``lam``
    (so a supremum on the boundary -- features useless for a class, ``alpha -> inf``, or
    exactly interpolating it, ``beta -> inf`` -- is found too) and converge with the
    paper's fixed-point update, safeguarded by bisection inside that basin.
    """
    n, k = targets.shape
    u_mat, s, _ = _svd(f)
    r = s.size  # min(N, D); F^T F has eigenvalues s^2 and D - r exact zeros
    sigma = (s**2)[:, None]  # [r, 1]
    sigma_max = float(sigma.max())
    if sigma_max <= 0.0:
        raise ValueError("features are identically zero: LogME needs a non-degenerate feature matrix")
    z2 = (u_mat.T @ targets) ** 2  # [r, K] targets in the left singular basis
    if r == n:
        outside = np.zeros(k)  # U is square: every target lies in span(U)
    else:  # part of y outside the column space of F, unreachable by any weights
        outside = np.sum((targets - u_mat @ (u_mat.T @ targets)) ** 2, axis=0)
    const = 0.5 * n * (np.log(n) - 1.0 - _LOG_2PI)

    def _profile(lam: np.ndarray) -> np.ndarray:
        """Evidence maximised over beta at fixed lam = alpha / beta (natural log, not / N)."""
        denom = lam[None, :] + sigma
        q = lam * np.sum(z2 / denom, axis=0) + outside  # ||F m - y||^2 + lam m^T m
        with np.errstate(divide="ignore"):
            val = -0.5 * n * np.log(q) + 0.5 * r * np.log(lam) - 0.5 * np.sum(np.log(denom), axis=0)
        return np.where(np.isfinite(val), val + const, -np.inf)

    def _update(lam: np.ndarray) -> np.ndarray:
        """The paper's fixed-point update of alpha / beta, in log space."""
        denom = lam[None, :] + sigma
        gamma = np.sum(sigma / denom, axis=0)
        n_minus_gamma = (n - r) + np.sum(lam[None, :] / denom, axis=0)  # N - gamma, no cancellation
        m2 = np.sum(sigma * z2 / denom**2, axis=0)
        res2 = lam**2 * np.sum(z2 / denom**2, axis=0) + outside
        with np.errstate(divide="ignore", invalid="ignore"):
            new = np.log(gamma) + np.log(res2) - np.log(m2) - np.log(n_minus_gamma)
        return new

    # 1) global search for the best basin on a log-grid spanning 24 decades around the spectrum
    u_lo, u_hi = np.log(1e-12 * sigma_max), np.log(1e12 * sigma_max)
    grid = np.linspace(u_lo, u_hi, 57)  # spacing ~ 1 in log(lam)
    vals = np.stack([_profile(np.full(k, np.exp(g))) for g in grid])  # [G, K]
    best = np.argmax(vals, axis=0)
    lo = grid[np.maximum(best - 1, 0)]
    hi = grid[np.minimum(best + 1, grid.size - 1)]
    u = grid[best]

    # 2) paper's fixed-point update, kept inside the shrinking bracket [lo, hi] (the update
    #    always points uphill on the profile, so it also tells which half to keep),
    #    and bisecting whenever the step leaves the bracket or fails to halve (slow contraction)
    converged = np.zeros(k, dtype=bool)
    prev_step = np.full(k, np.inf)
    n_iter = 0
    while n_iter < max_iter and not converged.all():
        n_iter += 1
        target = _update(np.exp(u))
        step = target - u
        step = np.where(np.isfinite(step), step, np.where(target > u, np.inf, -np.inf))
        lo = np.where(step > 0, np.maximum(lo, u), lo)
        hi = np.where(step < 0, np.minimum(hi, u), hi)
        proposal = u + step
        accept = (proposal > lo) & (proposal < hi) & (np.abs(step) <= 0.5 * prev_step)
        new_u = np.where(accept, proposal, 0.5 * (lo + hi))
        prev_step = np.where(accept, np.abs(step), np.inf)
        done = (np.abs(step) < tol) | (hi - lo < tol)
        converged |= done
        u = np.where(converged, u, new_u)
    if not converged.all():
        logger.warning("LogME fixed-point iteration did not converge in %d iterations", max_iter)
    else:
        logger.debug("LogME converged after %d iterations", n_iter)
    if r < n and np.any(u <= u_lo + 1.0):
        logger.warning(
            "LogME: features (almost) exactly interpolate the one-hot targets; the noise precision "
            "hit its upper bound and the score is capped"
        )
    evidence = np.maximum(_profile(np.exp(u)), vals.max(axis=0))
    return evidence / n


# --------------------------------------------------------------------------- LEEP / NCE


def leep(source_probs: np.ndarray, labels: np.ndarray) -> float:
    """LEEP score (Nguyen et al., "LEEP: A New Measure to Evaluate Transferability of
    Learned Representations", ICML 2020). Higher = better; always <= 0.

    With ``theta(x_i)`` the expert's softmax over its ``Z`` source labels, the empirical
    joint is ``P(y, z) = 1/N sum_{i: y_i = y} theta(x_i)_z``, the conditional
    ``P(y | z) = P(y, z) / P(z)`` and the score is the mean log-likelihood of the
    "expected empirical predictor": ``1/N sum_i log sum_z P(y_i | z) theta(x_i)_z``.

    Args:
        source_probs: ``[N, Z]`` softmax probabilities over the expert's source labels
            (rows must sum to 1 within 1e-3; they are renormalised exactly).
        labels: ``[N]`` integer target labels (re-indexed to ``0..K-1``; K >= 2).
    """
    theta = _as_probs(source_probs)
    n = theta.shape[0]
    y, k = _target_labels(labels, n, "source_probs")
    onehot = np.zeros((n, k), dtype=np.float64)
    onehot[np.arange(n), y] = 1.0
    joint = onehot.T @ theta / n  # [K, Z]  P(y, z)
    marginal = joint.sum(axis=0)  # [Z]     P(z)
    cond = np.divide(joint, marginal[None, :], out=np.zeros_like(joint), where=marginal[None, :] > 0)
    # EEP likelihood of each sample's own label: sum_z P(y_i | z) theta_iz
    lik = np.einsum("iz,iz->i", cond[y], theta)
    return float(np.mean(np.log(np.maximum(lik, _TINY))))


def nce(source_labels: np.ndarray, labels: np.ndarray) -> float:
    """NCE score (Tran et al., "Transferability and Hardness of Supervised Classification
    Tasks", ICCV 2019). Higher = better; always <= 0, and 0 iff ``y`` is a function of ``z``.

    Negative conditional entropy ``-H(Y | Z) = sum_{y,z} P(y, z) log P(y | z)`` of the
    target labels given the expert's hard source predictions, from empirical counts.

    Args:
        source_labels: ``[N]`` integer source predictions (e.g. ``source_probs.argmax(1)``);
            any integer values, they are re-indexed internally.
        labels: ``[N]`` integer target labels (re-indexed to ``0..K-1``; K >= 2).
    """
    z, n_z = _as_labels(source_labels, "source_labels")
    y, k = _target_labels(labels, z.shape[0], "source_labels")
    n = y.shape[0]
    counts = np.zeros((k, n_z), dtype=np.float64)
    np.add.at(counts, (y, z), 1.0)
    joint = counts / n
    marginal = joint.sum(axis=0, keepdims=True)  # P(z) > 0 for every re-indexed z
    nz = joint > 0
    return float(np.sum(joint[nz] * np.log((joint / marginal)[nz])))


# --------------------------------------------------------------------------- H-score


def _class_mean_cov(f: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """Covariance (ddof=0) of ``g(x_i) = E[f | y_i]`` over the samples."""
    n = f.shape[0]
    counts = np.bincount(y, minlength=k).astype(np.float64)  # all > 0 after re-indexing
    sums = np.zeros((k, f.shape[1]), dtype=np.float64)
    np.add.at(sums, y, f)
    means = sums / counts[:, None] - f.mean(axis=0)[None, :]  # centred class means
    return (means * (counts / n)[:, None]).T @ means


def h_score(features: np.ndarray, labels: np.ndarray, *, shrinkage: bool = False) -> float:
    """H-score (Bao et al., "An Information-Theoretic Approach to Transferability in Task
    Transfer Learning", ICIP 2019). Higher = better.

    ``H(f) = tr(cov(f)^+ cov(E[f | y]))``: the between-class covariance of the features
    (each sample replaced by its class mean) whitened by the total feature covariance,
    with a Moore-Penrose pseudo-inverse for rank-deficient features. Both covariances use
    the ``1/N`` normalisation (the ratio is invariant to the choice).

    With ``shrinkage=True`` the regularised H-score of Ibrahim, Ponomareva & Mazumder
    (ECML-PKDD 2022) is returned: ``tr(S_a^-1 (1 - a) cov(E[f | y]))`` with the
    Ledoit-Wolf estimate ``S_a = (1 - a) cov(f) + a (tr cov(f) / D) I`` and its optimal
    shrinkage ``a`` (Ledoit & Wolf, J. Multivariate Anal. 2004), which is far more stable
    when ``D`` is comparable to or larger than ``N``.

    Args:
        features: ``[N, D]`` features of the target samples.
        labels: ``[N]`` integer target labels (re-indexed to ``0..K-1``; K >= 2).
        shrinkage: use the Ledoit-Wolf regularised variant.
    """
    f = _as_features(features)
    n, d = f.shape
    y, k = _target_labels(labels, n)
    centred = f - f.mean(axis=0, keepdims=True)
    cov_f = centred.T @ centred / n
    cov_g = _class_mean_cov(f, y, k)
    if not shrinkage:
        return float(np.trace(np.linalg.pinv(cov_f, hermitian=True) @ cov_g))

    a = _ledoit_wolf_shrinkage(centred)
    mu = np.trace(cov_f) / d
    shrunk = (1.0 - a) * cov_f + a * mu * np.eye(d)
    logger.debug("regularised H-score: Ledoit-Wolf shrinkage %.4g", a)
    return float(np.trace(np.linalg.pinv(shrunk, hermitian=True) @ ((1.0 - a) * cov_g)))


def _ledoit_wolf_shrinkage(centred: np.ndarray) -> float:
    """Ledoit-Wolf (2004) optimal shrinkage intensity towards ``mu I`` for centred data."""
    n, d = centred.shape
    cov = centred.T @ centred / n
    mu = np.trace(cov) / d
    delta2 = float(np.sum((cov - mu * np.eye(d)) ** 2))  # ||S - mu I||_F^2
    if delta2 <= 0.0:
        return 0.0  # already a multiple of the identity
    # sum_i ||x_i x_i^T - S||_F^2 = sum_i ||x_i||^4 - n ||S||_F^2
    sq = np.sum(centred**2, axis=1)
    b2 = float(np.sum(sq**2) - n * np.sum(cov**2)) / n**2
    return float(min(max(b2, 0.0), delta2) / delta2)


# --------------------------------------------------------------------------- SFDA


def _svd(x: np.ndarray, compute_uv: bool = True) -> Any:
    """The thin SVD (``compute_uv=False``: the singular values only); LAPACK's divide-and-conquer driver
    (numpy's) now and then fails to converge on an ill-conditioned matrix (SFDA's ConfMix can make one),
    the slower QR-iteration driver does not."""
    try:
        return np.linalg.svd(x, full_matrices=False, compute_uv=compute_uv)
    except np.linalg.LinAlgError:
        from scipy.linalg import svd

        logger.debug("SVD: divide-and-conquer did not converge, using gesvd")
        return svd(x, full_matrices=False, compute_uv=compute_uv, lapack_driver="gesvd")


def _gaussian_posterior(
    f: np.ndarray, y: np.ndarray, k: int, shrinkage: float, identity_scale: float | None = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Posterior ``p(c | x_i)`` of the Gaussian classifier with the class means ``mu_c``, the
    class priors ``pi_c`` and the shared covariance ``S = (1 - shrinkage) S_W + shrinkage s I``
    (``s = identity_scale``; ``None``: ``tr(S_W) / D``, the mean eigenvalue).

    ``logit_ic = x_i^T S^-1 mu_c - 1/2 mu_c^T S^-1 mu_c + log pi_c``. ``S^-1`` is applied in the
    eigenbasis of ``S_W`` (its row space has dimension ``r <= N``; on the orthogonal complement
    ``S = shrinkage I``), so nothing of size ``D x D`` is formed. Returns the posterior ``[N, K]``
    and the class means ``[K, D]``.
    """
    n = f.shape[0]
    counts = np.bincount(y, minlength=k).astype(np.float64)
    means = np.zeros((k, f.shape[1]), dtype=np.float64)
    np.add.at(means, y, f)
    means /= counts[:, None]
    within = f - means[y]  # S_W = within^T within / N
    _, sv, vt = _svd(within)
    keep = sv > (sv[0] if sv.size else 0.0) * 1e-12
    v = vt[keep].T  # [D, r]
    scale = float(np.sum(sv**2) / n / f.shape[1]) if identity_scale is None else float(identity_scale)
    ridge = shrinkage * scale  # S = shrinkage * scale on the complement of span(v)
    eig = (1.0 - shrinkage) * sv[keep] ** 2 / n + ridge  # eigenvalues of S on span(v)
    if ridge <= 0.0 and v.shape[1] < f.shape[1]:
        raise ValueError(
            "SFDA: the within-class scatter is singular (fewer samples than feature dimensions) and the "
            "regularisation is 0; pass shrinkage > 0 (or None for the adaptive value)"
        )
    fv, mv = f @ v, means @ v
    inv_shrink = 1.0 / ridge if ridge > 0.0 else 0.0
    f_perp, m_perp = f - fv @ v.T, means - mv @ v.T
    cross = (fv / eig) @ mv.T + inv_shrink * (f_perp @ m_perp.T)  # x^T S^-1 mu  [N, K]
    quad = np.sum(mv**2 / eig, axis=1) + inv_shrink * np.sum(m_perp**2, axis=1)  # mu^T S^-1 mu  [K]
    logits = cross - 0.5 * quad[None, :] + np.log(counts / n)[None, :]
    return _softmax(logits), means


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


SFDA_VARIANTS = ("paper", "released")
"""``paper``: SFDA as the paper describes it (the library's default). ``released``: as the
authors' released code computes it (``lambda`` from the largest eigenvalue of ``S_W`` with
``a = 5``, shrinkage towards ``tr(S_W)/D I``, ConfMix towards the unweighted mean of the other
classes' means)."""


def _check_sfda_variant(variant: str) -> None:
    if variant not in SFDA_VARIANTS:
        raise ValueError(f"unknown SFDA variant {variant!r}; choose one of {SFDA_VARIANTS}")


def sfda_shrinkage(
    features: np.ndarray, labels: np.ndarray, *, a: float | None = None, variant: str = "paper"
) -> float:
    """The adaptive regularisation strength of SFDA's regularised FDA, floored at 1e-10: well
    separated classes get little regularisation.

    ``variant="paper"``: ``lambda = exp(-a * sigma_max(S_B))`` with
    ``S_B = sum_c pi_c (mu_c - mu)(mu_c - mu)^T`` the between-class scatter, ``a = 1`` by default.
    ``variant="released"``: ``lambda = exp(-a * sigma_max(S_W))`` with ``S_W`` the within-class
    scatter, ``a = 5`` by default (the authors' code; it estimates ``sigma_max`` by three power
    iterations, this computes it exactly)."""
    _check_sfda_variant(variant)
    f = _as_features(features)
    y, k = _target_labels(labels, f.shape[0])
    counts = np.bincount(y, minlength=k).astype(np.float64)
    means = np.zeros((k, f.shape[1]), dtype=np.float64)
    np.add.at(means, y, f)
    means /= counts[:, None]
    if variant == "paper":
        b = np.sqrt(counts / f.shape[0])[:, None] * (means - f.mean(axis=0, keepdims=True))  # S_B = b^T b
        a = 1.0 if a is None else a
    else:
        b = (f - means[y]) / np.sqrt(f.shape[0])  # S_W = b^T b
        a = 5.0 if a is None else a
    sigma = float(_svd(b, compute_uv=False)[0] ** 2)
    return float(max(np.exp(-a * sigma), 1e-10))


def sfda(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    shrinkage: float | None = None,
    a: float | None = None,
    variant: str = "paper",
) -> float:
    """SFDA score (Shao et al., "Not All Models Are Equal: Predicting Model Transferability in
    a Self-challenging Fisher Space", ECCV 2022). Higher = better; in ``(0, 1]``.

    1. *Regularised FDA*: the features are projected onto the Fisher directions of the
       between-class scatter ``S_B`` against the regularised within-class scatter
       ``(1 - lambda) S_W + lambda I`` (``S_W = sum_c pi_c cov(x | c)``, ``lambda`` from
       :func:`sfda_shrinkage` unless given), and each sample gets the class posterior of the
       linear (shared-covariance Gaussian) classifier in that Fisher space. Projecting onto the
       ``K - 1`` discriminant directions changes no posterior (the class means coincide on the
       others), so it is computed directly with the regularised covariance.
    2. *Self-challenging (ConfMix)*: hard examples are made harder. Each sample is mixed with the
       mean of the samples of the *other* classes, ``x_i <- w_i x_i + (1 - w_i) mu_{not y_i}``, with
       ``w_i`` the softened confidence of step 1 in its own class (a softmax over the step-1
       posteriors, so ``w_i < 1``: confident, easy samples move little, confusable ones a lot).
    3. The regularised FDA is fitted again on the mixed features (same ``lambda``) and the score is
       the mean posterior of the true class, ``1/N sum_i p(y_i | x_i)`` (no logarithm).

    Args:
        features: ``[N, D]`` features of the target samples.
        labels: ``[N]`` integer target labels (re-indexed to ``0..K-1``; K >= 2).
        shrinkage: a fixed ``lambda`` in ``(0, 1]`` instead of the adaptive one.
        a: the constant of the adaptive ``lambda`` (:func:`sfda_shrinkage`; default 1 for the
            paper's rule, 5 for the released code's).
        variant: ``"paper"`` (above) or ``"released"``, the authors' released code: ``lambda``
            from ``S_W``'s largest eigenvalue, ``S = (1 - lambda) S_W + lambda tr(S_W)/D I``, and
            ConfMix towards the unweighted mean of the other classes' means. Both saturate near 1
            when the target has fewer samples than feature dimensions (the regularised FDA then
            separates the training samples almost perfectly); see
            ``benchmarks/results/model_selection_zoo.md``.
    """
    f = _as_features(features)
    n = f.shape[0]
    y, k = _target_labels(labels, n)
    _check_sfda_variant(variant)
    if shrinkage is None:
        shrinkage = sfda_shrinkage(f, y, a=a, variant=variant)
    elif not 0.0 < float(shrinkage) <= 1.0:
        raise ValueError(f"shrinkage must be in (0, 1], got {shrinkage!r}; pass None for the adaptive value")
    shrinkage = float(shrinkage)
    scale = 1.0 if variant == "paper" else None  # released: towards tr(S_W)/D I
    prob, means = _gaussian_posterior(f, y, k, shrinkage, scale)
    w = _softmax(prob)[np.arange(n), y][:, None]  # softened confidence in the true class
    if variant == "paper":  # the mean of the other classes' samples
        counts = np.bincount(y, minlength=k).astype(np.float64)
        sums = means * counts[:, None]
        other_means = (sums.sum(axis=0, keepdims=True) - sums) / (n - counts)[:, None]
    else:  # the unweighted mean of the other classes' means
        other_means = (means.sum(axis=0, keepdims=True) - means) / (k - 1)
    mixed = w * f + (1.0 - w) * other_means[y]
    prob2, _ = _gaussian_posterior(mixed, y, k, shrinkage, scale)
    logger.debug("SFDA: lambda %.3g, stage-1 mean true-class posterior %.4f", shrinkage, prob[np.arange(n), y].mean())
    return float(np.mean(prob2[np.arange(n), y]))


# --------------------------------------------------------------------------- N-LEEP


def nleep(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    n_components: int | None = None,
    variance: float = 0.8,
    seed: int = 0,
) -> float:
    """N-LEEP score (Li et al., "Ranking Neural Checkpoints", CVPR 2021). Higher = better; <= 0.

    LEEP with the expert's source classifier replaced by a Gaussian mixture model fitted on the
    target features: the features are centred and reduced by PCA to the fewest components that
    keep ``variance`` of the total variance (80% in the paper), a full-covariance GMM with
    ``n_components`` components (default: the number of target classes, the usual choice) is
    fitted by EM (scikit-learn, seeded), and its posterior ``p(v | x_i)`` plays the role of
    ``theta(x_i)`` in :func:`leep`. Works for feature-only experts (no source head needed).

    Args:
        features: ``[N, D]`` features of the target samples.
        labels: ``[N]`` integer target labels (re-indexed to ``0..K-1``; K >= 2).
        n_components: number of mixture components (default K).
        variance: fraction of the variance the PCA keeps, in ``(0, 1]``.
        seed: random state of the EM initialisation.
    """
    from sklearn.mixture import GaussianMixture

    f = _as_features(features)
    n = f.shape[0]
    y, k = _target_labels(labels, n)
    if not 0.0 < variance <= 1.0:
        raise ValueError(f"variance must be in (0, 1], got {variance!r} (the paper keeps 0.8)")
    v = k if n_components is None else int(n_components)
    if not 1 <= v <= n:
        raise ValueError(f"n_components must be between 1 and the number of samples ({n}), got {n_components!r}")
    centred = f - f.mean(axis=0, keepdims=True)
    u_mat, sv, _ = _svd(centred)
    if sv.size == 0 or sv[0] <= 0.0:
        raise ValueError("features are constant over the samples: N-LEEP needs varying features")
    ratio = np.cumsum(sv**2) / np.sum(sv**2)
    dims = int(np.searchsorted(ratio, variance - 1e-12) + 1)
    z = u_mat[:, :dims] * sv[:dims]  # PCA scores
    gmm = GaussianMixture(n_components=v, covariance_type="full", random_state=seed, reg_covar=1e-6)
    posterior = gmm.fit(z).predict_proba(z)
    logger.debug("N-LEEP: %d PCA dims keep %.1f%% of the variance, %d components", dims, 100 * ratio[dims - 1], v)
    return leep(posterior, y)


# --------------------------------------------------------------------------- k-NN


def knn_accuracy(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    k: int = 5,
    metric: str = "cosine",
) -> float:
    """Leave-one-out k-nearest-neighbour accuracy on the expert's features. Higher = better; in [0, 1].

    Each sample is classified by a majority vote of its ``k`` nearest *other* samples
    (``metric`` "cosine" or "euclidean"; equal distances are ordered by sample index); a tied
    vote goes to the tied class whose nearest member is closest. ``k`` is capped at ``N - 1``.

    Args:
        features: ``[N, D]`` features of the target samples.
        labels: ``[N]`` integer target labels (re-indexed to ``0..K-1``; K >= 2).
        k: number of neighbours.
        metric: "cosine" (1 - cosine similarity) or "euclidean".
    """
    f = _as_features(features)
    n = f.shape[0]
    y, n_classes = _target_labels(labels, n)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"unknown k-NN metric {metric!r}; choose 'cosine' or 'euclidean'")
    k = min(int(k), n - 1)
    if metric == "cosine":
        norms = np.linalg.norm(f, axis=1, keepdims=True)
        g = f / np.where(norms > 0, norms, 1.0)
    else:
        g = f
    sq = np.sum(g**2, axis=1)
    correct = 0
    for start in range(0, n, 1024):
        rows = slice(start, min(start + 1024, n))
        if metric == "cosine":
            dist = 1.0 - g[rows] @ g.T
        else:
            dist = np.maximum(sq[rows, None] + sq[None, :] - 2.0 * g[rows] @ g.T, 0.0)
        dist[np.arange(dist.shape[0]), np.arange(rows.start, rows.stop)] = np.inf  # leave one out
        order = np.argsort(dist, axis=1, kind="stable")[:, :k]  # [B, k] nearest first
        neigh = y[order]
        votes = np.zeros((dist.shape[0], n_classes))
        np.add.at(votes, (np.arange(dist.shape[0])[:, None], neigh), 1.0)
        # tie-break: among the classes with the most votes, the one met first in distance order
        first_rank = np.full((dist.shape[0], n_classes), k, dtype=np.float64)
        for r in range(k - 1, -1, -1):
            first_rank[np.arange(dist.shape[0]), neigh[:, r]] = r
        best = votes.max(axis=1, keepdims=True)
        pred = np.argmin(np.where(votes == best, first_rank, np.inf), axis=1)
        correct += int(np.sum(pred == y[rows]))
    return correct / n


# --------------------------------------------------------------------------- registry


def _h_score_shrinkage(features: np.ndarray, labels: np.ndarray) -> float:
    """Regularised H-score (Ibrahim et al., 2022): ``h_score(..., shrinkage=True)``."""
    return h_score(features, labels, shrinkage=True)


TRANSFERABILITY_METRICS: dict[str, Callable[..., float]] = {
    "logme": logme,
    "leep": leep,
    "nce": nce,
    "h_score": h_score,
    "h_score_shrinkage": _h_score_shrinkage,
    "sfda": sfda,
    "nleep": nleep,
    "knn": knn_accuracy,
}
"""Metric name -> function. ``logme``/``h_score*``/``sfda``/``nleep``/``knn`` take
``(features, labels)``, ``leep`` takes ``(source_probs, labels)`` and ``nce`` takes
``(source_labels, labels)``."""

_ALIASES = {"n_leep": "nleep", "knn_accuracy": "knn", "k_nn": "knn", "hscore": "h_score"}

_NEEDS_FEATURES = frozenset({"logme", "h_score", "h_score_shrinkage", "sfda", "nleep", "knn"})


def score_expert(
    name: str,
    features: np.ndarray | None = None,
    source_probs: np.ndarray | None = None,
    *,
    labels: np.ndarray,
) -> float:
    """Score one expert on a target task with the metric called ``name``.

    ``logme``, ``h_score``, ``h_score_shrinkage``, ``sfda``, ``nleep`` and ``knn`` need
    ``features`` ``[N, D]``;
    ``leep`` needs ``source_probs`` ``[N, Z]`` (softmax over the expert's source labels);
    ``nce`` needs ``source_probs`` too and uses its argmax as the hard source label.

    Raises:
        ValueError: unknown metric, missing input for that metric, or invalid inputs
            (empty, NaN, mismatched lengths, a single target class, ...).
    """
    key = name.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in TRANSFERABILITY_METRICS:
        raise ValueError(f"unknown transferability metric {name!r}; choose one of {sorted(TRANSFERABILITY_METRICS)}")
    fn = TRANSFERABILITY_METRICS[key]
    if key in _NEEDS_FEATURES:
        if features is None:
            raise ValueError(f"metric {key!r} needs features=[N, D] (the expert's embeddings of the samples)")
        score = fn(features, labels)
    else:
        if source_probs is None:
            raise ValueError(
                f"metric {key!r} needs source_probs=[N, Z] (the expert's softmax over its own source "
                "labels); feature-only experts can be scored with 'logme', 'sfda', 'nleep', 'knn' or 'h_score'"
            )
        if key == "nce":
            score = fn(_as_probs(source_probs).argmax(axis=1), labels)
        else:
            score = fn(source_probs, labels)
    logger.debug("transferability %s = %.6g", key, score)
    return score
