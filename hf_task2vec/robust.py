"""The robust Fisher of the paper (Sect. 2.1, Suppl. B).

Task2Vec's "robust" Fisher is the precision ``Lambda`` of a Gaussian posterior over the probe's
weights, ``N(w_hat, Lambda^-1)``, found by minimising

    ``E_{w ~ N(w_hat, Lambda^-1)}[CE(w)] + (beta / 2N) KL(N(w_hat, Lambda^-1) || N(0, lambda^-2 I))``

(CE: the mean cross-entropy over the task's N examples). Expanding the expected loss to second order
around ``w_hat`` (its curvature is the Fisher / Gauss-Newton matrix ``F``) makes the objective
separable per weight, with the optimum ``(beta / 2N) Lambda = F + (beta / 2N) lambda^2``: the task's
Fisher lifted by the prior. ``docs/robust_fisher.md`` derives it and explains the prior.

* `robust_fisher` evaluates that optimum in closed form from an exact Fisher (no optimisation
  noise; this is the default estimator);
* `fisher_variational` minimises the objective itself by stochastic gradients with the local
  reparametrisation trick (the paper's procedure), started from the closed form.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .fisher import (
    Batch,
    FisherResult,
    UnsupportedLayerError,
    _conv_geometry,
    batch_size_of,
    frozen,
    hook_supported,
    to_device,
)
from .probes import FilterGroup, Probe


def prior_precision(probe: Probe) -> np.ndarray:
    """Per filter, the precision ``lambda^2`` of its layer's prior ``N(0, lambda^-2 I)``:
    ``1 / mean(w^2)`` over the layer's pretrained weights (the maximum-likelihood variance of a
    zero-mean Gaussian that the pretrained weights are a draw of). A fact of the probe, the same
    for every task: float64 ``[D]``."""
    modules = dict(probe.backbone.named_modules())
    out = np.empty(probe.dim, dtype=np.float64)
    for g in probe.filters:
        w2 = float(modules[g.name].weight.detach().double().square().mean())
        out[g.start : g.stop] = 1.0 / max(w2, 1e-12)
    return out


def robust_fisher(
    probe: Probe, fisher: FisherResult, *, prior_examples: int, beta: float = 1.0
) -> FisherResult:
    """The optimum of the robust-Fisher objective in closed form: values ``F + (beta / 2N) lambda^2``
    and the trivial embedding ``(beta / 2N) lambda^2``, with ``F`` the given (exact) Fisher,
    ``lambda^2`` the probe's `prior_precision` and ``N = prior_examples``.

    ``N`` weighs the prior against the data. It is the embedder's sample budget (``max_samples``),
    the same for every task an embedder embeds, so that all its embeddings share one trivial
    embedding and stay comparable (``d_sym`` of two embeddings on different floors measures the
    floors, not the tasks). A filter the data say nothing about sits at the prior in every task:
    its ratio in ``d_sym`` is exactly 1/2 and adds no noise.
    """
    if prior_examples < 1:
        raise ValueError(f"prior_examples must be >= 1, got {prior_examples}")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    trivial = beta / (2.0 * prior_examples) * prior_precision(probe)
    options = {**fisher.options, "beta": repr(float(beta)), "prior_examples": str(int(prior_examples))}
    return FisherResult(fisher.values + trivial, fisher.num_inputs, fisher.num_draws, options, trivial=trivial)


def fisher_scale(x: np.ndarray, groups: Iterable[FilterGroup]) -> float:
    """The typical level of a per-filter Fisher ``x`` (in prior units): the geometric mean, over the
    layers, of each layer's mean. Scaling ``x`` by ``k`` scales it by ``k``; rescaling one layer's
    weights (``x`` of that layer times ``1/s^2``, its ``lambda^2`` too) leaves it unchanged. Layers
    whose Fisher is exactly 0 are left out; 0 when every layer is."""
    means = [float(x[g.start : g.stop].mean()) for g in groups]
    logs = [np.log(m) for m in means if m > 0]
    return float(np.exp(np.mean(logs))) if logs else 0.0


def relative_fisher(probe: Probe, fisher: FisherResult) -> FisherResult:
    """The default estimator (``method="relative"``): the robust Fisher with a prior whose height the
    task's own evidence sets (docs/robust_fisher.md derives it).

    With ``x = F / lambda^2`` the exact Fisher in units of the probe's `prior_precision` and ``s`` its
    standard error over the sampled inputs (``fisher`` must carry ``second_moment``):

    * each filter is shrunk by its own reliability, ``x_hat = x * x^2 / (x^2 + s^2)``: a filter whose
      Fisher is within its sampling noise falls towards 0, a well-measured one keeps its value;
    * the prior sits at the task's own level ``c = fisher_scale(x_hat)``: ``values = x_hat / c + 1``,
      ``trivial = 1``. A filter the data lift above the task's typical level speaks, the others sit
      near 1 in every task (ratio 1/2 in ``d_sym``, no noise); scaling the whole Fisher (a harder
      task) changes nothing but ``c``: the distance sees what a task is, not how hard it is;
    * the task's level is kept: ``options["fisher_scale"] = c``, and `TaskEmbedding.data_norm` is
      ``c * ||values - trivial||_1 = ||x_hat||_1``, the norm that tracks difficulty.

    Every embedding of a probe has the same trivial embedding (all ones), whatever its sample size,
    and rescaling a layer's weights leaves the values unchanged.
    """
    if fisher.second_moment is None:
        raise ValueError("relative_fisher needs the Fisher's second moment: fisher_diagonal(..., second_moment=True)")
    lam2 = prior_precision(probe)
    n = max(int(fisher.num_inputs), 1)
    x = np.clip(fisher.values, 0.0, None) / lam2
    var = np.clip(fisher.second_moment - fisher.values**2, 0.0, None) / n / lam2**2
    with np.errstate(invalid="ignore", divide="ignore"):
        reliability = np.where(x > 0, x**2 / (x**2 + var), 0.0)
    shrunk = x * reliability
    scale = fisher_scale(shrunk, probe.filters)
    values = shrunk / scale + 1.0 if scale > 0 else np.ones_like(shrunk)
    options = {**fisher.options, "prior": "relative", "fisher_scale": repr(scale)}
    return FisherResult(values, fisher.num_inputs, fisher.num_draws, options, trivial=np.ones_like(values))


class _NoisyWeights:
    """Forward hooks that add the local-reparametrisation noise of N(w_hat, diag(exp(-L))) to every
    filter layer's output: ``out + sqrt(var) * eps`` with ``var = sigma2_filter * (a^2 conv 1)``."""

    def __init__(self, probe: Probe, log_precision: torch.Tensor, generator: torch.Generator):
        self.modules = dict(probe.backbone.named_modules())
        self.groups = probe.filters
        self.log_precision = log_precision
        self.generator = generator
        self.handles: list = []

    def __enter__(self) -> _NoisyWeights:
        for g in self.groups:
            module = self.modules[g.name]
            if not hook_supported(module):
                raise UnsupportedLayerError(f"variational Fisher: layer {g.name} ({type(module).__name__}) unsupported")
            self.handles.append(module.register_forward_hook(self._hook(g, module)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()

    def _hook(self, g: FilterGroup, module: nn.Module) -> Callable:
        def hook(mod: nn.Module, inputs: tuple, out: torch.Tensor) -> torch.Tensor:
            a2 = inputs[0].square()
            sigma2 = torch.exp(-self.log_precision[g.start : g.stop]).to(out.dtype)
            if isinstance(mod, nn.Linear):
                var = a2.sum(-1, keepdim=True) * sigma2
            else:
                a4, geo = _conv_geometry(mod, a2)
                groups = mod.groups
                cg = mod.weight.shape[1]
                ones = torch.ones(groups, cg, *geo["kernel_size"], dtype=a2.dtype, device=a2.device)
                s = F.conv2d(a4, ones, None, geo["stride"], geo["padding"], geo["dilation"], groups)
                s = s.repeat_interleave(mod.weight.shape[0] // groups, dim=1)
                if isinstance(mod, nn.Conv1d):
                    s = s.squeeze(-2)
                var = s * sigma2.view(1, -1, *([1] * (s.dim() - 2)))
            eps = torch.randn(out.shape, generator=self.generator, dtype=out.dtype).to(out.device)
            return out + torch.sqrt(var.clamp_min(0) + 1e-30) * eps

        return hook


def fisher_variational(
    probe: Probe,
    make_batches: Callable[[int], Iterable[Batch]],
    num_examples: int,
    *,
    epochs: int = 3,
    beta: float = 1.0,
    init_fisher: np.ndarray | None = None,
    prior_examples: int | None = None,
    lr_precision: float = 1e-2,
    lr_head: float = 1e-4,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> FisherResult:
    """The robust Fisher by stochastic optimisation (the paper's procedure): minimise
    ``E_{w ~ N(w_hat, Lambda^-1)}[CE] + (beta / 2N) KL(N(w_hat, Lambda^-1) || N(0, lambda^-2 I))``
    over a per-filter precision ``Lambda = exp(L)`` with the local reparametrisation trick; the head
    keeps training at ``lr_head``. The prior ``lambda^2`` is the probe's `prior_precision` (fixed:
    trained jointly, the KL term alone drives it up without bound, see docs/robust_fisher.md).
    Returns ``(beta / 2N) Lambda`` and the trivial embedding ``(beta / 2N) lambda^2``.

    Args:
        make_batches: ``epoch -> iterable of (x, y)`` over the task's sampled examples (y = true labels).
        num_examples: the number of examples the batches cover.
        init_fisher: per-filter Fisher to start from (`Task2Vec` passes the exact one, so ``Lambda``
            starts at the closed-form optimum of the quadratic model); without it, at the prior.
        prior_examples: the ``N`` of the prior's weight (default ``num_examples``); see `robust_fisher`.
    """
    device, dtype = probe.device, probe.dtype
    if probe.head is None:
        raise ValueError("the probe needs a head before the variational Fisher")
    n_prior = num_examples if prior_examples is None else prior_examples
    scale = beta / (2.0 * n_prior)
    weights_per_filter = torch.empty(probe.dim, dtype=dtype)
    for g in probe.filters:
        weights_per_filter[g.start : g.stop] = g.weights_per_filter
    weights_per_filter = weights_per_filter.to(device)
    log_prior = torch.log(torch.as_tensor(prior_precision(probe), dtype=dtype, device=device))
    with torch.no_grad():
        init = log_prior.clone()
        if init_fisher is not None:
            f0 = torch.as_tensor(init_fisher, dtype=dtype, device=device).clamp_min(0)
            init = torch.log(f0 / scale + torch.exp(log_prior))
    log_precision = init.clone().requires_grad_(True)
    generator = torch.Generator().manual_seed(seed)
    with frozen(probe):
        for p in probe.head.parameters():
            p.requires_grad_(True)
        optim = torch.optim.Adam(
            [
                {"params": [log_precision], "lr": lr_precision},
                {"params": list(probe.head.parameters()), "lr": lr_head},
            ]
        )
        with _NoisyWeights(probe, log_precision, generator):
            for epoch in range(epochs):
                for x, y in make_batches(epoch):
                    x, y = to_device(x, device, dtype), y.to(device)
                    ce = F.cross_entropy(probe(x), y)
                    lam2 = torch.exp(log_prior - log_precision)  # lambda^2 * sigma^2
                    kl = 0.5 * (weights_per_filter * (lam2 - 1.0 - torch.log(lam2))).sum()
                    loss = ce + scale * kl
                    optim.zero_grad(set_to_none=True)
                    loss.backward()
                    optim.step()
                    if progress is not None:
                        progress(batch_size_of(x))
    values = (scale * torch.exp(log_precision.detach())).double().cpu().numpy()
    trivial = (scale * torch.exp(log_prior)).double().cpu().numpy()
    opts = {
        "beta": repr(float(beta)),
        "epochs": str(epochs),
        "prior_examples": str(int(n_prior)),
        "lr_precision": repr(lr_precision),
        "lr_head": repr(lr_head),
    }
    return FisherResult(values, num_examples, num_examples * epochs, opts, trivial=trivial)
