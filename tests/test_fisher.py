"""The per-sample Fisher against brute force, the analytic FIM (Suppl. A) and its invariances."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame
from torch import nn

from hf_task2vec import Probe, Task, Task2Vec
from hf_task2vec.fisher import fisher_diagonal
from tests.analytic import analytic_two_layer_sigmoid_fisher


class Tokens(nn.Module):
    """[B, C, H, W] -> [B, H*W, C]: lets a Linear layer act on a token sequence."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)


class TinyNet(nn.Module):
    """Every layer type the hook path supports: 3x3 conv, timm 'same' conv, depthwise and grouped convs,
    1x1 conv with stride, reflect padding, Conv1d, a Linear over tokens and a plain Linear; plus
    BatchNorm (excluded from the embedding, frozen in eval mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.same = Conv2dSame(6, 6, 3, stride=2)
        self.dw = nn.Conv2d(6, 6, 3, padding=1, groups=6, stride=1)
        self.grouped = nn.Conv2d(6, 4, 3, padding=1, groups=2, dilation=1, padding_mode="reflect")
        self.pw = nn.Conv2d(4, 8, 1, stride=2)
        self.tokens = Tokens()
        self.tok_fc = nn.Linear(8, 5)
        self.conv1d = nn.Conv1d(5, 4, 2, padding=1)
        self.fc = nn.Linear(4, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.bn(self.stem(x)))
        x = torch.tanh(self.same(x))
        x = torch.tanh(self.dw(x))
        x = torch.tanh(self.grouped(x))
        x = torch.tanh(self.pw(x))
        t = torch.tanh(self.tok_fc(self.tokens(x)))  # [B, T, 5]
        t = torch.tanh(self.conv1d(t.transpose(1, 2)))  # [B, 4, T+1]
        return torch.tanh(self.fc(t.mean(-1)))


def tiny_probe(num_classes: int = 3, seed: int = 0) -> Probe:
    torch.manual_seed(seed)
    net = TinyNet().double()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.2, 0.2)
        net.bn.running_var.uniform_(0.5, 1.5)
    probe = Probe(net, name="tiny")
    head = probe.reset_head(num_classes)
    with torch.no_grad():
        head.weight.normal_(0, 1.5)
        head.bias.normal_(0, 0.3)
    return probe


def brute_force_exact(probe: Probe, x: torch.Tensor) -> np.ndarray:
    """A python loop over single samples and classes with ordinary autograd weight gradients."""
    probe.eval()
    weights = {g.name: dict(probe.backbone.named_modules())[g.name].weight for g in probe.filters}
    total = {name: torch.zeros_like(w) for name, w in weights.items()}
    for n in range(x.shape[0]):
        logp = F.log_softmax(probe(x[n : n + 1]), -1)[0]
        p = logp.exp().detach()
        for c in range(logp.shape[0]):
            grads = torch.autograd.grad(logp[c], list(weights.values()), retain_graph=True)
            for (name, _), g in zip(weights.items(), grads, strict=True):
                total[name] += p[c] * g.square()
    out = np.zeros(probe.dim)
    for g in probe.filters:
        t = total[g.name] / x.shape[0]
        out[g.start : g.stop] = t.reshape(t.shape[0], -1).mean(1).numpy()
    return out


@pytest.fixture(scope="module")
def tiny_data():
    torch.manual_seed(1)
    return torch.randn(10, 3, 12, 12, dtype=torch.float64)


@pytest.mark.parametrize("strategy", ["auto", "materialize", "ghost", "unfold", "fold", "functional"])
def test_exact_fisher_equals_brute_force(tiny_data, strategy):
    probe = tiny_probe()
    for p in probe.parameters():
        p.requires_grad_(True)
    expected = brute_force_exact(probe, tiny_data)
    batches = [(tiny_data[:4], None), (tiny_data[4:], None)]
    got = fisher_diagonal(probe, batches, method="exact", strategy=strategy).values
    assert got.shape == (probe.dim,)
    assert probe.dim == 6 + 6 + 6 + 4 + 8 + 5 + 4 + 7
    assert np.all(expected > 0)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)
    # the Fisher pass must leave no weight gradients and restore requires_grad
    assert all(p.requires_grad for p in probe.parameters())


def test_montecarlo_hooks_equal_functional_reference(tiny_data):
    """Same seed -> same label draws; the hook path and torch.func.vmap(grad) must agree."""
    probe = tiny_probe()
    batches = [(tiny_data[:6], None), (tiny_data[6:], None)]
    a = fisher_diagonal(probe, batches, method="montecarlo", n_samples=3, seed=7).values
    b = fisher_diagonal(probe, batches, method="montecarlo", n_samples=3, seed=7, strategy="functional").values
    np.testing.assert_allclose(a, b, rtol=1e-6)
    c = fisher_diagonal(probe, batches, method="montecarlo", n_samples=3, seed=8).values
    assert not np.allclose(a, c)


def test_montecarlo_converges_to_exact(tiny_data):
    probe = tiny_probe()
    exact = fisher_diagonal(probe, [(tiny_data, None)], method="exact").values
    x = tiny_data.repeat(40, 1, 1, 1)  # 400 draws per input in one batch
    mc = fisher_diagonal(probe, [(x, None)], method="montecarlo", n_samples=10, seed=0).values
    rel = np.abs(mc - exact).sum() / exact.sum()
    assert rel < 0.05, rel


class WeirdConv(nn.Conv2d):
    """A conv subclass with its own forward: the hooks cannot know its per-sample gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * 2.0, self.bias, self.stride, self.padding, self.dilation, self.groups)


