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
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
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
Inputs = torch.Tensor | Mapping[str, torch.Tensor]
Batch = tuple[Inputs, torch.Tensor]

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
    per-sample terms (BatchNorm in eval mode keeps samples independent). The hooks act only on
    forward passes run by the thread that entered the context, so several embeddings can share
    one backbone concurrently. A filter layer whose input does not require a gradient (the first
    conv of a frozen network, or a token-embedding output) gets one through a forward pre-hook.
    """

    def __init__(
        self,
        probe: Probe,
        strategy: Strategy = "auto",
        accumulate_dtype: torch.dtype = torch.float64,
        second_moment: bool = False,
    ):
        self.probe = probe
        self.strategy = strategy
        modules = dict(probe.backbone.named_modules())
        self.groups: list[tuple[FilterGroup, nn.Module]] = [(g, modules[g.name]) for g in probe.filters]
        self.sums = torch.zeros(probe.dim, dtype=accumulate_dtype, device=probe.device)
        # second_moment: also sum_n (per-sample total over this forward's backward passes)^2, the
        # spread of the per-sample Fisher that the evidence floor needs (docs/robust_fisher.md)
        self.sumsq = torch.zeros_like(self.sums) if second_moment else None
        self._batch: torch.Tensor | None = None
        self.sample_weights: torch.Tensor | None = None
        self._handles: list = []
        self._calls: dict[int, int] = {}
        self._thread = threading.get_ident()

    def __enter__(self) -> SquaredGradientHooks:
        bad = [g.name for g, m in self.groups if not hook_supported(m)]
        if bad:
            raise UnsupportedLayerError(f"layers without hook support: {bad[:5]}")
        self._thread = threading.get_ident()
        for group, module in self.groups:
            self._handles.append(module.register_forward_pre_hook(self._require_grad))
            self._handles.append(module.register_forward_hook(self._make_hook(group, module)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def new_forward(self) -> None:
        self.flush()
        self._calls.clear()

    def flush(self) -> None:
        """Add the finished forward's per-sample totals to `sumsq` (called by `new_forward`; call it
        once more after the last backward pass)."""
        if self._batch is not None and self.sumsq is not None:
            self.sumsq += self._batch.square().sum(0).to(self.sumsq.dtype)
        self._batch = None

    def _mine(self) -> bool:
        return threading.get_ident() == self._thread and torch.is_grad_enabled()

    def _require_grad(self, mod: nn.Module, inputs: tuple) -> tuple | None:
        a = inputs[0] if inputs else None
        if not self._mine() or not isinstance(a, torch.Tensor) or a.requires_grad or not a.is_floating_point():
            return None
        # nothing upstream needs a gradient: this input is where backpropagation may stop
        return (a.detach().requires_grad_(True), *inputs[1:])

    def _make_hook(self, group: FilterGroup, module: nn.Module) -> Callable:
        def forward_hook(mod: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if not (self._mine() and output.requires_grad):
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
                if self.sumsq is not None:
                    if self._batch is None:
                        shape = (sq.shape[0], self.sums.shape[0])
                        self._batch = torch.zeros(shape, dtype=self.sums.dtype, device=sq.device)
                    self._batch[:, group.start : group.stop] += sq.to(self._batch.dtype)

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
    #: with ``second_moment=True``: per filter, the mean over inputs of the squared per-input Fisher
    second_moment: np.ndarray | None = None


# Backbones in use by a Fisher pass: id -> [users, saved requires_grad flags, saved training flag].
# Reference-counted so that concurrent passes over one shared backbone (embedders work on shallow
# copies of a probe: same backbone, own head) restore it only once, when the last one leaves.
_IN_USE: dict[int, list] = {}
_IN_USE_LOCK = threading.Lock()
# torch.func.functional_call swaps tensors into the module itself for the call, so functional
# passes over one backbone take turns (hooked passes never swap anything).
_FUNCTIONAL_LOCKS: dict[int, threading.Lock] = {}


def _functional_lock(probe: Probe) -> threading.Lock:
    with _IN_USE_LOCK:
        return _FUNCTIONAL_LOCKS.setdefault(id(probe.backbone), threading.Lock())


def _freeze(module: nn.Module) -> list:
    saved = [[p.requires_grad for p in module.parameters()], module.training]
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return saved


def _unfreeze(module: nn.Module, saved: list) -> None:
    for p, flag in zip(module.parameters(), saved[0], strict=True):
        p.requires_grad_(flag)
    module.train(saved[1])


@contextlib.contextmanager
def frozen(probe: Probe) -> Iterator[None]:
    """Eval mode (BatchNorm frozen) and no weight gradients for the pass; every flag is restored
    afterwards (the shared backbone's when the last concurrent user leaves)."""
    key = id(probe.backbone)
    with _IN_USE_LOCK:
        entry = _IN_USE.get(key)
        if entry is None:
            entry = _IN_USE[key] = [0, _freeze(probe.backbone)]
        entry[0] += 1
    head_saved = _freeze(probe.head) if probe.head is not None else None
    try:
        yield
    finally:
        if head_saved is not None and probe.head is not None:
            _unfreeze(probe.head, head_saved)
        with _IN_USE_LOCK:
            entry[0] -= 1
            if entry[0] == 0:
                del _IN_USE[key]
                _FUNCTIONAL_LOCKS.pop(key, None)  # no user is left to hold it
                _unfreeze(probe.backbone, entry[1])


def to_device(x: Inputs, device: torch.device, dtype: torch.dtype) -> Inputs:
    """Move a batch's inputs (a tensor, or a mapping of tensors such as a tokenizer's output) to the
    probe's device; only floating-point tensors take the probe's dtype (token ids stay integers)."""
    if isinstance(x, Mapping):
        return {k: to_device(v, device, dtype) for k, v in x.items()}  # type: ignore[misc]
    return x.to(device=device, dtype=dtype) if x.is_floating_point() else x.to(device=device)


def batch_size_of(x: Inputs) -> int:
    if isinstance(x, Mapping):
        return int(next(iter(x.values())).shape[0])
    return int(x.shape[0])


def split_loss_mask(x: Inputs) -> tuple[Inputs, torch.Tensor | None]:
    """A causal-LM batch carries ``loss_mask [N, T]`` (positions whose next token counts); the
    probe never sees it."""
    if isinstance(x, Mapping) and "loss_mask" in x:
        rest = {k: v for k, v in x.items() if k != "loss_mask"}
        return rest, x["loss_mask"]
    return x, None


def _log_probs(logits: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)


def label_directions(probs: torch.Tensor, rank: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Directions ``v_j`` and weights ``lambda_j`` with ``sum_j lambda_j v_j v_j^T = diag(p) - p p^T``
    (the covariance of the score w.r.t. the logits), per sample: ``[N, r, K]`` and ``[N, r]``.

    ``E_{y~p} ||J^T (e_y - p)||^2 = sum_j lambda_j ||J^T v_j||^2``: one backward pass per direction
    gives the label expectation exactly. The matrix has rank ``K - 1`` (its null vector is the
    constant vector), so ``K - 1`` passes are exact; with ``rank`` smaller, the leading directions
    are kept (the omitted eigenvalue mass is small when the head is confident).
    """
    p = probs.double()
    cov = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    k = p.shape[1]
    r = k - 1 if rank is None else max(1, min(rank, k - 1))
    lam = evals[:, -r:].clamp_min(0).flip(-1)
    vec = evecs[:, :, -r:].flip(-1).transpose(1, 2)
    return vec.to(probs.dtype), lam.to(probs.dtype)


def _hooked_pass(
    probe: Probe,
    batches: Iterable[Batch],
    method: str,
    n_samples: int,
    generator: torch.Generator,
    strategy: Strategy,
    precision: str = "fp32",
    channels_last: bool = False,
    rank: int | None = None,
    second_moment: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, int, int]:
    device, dtype = probe.device, probe.dtype
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    n_inputs = 0
    draws = 0
    with SquaredGradientHooks(probe, strategy, second_moment=second_moment) as hooks:
        for x, _ in batches:
            x, mask = split_loss_mask(to_device(x, device, dtype))
            if channels_last and isinstance(x, torch.Tensor) and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            hooks.new_forward()
            with amp:
                logits = probe(x)
            log_p = _log_probs(logits)
            probs = log_p.detach().exp()
            n = log_p.shape[0]
            if log_p.dim() == 3:  # causal LM: a label draw per position, masked sum over positions
                if method != "montecarlo":
                    raise ValueError("sequence outputs (causal LM) support method='montecarlo' only")
                weight = torch.ones(log_p.shape[:2], device=log_p.device) if mask is None else mask.to(log_p)
                flat = probs.reshape(-1, probs.shape[-1]).float().cpu()
                for s in range(n_samples):
                    y = torch.multinomial(flat, 1, generator=generator).view(n, -1, 1).to(log_p.device)
                    hooks.sample_weights = None
                    (log_p.gather(2, y).squeeze(2) * weight).sum().backward(retain_graph=s < n_samples - 1)
                draws += n * n_samples
            elif method == "exact":
                vec, lam = label_directions(probs, rank)
                logits_f = logits.to(log_p.dtype)
                for j in range(vec.shape[1]):
                    hooks.sample_weights = lam[:, j]
                    # the score of sample n along v is J_n^T v: the gradient of v . logits_n
                    (logits_f * vec[:, j]).sum().backward(retain_graph=j < vec.shape[1] - 1)
                draws += n
            else:
                for s in range(n_samples):
                    y = torch.multinomial(probs.float().cpu(), 1, generator=generator).squeeze(1).to(device)
                    hooks.sample_weights = None
                    log_p.gather(1, y[:, None]).sum().backward(retain_graph=s < n_samples - 1)
                draws += n * n_samples
            n_inputs += n
        hooks.flush()
        sums = hooks.sums.detach().cpu()
        sumsq = None if hooks.sumsq is None else hooks.sumsq.detach().cpu()
    return sums, sumsq, n_inputs, draws


def _functional_pass(
    probe: Probe,
    batches: Iterable[Batch],
    method: str,
    n_samples: int,
    generator: torch.Generator,
    second_moment: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, int, int]:
    """Per-sample gradients with torch.func.vmap(grad): any layer type, more time and memory."""
    from torch.func import functional_call, grad, vmap

    names = [".".join(p for p in ("backbone", g.name, "weight") if p) for g in probe.filters]
    params = {n: p.detach() for n, p in probe.named_parameters()}
    buffers = {n: b.detach() for n, b in probe.named_buffers()}

    def one(x: Inputs) -> Inputs:
        return {k: v[None] for k, v in x.items()} if isinstance(x, Mapping) else x[None]

    def log_prob(weights: dict, x: Inputs, y: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
        out = _log_probs(functional_call(probe, ({**params, **weights}, buffers), (one(x),)))[0]
        if out.dim() == 2:  # positions of one sequence
            return (out.gather(1, y[:, None]).squeeze(1) * m).sum()
        return out.gather(0, y[None])[0]

    per_sample = vmap(grad(log_prob), in_dims=(None, 0, 0, 0))
    sums = torch.zeros(probe.dim, dtype=torch.float64)
    sumsq = torch.zeros_like(sums) if second_moment else None
    n_inputs = draws = 0
    device, dtype = probe.device, probe.dtype
    for x, _ in batches:
        x, mask = split_loss_mask(to_device(x, device, dtype))
        with torch.no_grad():
            probs = F.softmax(probe(x).to(torch.promote_types(dtype, torch.float32)), dim=-1)
        n = probs.shape[0]
        if probs.dim() == 3:
            if method != "montecarlo":
                raise ValueError("sequence outputs (causal LM) support method='montecarlo' only")
            m = torch.ones(probs.shape[:2], device=device) if mask is None else mask.to(probs)
            flat = probs.reshape(-1, probs.shape[-1]).float().cpu()
            labels = [
                (torch.multinomial(flat, 1, generator=generator).view(n, -1).to(device), None)
                for _ in range(n_samples)
            ]
        elif method == "exact":
            m = torch.zeros(n, device=device)
            labels = [(torch.full((n,), c, device=device), probs[:, c]) for c in range(probs.shape[1])]
        else:
            m = torch.zeros(n, device=device)
            labels = [
                (torch.multinomial(probs.float().cpu(), 1, generator=generator).squeeze(1).to(device), None)
                for _ in range(n_samples)
            ]
        per_sample_totals = torch.zeros(n, probe.dim, dtype=torch.float64) if sumsq is not None else None
        for y, w in labels:
            for start in range(0, n, 8):
                sl = slice(start, start + 8)
                xs = {k: v[sl] for k, v in x.items()} if isinstance(x, Mapping) else x[sl]
                grads = per_sample({k: params[k] for k in names}, xs, y[sl], m[sl])
                for g, key in zip(probe.filters, names, strict=True):
                    sq = grads[key].detach().flatten(2).square().sum(-1)
                    if w is not None:
                        sq = sq * w[sl, None].detach()
                    sums[g.start : g.stop] += sq.sum(0).double().cpu()
                    if per_sample_totals is not None:
                        per_sample_totals[sl, g.start : g.stop] += sq.double().cpu()
        if sumsq is not None:
            sumsq += per_sample_totals.square().sum(0)
        n_inputs += n
        draws += n * (1 if method == "exact" else n_samples)
    return sums, sumsq, n_inputs, draws


def hooks_can_run(probe: Probe, first: Inputs) -> str | None:
    """Decide before the pass whether the hooks handle ``probe``: every filter layer of a supported
    type, each applied once per forward (checked with one gradient-free forward of the first
    batch). Returns the reason they cannot, or ``None``."""
    modules = dict(probe.backbone.named_modules())
    bad = [g.name for g in probe.filters if not hook_supported(modules[g.name])]
    if bad:
        return f"layers without hook support: {bad[:5]}"
    calls: dict[str, int] = {}
    me = threading.get_ident()

    def count(name: str) -> Callable:
        def hook(mod: nn.Module, inputs: tuple, output: object) -> None:
            # another thread's forward over a shared backbone is not weight sharing
            if threading.get_ident() == me:
                calls[name] = calls.get(name, 0) + 1

        return hook

    handles = [modules[g.name].register_forward_hook(count(g.name)) for g in probe.filters]
    # one example answers it: a layer is applied as often per forward whatever the batch size
    one = {k: v[:1] for k, v in first.items()} if isinstance(first, Mapping) else first[:1]
    try:
        with torch.no_grad():
            probe(split_loss_mask(to_device(one, probe.device, probe.dtype))[0])
    finally:
        for h in handles:
            h.remove()
    shared = [name for name, count in calls.items() if count > 1]
    if shared:
        return f"layers applied more than once in one forward pass (weight sharing): {shared[:5]}"
    return None


def fisher_diagonal(
    probe: Probe,
    batches: Iterable[Batch],
    *,
    method: Literal["montecarlo", "exact"] = "montecarlo",
    n_samples: int = 1,
    rank: int | None = None,
    seed: int = 0,
    strategy: Strategy | Literal["functional"] = "auto",
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    precision: Literal["fp32", "bf16"] = "fp32",
    channels_last: bool = False,
    second_moment: bool = False,
) -> FisherResult:
    """Per-filter Fisher of ``probe`` (with its current head) over ``batches`` of ``(x, y)``.

    The data labels ``y`` are not used: the Fisher's labels come from the model (sampled for
    ``montecarlo``, in expectation for ``exact``). Values are averaged over inputs (and label
    draws) and over the weights of each filter, with no other scaling.

    Args:
        probe: a probe with a head.
        batches: an iterable of ``(inputs, labels)``, consumed once, in order, never stored (memory
            does not grow with the number of examples). ``inputs`` is a tensor or a mapping of
            tensors (a tokenizer's output); a causal-LM batch adds ``loss_mask [N, T]``.
        method: ``"montecarlo"`` or ``"exact"``.
        n_samples: label draws per input (montecarlo).
        rank: ``exact`` only: backward passes per input along the leading eigen-directions of the
            score covariance ``diag(p) - p p^T``; ``None`` (default) uses all ``K - 1``, which is
            exact. A smaller rank bounds the cost for many classes.
        seed: seeds the label draws.
        strategy: ``"auto"`` (per layer, cheaper of materialise / ghost norm), ``"materialize"``,
            ``"ghost"``, or ``"functional"`` (torch.func.vmap(grad), the reference path).
        reduce: sums a float64 tensor across processes (e.g. ``accelerator.reduce(t, "sum")``);
            each process passes its own disjoint shard of ``batches`` and all get the same result.
        precision: ``"bf16"`` runs the forward/backward under bfloat16 autocast (GPU speed); squared
            norms are still summed in float32 and the totals in float64.
        channels_last: NHWC memory format for convolutions during the pass (often faster on GPU);
            the probe's own layout is restored afterwards.
        second_moment: also return `FisherResult.second_moment`, the mean over inputs of the squared
            per-input Fisher of each filter (its spread gives the estimate's standard error).
    """
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    if method not in ("montecarlo", "exact"):
        raise ValueError(f"unknown Fisher method {method!r}; use 'montecarlo' or 'exact' (or Task2Vec for variational)")
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if rank is not None and rank < 1:
        raise ValueError(f"rank must be >= 1 (or None for all K - 1 directions), got {rank}")
    if probe.head is None:
        raise ValueError("the probe needs a head: fit one (Task2Vec does) or call probe.reset_head(k)")
    generator = torch.Generator().manual_seed(seed)
    stream = iter(batches)
    first = next(stream, None)
    if first is None:
        sums, n_inputs, draws = torch.zeros(probe.dim, dtype=torch.float64), 0, 0
        sumsq = torch.zeros_like(sums) if second_moment else None
    else:
        batches = itertools.chain([first], stream)
        with frozen(probe):
            reason = "requested" if strategy == "functional" else hooks_can_run(probe, first[0])
            del first  # the chain holds it until it is consumed, then nothing does
            if reason is not None:
                if strategy != "functional":
                    logger.warning("Fisher hooks cannot handle this probe (%s); using torch.func.vmap(grad)", reason)
                with _functional_lock(probe):
                    sums, sumsq, n_inputs, draws = _functional_pass(
                        probe, batches, method, n_samples, generator, second_moment
                    )
            else:
                layout = _memory_format(probe) if channels_last else None
                if channels_last:
                    probe.to(memory_format=torch.channels_last)
                try:
                    sums, sumsq, n_inputs, draws = _hooked_pass(
                        probe, batches, method, n_samples, generator, strategy, precision, channels_last, rank,
                        second_moment,
                    )
                finally:
                    if layout is not None:
                        probe.to(memory_format=layout)
    if reduce is not None:
        parts = [sums] + ([sumsq] if sumsq is not None else [])
        totals = reduce(torch.cat([*parts, torch.tensor([n_inputs, draws], dtype=sums.dtype)]).to(probe.device))
        totals = totals.detach().cpu()
        d = sums.shape[0]
        sums, n_inputs, draws = totals[:d], int(totals[-2]), int(totals[-1])
        if sumsq is not None:
            sumsq = totals[d : 2 * d]
    if n_inputs == 0:
        raise ValueError("no data: the batches were empty")
    denom = n_inputs if method == "exact" else draws
    per_filter = _weights_per_filter(probe)
    values = (sums / denom / per_filter).numpy()
    if method == "montecarlo":
        options = {"n_samples": str(n_samples)}
        # a montecarlo input's total is over its n_samples draws: its mean draw is total / n_samples
        moment = None if sumsq is None else (sumsq / n_inputs / (n_samples * per_filter) ** 2).numpy()
    else:
        options = {"rank": "K-1" if rank is None else str(rank)}
        moment = None if sumsq is None else (sumsq / n_inputs / per_filter**2).numpy()
    return FisherResult(values, n_inputs, draws, options, second_moment=moment)


def _memory_format(probe: Probe) -> torch.memory_format:
    """The layout of the probe's 4-D weights (what `channels_last` has to restore)."""
    for p in probe.parameters():
        if p.dim() == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last):
            return torch.channels_last
    return torch.contiguous_format
