"""`Task2Vec`: sample a task, fit the probe's head on cached features, compute the Fisher, and
return a `TaskEmbedding` with full provenance. Also `domain_embedding`, the p(x)-only baseline.

The provenance schema is `PROVENANCE`: one `Recorded` row per embedder setting written into every
embedding's metadata. `Task2Vec.provenance` writes it, `Task2Vec.from_provenance` rebuilds an
embedder from it (the expert index embeds queries that way) and `Task2Vec.provenance_differences`
compares it (a batch run's resume check). A new estimator option is one more row.

`Task2Vec` does not mutate shared state: the constructor only stores its parameters (the probe is
loaded on first use), and every `embed` call fits its head on its own shallow copy of the probe
(the same frozen backbone object, its own head), so two calls on one probe can run concurrently.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ._version import __version__
from .checks import AUTO_BATCH_SIDE, DEFAULT_BATCH_SIZE, auto_batch_size, check_embedder_options, check_int  # noqa: F401  (re-exported)
from .embedding import TaskEmbedding, _method_options
from .errors import TaskError
from .fisher import FisherResult, Strategy, fisher_diagonal, to_device
from .head import fit_head_of_kind, select_head_l2, set_head
from .pipeline import iter_batches
from .probes import Probe, load_probe
from .robust import fisher_variational, relative_fisher, robust_fisher
from .sampling import balanced_sample
from .tasks import Task, TaskSpec, load_task

logger = logging.getLogger(__name__)

Method = Literal["relative", "variational", "exact", "montecarlo"]
METHODS: tuple[str, ...] = ("relative", "variational", "exact", "montecarlo")
#: The library's default estimator: the robust Fisher whose prior the task's own evidence sets
#: (`hf_task2vec.robust.relative_fisher`); ``"variational"`` is the paper's, with a fixed prior.
DEFAULT_METHOD: Method = "relative"
#: Methods that start from the exact Fisher along the label covariance's leading directions.
ROBUST_METHODS = ("relative", "variational")
#: Label directions per input of the robust estimators: exact up to 5 classes; for more, the
#: leading 4 directions of ``diag(p) - p p^T`` (most of its trace once the head is confident).
VARIATIONAL_RANK = 4


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _optional_int(text: str) -> int | None:
    return None if text in ("", "None") else int(text)


def _optional_rank(text: str) -> int | None:
    """``"K-1"`` (every direction, exact) is recorded for ``rank=None``."""
    return None if text in ("", "None", "K-1") else int(text)


def _head_l2(text: str) -> float | str:
    return text if text == "auto" else float(text)


def _boolean(text: str) -> bool:
    return text.strip().lower() in ("true", "1", "yes")


@dataclass(frozen=True)
class Recorded:
    """One embedder setting recorded in the metadata of every embedding (a row of `PROVENANCE`).

    Attributes:
        key: the metadata key (or the key inside ``method_options`` when ``in_method_options``).
        option: the `Task2Vec` option it records and `Task2Vec.from_provenance` restores (``None``:
            a fact of the probe, not an option).
        parse: turns the recorded string back into the option's value.
        legacy: what embeddings written before the key existed stand for (``""``: unknown).
        resume: a batch run counts a stored embedding as done only if this setting agrees.
        in_method_options: recorded by the estimator in the ``method_options`` JSON (its own options).
    """

    key: str
    option: str | None
    parse: Callable[[str], Any] = str
    legacy: str = ""
    resume: bool = True
    in_method_options: bool = False


PROVENANCE: tuple[Recorded, ...] = (
    Recorded("probe", None, resume=False),  # part of the store key already
    Recorded("probe_revision", None),
    Recorded("method", "method"),
    Recorded("precision", "precision", legacy="fp32"),
    Recorded("image_size", "image_size", _optional_int),  # the probe's input resolution
    Recorded("max_samples", "max_samples", _optional_int),
    Recorded("seed", "seed", int),
    Recorded("fit_head", "fit_head", _boolean, resume=False),
    Recorded("head_l2", "head_l2", _head_l2, legacy="0.001"),  # the head's strength ("auto": chosen per task)
    Recorded("head", "head", legacy="linear"),  # the head's form: all weights free, or the class means'
    Recorded("n_samples", "n_samples", int, resume=False, in_method_options=True),
    Recorded("epochs", "variational_epochs", int, resume=False, in_method_options=True),
    Recorded("beta", "beta", float, resume=False, in_method_options=True),
    Recorded("rank", "rank", _optional_rank, resume=False, in_method_options=True),
    # resume=False: it defaults to max_samples (checked above); rows in method_options are not compared
    Recorded("prior_examples", "prior_examples", _optional_int, resume=False, in_method_options=True),
    Recorded("max_length", "max_length", _optional_int),  # text probes: truncation length (tokens)
    Recorded("pooling", None),  # text probes: how token features are pooled (a fact of the probe)
)

#: The probe `embed` uses for a text task when given the default (image) probe.
DEFAULT_TEXT_PROBE = "embedded-text"


def _probe_for(task: Task, probe: Any) -> Any:
    """The default image probe ``"embedded"`` stands for its text counterpart on a text task."""
    if task.is_text and isinstance(probe, str) and probe == "embedded":
        logger.info("task %r is text: using the offline text probe %r", task.name, DEFAULT_TEXT_PROBE)
        return DEFAULT_TEXT_PROBE
    return probe


def _own_head(probe: Probe) -> Probe:
    """A shallow copy of ``probe`` for one embed call: the same backbone object (frozen, shared) and
    its own head slot (a copy of the probe's head, if any), so fitting or training the head leaves
    ``probe`` untouched."""
    clone = copy.copy(probe)
    clone._modules = dict(probe._modules)
    clone._parameters = dict(probe._parameters)
    clone._buffers = dict(probe._buffers)
    if probe.head is not None:
        clone.head = copy.deepcopy(probe.head)
    return clone


class Task2Vec:
    """Embeds tasks with a fixed probe network (scikit-learn style: configure, then `embed`).

    Args:
        probe: a `Probe` or anything `load_probe` accepts (default: the offline ``"embedded"``).
        method: ``"relative"`` (default: the robust Fisher with a prior set by the task's own
            evidence: content apart from difficulty; docs/robust_fisher.md), ``"variational"`` (the
            paper's robust Fisher, fixed prior, in closed form), ``"exact"`` or ``"montecarlo"``.
        n_samples: label draws per input for ``montecarlo``.
        rank: ``exact``, ``relative`` and ``variational``: backward passes per input along the leading directions
            of the label covariance ``diag(p) - p p^T`` (see `fisher_diagonal`); ``K - 1`` of them are
            exact. Default: all ``K - 1`` for ``exact``, at most `VARIATIONAL_RANK` (4) for
            ``relative`` and ``variational`` — the cost stays about 2.5x a one-draw montecarlo pass for any K.
        prior_examples: ``variational``: the ``N`` weighing the prior against the data (default:
            ``max_samples``, or the task's size when that is ``None``): embeddings are comparable
            when they share it (one trivial embedding).
        max_samples: examples used at most, class-balanced when the task is larger; when it is
            not larger every example is used exactly once.
        fit_head: retrain the linear head on the task (``False`` keeps the probe's head, e.g. for
            analytic checks; it must then have one output per class).
        head_epochs: maximum L-BFGS iterations (full passes over the cached features) of the head fit.
        head_l2: L2 strength of the head fit (mean cross-entropy ``+ head_l2/2 ||W||^2``; the default
            1e-3 keeps separable tasks at a finite optimum). ``"auto"``: the strength the task's own
            examples support, by the evidence (type-II maximum likelihood of the head's prior precision
            on the cached features, `select_head_l2`; the value chosen is recorded as
            ``head_l2_fitted``). Measured, not yet the default: README, "The head's strength".
        head: the head's form. ``"prototype"`` (default): the class means times one temperature fitted by
            the likelihood (`fit_prototype_head`): ``K + 1`` numbers instead of ``K x D`` weights, so the head,
            and the Fisher taken under it, varies far less from one sample of the task to another;
            ``"linear"``: every weight free (`fit_linear_head`; the paper's head and the default until
            this option came). README, "The head's form"; docs/robust_fisher.md.
        batch_size: examples per forward/backward pass; ``None`` (default) picks one for the memory:
            on the CPU, 32 images up to 112 px and fewer above (``32 * (112 / side)^2``: 8 at 224 px,
            which keeps one embed under 3 GB with the embedded probe), 32 on an accelerator and for
            text. The embedding does not depend on it (only summation order does).
        seed: seeds sampling and label draws; results are deterministic on one machine.
        device: ``"cpu"``, ``"cuda"``...; default: CUDA when available.
        image_size: resize images to this side (default: the probe's pretrained input size).
        max_length: text probes: truncate texts to this many tokens (default: the probe's own).
        variational_epochs, beta: options of the variational estimator: stochastic refinement epochs
            after the closed form (default 0: the closed form is the optimum of the quadratic model)
            and the KL weight.
        strategy: per-sample gradient strategy (see `fisher_diagonal`).
        precision, channels_last: ``"bf16"`` autocast and NHWC layout for the Fisher pass (GPU speed;
            see the README for the measured effect on the embedding).
        progress: show tqdm progress bars.
        num_workers: worker processes decoding and preprocessing the inputs (`hf_task2vec.pipeline`;
            0: in this process). Results are identical for any value; batches are pinned on CUDA.
    """

    def __init__(
        self,
        probe: Probe | str | nn.Module = "embedded",
        *,
        method: Method = DEFAULT_METHOD,
        n_samples: int = 1,
        rank: int | None = None,
        prior_examples: int | None = None,
        max_samples: int | None = 10_000,
        fit_head: bool = True,
        head_epochs: int = 500,
        head_l2: float | Literal["auto"] = 1e-3,
        head: Literal["linear", "prototype", "discriminant"] = "prototype",
        batch_size: int | None = None,
        seed: int = 0,
        device: str | torch.device | None = None,
        image_size: int | None = None,
        variational_epochs: int = 0,
        beta: float = 1.0,
        strategy: Strategy | Literal["functional"] = "auto",
        precision: Literal["fp32", "bf16"] = "fp32",
        channels_last: bool = False,
        progress: bool = True,
        max_length: int | None = None,
        num_workers: int = 0,
    ) -> None:
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int)
                                       or max_length < 2):
            raise ValueError(f"max_length must be an integer >= 2 (tokens), got {max_length!r}")
        self.max_length = max_length
        # every option is checked here, before any probe or data is loaded (OptionError names it)
        checked = check_embedder_options(dict(
            method=method, n_samples=n_samples, max_samples=max_samples, head_epochs=head_epochs, head_l2=head_l2,
            head=head,
            batch_size=batch_size, seed=seed, device=device, image_size=image_size,
            variational_epochs=variational_epochs, beta=beta, precision=precision, rank=rank,
            prior_examples=prior_examples,
        ))
        device = checked["device"]
        self.probe_spec = probe
        self.image_size = image_size
        self.method = method
        self.n_samples = n_samples
        self.rank = rank
        self.prior_examples = prior_examples
        self.max_samples = max_samples
        self.fit_head = fit_head
        self.head_epochs = head_epochs
        self.head_l2 = head_l2
        self.head = head
        self.batch_size = batch_size
        self.seed = seed
        self.device = torch.device(device) if device is not None else default_device()
        self.variational_epochs = variational_epochs
        self.beta = beta
        self.strategy = strategy
        self.precision = precision
        self.channels_last = channels_last
        self.progress = progress
        self.num_workers = check_int("num_workers", num_workers, minimum=0)

    @cached_property
    def probe(self) -> Probe:
        """The probe, loaded on first use (a given `Probe` with ``image_size`` set is copied, not changed)."""
        if not isinstance(self.probe_spec, Probe):
            probe = load_probe(self.probe_spec, image_size=self.image_size)
            return self._with_max_length(probe)
        if self.image_size is None or self.probe_spec.image_size == self.image_size:
            return self._with_max_length(self.probe_spec)
        probe = _own_head(self.probe_spec)
        probe.image_size = self.image_size
        return self._with_max_length(probe)

    @property
    def pass_batch_size(self) -> int:
        """The batch size the passes use: ``batch_size``, or the automatic one (see the class)."""
        if self.batch_size is not None:
            return int(self.batch_size)
        return auto_batch_size(self.probe.input_resolution, self.device)

    def _with_max_length(self, probe: Probe) -> Probe:
        """A text probe truncating at ``max_length`` (a copy when it differs; the given one is kept)."""
        if self.max_length is None or getattr(probe, "max_length", None) in (None, self.max_length):
            return probe
        probe = _own_head(probe)
        probe.max_length = self.max_length  # type: ignore[attr-defined]
        return probe

    def __repr__(self) -> str:
        name = self.probe_spec.name if isinstance(self.probe_spec, Probe) else self.probe_spec
        if not isinstance(name, str):
            name = type(name).__name__
        return f"Task2Vec(probe={name!r}, method={self.method!r}, max_samples={self.max_samples})"

    # -- provenance ----------------------------------------------------------------------------
    def _recorded_value(self, row: Recorded) -> str:
        if row.key == "probe":
            return self.probe.name
        if row.key == "probe_revision":
            return self.probe.revision
        if row.key == "image_size":
            return str(self.probe.input_resolution or "")
        if row.key == "max_length":
            return str(getattr(self.probe, "max_length", "") or "")
        if row.key == "pooling":
            return str(getattr(self.probe, "pooling", "") or "")
        return str(getattr(self, row.option))  # type: ignore[arg-type]

    def provenance(self) -> dict[str, str]:
        """How this embedder embeds (str -> str): the `PROVENANCE` settings recorded as metadata keys,
        the trivial embedding's kind and the library versions. `embed` adds the task's provenance
        and the facts of the run (samples used, estimator options, head accuracy, time)."""
        out = {row.key: self._recorded_value(row) for row in PROVENANCE if not row.in_method_options}
        out["trivial"] = {
            "relative": "ones: the prior at the task's own Fisher level (values = F / (lambda^2 c) + 1)",
            "variational": "robust-Fisher prior (beta/2N) lambda^2, lambda^2 = 1/mean(w^2) per layer",
        }.get(self.method, f"constant prior_fisher={self.probe.prior_fisher!r}")
        settings = getattr(self.probe, "settings", None)
        if settings:  # text probes: tokenizer, padding, truncation, pooling
            out["text_settings"] = json.dumps(settings, sort_keys=True)
        out.update({"library": "hf_task2vec", "library_version": __version__, "torch_version": torch.__version__})
        return out

    @classmethod
    def from_provenance(
        cls, meta: Mapping[str, str], *, probe: Probe | str | nn.Module | None = None, **overrides: Any
    ) -> Task2Vec:
        """An embedder configured like the one that wrote ``meta`` (an embedding's metadata): the
        probe it names (unless ``probe`` is given) and every `PROVENANCE` option it recorded.
        ``overrides`` (any `Task2Vec` option) replace recorded settings."""
        if probe is None:
            name = meta.get("probe") or "embedded"
            text = {"pooling": meta["pooling"]} if meta.get("pooling") in ("mean", "cls") else {}
            if name.endswith("-random-init"):
                probe = load_probe(name[: -len("-random-init")], pretrained=False, **text)
            else:
                probe = load_probe(name, **text)
        method_options = _method_options(meta)
        options: dict[str, Any] = {}
        for row in PROVENANCE:
            text = (method_options if row.in_method_options else meta).get(row.key)
            if text in (None, ""):  # written before the key existed: what those embeddings stand for
                text = row.legacy
            if row.option is None or text == "":
                continue
            try:
                options[row.option] = row.parse(str(text))
            except ValueError:
                logger.warning("ignoring recorded %s=%r (not a valid %s)", row.key, text, row.option)
        options.setdefault("method", "montecarlo")
        options.update(overrides)
        return cls(probe, **options)

    def provenance_differences(self, meta: Mapping[str, str]) -> list[str]:
        """The resume-relevant settings (`Recorded.resume`) in which ``meta`` differs from this
        embedder, as ``"key: stored X vs config Y"`` (empty: an embedding this embedder would make)."""
        mine = self.provenance()
        diffs = []
        for row in PROVENANCE:
            if not row.resume:
                continue
            stored = meta.get(row.key, row.legacy)
            if stored != mine[row.key]:
                diffs.append(f"{row.key}: stored {stored!r} vs config {mine[row.key]!r}")
        return diffs

    # -- data --------------------------------------------------------------------------------
    def sample(self, task: Task) -> np.ndarray:
        """The indices of the examples this embedder uses for ``task``."""
        return balanced_sample(task.labels, self.max_samples, self.seed)

    def pass_order(self, task: Task, indices: np.ndarray) -> np.ndarray:
        """``indices`` in the order the passes read them. Texts go shortest first: a batch pads to its
        longest text, so batches of similar lengths skip most of the padding (a 90-text upload of
        fortunes: 2.3x fewer token positions at max_length 128). The Fisher is a sum over examples and the
        head's fit a full-batch one, so the order changes the embedding by float rounding only (montecarlo:
        which label draw goes to which text). Images and tensors keep the sampled order."""
        if not task.is_text or len(indices) <= self.pass_batch_size:
            return indices
        return indices[np.argsort(task.text_lengths(indices), kind="stable")]

    def batches(
        self, task: Task, indices: np.ndarray, desc: str | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(inputs, labels)`` batches over ``indices``, preprocessed for the probe."""
        transform = self.probe.transform() if task.is_image or task.is_text else None
        labels = torch.tensor(task.labels)  # a copy: dataset label arrays may be read-only
        bar = tqdm(total=len(indices), desc=desc, unit="ex", disable=not self.progress or desc is None, leave=False)
        stream = iter_batches(
            task, indices, self.pass_batch_size, transform, labels,
            num_workers=self.num_workers, pin_memory=self.device.type == "cuda",
        )
        try:
            for idx, x, y in stream:
                _check_finite_inputs(x, task, idx)
                yield x, y
                bar.update(len(idx))
        finally:
            stream.close()  # stops the workers when the consumer stops early
            bar.close()

    @torch.no_grad()
    def features(self, task: Task, indices: np.ndarray) -> torch.Tensor:
        """Backbone features of the sampled examples (computed once; the only cache kept)."""
        self.probe.eval()
        feats = [
            self.probe.features(to_device(x, self.device, self.probe.dtype)).cpu()
            for x, _ in self.batches(task, indices, desc=f"features {task.name}")
        ]
        return torch.cat(feats)

    # -- embedding ---------------------------------------------------------------------------
    def fit_probe(self, task: Task, indices: np.ndarray | None = None) -> tuple[Probe, dict[str, float]]:
        """A copy of the probe (the same backbone object) with its own head fitted on ``task``
        (``indices``: the examples, default `sample`), and the fit's info (loss, train accuracy).
        With ``fit_head=False`` the copy keeps a copy of the probe's head. The probe is not changed."""
        indices = self.pass_order(task, self.sample(task)) if indices is None else indices
        self.probe.to(self.device)
        probe = _own_head(self.probe)
        info: dict[str, float] = {}
        if self.fit_head:
            feats = self.features(task, indices)
            labels = torch.as_tensor(task.labels[indices])
            l2, info = self.head_strength(feats, labels, task.num_classes)
            weight, bias, fit_info = fit_head_of_kind(
                self.head, feats, labels, task.num_classes, l2=l2, max_iter=self.head_epochs)
            info.update(fit_info, head_l2=l2)
            set_head(probe.reset_head(task.num_classes, feats.shape[1]), weight, bias)
            logger.info("%s: head train accuracy %.3f", task.name, info["train_accuracy"])
        elif probe.head is None or probe.head.out_features != task.num_classes:
            raise ValueError(
                f"fit_head=False needs a probe head with {task.num_classes} outputs for task {task.name!r}; "
                "set probe.head or use fit_head=True"
            )
        return probe, info

    def head_strength(
        self, features: torch.Tensor, labels: torch.Tensor, num_classes: int
    ) -> tuple[float, dict[str, float]]:
        """The head's L2 strength for these features: ``head_l2``, or by `select_head_l2` for ``"auto"``."""
        if self.head_l2 != "auto":
            return float(self.head_l2), {}
        return select_head_l2(features, labels, num_classes, seed=self.seed, max_iter=self.head_epochs)

    def embed(self, task: Task | TaskSpec | Any, **load_kwargs: Any) -> TaskEmbedding:
        """Embed a task (a `Task`, a `TaskSpec`, or anything `load_task` accepts, with ``load_kwargs``)."""
        task = task if isinstance(task, Task) else load_task(task, **load_kwargs)
        started = _dt.datetime.now(_dt.timezone.utc)
        _check_class_sizes(task, self.max_samples)
        indices = self.pass_order(task, self.sample(task))
        probe, head_info = self.fit_probe(task, indices)
        result = self._fisher(probe, task, indices)
        _check_finite_result(result.values, task)
        trivial = result.trivial if result.trivial is not None else np.full(probe.dim, probe.prior_fisher)
        meta = {
            **task.meta(),
            **self.provenance(),
            "method_options": json.dumps(result.options, sort_keys=True),
            "num_samples": str(len(indices)),
            "num_task_examples": str(len(task)),
            "head_train_accuracy": f"{head_info.get('train_accuracy', float('nan')):.4f}",
            **({"head_l2_fitted": f"{head_info['head_l2']:.6g}"} if "head_l2" in head_info else {}),
            "created": started.isoformat(timespec="seconds"),
        }
        return TaskEmbedding(result.values, trivial, probe.layers, meta)

    def _fisher(self, probe: Probe, task: Task, indices: np.ndarray) -> FisherResult:
        """The Fisher of ``probe`` (this call's copy, head fitted) on the examples ``indices``."""
        result = self.fisher_pass(probe, self.batches(task, indices, desc=f"fisher {task.name}"))
        if self.method not in ROBUST_METHODS:
            return result
        result = self.robust(probe, result, len(indices))
        if self.method != "variational" or self.variational_epochs == 0:
            return result
        rng = np.random.default_rng(self.seed)

        def make_batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            return self.batches(task, rng.permutation(indices), desc=f"variational {task.name} epoch {epoch + 1}")

        refined = fisher_variational(
            probe,
            make_batches,
            len(indices),
            epochs=self.variational_epochs,
            beta=self.beta,
            init_fisher=result.values - result.trivial,
            prior_examples=int(result.options["prior_examples"]),
            seed=self.seed,
        )
        refined.options = {**result.options, **refined.options}
        return refined

    def fisher_pass(self, probe: Probe, batches: Any, reduce: Any = None, seed: int | None = None) -> FisherResult:
        """The Fisher pass of this embedder's estimator over ``batches`` (the robust estimators start
        from the exact Fisher, at most `VARIATIONAL_RANK` label directions per input; ``relative``
        also sums the per-input second moment)."""
        rank = self.rank
        if self.method in ROBUST_METHODS and rank is None:
            rank = VARIATIONAL_RANK
        return fisher_diagonal(
            probe,
            batches,
            method="montecarlo" if self.method == "montecarlo" else "exact",
            n_samples=self.n_samples,
            rank=rank,
            seed=self.seed if seed is None else seed,
            strategy=self.strategy,
            reduce=reduce,
            precision=self.precision,
            channels_last=self.channels_last,
            second_moment=self.method == "relative",
        )

    def robust(self, probe: Probe, fisher: FisherResult, num_examples: int) -> FisherResult:
        """The closed-form robust Fisher of an exact Fisher over ``num_examples``: `relative_fisher`
        (default) or, for ``variational``, the paper's fixed prior (`robust_fisher`)."""
        if self.method == "relative":
            return relative_fisher(probe, fisher)
        n_prior = self.prior_examples or self.max_samples or num_examples
        return robust_fisher(probe, fisher, prior_examples=n_prior, beta=self.beta)


def _check_finite_inputs(x: torch.Tensor, task: Task, idx: Any) -> None:
    """Refuse a batch with NaN or infinite inputs (before the Fisher turns them into NaN filters)."""
    if not (torch.is_tensor(x) and x.is_floating_point()):
        return
    finite = torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
    if bool(finite.all()):
        return
    bad = [int(idx[i]) for i in torch.nonzero(~finite).flatten().tolist()]
    shown = ", ".join(str(b) for b in bad[:5]) + (" ..." if len(bad) > 5 else "")
    raise TaskError(
        f"task {task.name!r}: the inputs are not finite (NaN or infinity) in row {shown}; clean or drop those "
        "examples (e.g. torch.nan_to_num, or dataset.filter) and embed again"
    )


def _check_class_sizes(task: Task, max_samples: int | None) -> None:
    """A task whose classes have one example each, or a sample too small to hold every class, would
    embed without a word and mean nothing: refuse it."""
    counts = task.class_counts()
    present = counts[counts > 0]
    if max_samples is not None and max_samples < present.size:
        raise TaskError(
            f"max_samples={max_samples} is smaller than the {present.size} classes of task {task.name!r}: every "
            f"class needs examples; use max_samples of at least {2 * present.size}"
        )
    single = [task.label_names[i] for i in np.nonzero(counts == 1)[0]]
    if single and len(single) == present.size:
        raise TaskError(
            f"task {task.name!r} has 1 example per class ({len(task)} examples): a task needs at least 2 examples "
            "per class (the head fit and the Fisher learn nothing from one each). Add examples"
        )
    if single:
        shown = ", ".join(repr(n) for n in single[:5]) + (" ..." if len(single) > 5 else "")
        logger.warning("task %r: class %s has a single example; at least 2 per class are advised", task.name, shown)


def _check_finite_result(values: np.ndarray, task: Task) -> None:
    bad = ~np.isfinite(np.asarray(values))
    if bad.any():
        raise TaskError(
            f"the Fisher of task {task.name!r} came out non-finite in {int(bad.sum())} of {bad.size} filters: the "
            "probe overflowed on these inputs. Check their scale (normalised images, no huge values) and use "
            "precision='fp32'"
        )


def embed(
    source: Task | TaskSpec | Any,
    probe: Probe | str | nn.Module = "embedded",
    method: Method = DEFAULT_METHOD,
    *,
    spec: TaskSpec | None = None,
    **options: Any,
) -> TaskEmbedding:
    """Embed a task in one call: ``hf_task2vec.embed("username/my-dataset")``.

    ``source`` is a `Task`, a `TaskSpec` or anything `load_task` accepts. Keyword ``options`` that
    are `TaskSpec` fields (``input_column``, ``label_column``, ``split``, ``classes``, ``name``,
    ``revision``, ``config``, ``streaming``, ``max_examples``...) describe the task; the others go
    to `Task2Vec` (``max_samples``, ``n_samples``, ``image_size``, ``seed``, ``device``...).
    ``streaming=True`` streams the dataset and reads only ``max_samples`` class-balanced examples
    of it (large Hub datasets).
    """
    task, options = _task_and_options(source, spec, options)
    return Task2Vec(_probe_for(task, probe), method=method, **options).embed(task)


def _task_and_options(
    source: Task | TaskSpec | Any, spec: TaskSpec | None, options: dict[str, Any]
) -> tuple[Task, dict[str, Any]]:
    """Split ``options`` into the task's (`TaskSpec` fields) and the embedder's, and load the task
    (a stream is read up to the embedder's ``max_samples``)."""
    spec, options = TaskSpec.split_options(source, spec, options)
    if spec.streaming and spec.max_examples is None:
        spec = spec.replace(max_examples=options.get("max_samples", 10_000))
    return load_task(spec), options


@torch.no_grad()
def domain_embedding(
    task: Task | Any,
    probe: Probe | str | nn.Module = "embedded",
    *,
    max_samples: int | None = 10_000,
    batch_size: int = 64,
    seed: int = 0,
    image_size: int | None = None,
    max_length: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> TaskEmbedding:
    """The domain-embedding baseline: per filter, the mean absolute activation of the probe over
    the task's inputs. It depends on p(x) only (labels are ignored), has the same dimension and
    layers as the task embedding, and is compared with ``kind="cosine"``.

    Text probes: the mean is over the real tokens of every text; padding tokens (attention mask 0)
    are left out, so a text's contribution does not depend on how much its batch was padded.
    ``max_length`` truncates texts (default: the probe's)."""
    task = task if isinstance(task, Task) else load_task(task)
    embedder = Task2Vec(
        _probe_for(task, probe),
        max_samples=max_samples,
        batch_size=batch_size,
        seed=seed,
        image_size=image_size,
        max_length=max_length,
        device=device,
        progress=progress,
    )
    probe_ = embedder.probe.to(embedder.device).eval()
    indices = embedder.sample(task)
    modules = dict(probe_.backbone.named_modules())
    sums = torch.zeros(probe_.dim, dtype=torch.float64)
    counts = torch.zeros(probe_.dim, dtype=torch.float64)
    real: list[torch.Tensor | None] = [None]  # the batch's attention mask [B, T] as bool (text), else None
    handles = []
    for g in probe_.filters:

        def hook(mod: nn.Module, inputs: tuple, out: torch.Tensor, g=g) -> None:
            channel_dim = -1 if isinstance(mod, nn.Linear) else 1
            o = out.detach().abs().movedim(channel_dim, -1)
            mask = real[0]
            if mask is not None and o.dim() == 3 and tuple(o.shape[:2]) == tuple(mask.shape):
                o = o[mask]  # token-level outputs [B, T, F]: the real tokens only
            o = o.reshape(-1, g.size)
            sums[g.start : g.stop] += o.sum(0).double().cpu()
            counts[g.start : g.stop] += o.shape[0]

        handles.append(modules[g.name].register_forward_hook(hook))
    try:
        for x, _ in embedder.batches(task, indices, desc=f"domain {task.name}"):
            x = to_device(x, embedder.device, probe_.dtype)
            real[0] = x["attention_mask"].bool() if isinstance(x, Mapping) and "attention_mask" in x else None
            probe_.features(x)
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
    settings = getattr(probe_, "settings", None)
    if settings:  # text probes: the same text provenance keys as Task2Vec.provenance
        meta.update(
            max_length=str(getattr(probe_, "max_length", "") or ""),
            pooling=str(getattr(probe_, "pooling", "") or ""),
            text_settings=json.dumps(settings, sort_keys=True),
        )
    values = (sums / counts.clamp_min(1)).numpy()
    return TaskEmbedding(values, np.zeros_like(values), probe_.layers, meta)
