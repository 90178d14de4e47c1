"""Per-filter diagonal Fisher information of a probe's backbone.

``F = E_{x ~ data, y ~ p_w(y|x)} [(d/dw log p_w(y|x))^2]``, from **per-sample** gradients, averaged
over samples and then over the weights of each filter (DESIGN.md). Estimators:

* `montecarlo`: ``y`` drawn from the model's predictive distribution, ``n_samples`` per input;
* `exact`: the expectation over ``y`` summed exactly (one backward pass per class);
* `variational`: the paper's robust Fisher (Sect. 2.1, Suppl. B), see `fisher_variational`.

Per-sample squared gradients come from module hooks (the curvature-library way): each filter
layer's forward hook keeps its input ``a`` and a tensor hook on its output receives the output
gradient ``b``; the per-sample weight gradient of a linear or convolution layer is
``sum_p b_p a_p^T`` over positions ``p``. Its per-filter squared norm is computed either by
materialising the per-sample gradient or with the "ghost norm" identity
``||sum_p b_p a_p^T||^2 = sum_{p,q} (b_p . b_q)(a_p . a_q)`` from Gram matrices over positions,
whichever costs fewer multiply-adds for that layer's shape. Backbone weights never get a
``.grad``: autograd only propagates activation gradients, so one Fisher step costs about one
training step. Layers the hooks do not understand make the whole probe fall back to
``torch.func.vmap(grad)`` with a logged warning (slower, never wrong).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.grad import conv2d_weight

from .probes import FilterGroup, Probe

logger = logging.getLogger(__name__)

Strategy = Literal["auto", "materialize", "ghost", "unfold", "fold"]
Batch = tuple[torch.Tensor, torch.Tensor]

# Budget for one temporary (per-sample gradients, unfolded inputs, Gram matrices) in bytes.
CHUNK_BYTES = 192 * 2**20


class UnsupportedLayerError(RuntimeError):
    """Raised internally when a filter layer cannot be handled by the hook path."""


# -- per-sample squared norms of one layer -------------------------------------------------------
def _conv_geometry(module: nn.Module, a: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Return the (padded) 4-D input and unfold arguments of a Conv1d/Conv2d."""
    is_1d = isinstance(module, nn.Conv1d)
    if is_1d:
        a = a.unsqueeze(-2)
    kernel = tuple(module.weight.shape[2:])
    stride, dilation = tuple(module.stride), tuple(module.dilation)
    if is_1d:
        kernel, stride, dilation = (1, *kernel), (1, *stride), (1, *dilation)
    padding: tuple[int, ...] | int = 0
    if _is_conv2d_same(module):
        from timm.layers.padding import pad_same

        a = pad_same(a, list(kernel), list(stride), list(dilation))
    elif module.padding_mode != "zeros" or isinstance(module.padding, str):
        pads = module._reversed_padding_repeated_twice
        if is_1d:
            pads = [*pads, 0, 0]
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        if any(pads):
            a = F.pad(a, pads, mode=mode)
    else:
        padding = (0, *module.padding) if is_1d else tuple(module.padding)
    return a, {"kernel_size": kernel, "dilation": dilation, "padding": padding, "stride": stride}


