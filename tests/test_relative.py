"""The default estimator, ``method="relative"``: the robust Fisher whose prior sits at the task's own
level, each filter shrunk by its own standard error (docs/robust_fisher.md). Checked by hand on the
analytic two-layer net, and for the properties the design rests on: the distance does not see a task's
overall scale, rescaled layers change nothing, no signal gives the trivial embedding, labels are
names, seeds repeat; and on real images and text, a task with a quarter of its labels flipped stays
nearer to itself than to any task of another dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from hf_task2vec import Probe, Task, Task2Vec, distance
from hf_task2vec.fisher import FisherResult, fisher_diagonal
from hf_task2vec.robust import fisher_scale, prior_precision, relative_fisher
from tests.test_fisher import _blob_task, sigmoid_probe


def _embed(probe, task, **kw):
    return Task2Vec(probe, progress=False, device="cpu", **kw).embed(task)


def _relu_probe(scale: float = 1.0) -> Probe:
    """A ReLU MLP; ``scale`` multiplies the first layer (weight and bias) and divides the second's
    weight: the same function, its layers' weights rescaled."""
    torch.manual_seed(0)
    first, second = nn.Linear(6, 8), nn.Linear(8, 5)
    with torch.no_grad():
        first.weight.mul_(scale)
        first.bias.mul_(scale)
        second.weight.div_(scale)
    return Probe(nn.Sequential(first, nn.ReLU(), second, nn.ReLU()).double(), name="relu-mlp")


