"""Fitting the probe's linear head on cached features: full-batch L-BFGS to convergence, class-balanced,
with its L2 strength chosen by the held-out likelihood of the task's own examples (`select_head_l2`)."""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from .sampling import balanced_sample

logger = logging.getLogger(__name__)


def class_balanced_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-sample weights ``N / (K_present * count[y])`` so that every class present counts equally."""
    counts = torch.bincount(labels, minlength=num_classes).to(torch.float64)
    present = int((counts > 0).sum())
    w = labels.new_zeros(num_classes, dtype=torch.float64)
    w[counts > 0] = labels.numel() / (present * counts[counts > 0])
    return w[labels]


def constant_head_bias(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The best bias of a head without weights under the class-balanced loss: equal probabilities
    for the classes present, (numerically) zero for the absent ones. Float64 ``[K]``."""
    present = torch.bincount(labels, minlength=num_classes) > 0
    return torch.where(present, 0.0, -1e4).to(torch.float64)


def _lbfgs(params: list[torch.Tensor], max_iter: int, tol: float) -> torch.optim.LBFGS:
    """Full-batch L-BFGS with a strong-Wolfe line search: every head fit runs to convergence with it."""
    return torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, tolerance_grad=tol, tolerance_change=tol * 1e-3,
                             history_size=20, line_search_fn="strong_wolfe")


