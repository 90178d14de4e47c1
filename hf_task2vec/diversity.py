"""The diversity coefficient of a dataset (Miranda, Lee et al., "Beyond Scale: the Diversity
Coefficient as a Data Quality Metric", 2023) and the cross-diversity of two datasets.

``div(D) = E_{B1, B2 ~ D} d(f_B1, f_B2)``: the expected distance between the Task2Vec embeddings
``f_B`` of two random batches of one dataset; ``cross_div(D1, D2)`` takes ``B1 ~ D1``, ``B2 ~ D2``.
Each batch is embedded as its own task, with one of two objectives:

* ``"supervised"`` (labelled data): the probe's linear head is fitted on the batch and the
  per-filter Fisher of the classification loss is taken (any probe, text or image);
* ``"next-token"`` (raw text, the paper's): a causal-LM probe (GPT-2 family), its output layer
  fine-tuned on the batch from the pretrained one, and the Fisher of next-token prediction
  (montecarlo: tokens drawn from the model at every real position).

The distance is the cosine distance by default, as in the paper (``distance="symmetric"`` gives the
Task2Vec ``d_sym``). Every batch uses the same seed for its label/token draws, so identical batches
get identical embeddings and a dataset made of copies of one batch has diversity 0.

The paper's reference values (GPT-2, 200 batches of 512 sequences of 128 tokens): C4 0.2374,
WikiText-103 0.2140, the Pile 0.2463. They are the paper's figures, not ones this package
reproduced: no GPT-2 weights are available offline (see the README).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .distance import pairwise_distances
from .embedding import TaskEmbedding
from .errors import TaskError
from .probes import Probe, load_probe

logger = logging.getLogger(__name__)

Objective = Literal["auto", "supervised", "next-token"]
#: The Beyond Scale paper's published values (GPT-2 probe, 200 batches x 512 sequences x 128 tokens).
PAPER_REFERENCE_VALUES: dict[str, float] = {"C4": 0.2374, "WikiText-103": 0.2140, "The Pile": 0.2463}


@dataclass
class DiversityResult:
    """A diversity (or cross-diversity) coefficient with its uncertainty.

    Attributes:
        coefficient: the mean distance between batch embeddings (pairs of distinct batches for
            `diversity`, all pairs for `cross_diversity`).
        ci_low, ci_high: a 95% bootstrap confidence interval (batches resampled with replacement).
        std: the standard deviation of the pairwise distances.
        distances: the matrix of batch-to-batch distances.
        embeddings: the batch embeddings (two lists for `cross_diversity`).
        options: how it was computed (objective, probe, batch size, distance...), str -> str.
    """

    coefficient: float
    ci_low: float
    ci_high: float
    std: float
    distances: np.ndarray
    embeddings: list[TaskEmbedding] = field(default_factory=list, repr=False)
    other_embeddings: list[TaskEmbedding] = field(default_factory=list, repr=False)
    options: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (no embeddings)."""
        return {
            "coefficient": self.coefficient,
            "ci95": [self.ci_low, self.ci_high],
            "std": self.std,
            "num_pairs": int(self._pairs().size),
            **self.options,
        }

    def _pairs(self) -> np.ndarray:
        d = self.distances
        if self.options.get("kind") == "cross":
            return d.reshape(-1)
        return d[~np.eye(d.shape[0], dtype=bool)]

    def __str__(self) -> str:
        n = self.distances.shape[0]
        return f"{self.coefficient:.4f} (95% CI {self.ci_low:.4f}-{self.ci_high:.4f}, {n} batches)"