def test_default_is_relative_by_hand_on_the_analytic_net():
    """values = x_hat / c + 1, trivial = 1, with x = F / lambda^2 from the paper's closed-form Fisher
    (Suppl. A), its per-input spread s, x_hat = x * x^2 / (x^2 + s^2 / N), c the geometric mean of the
    layer means (one layer here)."""
    probe, w1, w2 = sigmoid_probe()
    n = 200
    x_in = torch.randn(n, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    emb = _embed(probe, Task.from_tensors(x_in, torch.arange(n) % 3), fit_head=False, max_samples=None)
    assert emb.meta["method"] == "relative"
    h = torch.sigmoid(x_in @ w1.T)
    p = torch.softmax(h @ w2.T, dim=-1)
    var_w2 = p @ w2.square() - (p @ w2).square()
    per_input = (var_w2 * (h * (1 - h)).square() * x_in.square().mean(1, keepdim=True)).numpy()  # [N, H]
    lam2 = 1.0 / float(w1.square().mean())
    f, m2 = per_input.mean(0), np.square(per_input).mean(0)
    x = f / lam2
    var = (m2 - f**2) / n / lam2**2
    shrunk = x * x**2 / (x**2 + var)
    c = shrunk.mean()
    np.testing.assert_allclose(emb.trivial, 1.0)
    np.testing.assert_allclose(emb.values, shrunk / c + 1, rtol=1e-5)
    assert float(emb.meta["method_options"].split('"fisher_scale": "')[1].split('"')[0]) == pytest.approx(c, rel=1e-6)
    assert emb.data_norm == pytest.approx(np.abs(shrunk).sum(), rel=1e-5)


def test_second_moment_matches_per_input_passes():
    """fisher_diagonal(second_moment=True): mean over inputs of the squared per-input Fisher, equal to
    one pass per input (exact labels and montecarlo, hooks and the vmap fallback)."""
    probe, _, _ = sigmoid_probe()
    x = torch.randn(12, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for method, strategy in (("exact", "auto"), ("exact", "functional"), ("montecarlo", "auto")):
        kw = dict(method=method, n_samples=3) if method == "montecarlo" else dict(method=method)
        got = fisher_diagonal(probe, [(x[:7], None), (x[7:], None)], second_moment=True, strategy=strategy, **kw)
        if method == "montecarlo":  # per-input draws depend on the batch: compare with the batch's own draws
            assert got.second_moment.shape == got.values.shape and np.all(got.second_moment >= got.values**2 - 1e-12)
            continue
        singles = np.stack([fisher_diagonal(probe, [(x[i : i + 1], None)], **kw).values for i in range(12)])
        np.testing.assert_allclose(got.values, singles.mean(0), rtol=1e-10)
        np.testing.assert_allclose(got.second_moment, np.square(singles).mean(0), rtol=1e-10)


def test_overall_scale_is_invisible_and_kept_in_the_data_norm():
    """A task whose whole Fisher is k times larger (harder) has the same values; its data norm is k times larger."""
    probe = _relu_probe()
    rng = np.random.default_rng(0)
    f = rng.gamma(0.5, 1e-4, probe.dim)
    base = FisherResult(f, 100, 100, {}, second_moment=f**2 * rng.uniform(1.5, 30.0, probe.dim))
    harder = FisherResult(7.0 * f, 100, 100, {}, second_moment=49.0 * base.second_moment)
    a, b = relative_fisher(probe, base), relative_fisher(probe, harder)
    np.testing.assert_allclose(a.values, b.values, rtol=1e-12)
    assert float(b.options["fisher_scale"]) == pytest.approx(7.0 * float(a.options["fisher_scale"]), rel=1e-12)


def test_rescaled_layers_give_the_same_embedding():
    """Scaling the first ReLU layer by 10 and the next by 1/10 keeps the network's function; its
    layers' Fisher and prior precision move together, so the embedding does not change."""
    task = _blob_task(k=3, n=150)
    a = _embed(_relu_probe(1.0), task)
    b = _embed(_relu_probe(10.0), task)
    np.testing.assert_allclose(b.values, a.values, rtol=1e-6)
    assert b.data_norm == pytest.approx(a.data_norm, rel=1e-6)


def test_no_signal_gives_the_trivial_embedding():
    """A head that predicts a constant has Fisher 0: the embedding is exactly the trivial one. Labels
    independent of x: the evidence (``head_l2="auto"``) gives the head no weights (the trivial embedding);
    the default fixed weak head's data norm falls as N grows and stays far below a real task's."""
    probe, _, _ = sigmoid_probe()
    with torch.no_grad():
        probe.head.weight.zero_()
    x = torch.randn(60, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    flat = _embed(probe, Task.from_tensors(x, torch.arange(60) % 3), fit_head=False)
    np.testing.assert_array_equal(flat.values, flat.trivial)
    assert flat.data_norm == 0

    def noise(n):
        g = torch.Generator().manual_seed(n)
        x = torch.randn(n, 6, generator=g, dtype=torch.float64)
        return Task.from_tensors(x, torch.randint(0, 3, (n,), generator=g))

    # head strength by the evidence (head_l2="auto"): the evidence prefers no weights at all, so the head
    # is constant, the Fisher 0 and the embedding exactly the trivial one, at any N
    for n in (200, 6400):
        emb = _embed(_relu_probe(), noise(n), max_samples=None, head_l2="auto")
        assert emb.meta["head_l2_fitted"] == "inf"
        np.testing.assert_array_equal(emb.values, emb.trivial)
        assert emb.data_norm == 0
    # a fixed weak head (the earlier default) fits the noise; its data norm still falls as N grows
    small = _embed(_relu_probe(), noise(200), max_samples=None, head_l2=1e-3).data_norm
    large = _embed(_relu_probe(), noise(6400), max_samples=None, head_l2=1e-3).data_norm
    signal = _embed(_relu_probe(), _blob_task(k=3, n=600), max_samples=None, head_l2="auto")
    assert np.isfinite(float(signal.meta["head_l2_fitted"]))
    assert large < small / 4, (small, large)
    assert signal.data_norm > 20 * large, (signal.data_norm, large)


def test_label_permutation_seed_and_one_trivial_embedding_for_every_sample_size():
    base = _embed(_relu_probe(), _blob_task())
    perm = _embed(_relu_probe(), _blob_task(perm=[2, 0, 1]))
    np.testing.assert_allclose(perm.values, base.values, rtol=1e-3)
    task = _blob_task(n=300)
    a = _embed(_relu_probe(), task, max_samples=120, seed=0)
    b = _embed(_relu_probe(), task, max_samples=120, seed=0)
    c = _embed(_relu_probe(), task, max_samples=120, seed=1)
    np.testing.assert_array_equal(a.values, b.values)
    assert not np.allclose(a.values, c.values)
    other = _embed(_relu_probe(), _blob_task(n=300, seed=5), max_samples=120)
    assert 0 < distance(a, c) < distance(a, other)
    # the prior moves with the task, not with N: embeddings of any sample size compare
    big = _embed(_relu_probe(), task, max_samples=300)
    np.testing.assert_array_equal(big.trivial, a.trivial)
    assert distance(a, big) < distance(a, other)


def test_fisher_scale_is_the_geometric_mean_of_layer_means():
    probe = _relu_probe()
    x = np.zeros(probe.dim)
    g1, g2 = probe.filters
    x[g1.start : g1.stop] = 4.0
    x[g2.start : g2.stop] = 1.0
    assert fisher_scale(x, probe.filters) == pytest.approx(2.0)
    x[g2.start : g2.stop] = 0.0  # an all-zero layer is left out
    assert fisher_scale(x, probe.filters) == pytest.approx(4.0)
    assert fisher_scale(np.zeros(probe.dim), probe.filters) == 0.0
    assert prior_precision(probe).shape == (probe.dim,)
