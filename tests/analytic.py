"""Test oracles: closed-form Fisher information the estimators are checked against."""

from __future__ import annotations

import torch


def analytic_two_layer_sigmoid_fisher(w1: torch.Tensor, w2: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Closed-form diagonal Fisher of ``p(y|x) = softmax(w2 @ sigmoid(w1 @ x))`` w.r.t. ``w1``
    (the paper's Suppl. A), averaged over inputs ``x [N, I]``: ``[H, I]``.

    With ``h = sigmoid(w1 x)``, ``z = w2 h``, ``p = softmax(z)``: ``d log p_y / d z = e_y - p``,
    so ``d log p_y / d w1[j, i] = (w2[y, j] - p.w2[:, j]) h_j (1 - h_j) x_i`` and
    ``F[j, i] = E_x sum_y p_y ((w2[y, j] - p.w2[:, j]) h_j (1 - h_j) x_i)^2``
    ``= E_x Var_{y~p}(w2[y, j]) (h_j (1 - h_j))^2 x_i^2``.
    """
    h = torch.sigmoid(x @ w1.T)  # [N, H]
    p = torch.softmax(h @ w2.T, dim=-1)  # [N, K]
    mean_w2 = p @ w2  # [N, H]
    var_w2 = p @ w2.square() - mean_w2.square()  # Var_y w2[y, j]
    coef = var_w2 * (h * (1 - h)).square()  # [N, H]
    return (coef.T @ x.square()) / x.shape[0]