# -- batch embeddings ----------------------------------------------------------------------------
def _move(x: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """A batch (tensor or mapping of tensors) on ``device``; only floating tensors take ``dtype``."""
    if isinstance(x, Mapping):
        return {k: _move(v, device, dtype) for k, v in x.items()}
    if x.is_floating_point():
        return x.to(device=device, dtype=dtype)
    return x.to(device)


def _batch_indices(n: int, batch_size: int, num_batches: int, shuffle: bool, seed: int) -> list[np.ndarray]:
    if batch_size < 1 or num_batches < 1:
        raise ValueError(f"batch_size and num_batches must be >= 1, got {batch_size} and {num_batches}")
    if batch_size > n:
        raise TaskError(f"the dataset has {n} examples, fewer than batch_size={batch_size}: use a smaller batch")
    if not shuffle:
        if num_batches * batch_size > n:
            raise TaskError(
                f"shuffle=False takes consecutive batches: {num_batches} x {batch_size} examples exceed the "
                f"dataset's {n}; use fewer batches or shuffle=True"
            )
        return [np.arange(i * batch_size, (i + 1) * batch_size) for i in range(num_batches)]
    rng = np.random.default_rng(seed)
    return [np.sort(rng.choice(n, batch_size, replace=False)) for _ in range(num_batches)]


def _text_column(ds: Any, text_column: str | None) -> str:
    import datasets

    names = list(ds.features)
    if text_column is not None:
        if text_column not in names:
            raise TaskError(f"the dataset has no column {text_column!r}; its columns are {names}")
        return text_column
    strings = [
        n
        for n in names
        if isinstance(ds.features[n], datasets.Value) and ds.features[n].dtype in ("string", "large_string")
    ]
    if "text" in strings or len(strings) == 1:
        return "text" if "text" in strings else strings[0]
    raise TaskError(f"cannot tell the text column among {names}: pass text_column=...")


def _raw_texts(dataset: Any, text_column: str | None, split: str) -> list[str]:
    """Raw texts for the next-token objective: a list of strings, a `datasets.Dataset`, a `Task`
    with a text column, or ``"offline:<name>"``."""
    import datasets

    from .tasks import Task

    if isinstance(dataset, str):
        if not dataset.startswith("offline:"):
            from .tasks import load_task

            dataset = load_task(dataset, split=split)
        else:
            from .data import load_offline

            dataset = load_offline(dataset.split(":", 1)[1], split=split)
    if isinstance(dataset, Task):
        if dataset.dataset is None or dataset.input_column is None:
            raise TaskError(f"task {dataset.name!r} holds no text column")
        dataset = dataset.dataset.select_columns([dataset.input_column])
    if isinstance(dataset, datasets.Dataset):
        col = _text_column(dataset, text_column)
        texts = dataset.data.column(col).to_pylist() if dataset._indices is None else dataset[col]
    elif isinstance(dataset, Sequence) and not isinstance(dataset, str | bytes):
        texts = list(dataset)
    else:
        raise TaskError(f"cannot read texts from a {type(dataset).__name__}: give a Dataset or a list of strings")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TaskError(f"text row {bad[0]} is {type(texts[bad[0]]).__name__}, not a string")
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise TaskError("the dataset has only empty texts: nothing to embed")
    return texts


def fit_lm_head(
    probe: Probe, hidden: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, *, steps: int, lr: float
) -> dict[str, float]:
    """Fine-tune the causal probe's output layer on cached hidden states ``[B, T, H]`` to predict
    ``targets [B, T]`` where ``mask`` is 1 (full-batch Adam, from the pretrained layer)."""
    head = probe.reset_lm_head()
    keep = mask.bool()
    h, y = hidden[keep], targets[keep]
    if h.shape[0] == 0:
        raise TaskError("no position to predict: the texts are one token long; use longer texts")
    params = list(head.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    loss = torch.tensor(float("nan"))
    first = None
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(head(h), y)
        first = loss.item() if first is None else first
        loss.backward()
        opt.step()
    for p in params:
        p.requires_grad_(False)
    return {"loss_before": first if first is not None else float("nan"), "loss_after": loss.item()}


def _next_token_embedding(
    probe: Probe,
    texts: list[str],
    *,
    max_length: int,
    head_steps: int,
    head_lr: float,
    micro_batch: int,
    seed: int,
    device: torch.device,
) -> TaskEmbedding:
    from .fisher import fisher_diagonal

    x = probe.tokenize(texts, max_length=max_length)
    n = x["input_ids"].shape[0]
    chunks = [{k: v[i : i + micro_batch] for k, v in x.items()} for i in range(0, n, micro_batch)]
    probe.eval()
    with torch.no_grad():
        hidden = torch.cat([probe.features(_move(c, device, probe.dtype)) for c in chunks])
    ids = x["input_ids"].to(device)
    targets = torch.zeros_like(ids)
    targets[:, :-1] = ids[:, 1:]
    info = fit_lm_head(probe, hidden, targets, x["loss_mask"].to(device), steps=head_steps, lr=head_lr)
    dummy = torch.zeros(n, dtype=torch.long)
    result = fisher_diagonal(
        probe, [(c, dummy[: c["input_ids"].shape[0]]) for c in chunks], method="montecarlo", seed=seed
    )
    meta = {
        "probe": probe.name,
        "probe_revision": probe.revision,
        "method": "montecarlo",
        "objective": "next-token",
        "num_samples": str(n),
        "head_loss_before": f"{info['loss_before']:.4f}",
        "head_loss_after": f"{info['loss_after']:.4f}",
        # the text provenance keys Task2Vec records (Task2Vec.provenance), with the length used here
        "modality": "text",
        "max_length": str(max_length),
        "pooling": str(getattr(probe, "pooling", "")),
        "text_settings": json.dumps({**getattr(probe, "settings", {}), "max_length": str(max_length)}, sort_keys=True),
    }
    return TaskEmbedding(result.values, np.full(probe.dim, probe.prior_fisher), probe.layers, meta)


def _is_causal(probe: Probe) -> bool:
    return bool(getattr(probe, "causal", False))


def _embed_batches(
    dataset: Any,
    probe: Probe,
    *,
    objective: str,
    batch_size: int,
    num_batches: int,
    shuffle: bool,
    seed: int,
    batch_seed: int,
    method: str,
    max_length: int | None,
    head_steps: int,
    head_lr: float,
    micro_batch: int,
    device: torch.device,
    text_column: str | None,
    split: str,
    progress: bool,
    desc: str,
    load_kwargs: dict[str, Any],
) -> list[TaskEmbedding]:
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2):
        raise ValueError(f"max_length must be an integer >= 2 (tokens), got {max_length!r}")
    probe.to(device)
    out: list[TaskEmbedding] = []
    if objective == "next-token":
        texts = _raw_texts(dataset, text_column, split)
        batches = _batch_indices(len(texts), batch_size, num_batches, shuffle, batch_seed)
        length = int(max_length or getattr(probe, "max_length", 128))
        own_head = probe.head  # each batch fine-tunes a fresh LM head on the probe: the caller's comes back after
        try:
            for idx in tqdm(batches, desc=desc, disable=not progress, leave=False):
                out.append(
                    _next_token_embedding(
                        probe,
                        [texts[i] for i in idx],
                        max_length=length,
                        head_steps=head_steps,
                        head_lr=head_lr,
                        micro_batch=micro_batch,
                        seed=seed,
                        device=device,
                    )
                )
        finally:
            probe.head = own_head
        return out
    from .task2vec import Task2Vec
    from .tasks import Task, load_task

    task = dataset if isinstance(dataset, Task) else load_task(dataset, split=split, **load_kwargs)
    batches = _batch_indices(len(task), batch_size, num_batches, shuffle, batch_seed)
    # max_length goes to the embedder, which truncates with a copy of the probe: the caller's is not changed
    embedder = Task2Vec(
        probe,
        method=method,
        max_samples=None,
        batch_size=micro_batch,
        seed=seed,
        device=device,
        progress=False,
        max_length=int(max_length) if max_length is not None and hasattr(probe, "max_length") else None,
    )
    for b, idx in enumerate(tqdm(batches, desc=desc, disable=not progress, leave=False)):
        present = np.unique(task.labels[idx])
        if present.size < 2:
            raise TaskError(
                f"batch {b} of {task.name!r} holds a single class: the supervised objective needs two; use a "
                "larger batch_size (or the next-token objective for unlabelled text)"
            )
        out.append(embedder.embed(task.subset(idx, name=f"{task.name}#batch{b}")))
    return out


def _bootstrap(d: np.ndarray, cross: bool, seed: int, reps: int = 1000) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(reps):
        i = rng.integers(0, d.shape[0], d.shape[0])
        j = rng.integers(0, d.shape[1], d.shape[1]) if cross else i
        sub = d[np.ix_(i, j)]
        if not cross:
            sub = sub[i[:, None] != j[None, :]]  # pairs of distinct batches only
        if sub.size:
            stats.append(float(sub.mean()))
    if not stats:
        return float("nan"), float("nan")
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return float(lo), float(hi)


def _resolve(probe: Probe | str, objective: Objective, probe_options: dict[str, Any]) -> tuple[Probe, str]:
    p = probe if isinstance(probe, Probe) else load_probe(probe, **probe_options)
    obj = objective
    if obj == "auto":
        obj = "next-token" if _is_causal(p) else "supervised"
    if obj not in ("supervised", "next-token"):
        raise ValueError(f"unknown objective {objective!r}; use 'supervised', 'next-token' or 'auto'")
    if obj == "next-token" and not _is_causal(p):
        raise ValueError(
            f"the next-token objective needs a causal-LM probe (GPT-2 family); {p.name!r} is not one. "
            "Use objective='supervised' for labelled data"
        )
    if obj == "supervised" and _is_causal(p):
        raise ValueError(f"probe {p.name!r} is a causal LM: use objective='next-token'")
    return p, obj


def _result(
    d: np.ndarray,
    cross: bool,
    embs: list[TaskEmbedding],
    other: list[TaskEmbedding],
    options: dict[str, str],
    seed: int,
) -> DiversityResult:
    pairs = d.reshape(-1) if cross else d[~np.eye(d.shape[0], dtype=bool)]
    if pairs.size == 0:
        raise ValueError("the diversity needs at least two batches")
    lo, hi = _bootstrap(d, cross, seed)
    return DiversityResult(float(pairs.mean()), lo, hi, float(pairs.std()), d, embs, other, options)


def _batch_options(
    objective: str, batch_size: int, num_batches: int, shuffle: bool, method: str, max_length: int | None,
    head_steps: int, head_lr: float, micro_batch: int, device: str | torch.device | None,
    text_column: str | None, split: str, progress: bool, load_kwargs: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """The `_embed_batches` options `diversity` and `cross_diversity` share (device: CUDA when there is one)."""
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return dict(
        objective=objective, batch_size=batch_size, num_batches=num_batches, shuffle=shuffle, method=method,
        max_length=max_length, head_steps=head_steps, head_lr=head_lr, micro_batch=micro_batch, device=dev,
        text_column=text_column, split=split, progress=progress, load_kwargs=load_kwargs,
    )  # fmt: skip


def diversity(
    dataset: Any,
    probe: Probe | str = "embedded-text",
    *,
    objective: Objective = "auto",
    batch_size: int = 64,
    num_batches: int = 20,
    distance: Literal["cosine", "symmetric"] = "cosine",
    shuffle: bool = True,
    seed: int = 0,
    method: Literal["montecarlo", "exact"] = "montecarlo",
    max_length: int | None = None,
    head_steps: int = 50,
    head_lr: float = 1e-3,
    micro_batch: int = 32,
    device: str | torch.device | None = None,
    text_column: str | None = None,
    split: str = "train",
    progress: bool = True,
    **load_kwargs: Any,
) -> DiversityResult:
    """The diversity coefficient of ``dataset``: the mean distance between the Task2Vec embeddings
    of ``num_batches`` random batches of ``batch_size`` examples (all pairs of distinct batches).

    Args:
        dataset: for ``"supervised"``, anything `load_task` accepts (``load_kwargs`` such as
            ``classes=...`` go to it); for ``"next-token"``, a `datasets.Dataset` with a text
            column, a list of strings, or ``"offline:<name>"``.
        probe: a `Probe` or a `load_probe` spec; a causal LM selects ``"next-token"`` under
            ``objective="auto"``.
        batch_size, num_batches: the paper used 200 batches of 512 sequences.
        distance: ``"cosine"`` (the paper's) or ``"symmetric"`` (Task2Vec ``d_sym``).
        shuffle: ``True``: each batch is an independent random sample (without replacement within
            the batch); ``False``: consecutive blocks of the dataset in order.
        seed: seeds the batches and (the same for every batch) the Fisher's label/token draws.
        method: the Fisher estimator of the supervised objective (``"montecarlo"`` or ``"exact"``).
        max_length: truncation length of text (default: the probe's).
        head_steps, head_lr: Adam fine-tuning of the LM output layer per batch (next-token).
        micro_batch: examples per forward/backward pass.
    """
    p, obj = _resolve(probe, objective, {})
    common = _batch_options(
        obj, batch_size, num_batches, shuffle, method, max_length, head_steps, head_lr, micro_batch, device,
        text_column, split, progress, load_kwargs,
    )  # fmt: skip
    embs = _embed_batches(dataset, p, seed=seed, batch_seed=seed, desc="diversity", **common)
    if len(embs) < 2:
        raise ValueError("the diversity needs num_batches >= 2")
    values = np.stack([e.values for e in embs]).astype(np.float64)
    d = pairwise_distances(values, values, kind=distance)
    options = _options(p, obj, batch_size, num_batches, distance, shuffle, seed, method, "diversity", max_length)
    return _result(d, False, embs, [], options, seed)


def cross_diversity(
    a: Any,
    b: Any,
    probe: Probe | str = "embedded-text",
    *,
    objective: Objective = "auto",
    batch_size: int = 64,
    num_batches: int = 20,
    distance: Literal["cosine", "symmetric"] = "cosine",
    seed: int = 0,
    method: Literal["montecarlo", "exact"] = "montecarlo",
    max_length: int | None = None,
    head_steps: int = 50,
    head_lr: float = 1e-3,
    micro_batch: int = 32,
    device: str | torch.device | None = None,
    text_column: str | None = None,
    split: str = "train",
    progress: bool = True,
) -> DiversityResult:
    """The cross-diversity of two datasets: the mean distance between embeddings of batches of ``a``
    and batches of ``b`` (all pairs). Same arguments as `diversity`. For the supervised objective
    both datasets must have the same label names (one probe head shape per comparison is not needed,
    but the embeddings are only comparable within one probe and estimator)."""
    p, obj = _resolve(probe, objective, {})
    common = _batch_options(
        obj, batch_size, num_batches, True, method, max_length, head_steps, head_lr, micro_batch, device,
        text_column, split, progress, {},
    )  # fmt: skip
    ea = _embed_batches(a, p, seed=seed, batch_seed=seed, desc="cross-diversity a", **common)
    eb = _embed_batches(b, p, seed=seed, batch_seed=seed + 1, desc="cross-diversity b", **common)
    va = np.stack([e.values for e in ea]).astype(np.float64)
    vb = np.stack([e.values for e in eb]).astype(np.float64)
    d = pairwise_distances(va, vb, kind=distance)
    options = _options(p, obj, batch_size, num_batches, distance, True, seed, method, "cross", max_length)
    return _result(d, True, ea, eb, options, seed)


def _options(
    p: Probe,
    obj: str,
    batch_size: int,
    num_batches: int,
    distance: str,
    shuffle: bool,
    seed: int,
    method: str,
    kind: str,
    max_length: int | None = None,
) -> dict[str, str]:
    length = max_length if max_length is not None else getattr(p, "max_length", None)
    return {
        **({"max_length": str(length)} if length is not None else {}),
        "kind": kind,
        "objective": obj,
        "probe": p.name,
        "probe_revision": p.revision,
        "batch_size": str(batch_size),
        "num_batches": str(num_batches),
        "distance": distance,
        "shuffle": str(shuffle),
        "seed": str(seed),
        "method": method if obj == "supervised" else "montecarlo",
    }