def _is_conv2d_same(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv2dSame" and type(module).__module__.startswith("timm")


def hook_supported(module: nn.Module) -> bool:
    """Whether the hook path computes exact per-sample gradients for this filter layer."""
    if type(module) in (nn.Conv1d, nn.Conv2d, nn.Linear):
        return True
    return _is_conv2d_same(module)


def _chunks(n: int, per_sample_bytes: int) -> Iterator[slice]:
    step = max(1, CHUNK_BYTES // max(per_sample_bytes, 1))
    for i in range(0, n, step):
        yield slice(i, min(n, i + step))


def b4_spatial(b: torch.Tensor, module: nn.Module) -> tuple[int, int]:
    """Spatial size of an output gradient seen as 2-D (Conv1d outputs get a height of 1)."""
    return (1, b.shape[-1]) if isinstance(module, nn.Conv1d) else (b.shape[-2], b.shape[-1])


def _unfold(a4: torch.Tensor, geo: dict) -> torch.Tensor:
    """im2col, skipped for 1x1 kernels (most of a mobile network), where it is a reshape."""
    if geo["kernel_size"] == (1, 1) and geo["padding"] in (0, (0, 0)) and geo["dilation"] == (1, 1):
        sh, sw = geo["stride"]
        if (sh, sw) != (1, 1):
            a4 = a4[:, :, ::sh, ::sw]
        return a4.reshape(a4.shape[0], a4.shape[1], -1)
    return F.unfold(a4, **geo)


def _conv_fold(module: nn.Module, a4: torch.Tensor, b: torch.Tensor, geo: dict, out: torch.Tensor) -> None:
    """Per-sample weight gradients from the framework's own weight-gradient kernel: folding the
    batch into the groups makes each sample's gradient a separate group (fast for depthwise)."""
    out_ch, cg_k = module.weight.shape[0], module.weight[0].numel()
    kh, kw = geo["kernel_size"]
    itemsize = a4.element_size()
    for sl in _chunks(a4.shape[0], (out_ch * cg_k + a4[0].numel()) * itemsize):
        m = a4[sl].shape[0]
        grads = conv2d_weight(
            a4[sl].reshape(1, m * a4.shape[1], *a4.shape[2:]),
            (m * out_ch, cg_k // (kh * kw), kh, kw),
            b[sl].reshape(1, m * out_ch, *b4_spatial(b, module)),
            stride=geo["stride"],
            padding=geo["padding"],
            dilation=geo["dilation"],
            groups=m * module.groups,
        )
        out[sl] = grads.reshape(m, out_ch, -1).to(out.dtype).square().sum(-1)


def _conv_unfold(
    module: nn.Module, a4: torch.Tensor, b: torch.Tensor, geo: dict, out: torch.Tensor, ghost: bool
) -> None:
    """im2col, then per-sample gradients as batched matrix products (or their norms from Gram matrices)."""
    n, groups, out_ch = a4.shape[0], module.groups, module.weight.shape[0]
    og, cg_k = out_ch // groups, module.weight[0].numel()
    b3 = b.reshape(n, groups, og, -1)
    positions = b3.shape[-1]
    per_sample = groups * cg_k * positions + (groups * positions * positions if ghost else groups * og * cg_k)
    for sl in _chunks(n, per_sample * a4.element_size()):
        cols = _unfold(a4[sl], geo).reshape(-1, groups, cg_k, positions)
        bb = b3[sl]
        if ghost:
            gram_a = torch.einsum("ngkp,ngkq->ngpq", cols, cols)
            sq = (torch.einsum("ngop,ngpq->ngoq", bb, gram_a) * bb).sum(-1)
        elif cg_k == 1:
            sq = torch.einsum("ngop,ngp->ngo", bb, cols[:, :, 0]).square()
        else:
            sq = torch.einsum("ngop,ngkp->ngok", bb, cols).to(out.dtype).square().sum(-1)
        out[sl] = sq.reshape(sq.shape[0], out_ch)


# (layer signature) -> fastest kernel, measured once per process on the first batch ("cudnn.benchmark").
_AUTOTUNED: dict[tuple, str] = {}


def _conv_candidates(module: nn.Module, a4: torch.Tensor, b: torch.Tensor) -> list[str]:
    og, cg_k = module.weight.shape[0] // module.groups, module.weight[0].numel()
    positions = b[0, 0].numel()
    cost_mat = og * cg_k * positions
    cost_ghost = positions * positions * (cg_k + og)
    candidates = ["unfold", "fold"]
    if cost_ghost < 4 * cost_mat:  # never try ghost norms where they are hopeless
        candidates.append("ghost")
    return candidates


def _run_conv_kernel(name: str, module: nn.Module, a4: torch.Tensor, b: torch.Tensor, geo: dict, out: torch.Tensor):
    if name == "fold":
        _conv_fold(module, a4, b, geo, out)
    else:
        _conv_unfold(module, a4, b, geo, out, ghost=name == "ghost")


def _acc_dtype(a: torch.Tensor) -> torch.dtype:
    """Squared norms are summed in float32 at least (bf16/fp16 activations under autocast)."""
    return torch.promote_types(a.dtype, torch.float32)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def conv_sq_norms(module: nn.Module, a: torch.Tensor, b: torch.Tensor, strategy: Strategy = "auto") -> torch.Tensor:
    """Per-sample, per-filter squared norm of the weight gradient of a Conv1d/Conv2d: ``[N, O]``.

    Args:
        a: the layer input ``[N, C, (H,) W]``; b: the gradient of the layer output.
        strategy: ``"unfold"`` (im2col + batched products), ``"fold"`` (the weight-gradient kernel
            with the batch folded into groups), ``"ghost"`` (Gram matrices over positions),
            ``"materialize"`` (fold for grouped convs, unfold otherwise) or ``"auto"`` (the fastest
            of them for this layer shape, timed once on the first batch and remembered).
    """
    a4, geo = _conv_geometry(module, a)
    out = torch.empty(a4.shape[0], module.weight.shape[0], dtype=_acc_dtype(a), device=a.device)
    if strategy == "materialize":
        strategy = "fold" if module.groups > 1 else "unfold"
    if strategy != "auto":
        _run_conv_kernel(strategy, module, a4, b, geo, out)
        return out
    key = (
        type(module),
        tuple(a4.shape[1:]),
        tuple(b.shape[1:]),
        tuple(module.weight.shape),
        module.groups,
        geo["stride"],
        geo["dilation"],
        str(geo["padding"]),
        a.dtype,
        a.device.type,
        a4.shape[0],
    )
    best = _AUTOTUNED.get(key)
    if best is None:
        timings = {}
        for name in _conv_candidates(module, a4, b):
            _sync(a.device)
            start = time.perf_counter()
            _run_conv_kernel(name, module, a4, b, geo, out)
            _sync(a.device)
            timings[name] = time.perf_counter() - start
        best = _AUTOTUNED[key] = min(timings, key=timings.get)
        logger.debug("per-sample kernel for %s %s: %s (%s)", type(module).__name__, key[1], best, timings)
    _run_conv_kernel(best, module, a4, b, geo, out)
    return out


def linear_sq_norms(a: torch.Tensor, b: torch.Tensor, strategy: Strategy = "auto") -> torch.Tensor:
    """Per-sample, per-row squared norm of the weight gradient of a Linear layer: ``[N, O]``.

    ``a`` is ``[N, ..., I]``, ``b`` is ``[N, ..., O]``; extra dimensions (tokens) are summed over.
    """
    if a.dim() == 2:
        a, b = a.to(_acc_dtype(a)), b.to(_acc_dtype(b))
        return b.square() * a.square().sum(1, keepdim=True)
    n = a.shape[0]
    a3 = a.reshape(n, -1, a.shape[-1])
    b3 = b.reshape(n, -1, b.shape[-1])
    t, i, o = a3.shape[1], a3.shape[2], b3.shape[2]
    use_ghost = strategy == "ghost" or (strategy == "auto" and t * t * (i + o) < o * i * t)
    out = torch.empty(n, o, dtype=_acc_dtype(a), device=a.device)
    per_sample = (t * t if use_ghost else o * i) * a.element_size()
    for sl in _chunks(n, per_sample):
        if use_ghost:
            gram_a = torch.einsum("nti,nsi->nts", a3[sl], a3[sl])
            out[sl] = (torch.einsum("nto,nts->nso", b3[sl], gram_a) * b3[sl]).sum(1)
        else:
            out[sl] = torch.einsum("nto,nti->noi", b3[sl], a3[sl]).to(out.dtype).square().sum(-1)
    return out


def layer_sq_norms(module: nn.Module, a: torch.Tensor, b: torch.Tensor, strategy: Strategy = "auto") -> torch.Tensor:
    if isinstance(module, nn.Linear):
        return linear_sq_norms(a, b, strategy)
    return conv_sq_norms(module, a, b, strategy)


# -- accumulation over a backbone ----------------------------------------------------------------
class SquaredGradientHooks:
    """Context manager accumulating, per filter, ``sum_n w_n * ||d/dw_filter loss_n||^2``.

    Set `sample_weights` (``[N]``) before each backward pass; the loss must be a sum of
    per-sample terms (BatchNorm in eval mode keeps samples independent).
    """

    def __init__(self, probe: Probe, strategy: Strategy = "auto", accumulate_dtype: torch.dtype = torch.float64):
        self.probe = probe
        self.strategy = strategy
        modules = dict(probe.backbone.named_modules())
        self.groups: list[tuple[FilterGroup, nn.Module]] = [(g, modules[g.name]) for g in probe.filters]
        self.sums = torch.zeros(probe.dim, dtype=accumulate_dtype, device=probe.device)
        self.sample_weights: torch.Tensor | None = None
        self._handles: list = []
        self._calls: dict[int, int] = {}

    def __enter__(self) -> SquaredGradientHooks:
        bad = [g.name for g, m in self.groups if not hook_supported(m)]
        if bad:
            raise UnsupportedLayerError(f"layers without hook support: {bad[:5]}")
        for group, module in self.groups:
            self._handles.append(module.register_forward_hook(self._make_hook(group, module)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def new_forward(self) -> None:
        self._calls.clear()

    def _make_hook(self, group: FilterGroup, module: nn.Module) -> Callable:
        def forward_hook(mod: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if not (torch.is_grad_enabled() and output.requires_grad):
                return
            key = id(mod)
            self._calls[key] = self._calls.get(key, 0) + 1
            if self._calls[key] > 1:
                raise UnsupportedLayerError(f"layer {group.name} is applied twice in one forward pass")
            a = inputs[0].detach()

            def grad_hook(b: torch.Tensor) -> None:
                b = b.detach()
                if b.dtype != a.dtype:  # autocast: a float32 input may meet a bfloat16 gradient
                    common = torch.promote_types(a.dtype, b.dtype)
                    sq = layer_sq_norms(module, a.to(common), b.to(common), self.strategy)
                else:
                    sq = layer_sq_norms(module, a, b, self.strategy)
                if self.sample_weights is not None:
                    sq = sq * self.sample_weights.to(sq.dtype)[:, None]
                self.sums[group.start : group.stop] += sq.sum(0).to(self.sums.dtype)

            output.register_hook(grad_hook)

        return forward_hook


def _weights_per_filter(probe: Probe) -> torch.Tensor:
    w = torch.empty(probe.dim, dtype=torch.float64)
    for g in probe.filters:
        w[g.start : g.stop] = g.weights_per_filter
    return w


@dataclass
class FisherResult:
    """Per-filter Fisher values (float64 ``[D]``) and how many (input, label) draws went in."""

    values: np.ndarray
    num_inputs: int
    num_draws: int
    options: dict[str, str] = field(default_factory=dict)
    trivial: np.ndarray | None = None


def _prepare(probe: Probe) -> list[bool]:
    """Eval mode (BatchNorm frozen) and no weight gradients; returns requires_grad flags to restore."""
    probe.eval()
    flags = [p.requires_grad for p in probe.parameters()]
    for p in probe.parameters():
        p.requires_grad_(False)
    return flags


def _restore(probe: Probe, flags: list[bool]) -> None:
    for p, f in zip(probe.parameters(), flags, strict=True):
        p.requires_grad_(f)


def _hooked_pass(
    probe: Probe,
    batches: Iterable[Batch],
    method: str,
    n_samples: int,
    generator: torch.Generator,
    strategy: Strategy,
    precision: str = "fp32",
    channels_last: bool = False,
) -> tuple[torch.Tensor, int, int]:
    device, dtype = probe.device, probe.dtype
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    if channels_last:
        probe.to(memory_format=torch.channels_last)
    n_inputs = 0
    draws = 0
    with SquaredGradientHooks(probe, strategy) as hooks:
        for x, _ in batches:
            x = x.to(device=device, dtype=dtype)
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            x.requires_grad_(True)
            hooks.new_forward()
            with amp:
                logits = probe(x)
            log_p = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
            probs = log_p.detach().exp()
            n = x.shape[0]
            if method == "exact":
                k = log_p.shape[1]
                for c in range(k):
                    hooks.sample_weights = probs[:, c]
                    log_p[:, c].sum().backward(retain_graph=c < k - 1)
                draws += n
            else:
                for s in range(n_samples):
                    y = torch.multinomial(probs.float().cpu(), 1, generator=generator).squeeze(1).to(device)
                    hooks.sample_weights = None
                    log_p.gather(1, y[:, None]).sum().backward(retain_graph=s < n_samples - 1)
                draws += n * n_samples
            n_inputs += n
        sums = hooks.sums.detach().cpu()
    return sums, n_inputs, draws


def _functional_pass(
    probe: Probe,
    batches: Iterable[Batch],
    method: str,
    n_samples: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, int, int]:
    """Per-sample gradients with torch.func.vmap(grad): any layer type, more time and memory."""
    from torch.func import functional_call, grad, vmap

    names = [".".join(p for p in ("backbone", g.name, "weight") if p) for g in probe.filters]
    params = {n: p.detach() for n, p in probe.named_parameters()}
    buffers = {n: b.detach() for n, b in probe.named_buffers()}

    def log_prob(weights: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(probe, ({**params, **weights}, buffers), (x[None],))
        return F.log_softmax(out, dim=-1)[0].gather(0, y[None])[0]

    per_sample = vmap(grad(log_prob), in_dims=(None, 0, 0))
    sums = torch.zeros(probe.dim, dtype=torch.float64)
    n_inputs = draws = 0
    device, dtype = probe.device, probe.dtype
    for x, _ in batches:
        x = x.to(device=device, dtype=dtype)
        with torch.no_grad():
            probs = F.softmax(probe(x), dim=-1)
        n = x.shape[0]
        if method == "exact":
            labels = [(torch.full((n,), c, device=device), probs[:, c]) for c in range(probs.shape[1])]
        else:
            labels = [
                (torch.multinomial(probs.float().cpu(), 1, generator=generator).squeeze(1).to(device), None)
                for _ in range(n_samples)
            ]
        for y, w in labels:
            for start in range(0, n, 8):
                sl = slice(start, start + 8)
                grads = per_sample({k: params[k] for k in names}, x[sl], y[sl])
                for g, key in zip(probe.filters, names, strict=True):
                    sq = grads[key].detach().flatten(2).square().sum(-1)
                    if w is not None:
                        sq = sq * w[sl, None].detach()
                    sums[g.start : g.stop] += sq.sum(0).double().cpu()
        n_inputs += n
        draws += n * (1 if method == "exact" else n_samples)
    return sums, n_inputs, draws


def fisher_diagonal(
    probe: Probe,
    batches: Iterable[Batch],
    *,
    method: Literal["montecarlo", "exact"] = "montecarlo",
    n_samples: int = 1,
    seed: int = 0,
    strategy: Strategy | Literal["functional"] = "auto",
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    precision: Literal["fp32", "bf16"] = "fp32",
    channels_last: bool = False,
) -> FisherResult:
    """Per-filter Fisher of ``probe`` (with its current head) over ``batches`` of ``(x, y)``.

    The data labels ``y`` are not used: the Fisher's labels come from the model (sampled for
    ``montecarlo``, summed over exactly for ``exact``). Values are averaged over inputs (and
    label draws) and over the weights of each filter, with no other scaling.

    Args:
        probe: a probe with a head.
        batches: an iterable of ``(inputs, labels)``; consumed once (streaming, no caching).
        method: ``"montecarlo"`` or ``"exact"``.
        n_samples: label draws per input (montecarlo).
        seed: seeds the label draws.
        strategy: ``"auto"`` (per layer, cheaper of materialise / ghost norm), ``"materialize"``,
            ``"ghost"``, or ``"functional"`` (torch.func.vmap(grad), the reference path).
        reduce: sums a float64 tensor across processes (e.g. ``accelerator.reduce(t, "sum")``);
            each process passes its own disjoint shard of ``batches`` and all get the same result.
        precision: ``"bf16"`` runs the forward/backward under bfloat16 autocast (GPU speed); squared
            norms are still summed in float32 and the totals in float64.
        channels_last: NHWC memory format for convolutions (often faster on GPU).
    """
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    if method not in ("montecarlo", "exact"):
        raise ValueError(f"unknown Fisher method {method!r}; use 'montecarlo' or 'exact' (or Task2Vec for variational)")
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if probe.head is None:
        raise ValueError("the probe needs a head: fit one (Task2Vec does) or call probe.reset_head(k)")
    generator = torch.Generator().manual_seed(seed)
    flags = _prepare(probe)
    try:
        if strategy == "functional":
            sums, n_inputs, draws = _functional_pass(probe, batches, method, n_samples, generator)
        else:
            batches = list(batches) if not isinstance(batches, list) else batches
            try:
                sums, n_inputs, draws = _hooked_pass(
                    probe, batches, method, n_samples, generator, strategy, precision, channels_last
                )
            except UnsupportedLayerError as exc:
                logger.warning("Fisher hooks cannot handle this probe (%s); using torch.func.vmap(grad)", exc)
                generator.manual_seed(seed)
                sums, n_inputs, draws = _functional_pass(probe, batches, method, n_samples, generator)
    finally:
        _restore(probe, flags)
    if reduce is not None:
        totals = reduce(torch.cat([sums, torch.tensor([n_inputs, draws], dtype=sums.dtype)]).to(probe.device))
        totals = totals.detach().cpu()
        sums, n_inputs, draws = totals[:-2], int(totals[-2]), int(totals[-1])
    if n_inputs == 0:
        raise ValueError("no data: the batches were empty")
    denom = n_inputs if method == "exact" else draws
    values = (sums / denom / _weights_per_filter(probe)).numpy()
    return FisherResult(values, n_inputs, draws, {"n_samples": str(n_samples)})


# -- the variational ("robust") Fisher -----------------------------------------------------------
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
    flags = _prepare(probe)
    for p in probe.head.parameters():
        p.requires_grad_(True)
    optim = torch.optim.Adam(
        [
            {"params": [log_precision, log_prior], "lr": lr_precision},
            {"params": list(probe.head.parameters()), "lr": lr_head},
        ]
    )
    try:
        with _NoisyWeights(probe, log_precision, generator):
            for epoch in range(epochs):
                for x, y in make_batches(epoch):
                    x, y = x.to(device=device, dtype=dtype), y.to(device)
                    ce = F.cross_entropy(probe(x), y)
                    lam2 = torch.exp(log_prior[layer_index] - log_precision)  # lambda^2 * sigma^2
                    kl = 0.5 * (weights_per_filter * (lam2 - 1.0 - torch.log(lam2))).sum()
                    loss = ce + scale * kl
                    optim.zero_grad(set_to_none=True)
                    loss.backward()
                    optim.step()
                    if progress is not None:
                        progress(x.shape[0])
    finally:
        _restore(probe, flags)
    values = (scale * torch.exp(log_precision.detach())).double().cpu().numpy()
    trivial = (scale * torch.exp(log_prior.detach()[layer_index])).double().cpu().numpy()
    opts = {"beta": repr(beta), "epochs": str(epochs), "lr_precision": repr(lr_precision), "lr_head": repr(lr_head)}
    return FisherResult(values, num_examples, num_examples * epochs, opts, trivial=trivial)


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
