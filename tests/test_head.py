"""The head fit and its strength set by the evidence (`hf_task2vec.head`)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hf_task2vec.head import (
    EVIDENCE_MAX_PAIRS,
    class_balanced_weights,
    fit_linear_head,
    log_evidence,
    select_head_l2,
)


def _softmax_task(n: int, d: int, k: int, alpha: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Features ~ N(0, I) and labels drawn from a softmax head whose weights come from N(0, 1/alpha)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(k, d, generator=g, dtype=torch.float64) / math.sqrt(alpha)
    y = torch.multinomial((x @ w.T).softmax(1), 1, generator=g).flatten()
    return x, y


def test_log_evidence_matches_the_full_hessian_by_brute_force() -> None:
    # the N K-space determinant must equal the K D-space one built from autograd's Hessian
    x, y = _softmax_task(n=9, d=4, k=3, alpha=1.0, seed=0)
    k, d = 3, 4
    alpha = 2.5
    w, b, _ = fit_linear_head(x, y, k, l2=alpha / y.numel())
    sw = class_balanced_weights(y, k)

    def loss(flat: torch.Tensor) -> torch.Tensor:
        return (F.cross_entropy(x @ flat.view(k, d).T + b, y, reduction="none") * sw).sum()

    hess = torch.autograd.functional.hessian(loss, w.flatten())
    nll = float(loss(w.flatten()))
    logdet = float(torch.linalg.slogdet(alpha * torch.eye(k * d, dtype=torch.float64) + hess)[1])
    expected = -nll - 0.5 * alpha * float(w.square().sum()) + 0.5 * k * d * math.log(alpha) - 0.5 * logdet
    assert log_evidence(x, y, k, w, b, alpha) == pytest.approx(expected, rel=1e-10, abs=1e-9)


@pytest.mark.parametrize("alpha", [0.3, 3.0, 30.0])
def test_evidence_recovers_the_prior_that_made_the_labels(alpha: float) -> None:
    # labels drawn from heads of known prior precision: the evidence picks the grid point nearest the truth
    # or its neighbour (within 0.5 + 0.25 decades: one half-decade step plus the grid's own rounding);
    # measured over these three seeds: at most 0.52 decades off
    for seed in range(3):
        x, y = _softmax_task(n=400, d=20, k=3, alpha=alpha, seed=seed)
        l2, info = select_head_l2(x, y, 3, seed=seed)
        chosen = info["head_prior_precision"]
        assert abs(math.log10(chosen) - math.log10(alpha)) <= 0.75, (seed, chosen)
        assert l2 == pytest.approx(chosen / 400)


def test_labels_independent_of_the_features_get_a_head_without_weights() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 10, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (300,), generator=g)
    informative = (x[:, 0] > 0).long()
    l2, noise = select_head_l2(x, y, 2)
    _, signal = select_head_l2(x, informative, 2)
    assert noise["head_prior_precision"] == math.inf and l2 == math.inf  # the limit: a head without weights
    assert math.isfinite(signal["head_prior_precision"])
    weight, bias, info = fit_linear_head(x, y, 2, l2=l2)
    assert not weight.any() and torch.equal(bias, torch.zeros(2, dtype=torch.float64))
    assert info["loss"] == pytest.approx(math.log(2))


def test_large_tasks_weigh_the_evidence_on_a_class_balanced_subsample_deterministically() -> None:
    x, y = _softmax_task(n=3000, d=8, k=4, alpha=3.0, seed=1)
    l2_a, info_a = select_head_l2(x, y, 4, seed=5)
    l2_b, info_b = select_head_l2(x, y, 4, seed=5)
    assert info_a["head_evidence_examples"] == EVIDENCE_MAX_PAIRS // 4
    assert (l2_a, info_a) == (l2_b, info_b)
    assert l2_a == pytest.approx(info_a["head_prior_precision"] / 3000)  # the strength of the full task's fit


def test_warm_start_reaches_the_same_optimum_as_a_cold_one() -> None:
    x, y = _softmax_task(n=200, d=10, k=3, alpha=1.0, seed=2)
    cold_w, cold_b, _ = fit_linear_head(x, y, 3, l2=0.01)
    start = fit_linear_head(x, y, 3, l2=1.0)[:2]
    warm_w, warm_b, _ = fit_linear_head(x, y, 3, l2=0.01, init=start)
    assert torch.allclose(cold_w, warm_w, atol=1e-6) and torch.allclose(cold_b, warm_b, atol=1e-6)
