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
    lr_precision: float = 1e-2,
    lr_head: float = 1e-4,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> FisherResult:
    """The paper's robust Fisher: minimise
    ``E_{w ~ N(w_hat, Lambda^-1)}[CE] + (beta / 2N) * KL(N(0, Lambda^-1) || N(0, lambda^-2 I))``
    over a per-filter precision ``Lambda = exp(L)`` (local reparametrisation trick) and a
    per-layer prior ``lambda^2`` trained jointly; the head keeps training at ``lr_head``.
    At the optimum ``(beta / 2N) Lambda = F + (beta lambda^2 / 2N)``, so the returned values are
    ``(beta / 2N) Lambda`` and the trivial embedding ``(beta / 2N) lambda^2`` per layer.

    Args:
        make_batches: ``epoch -> iterable of (x, y)`` over the task's sampled examples (y = true labels).
        num_examples: N.
        init_fisher: per-filter Fisher to start ``Lambda`` from (e.g. a montecarlo estimate); the
            optimisation then only has to refine it. Without it ``Lambda`` starts at the prior.
    """
    device, dtype = probe.device, probe.dtype
    if probe.head is None:
        raise ValueError("the probe needs a head before the variational Fisher")
    scale = beta / (2.0 * num_examples)
    layer_index = torch.empty(probe.dim, dtype=torch.long)
    weights_per_filter = torch.empty(probe.dim, dtype=dtype)
    modules = dict(probe.backbone.named_modules())
    log_prior = torch.empty(len(probe.filters), dtype=dtype)
    for i, g in enumerate(probe.filters):
        layer_index[g.start : g.stop] = i
        weights_per_filter[g.start : g.stop] = g.weights_per_filter
        w2 = modules[g.name].weight.detach().double().square().mean().clamp_min(1e-12)
        log_prior[i] = -torch.log(w2)  # prior precision matched to the layer's weight scale
    log_prior = log_prior.to(device).requires_grad_(True)
    layer_index = layer_index.to(device)
    weights_per_filter = weights_per_filter.to(device)
    with torch.no_grad():
        init = log_prior[layer_index].clone()
        if init_fisher is not None:
            f0 = torch.as_tensor(init_fisher, dtype=dtype, device=device).clamp_min(0)
            init = torch.log(f0 / scale + torch.exp(init))
    log_precision = init.clone().requires_grad_(True)
    generator = torch.Generator().manual_seed(seed)
    optim = None
    with frozen(probe):
        for p in probe.head.parameters():
            p.requires_grad_(True)
        optim = torch.optim.Adam(
            [
                {"params": [log_precision, log_prior], "lr": lr_precision},
                {"params": list(probe.head.parameters()), "lr": lr_head},
            ]
        )
        with _NoisyWeights(probe, log_precision, generator):
            for epoch in range(epochs):
                for x, y in make_batches(epoch):
                    x, y = to_device(x, device, dtype), y.to(device)
                    ce = F.cross_entropy(probe(x), y)
                    lam2 = torch.exp(log_prior[layer_index] - log_precision)  # lambda^2 * sigma^2
                    kl = 0.5 * (weights_per_filter * (lam2 - 1.0 - torch.log(lam2))).sum()
                    loss = ce + scale * kl
                    optim.zero_grad(set_to_none=True)
                    loss.backward()
                    optim.step()
                    if progress is not None:
                        progress(batch_size_of(x))
    values = (scale * torch.exp(log_precision.detach())).double().cpu().numpy()
    trivial = (scale * torch.exp(log_prior.detach()[layer_index])).double().cpu().numpy()
    opts = {"beta": repr(beta), "epochs": str(epochs), "lr_precision": repr(lr_precision), "lr_head": repr(lr_head)}
    return FisherResult(values, num_examples, num_examples * epochs, opts, trivial=trivial)
