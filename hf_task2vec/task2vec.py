"""`Task2Vec`: sample a task, fit the probe's head on cached features, compute the Fisher, and
return a `TaskEmbedding` with full provenance. Also `domain_embedding`, the p(x)-only baseline."""

from __future__ import annotations

import datetime as _dt
import json
import logging
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import __version__
from .embedding import TaskEmbedding
from .fisher import Strategy, fisher_diagonal, fisher_variational
from .head import balanced_sample, fit_linear_head, set_head
from .probes import Probe, load_probe
from .tasks import Task, load_task

logger = logging.getLogger(__name__)

Method = Literal["montecarlo", "exact", "variational"]
METHODS: tuple[str, ...] = ("montecarlo", "exact", "variational")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Task2Vec:
    """Embeds tasks with a fixed probe network (scikit-learn style: configure, then `embed`).

    Args:
        probe: a `Probe` or anything `load_probe` accepts (default: the offline ``"embedded"``).
        method: ``"montecarlo"`` (default), ``"exact"`` or ``"variational"`` (DESIGN.md).
        n_samples: label draws per input for ``montecarlo``.
        max_samples: examples used at most, class-balanced when the task is larger; when it is
            not larger every example is used exactly once.
        fit_head: retrain the linear head on the task (``False`` keeps the probe's head, e.g. for
            analytic checks; it must then have one output per class).
        head_epochs: maximum L-BFGS iterations (full passes over the cached features) of the head fit.
        head_l2: L2 penalty of the head fit (keeps separable tasks at a finite optimum).
        batch_size: examples per forward/backward pass.
        seed: seeds sampling and label draws; results are deterministic on one machine.
        device: ``"cpu"``, ``"cuda"``...; default: CUDA when available.
        image_size: resize images to this side (default: the probe's pretrained input size).
        variational_epochs, beta: options of the variational estimator.
        strategy: per-sample gradient strategy (see `fisher_diagonal`).
        precision, channels_last: ``"bf16"`` autocast and NHWC layout for the Fisher pass (GPU speed;
            see the README for the measured effect on the embedding).
        progress: show tqdm progress bars.
    """

    def __init__(
        self,
        probe: Probe | str | nn.Module = "embedded",
        *,
        method: Method = "montecarlo",
        n_samples: int = 1,
        max_samples: int | None = 10_000,
        fit_head: bool = True,
        head_epochs: int = 500,
        head_l2: float = 1e-3,
        batch_size: int = 32,
        seed: int = 0,
        device: str | torch.device | None = None,
        image_size: int | None = None,
        variational_epochs: int = 3,
        beta: float = 1.0,
        strategy: Strategy | Literal["functional"] = "auto",
        precision: Literal["fp32", "bf16"] = "fp32",
        channels_last: bool = False,
        progress: bool = True,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.probe = load_probe(probe, image_size=image_size) if not isinstance(probe, Probe) else probe
        if image_size is not None:
            self.probe.image_size = image_size
        self.method = method
        self.n_samples = n_samples
        self.max_samples = max_samples
        self.fit_head = fit_head
        self.head_epochs = head_epochs
        self.head_l2 = head_l2
        self.batch_size = batch_size
        self.seed = seed
        self.device = torch.device(device) if device is not None else default_device()
        self.variational_epochs = variational_epochs
        self.beta = beta
        self.strategy = strategy
        self.precision = precision
        self.channels_last = channels_last
        self.progress = progress
        self.head_info: dict[str, float] = {}

    def __repr__(self) -> str:
        return f"Task2Vec(probe={self.probe.name!r}, method={self.method!r}, max_samples={self.max_samples})"

    # -- data --------------------------------------------------------------------------------
    def sample(self, task: Task) -> np.ndarray:
        """The indices of the examples this embedder uses for ``task``."""
        return balanced_sample(task.labels, self.max_samples, self.seed)

    def batches(
        self, task: Task, indices: np.ndarray, desc: str | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(inputs, labels)`` batches over ``indices``, preprocessed for the probe."""
        transform = self.probe.transform() if task.is_image else None
        labels = torch.tensor(task.labels)  # a copy: dataset label arrays may be read-only
        bar = tqdm(total=len(indices), desc=desc, unit="ex", disable=not self.progress or desc is None, leave=False)
        try:
            for start in range(0, len(indices), self.batch_size):
                idx = indices[start : start + self.batch_size]
                x = task.get_inputs(idx, transform)
                yield x, labels[torch.as_tensor(idx)]
                bar.update(len(idx))
        finally:
            bar.close()

    @torch.no_grad()
    def features(self, task: Task, indices: np.ndarray) -> torch.Tensor:
        """Backbone features of the sampled examples (computed once; the only cache kept)."""
        self.probe.eval()
        feats = [
            self.probe.features(x.to(self.device, self.probe.dtype)).cpu()
            for x, _ in self.batches(task, indices, desc=f"features {task.name}")
        ]
        return torch.cat(feats)

    # -- embedding ---------------------------------------------------------------------------
    def embed(self, task: Task | Any, **load_kwargs: Any) -> TaskEmbedding:
        """Embed a task (a `Task` or anything `load_task` accepts, with ``load_kwargs``)."""
        task = task if isinstance(task, Task) else load_task(task, **load_kwargs)
        started = _dt.datetime.now(_dt.timezone.utc)
        self.probe.to(self.device)
        indices = self.sample(task)
        labels = torch.as_tensor(task.labels[indices])
        if self.fit_head:
            feats = self.features(task, indices)
            weight, bias, self.head_info = fit_linear_head(
                feats, labels, task.num_classes, l2=self.head_l2, max_iter=self.head_epochs
            )
            set_head(self.probe.reset_head(task.num_classes, feats.shape[1]), weight, bias)
            logger.info("%s: head train accuracy %.3f", task.name, self.head_info["train_accuracy"])
        elif self.probe.head is None or self.probe.head.out_features != task.num_classes:
            raise ValueError(
                f"fit_head=False needs a probe head with {task.num_classes} outputs for task {task.name!r}; "
                "set probe.head or use fit_head=True"
            )
        result = self._fisher(task, indices)
        trivial = result.trivial if result.trivial is not None else np.full(self.probe.dim, self.probe.prior_fisher)
        meta = {
            **task.meta(),
            "probe": self.probe.name,
            "probe_revision": self.probe.revision,
            "method": self.method,
            "method_options": json.dumps(result.options, sort_keys=True),
            "precision": self.precision,
            "image_size": str(self.probe.input_resolution or ""),
            "num_samples": str(len(indices)),
            "num_task_examples": str(len(task)),
            "max_samples": str(self.max_samples),
            "seed": str(self.seed),
            "fit_head": str(self.fit_head),
            "head_train_accuracy": f"{self.head_info.get('train_accuracy', float('nan')):.4f}",
            "trivial": "variational prior (beta/2N) lambda^2"
            if self.method == "variational"
            else f"constant prior_fisher={self.probe.prior_fisher!r}",
            "library": "hf_task2vec",
            "library_version": __version__,
            "torch_version": torch.__version__,
            "created": started.isoformat(timespec="seconds"),
        }
        return TaskEmbedding(result.values, trivial, self.probe.layers, meta)

    def _fisher(self, task: Task, indices: np.ndarray):
        if self.method in ("montecarlo", "exact"):
            return fisher_diagonal(
                self.probe,
                self.batches(task, indices, desc=f"fisher {task.name}"),
                method=self.method,  # type: ignore[arg-type]
                n_samples=self.n_samples,
                seed=self.seed,
                strategy=self.strategy,
                precision=self.precision,
                channels_last=self.channels_last,
            )
        init = fisher_diagonal(
            self.probe, self.batches(task, indices, desc=f"fisher init {task.name}"), seed=self.seed
        ).values
        rng = np.random.default_rng(self.seed)

        def make_batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            return self.batches(task, rng.permutation(indices), desc=f"variational {task.name} epoch {epoch + 1}")

        return fisher_variational(
            self.probe,
            make_batches,
            len(indices),
            epochs=self.variational_epochs,
            beta=self.beta,
            init_fisher=init,
            seed=self.seed,
        )


def embed(
    source: Task | Any,
    probe: Probe | str | nn.Module = "embedded",
    method: Method = "montecarlo",
    *,
    input_column: str | None = None,
    label_column: str | None = None,
    split: str = "train",
    classes: list[str | int] | None = None,
    name: str | None = None,
    revision: str | None = None,
    config: str | None = None,
    streaming: bool = False,
    **options: Any,
) -> TaskEmbedding:
    """Embed a task in one call: ``hf_task2vec.embed("username/my-dataset")``.

    ``source`` is anything `load_task` accepts; ``options`` go to `Task2Vec` (``max_samples``,
    ``n_samples``, ``image_size``, ``seed``, ``device``...). ``streaming=True`` streams the
    dataset and reads only ``max_samples`` class-balanced examples of it (large Hub datasets).
    """
    task = (
        source
        if isinstance(source, Task)
        else load_task(
            source,
            input_column=input_column,
            label_column=label_column,
            split=split,
            classes=classes,
            name=name,
            revision=revision,
            config=config,
            streaming=streaming,
            max_examples=options.get("max_samples", 10_000) if streaming else None,
        )
    )
    if isinstance(source, Task) and classes is not None:
        task = task.subtask(classes, name=name)
    return Task2Vec(probe, method=method, **options).embed(task)


@torch.no_grad()
def domain_embedding(
    task: Task | Any,
    probe: Probe | str | nn.Module = "embedded",
    *,
    max_samples: int | None = 10_000,
    batch_size: int = 64,
    seed: int = 0,
    image_size: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> TaskEmbedding:
    """The domain-embedding baseline: per filter, the mean absolute activation of the probe over
    the task's inputs. It depends on p(x) only (labels are ignored), has the same dimension and
    layers as the task embedding, and is compared with ``kind="cosine"``."""
    embedder = Task2Vec(
        probe,
        max_samples=max_samples,
        batch_size=batch_size,
        seed=seed,
        image_size=image_size,
        device=device,
        progress=progress,
    )
    probe_ = embedder.probe.to(embedder.device).eval()
    task = task if isinstance(task, Task) else load_task(task)
    indices = embedder.sample(task)
    modules = dict(probe_.backbone.named_modules())
    sums = torch.zeros(probe_.dim, dtype=torch.float64)
    counts = torch.zeros(probe_.dim, dtype=torch.float64)
    handles = []
    for g in probe_.filters:

        def hook(mod: nn.Module, inputs: tuple, out: torch.Tensor, g=g) -> None:
            channel_dim = -1 if isinstance(mod, nn.Linear) else 1
            o = out.detach().abs().movedim(channel_dim, -1).reshape(-1, g.size)
            sums[g.start : g.stop] += o.sum(0).double().cpu()
            counts[g.start : g.stop] += o.shape[0]

        handles.append(modules[g.name].register_forward_hook(hook))
    try:
        for x, _ in embedder.batches(task, indices, desc=f"domain {task.name}"):
            probe_.features(x.to(embedder.device, probe_.dtype))
    finally:
        for h in handles:
            h.remove()
    meta = {
        **task.meta(),
        "probe": probe_.name,
        "probe_revision": probe_.revision,
        "method": "domain",
        "image_size": str(probe_.input_resolution or ""),
        "num_samples": str(len(indices)),
        "seed": str(seed),
        "library_version": __version__,
    }
    values = (sums / counts.clamp_min(1)).numpy()
    return TaskEmbedding(values, np.zeros_like(values), probe_.layers, meta)