def test_unsupported_layer_falls_back_with_warning(tiny_data, caplog):
    probe = tiny_probe()
    probe.backbone.dw = WeirdConv(6, 6, 3, padding=1, groups=6).double()
    probe = Probe(probe.backbone, probe.head, name="tiny-weird")
    for p in probe.parameters():
        p.requires_grad_(True)
    expected = brute_force_exact(probe, tiny_data[:5])
    with caplog.at_level(logging.WARNING, logger="hf_task2vec.fisher"):
        got = fisher_diagonal(probe, [(tiny_data[:5], None)], method="exact").values
    assert any("vmap" in r.getMessage() for r in caplog.records)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


class SharedTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc(torch.tanh(self.fc(x))))


def test_weight_sharing_falls_back_to_correct_path():
    torch.manual_seed(0)
    probe = Probe(SharedTwice().double(), name="shared")
    head = probe.reset_head(3)
    with torch.no_grad():
        head.weight.normal_()
    x = torch.randn(6, 4, dtype=torch.float64)
    for p in probe.parameters():
        p.requires_grad_(True)
    expected = brute_force_exact(probe, x)
    got = fisher_diagonal(probe, [(x, None)], method="exact").values
    np.testing.assert_allclose(got, expected, rtol=1e-6)


# -- the paper's analytic FIM (Suppl. A) ----------------------------------------------------------
def sigmoid_probe(inputs: int = 5, hidden: int = 4, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(hidden, inputs, generator=g, dtype=torch.float64)
    w2 = torch.randn(classes, hidden, generator=g, dtype=torch.float64) * 2
    layer = nn.Linear(inputs, hidden, bias=False).double()
    head = nn.Linear(hidden, classes, bias=False).double()
    with torch.no_grad():
        layer.weight.copy_(w1)
        head.weight.copy_(w2)
    return Probe(nn.Sequential(layer, nn.Sigmoid()), head, name="sigmoid-2layer"), w1, w2


def test_exact_matches_analytic_two_layer_sigmoid():
    probe, w1, w2 = sigmoid_probe()
    x = torch.randn(200, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    task = Task.from_tensors(x, torch.arange(200) % 3)  # labels are unused by the Fisher
    emb = Task2Vec(probe, method="exact", fit_head=False, progress=False, device="cpu").embed(task)
    analytic = analytic_two_layer_sigmoid_fisher(w1, w2, x).mean(1).numpy()  # average over each row's weights
    # the embedding is stored as float32; the Fisher itself is float64 end to end
    np.testing.assert_allclose(emb.values.astype(np.float64), analytic, rtol=1e-5)
    raw = fisher_diagonal(probe, [(x, None)], method="exact").values
    np.testing.assert_allclose(raw, analytic, rtol=1e-12)


def test_analytic_formula_itself_against_autograd():
    """The closed form in fisher.py is checked against autograd too, so a wrong formula cannot pass."""
    probe, w1, w2 = sigmoid_probe(seed=4)
    x = torch.randn(7, 5, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for p in probe.parameters():
        p.requires_grad_(True)
    brute = brute_force_exact(probe, x)
    np.testing.assert_allclose(analytic_two_layer_sigmoid_fisher(w1, w2, x).mean(1).numpy(), brute, rtol=1e-10)


def test_montecarlo_matches_analytic_within_statistical_tolerance():
    """200 inputs x 200 draws: the relative error of each filter's value has a standard deviation of
    a few percent (CLT); we require every filter within 15% and the total within 5%."""
    probe, w1, w2 = sigmoid_probe()
    x = torch.randn(200, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    task = Task.from_tensors(x, torch.arange(200) % 3)
    embedder = Task2Vec(probe, method="montecarlo", n_samples=200, fit_head=False, progress=False, device="cpu", seed=1)
    emb = embedder.embed(task)
    analytic = analytic_two_layer_sigmoid_fisher(w1, w2, x).mean(1).numpy()
    rel = np.abs(emb.values - analytic) / analytic
    assert rel.max() < 0.15, rel
    assert abs(emb.values.sum() - analytic.sum()) / analytic.sum() < 0.05


# -- invariances ------------------------------------------------------------------------------------
def _blob_task(perm=None, k: int = 3, n: int = 90, seed: int = 0) -> Task:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    centers = torch.randn(k, 6, generator=g, dtype=torch.float64)
    x = centers[y] + 0.8 * torch.randn(n, 6, generator=g, dtype=torch.float64)
    labels = y if perm is None else torch.as_tensor(perm)[y]
    return Task.from_tensors(x, labels, name="blobs")


def _mlp_probe() -> Probe:
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 5), nn.Tanh()).double()
    return Probe(backbone, name="mlp")


def test_label_permutation_invariance_exact():
    base = Task2Vec(_mlp_probe(), method="exact", progress=False, device="cpu").embed(_blob_task())
    perm = Task2Vec(_mlp_probe(), method="exact", progress=False, device="cpu").embed(_blob_task(perm=[2, 0, 1]))
    np.testing.assert_allclose(perm.values, base.values, rtol=1e-3)


def test_label_permutation_within_montecarlo_noise():
    from hf_task2vec import distance

    def run(perm, seed):
        return Task2Vec(_mlp_probe(), n_samples=4, seed=seed, progress=False, device="cpu").embed(_blob_task(perm=perm))

    a, b = run(None, 0), run(None, 1)
    permuted = run([1, 2, 0], 0)
    noise = distance(a, b)
    assert distance(a, permuted) < 3 * noise + 1e-3


def test_dimension_independent_of_number_of_classes():
    two = Task2Vec(_mlp_probe(), progress=False, device="cpu").embed(_blob_task(k=2))
    five = Task2Vec(_mlp_probe(), progress=False, device="cpu").embed(_blob_task(k=5, n=100))
    assert two.dim == five.dim == 8 + 5
    assert two.trivial.shape == five.trivial.shape


def test_variational_relates_to_fisher():
    """(beta/2N) Lambda ~ F + (beta lambda^2 / 2N): the variational values exceed the trivial
    embedding where the Fisher is large and rank-correlate with the montecarlo Fisher."""
    from scipy.stats import spearmanr

    task = _blob_task(k=3, n=120)
    var = Task2Vec(_mlp_probe(), method="variational", variational_epochs=5, progress=False, device="cpu").embed(task)
    exact = Task2Vec(_mlp_probe(), method="exact", progress=False, device="cpu").embed(task)
    assert np.all(var.values > 0) and np.all(var.trivial > 0)
    assert var.meta["method"] == "variational"
    assert spearmanr(var.values - var.trivial, exact.values)[0] > 0.5


def test_bf16_autocast_stays_close():
    """bfloat16 autocast (8-bit mantissa) changes the Fisher by about a percent; the totals are
    still accumulated in float64. (oneDNN lacks some bf16 convolutions on CPU: the conv path is
    checked on GPU by benchmarks/gpu_check.py.)"""
    from scipy.stats import spearmanr

    probe = _mlp_probe().float()
    head = probe.reset_head(3)
    with torch.no_grad():
        head.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(0))
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(2))
    ref = fisher_diagonal(probe, [(x, None)], method="exact").values
    fast = fisher_diagonal(probe, [(x, None)], method="exact", precision="bf16").values
    assert np.abs(fast - ref).sum() / ref.sum() < 0.05
    assert spearmanr(fast, ref)[0] > 0.95
    with pytest.raises(ValueError, match="precision"):
        fisher_diagonal(probe, [(x, None)], precision="fp8")


