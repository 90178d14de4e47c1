"""Fitting the probe's linear head on cached features: full-batch L-BFGS to convergence, class-balanced."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)


def class_balanced_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-sample weights ``N / (K_present * count[y])`` so that every class present counts equally."""
    counts = torch.bincount(labels, minlength=num_classes).to(torch.float64)
    present = int((counts > 0).sum())
    w = labels.new_zeros(num_classes, dtype=torch.float64)
    w[counts > 0] = labels.numel() / (present * counts[counts > 0])
    return w[labels]


def fit_linear_head(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    l2: float = 1e-3,
    max_iter: int = 500,
    tol: float = 1e-9,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Minimise the class-balanced mean cross-entropy ``+ l2/2 * ||W||^2`` of a linear classifier.

    A small ``l2`` keeps the optimum finite when the classes are separable (without it the
    logits grow without bound and the Fisher would vanish). Solved in float64 with L-BFGS and a
    strong-Wolfe line search, on features computed once.

    Returns:
        ``(weight [K, C], bias [K], info)`` in the dtype of ``features``; ``info`` holds the final
        loss, training accuracy and the number of iterations.
    """
    x = features.detach().to(torch.float64)
    y = labels.detach().to(torch.long)
    sample_w = class_balanced_weights(y, num_classes).to(x.device)
    weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, device=x.device, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=tol,
        tolerance_change=tol * 1e-3,
        history_size=20,
        line_search_fn="strong_wolfe",
    )
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


def set_head(head: nn.Linear, weight: torch.Tensor, bias: torch.Tensor) -> None:
    with torch.no_grad():
        head.weight.copy_(weight.to(head.weight))
        head.bias.copy_(bias.to(head.bias))
