"""The head fit and its strength set by the evidence (`hf_task2vec.head`)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from hf_task2vec.head import (
    EVIDENCE_MAX_PAIRS,
    class_balanced_weights,
    fit_discriminant_head,
    fit_linear_head,
    fit_prototype_head,
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


def _class_means_centred(x: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    means = torch.stack([x[y == c].mean(0) for c in range(k)])
    return means - means.mean(0)


def test_prototype_head_points_along_the_centred_class_means_with_the_likelihoods_temperature() -> None:
    x, y = _softmax_task(n=300, d=12, k=3, alpha=1.0, seed=4)
    weight, bias, info = fit_prototype_head(x, y, 3, l2=1e-3)
    means = _class_means_centred(x, y, 3)
    assert torch.allclose(weight, info["temperature"] * means, atol=1e-10)
    assert info["temperature"] > 0
    # the temperature and bias are the objective's optimum: moving the temperature either way costs
    sw = class_balanced_weights(y, 3)

    def objective(tau: float) -> float:
        w = tau * means
        return float((F.cross_entropy(x @ w.T + bias, y, reduction="none") * sw).mean() + 0.5e-3 * w.square().sum())

    tau = info["temperature"]
    assert objective(tau) == pytest.approx(info["loss"], abs=1e-9)
    assert objective(tau * 1.01) > objective(tau) and objective(tau * 0.99) > objective(tau)


def test_prototype_head_is_where_the_linear_head_points_under_a_strong_prior() -> None:
    # W*(l2) -> M / (K l2) as l2 grows: the linear head's direction tends to the prototype head's
    x, y = _softmax_task(n=400, d=8, k=4, alpha=3.0, seed=5)
    proto = fit_prototype_head(x, y, 4)[0].flatten()
    strong = fit_linear_head(x, y, 4, l2=1e3)[0].flatten()
    weak = fit_linear_head(x, y, 4, l2=1e-3)[0].flatten()
    cos = F.cosine_similarity
    assert float(cos(strong, proto, dim=0)) > 0.9999
    assert float(cos(weak, proto, dim=0)) < 0.99  # a weak prior points elsewhere: the forms really differ


def test_prototype_head_gives_absent_classes_no_weight_and_permutes_with_the_labels() -> None:
    x, y = _softmax_task(n=120, d=6, k=3, alpha=1.0, seed=6)
    weight, bias, _ = fit_prototype_head(x, y, 4)  # class 3 has no examples
    assert torch.all(weight[3] == 0) and float(bias[3]) < -1e3
    perm = torch.tensor([2, 0, 1])  # old label c -> perm[c]
    w_perm, b_perm, _ = fit_prototype_head(x, perm[y], 3)
    w, b, _ = fit_prototype_head(x, y, 3)
    assert torch.allclose(w_perm[perm], w, atol=1e-6)
    assert torch.allclose(w_perm[perm] @ x.T + b_perm[perm, None], w @ x.T + b[:, None], atol=1e-5)


def test_the_heads_form_is_recorded_restored_and_part_of_the_comparability_rule() -> None:
    from hf_task2vec import IncompatibleEmbeddingsError, Task2Vec, distance
    from tests.test_fisher import _blob_task
    from tests.test_relative import _relu_probe

    task = _blob_task(n=240)
    embedder = Task2Vec(_relu_probe(), head="prototype", device="cpu", progress=False)
    proto = embedder.embed(task)
    linear = Task2Vec(_relu_probe(), head="linear", device="cpu", progress=False).embed(task)
    assert proto.meta["head"] == "prototype" and linear.meta["head"] == "linear"
    assert Task2Vec.from_provenance(proto.meta, probe=_relu_probe()).head == "prototype"
    with pytest.raises(IncompatibleEmbeddingsError, match=r"head 'prototype' vs 'linear'"):
        distance(proto, linear)
    # an embedding written before the key existed had the only head there was: linear
    old = dataclasses.replace(linear, meta={k: v for k, v in linear.meta.items() if k != "head"})
    assert distance(old, linear) == 0.0
    assert Task2Vec.from_provenance(old.meta, probe=_relu_probe()).head == "linear"
    with pytest.raises(IncompatibleEmbeddingsError, match="head"):
        distance(old, proto)


def test_discriminant_head_is_lda_with_the_ledoit_wolf_covariance() -> None:
    from sklearn.covariance import LedoitWolf

    x, y = _softmax_task(n=200, d=10, k=3, alpha=1.0, seed=7)
    x[:, 0] *= 8.0  # a loud feature: its within-class spread must weigh it down
    weight, _, info = fit_discriminant_head(x, y, 3)
    means = torch.stack([x[y == c].mean(0) for c in range(3)])
    resid = (x - means[y]).numpy()
    cov = torch.as_tensor(LedoitWolf(assume_centered=True).fit(resid).covariance_)
    expected = _class_means_centred(x, y, 3) @ torch.linalg.inv(cov)
    assert 0 < info["shrinkage"] < 1
    ratio = weight / expected
    assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio), rtol=1e-6) and float(ratio.flatten()[0]) > 0
    # the prototype head weighs the loud feature by its mean difference alone, the discriminant one by its spread
    proto = fit_prototype_head(x, y, 3)[0]
    share = lambda w: float(w[:, 0].norm() / w.norm())  # noqa: E731
    assert share(weight) < share(proto)