class _Once:
    """An iterable of batches that can be iterated only once (a stream)."""

    def __init__(self, batches):
        self.batches, self.used = batches, False

    def __iter__(self):
        assert not self.used, "the batches were iterated twice"
        self.used = True
        yield from self.batches


def test_batches_are_consumed_once_with_hooks_and_with_the_fallback(tiny_data, caplog):
    probe = tiny_probe()
    batches = [(tiny_data[:4], None), (tiny_data[4:], None)]
    ref = fisher_diagonal(probe, batches, method="exact").values
    got = fisher_diagonal(probe, _Once(batches), method="exact").values
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    # weight sharing is only visible in a forward pass: found on the first batch, no replay needed
    shared = nn.Linear(4, 4).double()
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 4).double(), nn.Tanh(), shared, nn.Tanh(), shared)
    p2 = Probe(net, name="shared")
    h = p2.reset_head(3)
    with torch.no_grad():
        h.weight.normal_()
    x = torch.randn(6, 12, dtype=torch.float64)
    with caplog.at_level(logging.WARNING):
        once = fisher_diagonal(p2, _Once([(x[:3], None), (x[3:], None)]), method="exact").values
    assert "vmap" in caplog.text
    ref2 = fisher_diagonal(p2, [(x, None)], method="exact", strategy="functional").values
    np.testing.assert_allclose(once, ref2, rtol=1e-10)