def fit_linear_head(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    l2: float = 1e-3,
    max_iter: int = 500,
    tol: float = 1e-9,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Minimise the class-balanced mean cross-entropy ``+ l2/2 * ||W||^2`` of a linear classifier.

    A small ``l2`` keeps the optimum finite when the classes are separable (without it the
    logits grow without bound and the Fisher would vanish). Solved in float64 with L-BFGS and a
    strong-Wolfe line search, on features computed once.

    ``init``: a starting ``(weight, bias)`` (warm start along a path of strengths); zeros by default.
    ``l2 = inf`` is the limit of an infinitely strong prior: zero weights, the bias of `constant_head_bias`.

    Returns:
        ``(weight [K, C], bias [K], info)`` in the dtype of ``features``; ``info`` holds the final
        loss, training accuracy and the number of iterations.
    """
    x = features.detach().to(torch.float64)
    y = labels.detach().to(torch.long)
    sample_w = class_balanced_weights(y, num_classes).to(x.device)
    if math.isinf(l2):  # the limit of an infinitely strong prior: no weights, the class frequencies only
        const = constant_head_bias(y, num_classes).to(x.device)
        loss = float((F.cross_entropy(const.expand(len(y), -1), y, reduction="none") * sample_w).mean())
        info = {"loss": loss, "train_accuracy": float((y == const.argmax()).double().mean()), "evaluations": 0.0}
        return features.new_zeros(num_classes, x.shape[1]), const.to(features.dtype), info
    if init is None:
        weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, device=x.device, requires_grad=True)
        bias = torch.zeros(num_classes, dtype=torch.float64, device=x.device, requires_grad=True)
    else:
        weight = init[0].detach().to(x.device, torch.float64).clone().requires_grad_(True)
        bias = init[1].detach().to(x.device, torch.float64).clone().requires_grad_(True)
    opt = _lbfgs([weight, bias], max_iter, tol)
    n_evals = 0

    def closure() -> torch.Tensor:
        nonlocal n_evals
        n_evals += 1
        opt.zero_grad()
        loss = (F.cross_entropy(x @ weight.T + bias, y, reduction="none") * sample_w).mean()
        loss = loss + 0.5 * l2 * weight.square().sum()
        if torch.is_grad_enabled():
            loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        final = float(closure())
        acc = float(((x @ weight.T + bias).argmax(1) == y).double().mean())
    info = {"loss": final, "train_accuracy": acc, "evaluations": float(n_evals)}
    logger.debug("head fit: %s", info)
    return weight.detach().to(features.dtype), bias.detach().to(features.dtype), info


def class_means(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each class's mean row of ``x`` (``[K, D]``, zeros for a class without examples) and which are present."""
    counts = torch.bincount(y, minlength=num_classes)
    sums = torch.zeros(num_classes, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, y, x)
    return sums / counts.clamp_min(1).to(x.dtype)[:, None], counts > 0


def fit_prototype_head(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    l2: float = 1e-3,
    max_iter: int = 500,
    tol: float = 1e-9,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """The linear head restricted to the class means: ``W = tau * M``, ``M``'s row ``k`` the mean feature of class
    ``k`` centred on the mean of the class means; only the temperature ``tau`` and the bias are fitted.

    The objective is `fit_linear_head`'s (class-balanced mean cross-entropy ``+ l2/2 ||W||^2``), over these
    ``K + 1`` numbers instead of ``K x D`` weights. ``M`` is where the linear head points as its prior grows
    strong: the loss's gradient at ``W = 0`` is ``-(1/K) M`` (class-balanced), so ``W*(l2) -> M / (K l2)`` as
    ``l2 -> inf``; the temperature then gives the head the confidence the likelihood supports. It is also the
    nearest-class-mean classifier (Gaussian classes of one isotropic covariance, ``tau = 1 / sigma^2``).
    Why: a head of ``K x D`` free weights fitted on tens of examples separates them along whichever directions
    the sample offers, and two resamples of one task get heads that differ nearly as much as the heads of two
    tasks (README, "Where the text noise comes from"); class means vary with the sample only by their standard
    error. Classes absent from ``labels`` get no weights and a bias of -1e4 (as `constant_head_bias`).

    Returns:
        ``(weight [K, D], bias [K], info)`` in the dtype of ``features``, ``info`` as `fit_linear_head`'s
        plus the fitted ``temperature``.
    """
    x = features.detach().to(torch.float64)
    y = labels.detach().to(torch.long)
    means, present = class_means(x, y, num_classes)
    means = torch.where(present[:, None], means - means[present].mean(0), 0.0)
    score = x @ means.T  # [N, K]: the logits at tau = 1 without bias
    sample_w = class_balanced_weights(y, num_classes).to(x.device)
    absent = constant_head_bias(y, num_classes).to(x.device)  # -1e4 for the classes without examples
    sq_norm = float(means.square().sum())
    tau = torch.zeros((), dtype=torch.float64, device=x.device, requires_grad=True)
    beta = torch.zeros(num_classes, dtype=torch.float64, device=x.device, requires_grad=True)
    opt = _lbfgs([tau, beta], max_iter, tol)
    n_evals = 0

    def closure() -> torch.Tensor:
        nonlocal n_evals
        n_evals += 1
        opt.zero_grad()
        logits = tau * score + beta + absent
        loss = (F.cross_entropy(logits, y, reduction="none") * sample_w).mean() + 0.5 * l2 * tau.square() * sq_norm
        if torch.is_grad_enabled():
            loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        final = float(closure())
        weight = tau * means
        bias = beta + absent
        acc = float(((x @ weight.T + bias).argmax(1) == y).double().mean())
    info = {"loss": final, "train_accuracy": acc, "evaluations": float(n_evals), "temperature": float(tau.detach())}
    logger.debug("prototype head fit: %s", info)
    return weight.to(features.dtype), bias.to(features.dtype), info


def fit_discriminant_head(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    l2: float = 1e-3,
    max_iter: int = 500,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Linear discriminant analysis with a shrunk covariance: ``W = tau * M S^-1``, ``M`` the centred class
    means (as `fit_prototype_head`), ``S`` the within-class covariance shrunk towards ``(tr S / D) I`` by the
    Ledoit-Wolf intensity (estimated from the data, `sklearn.covariance.ledoit_wolf`); ``tau`` and the bias
    fitted by the likelihood.

    The prototype head is the case ``S = I``: it weighs every feature direction alike, so directions in which
    the features vary a lot within a class (and say little about it) count as much as quiet, telling ones.
    The shrunk ``S`` weighs them by what the task's own examples show, with no constant to choose: few
    examples give a heavily shrunk ``S`` (close to the prototype head), many give the classical LDA. Fitted
    in the whitened coordinates ``x S^-1/2`` by `fit_prototype_head` (so the L2 term holds the whitened
    weights) and mapped back.

    Returns:
        ``(weight [K, D], bias [K], info)`` as `fit_prototype_head`, ``info`` plus the ``shrinkage`` used.
    """
    from sklearn.covariance import ledoit_wolf

    x = features.detach().to(torch.float64)
    y = labels.detach().to(torch.long)
    resid = (x - class_means(x, y, num_classes)[0][y]).cpu().numpy()
    cov, shrinkage = ledoit_wolf(resid, assume_centered=True)
    vals, vecs = torch.linalg.eigh(torch.as_tensor(cov, dtype=torch.float64))
    inv_sqrt = (vecs * vals.clamp_min(1e-12 * float(vals.max())).rsqrt()) @ vecs.T  # S^-1/2, symmetric
    inv_sqrt = inv_sqrt.to(x.device)
    weight, bias, info = fit_prototype_head(x @ inv_sqrt, y, num_classes, l2=l2, max_iter=max_iter)
    weight = weight.to(torch.float64) @ inv_sqrt
    return weight.to(features.dtype), bias.to(features.dtype), {**info, "shrinkage": float(shrinkage)}


_HEAD_FITS = {"linear": fit_linear_head, "prototype": fit_prototype_head, "discriminant": fit_discriminant_head}
#: The head forms `Task2Vec(head=...)` offers.
HEADS: tuple[str, ...] = tuple(_HEAD_FITS)


def fit_head_of_kind(
    kind: str, features: torch.Tensor, labels: torch.Tensor, num_classes: int, *, l2: float, max_iter: int = 500
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """`fit_linear_head` (``kind="linear"``), `fit_prototype_head` (``"prototype"``) or
    `fit_discriminant_head` (``"discriminant"``); an infinite ``l2`` is the constant head of any."""
    fit = fit_linear_head if math.isinf(l2) else _HEAD_FITS[kind]
    return fit(features, labels, num_classes, l2=l2, max_iter=max_iter)


def set_head(head: nn.Linear, weight: torch.Tensor, bias: torch.Tensor) -> None:
    with torch.no_grad():
        head.weight.copy_(weight.to(head.weight))
        head.bias.copy_(bias.to(head.bias))


#: Prior precisions ``alpha`` (of the head's weights, per example summed likelihood) `select_head_l2`
#: weighs: half-decades from 1e-2 to 1e4, wide enough for the bundled probes' features (the evidence
#: picks ~1 for the unit-scale MiniLM sentence vectors and ~10-300 for EfficientNet's pooled features).
PRIOR_PRECISIONS: tuple[float, ...] = tuple(10.0 ** (k / 2) for k in range(-4, 9))
#: At most this many (example, class) pairs enter the evidence's determinant (``N * K``); larger tasks
#: weigh it on a class-balanced subsample (the precision the evidence picks moves little with ``N``).
EVIDENCE_MAX_PAIRS = 2048


def log_evidence(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, weight: torch.Tensor, bias: torch.Tensor,
    alpha: float,
) -> float:
    """Laplace approximation of ``log p(labels | features, alpha)`` for a linear softmax head with the
    Gaussian prior ``N(0, 1/alpha)`` on its weights, at the fitted optimum ``(weight, bias)``::

        -sum_n w_n CE_n - alpha/2 ||W||^2 + (K D / 2) log alpha - 1/2 log det(alpha I + H)

    ``H = sum_n w_n A_n (x) x_n x_n^T`` (``A_n = diag(p_n) - p_n p_n^T``, ``w_n`` the class-balanced
    weights) has rank at most ``N K``: its determinant is taken in the ``N K`` space of the examples,
    ``det(alpha I_KD + J^T J) = alpha^(KD - NK) det(alpha I_NK + J J^T)``. The bias is left flat."""
    x, y = features.to(torch.float64), labels.to(torch.long)
    n, d = x.shape
    k = num_classes
    sw = class_balanced_weights(y, k)
    logits = x @ weight.to(torch.float64).T + bias.to(torch.float64)
    nll = float((F.cross_entropy(logits, y, reduction="none") * sw).sum())
    p = logits.softmax(1)
    a = (torch.diag_embed(p) - p[:, :, None] * p[:, None, :]) * sw[:, None, None]
    vals, vecs = torch.linalg.eigh(a)
    root = vecs @ torch.diag_embed(vals.clamp_min(0).sqrt()) @ vecs.transpose(1, 2)  # A_n^(1/2), [N, K, K]
    gram = torch.einsum("nji,mli->njml", root, root) * (x @ x.T)[:, None, :, None]
    kernel = gram.reshape(n * k, n * k)
    logdet = float(torch.linalg.slogdet(alpha * torch.eye(n * k, dtype=torch.float64) + kernel)[1])
    logdet += (k * d - n * k) * math.log(alpha)
    penalty = 0.5 * alpha * float(weight.to(torch.float64).square().sum())
    return -nll - penalty + 0.5 * k * d * math.log(alpha) - 0.5 * logdet


def select_head_l2(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    seed: int = 0,
    max_iter: int = 500,
    precisions: tuple[float, ...] = PRIOR_PRECISIONS,
) -> tuple[float, dict[str, float]]:
    """The head's L2 strength the task's own examples support: type-II maximum likelihood (the
    evidence, `log_evidence`) of the prior precision ``alpha`` of the head's weights over
    ``precisions``, returned as the strength of `fit_linear_head`'s mean-loss objective,
    ``l2 = alpha / N``.

    Why: a strength fixed once is too weak for a small task (the head fits every example, its
    predictive is overconfident and the Fisher sits on the few examples near the boundary) and the
    same number means another prior at every ``N``. The evidence weighs fit against the volume of
    heads that fit (docs/robust_fisher.md); on the bundled probes it picks one precision per probe,
    nearly the same at 64 and 800 examples. Tasks with more than `EVIDENCE_MAX_PAIRS` (example, class)
    pairs are weighed on a class-balanced subsample (``seed``); ties go to the stronger prior. The
    limit ``alpha = inf`` (no weights: the features do not predict the labels) is a candidate too; it
    gives ``l2 = inf``, a constant head, a Fisher of 0 and the trivial embedding.

    Returns:
        ``(l2, info)``: ``info`` holds ``alpha`` and the examples the evidence was weighed on.
    """
    x, y = features.detach().to(torch.float64), labels.detach().to(torch.long)
    n = y.numel()
    cap = max(2 * num_classes, EVIDENCE_MAX_PAIRS // max(num_classes, 1))
    if n > cap:  # the library's class-balanced subsample (`balanced_sample`), seeded
        keep = torch.as_tensor(balanced_sample(y.numpy(), cap, seed))
        x, y = x[keep], y[keep]
    best: tuple[float, float] | None = None
    init = None
    for alpha in sorted(precisions, reverse=True):  # strong to weak: each fit starts at the last optimum
        weight, bias, _ = fit_linear_head(x, y, num_classes, l2=alpha / y.numel(), max_iter=max_iter, init=init)
        init = (weight, bias)
        value = log_evidence(x, y, num_classes, weight, bias, alpha)
        if best is None or value > best[1]:
            best = (alpha, value)
    # alpha -> inf: no weights at all (labels the features do not predict); its evidence is the
    # likelihood of the constant head, as every other term of `log_evidence` vanishes in the limit
    no_head = -fit_linear_head(x, y, num_classes, l2=math.inf)[2]["loss"] * y.numel()
    assert best is not None
    if no_head >= best[1]:
        best = (math.inf, no_head)
    alpha = best[0]
    if alpha == min(precisions):
        logger.warning("head prior precision at the edge of its range (%g): the evidence may want beyond it", alpha)
    logger.debug("head prior precision by the evidence on %d examples: %g", y.numel(), alpha)
    return alpha / n, {"head_prior_precision": float(alpha), "head_evidence_examples": float(y.numel())}