def test_low_rank_exact_bounds_and_full_rank_is_exact(tiny_data):
    probe = tiny_probe(num_classes=5)
    full = fisher_diagonal(probe, [(tiny_data, None)], method="exact").values
    expected = brute_force_exact(probe, tiny_data)
    np.testing.assert_allclose(full, expected, rtol=1e-6)
    ranks = [fisher_diagonal(probe, [(tiny_data, None)], method="exact", rank=r).values for r in (1, 2, 3, 4)]
    np.testing.assert_allclose(ranks[-1], full, rtol=1e-9)  # K - 1 directions span the score covariance
    for lo, hi in zip(ranks, ranks[1:], strict=False):  # each added direction adds non-negative mass
        assert np.all(hi >= lo - 1e-12)
    assert ranks[0].sum() < full.sum()


def test_concurrent_fisher_passes_on_one_backbone(tiny_data):
    import threading

    probe = tiny_probe()
    other = tiny_probe(seed=0)
    other.head = nn.Linear(probe.head.in_features, 3).double()  # same backbone values, another head
    with torch.no_grad():
        other.head.weight.normal_(0, 1.0)
    other.backbone = probe.backbone  # share the very same backbone object
    want = [fisher_diagonal(p, [(tiny_data, None)], method="exact").values for p in (probe, other)]
    got: dict[int, np.ndarray] = {}

    def run(i, p):
        for _ in range(3):
            got[i] = fisher_diagonal(p, [(tiny_data[:5], None), (tiny_data[5:], None)], method="exact").values

    threads = [threading.Thread(target=run, args=(i, p)) for i, p in enumerate((probe, other))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in (0, 1):
        np.testing.assert_allclose(got[i], want[i], rtol=1e-10)
    assert all(p.requires_grad for p in probe.parameters())


def test_another_threads_forward_is_not_weight_sharing(tiny_data):
    """The hook-support check counts layer calls of its own forward only: a second thread's forward
    over the same backbone, run while the check's forward is in flight, must not look like a layer
    applied twice (that sent a concurrent pass to the functional fallback)."""
    import threading

    from hf_task2vec.fisher import hooks_can_run

    probe = tiny_probe()
    first = next(m for m in probe.backbone.modules() if isinstance(m, nn.Conv2d))
    checking = threading.get_ident()
    other_done = threading.Event()

    def other_forward() -> None:
        with torch.no_grad():
            probe(tiny_data[:2])
        other_done.set()

    def interleave(mod, inputs):  # in the checking thread: let the other forward run in full here
        if threading.get_ident() == checking and not other_done.is_set():
            worker = threading.Thread(target=other_forward)
            worker.start()
            worker.join()

    handle = first.register_forward_pre_hook(interleave)
    try:
        assert hooks_can_run(probe, tiny_data[:3]) is None
    finally:
        handle.remove()
    assert other_done.is_set()


def test_channels_last_is_restored(tiny_data):
    probe = tiny_probe()
    fisher_diagonal(probe, [(tiny_data, None)], method="exact", channels_last=True)
    assert all(p.is_contiguous() for p in probe.parameters())
