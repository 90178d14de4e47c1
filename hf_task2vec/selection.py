"""Model selection: pick the pretrained *expert* that will transfer best to a new task.

The paper's practical payoff (Achille et al., ICCV 2019, Sect. 3 and 5): every expert is
represented by the Task2Vec embedding of the task it was trained on, a new task is embedded once
with the same probe, and the expert whose training task is nearest under the asymmetric distance
is chosen - one probe embedding instead of trying every expert.

* `ExpertIndex`: the experts (Hub / timm ids, transformers checkpoints, local files), each with the
  embedding of its training task, free-form info (task name, classes, dataset, measured error...)
  and an optional learned Model2Vec offset; vectorised search; safetensors + JSON on disk; push /
  pull as a Hub dataset repo; experts from Hub model cards (`ExpertIndex.add_hub_models`).
* `Model2Vec`: the paper's learned co-embedding ``m_j = F_j + b_j`` of the experts, fitted from a
  task x expert error matrix, and its leave-one-task-out evaluation.

Distances follow `hf_task2vec.distance` (DESIGN.md): for selection the expert's task is the
*source* and the new task the *target*,
``d_asym(expert -> t) = d_sym(F_expert, F_t) - alpha * d_sym(F_expert, F_trivial)``.
Every score returned by this module is such a distance: **lower is better**.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from .distance import DEFAULT_ALPHA
from .embedding import COMPATIBILITY_KEYS, LayerSlice, TaskEmbedding, atomic_write_bytes
from .errors import EmbeddingFileError, IncompatibleEmbeddingsError, Task2VecError

if TYPE_CHECKING:  # pragma: no cover
    from .probes import Probe
    from .task2vec import Task2Vec

logger = logging.getLogger(__name__)

__all__ = [
    "ExpertIndex",
    "ExpertMatch",
    "LeaveOneOutResult",
    "Model2Vec",
    "SELECTION_METRICS",
    "pairwise_symmetric_distance",
    "torch_asymmetric_distance",
    "torch_symmetric_distance",
]

Metric = Literal["asymmetric", "symmetric", "model2vec"]
SELECTION_METRICS: tuple[str, ...] = ("asymmetric", "symmetric", "model2vec")

INDEX_FORMAT = "hf_task2vec.expert_index"
INDEX_FORMAT_VERSION = "1"
TENSORS_FILE = "experts.safetensors"
TABLE_FILE = "experts.json"
_ROWS_PER_CHUNK = 32  # rows of the expert matrix processed at once (two float32 buffers of ~2.7 MB at D=21k)


# -- differentiable distances -----------------------------------------------------------------------
def torch_symmetric_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``d_sym`` along the last axis of two broadcastable tensors ``[..., D] -> [...]``, differentiable.

    The same formula as `hf_task2vec.distance`: ``u = a / (a + b)``, ``v = b / (a + b)``
    (both 1/2 where ``a + b = 0``) and ``d = 1 - <u, v> / (|u| |v|)``; since ``v = 1 - u``, only
    ``u`` is materialised.
    """
    s = a + b
    zero = s == 0
    u = torch.where(zero, torch.full_like(s, 0.5), a / torch.where(zero, torch.ones_like(s), s))
    v = 1.0 - u
    num = (u * v).sum(-1)
    den = torch.sqrt((u * u).sum(-1) * (v * v).sum(-1))
    return 1.0 - num / den.clamp_min(torch.finfo(den.dtype).tiny)


def torch_asymmetric_distance(
    sources: torch.Tensor,
    targets: torch.Tensor,
    source_trivial: torch.Tensor,
    alpha: float = DEFAULT_ALPHA,
) -> torch.Tensor:
    """``d_asym(source_i -> target_j) = d_sym(s_i, t_j) - alpha * d_sym(s_i, trivial_i)``, ``[n, m]``.

    Differentiable in ``sources`` (what Model2Vec learns); equal to
    ``hf_task2vec.distance.pairwise_distances(..., kind="asymmetric")``.

    Args:
        sources: ``[n, D]`` (e.g. the experts' training-task embeddings).
        targets: ``[m, D]`` (the new tasks).
        source_trivial: ``[n, D]`` or ``[1, D]``: the trivial embedding of each source.
        alpha: weight of the complexity term.
    """
    sym = pairwise_symmetric_distance(sources, targets)
    complexity = torch_symmetric_distance(sources, source_trivial.expand_as(sources))
    return sym - alpha * complexity[:, None]


class _PairwiseSymWorkspace:
    """``d_sym`` for every pair of rows of ``a [n, D]`` and fixed ``b [m, D]``, with a hand-written backward.

    With ``u = a / (a + b)``, ``v = 1 - u``, ``A = <u, v>``, ``B = |u|^2``, ``C = |v|^2`` and
    ``d = 1 - A / sqrt(B C)``: ``dd/du_k = alpha + beta u_k`` with ``alpha = -(1 + A/C) / sqrt(BC)``,
    ``beta = (2 + A/B + A/C) / sqrt(BC)``, ``du_k/da_k = v_k / s_k`` and ``du_k/db_k = -u_k / s_k``
    (``s = a + b``; where ``s = 0`` both normalised entries are the constant 1/2). Three ``[n, m, D]``
    buffers are allocated once and reused: a Model2Vec step on 21k-filter embeddings then costs a
    handful of passes over memory instead of autograd's dozens of freshly allocated temporaries.
    """

    def __init__(self, b: torch.Tensor, n: int) -> None:
        self.b = b
        shape = (n, b.shape[0], b.shape[1])
        self.s = torch.empty(shape, dtype=b.dtype, device=b.device)
        self.u = torch.empty_like(self.s)
        self.x = torch.empty_like(self.s)
        self.b_zero = (b == 0).any(0)
        self.has_zero = False

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        s, u = self.s, self.u
        torch.add(a[:, None, :], self.b[None, :, :], out=s)
        torch.div(a[:, None, :].expand_as(s), s, out=u)
        self.has_zero = bool((self.b_zero & (a == 0).any(0)).any())
        if self.has_zero:
            zero = s == 0
            u.masked_fill_(zero, 0.5)
            s.masked_fill_(zero, float("inf"))  # no gradient through the constant 1/2
        s1 = u.sum(-1)
        bb = torch.linalg.vector_norm(u, dim=-1).square()
        aa = s1 - bb
        cc = (u.shape[-1] - 2.0 * s1 + bb).clamp_min(0.0)
        tiny = torch.finfo(u.dtype).tiny
        self.den = torch.sqrt(bb * cc).clamp_min(tiny)
        self.alpha = -(1.0 + aa / cc.clamp_min(tiny)) / self.den
        self.beta = (2.0 + aa / bb.clamp_min(tiny) + aa / cc.clamp_min(tiny)) / self.den
        return 1.0 - aa / self.den

    def backward(self, grad: torch.Tensor, need_b: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Gradients w.r.t. ``a`` (and ``b``) given ``grad = dL/dd`` ``[n, m]`` (call after `forward`)."""
        x = self.x
        torch.addcmul((grad * self.alpha)[..., None].expand_as(x), self.u, (grad * self.beta)[..., None], out=x)
        x.div_(self.s)  # dL/du * du/ds-part: dL/da = x * v, dL/db = -x * u
        total = x.sum(1)
        xu = x.mul_(self.u)
        grad_a = total - xu.sum(1)
        grad_b = -xu.sum(0) if need_b else None
        return grad_a, grad_b


class _PairwiseSymmetric(torch.autograd.Function):
    """Autograd wrapper of `_PairwiseSymWorkspace` (buffers allocated per call)."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ws = _PairwiseSymWorkspace(b.detach(), a.shape[0])
        ctx.ws = ws
        return ws.forward(a.detach())

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad_a, grad_b = ctx.ws.backward(grad, need_b=ctx.needs_input_grad[1])
        return (grad_a if ctx.needs_input_grad[0] else None), grad_b


def pairwise_symmetric_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``d_sym(a_i, b_j)`` for all pairs of rows, ``[n, D] x [m, D] -> [n, m]``, differentiable
    (a fused forward/backward; the same values as `torch_symmetric_distance` on broadcast inputs)."""
    return _PairwiseSymmetric.apply(a, b)


def _sym_rows(rows: np.ndarray, other: np.ndarray, chunk: int = _ROWS_PER_CHUNK) -> np.ndarray:
    """``d_sym(rows[i], other[i])`` for every row of ``rows [N, D]``; ``other`` is ``[N, D]`` or one
    shared ``[1, D]`` row (a query). Float32 with preallocated buffers, chunk by chunk, three dot
    products per row: ~1 ns per element, so 10,000 experts x 21,008 filters take a fraction of a second.
    Agrees with the float64 `hf_task2vec.distance` to ~1e-6."""
    A = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))
    B = torch.from_numpy(np.ascontiguousarray(other, dtype=np.float32))
    n, dim = A.shape
    shared = B.shape[0] == 1
    fix_zeros = bool((B == 0).any()) and bool((A == 0).any())
    out = np.empty(n, dtype=np.float64)
    rows_per = max(1, min(chunk, n))
    u_buf, v_buf = torch.empty(rows_per, dim), torch.empty(rows_per, dim)
    with torch.no_grad():
        for start in range(0, n, rows_per):
            a = A[start : start + rows_per]
            b = B if shared else B[start : start + rows_per]
            m = a.shape[0]
            u, v = u_buf[:m], v_buf[:m]
            torch.add(a, b, out=v)  # v holds s = a + b
            torch.div(a, v, out=u)  # u = a / s
            torch.div(b.expand_as(a), v, out=v)  # v = b / s
            if fix_zeros:  # 0 / 0 where a = b = 0: both normalised entries are 1/2
                torch.nan_to_num_(u, nan=0.5)
                torch.nan_to_num_(v, nan=0.5)
            uv = torch.linalg.vecdot(u, v).double()
            uu = torch.linalg.vecdot(u, u).double()
            vv = torch.linalg.vecdot(v, v).double()
            den = torch.sqrt(uu * vv).clamp_min(torch.finfo(torch.float64).tiny)
            out[start : start + m] = (1.0 - uv / den).numpy()
    return out


def _sym_to_query(rows: np.ndarray, query: np.ndarray) -> np.ndarray:
    """``d_sym(rows[i], query)`` for every expert row."""
    return _sym_rows(rows, np.asarray(query).reshape(1, -1))


def _complexity(values: np.ndarray, trivial: np.ndarray) -> np.ndarray:
    """``d_sym(values[i], trivial[i])`` (trivial ``[N, D]`` or a shared ``[1, D]``)."""
    return _sym_rows(values, trivial)


# -- the expert index -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExpertMatch:
    """One expert returned by `ExpertIndex.select`.

    Attributes:
        model_id: the expert's id (Hub id, timm name, path...).
        score: its distance to the query task under ``metric``: **lower is better**.
        rank: 1 for the best expert.
        metric: ``"asymmetric"``, ``"symmetric"`` or ``"model2vec"``.
        info: the expert's info (task, classes, dataset, error, ...), see `ExpertIndex.add`.
    """

    model_id: str
    score: float
    rank: int
    metric: str
    info: Mapping[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"ExpertMatch(rank={self.rank}, model_id={self.model_id!r}, score={self.score:.6f}, metric={self.metric})"
        )


def _jsonable(value: Any, key: str) -> Any:
    """Make an info value JSON-friendly (numpy scalars/arrays -> python) or raise a clear error."""
    if isinstance(value, np.generic):
        value = value.item()
    elif isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, tuple):
        value = list(value)
    try:
        json.dumps(value, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"expert info {key!r} = {value!r} cannot be stored in the index table (JSON): pass strings, numbers, "
            "booleans, lists or dicts"
        ) from exc
    return value


def _settings_of(meta: Mapping[str, str]) -> dict[str, str]:
    return {key: meta.get(key, "") for key in COMPATIBILITY_KEYS}


class ExpertIndex:
    """An index of pretrained experts, each represented by the Task2Vec embedding of its training task.

    All experts must be embedded the same way (same probe, weights, estimator and image size): the
    first `add` fixes these settings and every later expert and every query is checked against them
    (`IncompatibleEmbeddingsError` otherwise).

    Example::

        index = ExpertIndex()
        index.add("user/resnet-birds", t2v.embed("user/birds", image_size=64), error=0.12)
        index.add_hub_models(["user/vit-flowers"], image_size=64)   # embeds the dataset its card names
        best = index.select(t2v.embed("user/my-task", image_size=64), k=3)
        best[0].model_id, best[0].score                             # score: a distance, lower = better
        index.save("experts/"); ExpertIndex.load("experts/")

    Args:
        alpha: the weight of the complexity term of the asymmetric distance (paper: 0.15).
    """

    def __init__(self, *, alpha: float = DEFAULT_ALPHA) -> None:
        self.alpha = float(alpha)
        self._ids: list[str] = []
        self._pos: dict[str, int] = {}
        self._info: list[dict[str, Any]] = []
        self._emb_meta: list[dict[str, str]] = []
        self._value_blocks: list[np.ndarray] = []  # 2-D float32 blocks, concatenated lazily
        self._trivial_rows: list[np.ndarray] = []  # 1-D float32; rows equal to the shared one are the same object
        self._offset_rows: list[np.ndarray | None] = []
        self._settings: dict[str, str] | None = None  # probe, probe_revision, method, image_size
        self._reference_meta: dict[str, str] = {}  # meta of the first expert (how to embed queries)
        self._layers: list[LayerSlice] = []
        self._dim: int | None = None
        self.model2vec_info: dict[str, Any] = {}
        self._cache: dict[str, np.ndarray] = {}

    # -- basic facts ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._pos

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._ids))

    def __repr__(self) -> str:
        probe = self._settings["probe"] if self._settings else None
        return f"ExpertIndex(experts={len(self)}, probe={probe!r}, dim={self._dim}, alpha={self.alpha})"

    @property
    def model_ids(self) -> list[str]:
        """The experts' ids, in insertion order."""
        return list(self._ids)

    @property
    def dim(self) -> int | None:
        """The embedding dimension (``None`` while empty)."""
        return self._dim

    @property
    def settings(self) -> dict[str, str]:
        """How the experts were embedded: ``probe``, ``probe_revision``, ``method``, ``image_size``
        (empty while the index is empty)."""
        return dict(self._settings or {})

    @property
    def embedding_options(self) -> dict[str, str]:
        """The provenance of the first expert's embedding (probe, estimator, image size, max_samples,
        seed, ...): what `embedder` uses to embed a query the same way."""
        return dict(self._reference_meta)

    @property
    def has_model2vec(self) -> bool:
        """Whether Model2Vec offsets are stored (``metric="model2vec"`` is available)."""
        return any(o is not None for o in self._offset_rows)

    def info(self, model_id: str) -> dict[str, Any]:
        """A copy of the info of one expert (task, classes, dataset, error, ...)."""
        return dict(self._info[self._index_of(model_id)])

    def rows(self) -> list[dict[str, Any]]:
        """One dict per expert (``model_id`` + its info), e.g. for ``pandas.DataFrame(index.rows())``."""
        return [{"model_id": mid, **info} for mid, info in zip(self._ids, self._info, strict=True)]

    def embedding(self, model_id: str) -> TaskEmbedding:
        """The training-task embedding of one expert, as it was added."""
        i = self._index_of(model_id)
        return TaskEmbedding(self._values()[i], self._trivial_rows[i], self._layers, self._emb_meta[i])

    def offset(self, model_id: str) -> np.ndarray | None:
        """The Model2Vec offset ``b_j`` of one expert (``None`` if none was fitted)."""
        o = self._offset_rows[self._index_of(model_id)]
        return None if o is None else o.copy()

    def _index_of(self, model_id: str) -> int:
        try:
            return self._pos[model_id]
        except KeyError:
            raise KeyError(f"no expert {model_id!r} in the index ({len(self)} experts, e.g. {self._ids[:3]})") from None

    # -- editing -------------------------------------------------------------------------------
    def add(
        self,
        model_id: str,
        task_embedding: TaskEmbedding,
        *,
        replace: bool = False,
        offset: np.ndarray | None = None,
        **info: Any,
    ) -> None:
        """Add an expert.

        Args:
            model_id: the expert's id (a Hub model id, timm name, transformers checkpoint or local path).
            task_embedding: the embedding of the task the expert was trained on, made with the probe
                of this index (all experts: same probe, revision, estimator and image size).
            replace: replace an expert with the same id instead of raising.
            offset: a Model2Vec offset ``b_j`` (``[D]``) for this expert, if known.
            **info: JSON-able facts stored with the expert. Conventional keys: ``task`` (source task
                name), ``classes`` (its label names), ``dataset`` (where the training data came from),
                ``error`` (a measured error). ``task``, ``classes`` and ``dataset`` default to the
                embedding's provenance.

        Raises:
            IncompatibleEmbeddingsError: the embedding was made differently from the index's experts.
            ValueError: duplicate id (without ``replace``), or non-finite / negative values.
        """
        if not isinstance(model_id, str) or not model_id.strip():
            raise ValueError(f"model_id must be a non-empty string, got {model_id!r}")
        if not isinstance(task_embedding, TaskEmbedding):
            raise TypeError(
                f"expert {model_id!r}: task_embedding must be a TaskEmbedding (see hf_task2vec.embed), "
                f"got {type(task_embedding).__name__}"
            )
        values = task_embedding.values
        if not np.all(np.isfinite(values)) or values.min(initial=0.0) < 0:
            raise ValueError(
                f"expert {model_id!r}: the embedding has negative or non-finite values; a Task2Vec embedding "
                "is a (non-negative) Fisher diagonal - re-embed the task"
            )
        self._check_compatible(task_embedding, what=f"expert {model_id!r}")
        if model_id in self._pos:
            if not replace:
                raise ValueError(
                    f"expert {model_id!r} is already in the index; pass replace=True or call remove() first"
                )
            self.remove(model_id)
        if offset is not None:
            offset = np.asarray(offset, np.float32).reshape(-1)
            if offset.shape != values.shape:
                raise ValueError(f"expert {model_id!r}: offset has {offset.size} entries, expected {values.size}")
        meta = dict(task_embedding.meta)
        defaults: dict[str, Any] = {"task": meta.get("task", ""), "dataset": meta.get("task_source", "")}
        if meta.get("label_names"):
            try:
                defaults["classes"] = json.loads(meta["label_names"])
            except ValueError:
                pass
        record = {**defaults, **{k: _jsonable(v, k) for k, v in info.items()}}
        if self._settings is None:
            self._settings = _settings_of(meta)
            self._reference_meta = meta
            self._layers = list(task_embedding.layers)
            self._dim = task_embedding.dim
        trivial = task_embedding.trivial
        shared = self._trivial_rows[0] if self._trivial_rows else None
        if shared is not None and np.array_equal(shared, trivial):
            trivial = shared  # one object for identical trivial embeddings (montecarlo: a constant)
        self._pos[model_id] = len(self._ids)
        self._ids.append(model_id)
        self._info.append(record)
        self._emb_meta.append(meta)
        self._value_blocks.append(values.reshape(1, -1).copy())
        self._trivial_rows.append(trivial.copy() if trivial is task_embedding.trivial else trivial)
        self._offset_rows.append(offset)
        self._cache.clear()

    def remove(self, model_id: str) -> None:
        """Remove an expert (KeyError if absent)."""
        i = self._index_of(model_id)
        values = self._values()
        keep = np.ones(len(self._ids), dtype=bool)
        keep[i] = False
        self._value_blocks = [values[keep]]
        for lst in (self._ids, self._info, self._emb_meta, self._trivial_rows, self._offset_rows):
            del lst[i]
        self._pos = {mid: j for j, mid in enumerate(self._ids)}
        self._cache.clear()
        if not self._ids:
            self._settings, self._reference_meta, self._layers, self._dim = None, {}, [], None
            self._value_blocks = []
            self.model2vec_info = {}

    def set_info(self, model_id: str, **info: Any) -> None:
        """Update (merge) the info of one expert, e.g. ``set_info(mid, error=0.12)``."""
        self._info[self._index_of(model_id)].update({k: _jsonable(v, k) for k, v in info.items()})

    # -- stacked arrays (cached) ---------------------------------------------------------------
    def _values(self) -> np.ndarray:
        if not self._value_blocks:
            return np.zeros((0, self._dim or 0), np.float32)
        if len(self._value_blocks) > 1:
            self._value_blocks = [np.concatenate(self._value_blocks, axis=0)]
        return self._value_blocks[0]

    def _trivial(self) -> np.ndarray:
        """``[1, D]`` when every expert shares one trivial embedding, else ``[N, D]``."""
        if "trivial" not in self._cache:
            first = self._trivial_rows[0]
            if all(t is first for t in self._trivial_rows):
                self._cache["trivial"] = first.reshape(1, -1)
            else:
                self._cache["trivial"] = np.stack(self._trivial_rows)
        return self._cache["trivial"]

    def _offsets(self) -> np.ndarray:
        if "offsets" not in self._cache:
            out = np.zeros((len(self), self._dim or 0), np.float32)
            for i, o in enumerate(self._offset_rows):
                if o is not None:
                    out[i] = o
            self._cache["offsets"] = out
        return self._cache["offsets"]

    def _m2v_vectors(self) -> np.ndarray:
        if "m2v" not in self._cache:
            self._cache["m2v"] = np.maximum(self._values() + self._offsets(), 0.0)
        return self._cache["m2v"]

    def _complexities(self, metric: str) -> np.ndarray:
        key = f"complexity:{metric}"
        if key not in self._cache:
            rows = self._m2v_vectors() if metric == "model2vec" else self._values()
            self._cache[key] = _complexity(rows, self._trivial())
        return self._cache[key]

    # -- search --------------------------------------------------------------------------------
    def _check_compatible(self, emb: TaskEmbedding, what: str) -> None:
        if self._settings is None:
            return
        theirs = _settings_of(emb.meta)
        problems = [
            f"{k}: index {self._settings[k]!r} vs {theirs[k]!r}"
            for k in COMPATIBILITY_KEYS
            if self._settings[k] != theirs[k]
        ]
        if emb.dim != self._dim:
            problems.append(f"dimension: index {self._dim} vs {emb.dim}")
        if problems:
            s = self._settings
            raise IncompatibleEmbeddingsError(
                f"{what} (task {emb.name!r}) was not embedded like the experts of this index: "
                + "; ".join(problems)
                + f". Re-embed it with the index's settings: Task2Vec({s['probe']!r}, method={s['method']!r}, "
                f"image_size={s['image_size'] or None}) - `index.embedder()` builds that embedder, and "
                "`hf-task2vec select` does it for you."
            )

    def distances(
        self, task_embedding: TaskEmbedding, metric: Metric = "asymmetric", *, alpha: float | None = None
    ) -> np.ndarray:
        """The distance of every expert (insertion order) to a task: ``[N]`` float64, lower = better.

        * ``"asymmetric"``: ``d_sym(F_j, t) - alpha * d_sym(F_j, trivial_j)`` (the paper's selection rule);
        * ``"symmetric"``: ``d_sym(F_j, t)``;
        * ``"model2vec"``: the asymmetric distance from the learned ``m_j = F_j + b_j`` (`fit_model2vec`),
          with the alpha used in that fit.
        """
        if metric not in SELECTION_METRICS:
            raise ValueError(f"unknown selection metric {metric!r}; use one of {', '.join(SELECTION_METRICS)}")
        if not self._ids:
            raise ValueError("the expert index is empty: add experts first (ExpertIndex.add / add_hub_models)")
        if not isinstance(task_embedding, TaskEmbedding):
            raise TypeError(f"select needs a TaskEmbedding, got {type(task_embedding).__name__}")
        self._check_compatible(task_embedding, what="the query embedding")
        query = task_embedding.values.astype(np.float64)
        if metric == "model2vec":
            if not self.has_model2vec:
                raise ValueError(
                    "this index has no Model2Vec offsets: fit them with index.fit_model2vec(task_embeddings, errors) "
                    "or use metric='asymmetric'"
                )
            a = float(self.model2vec_info.get("alpha", self.alpha)) if alpha is None else float(alpha)
            return _sym_to_query(self._m2v_vectors(), query) - a * self._complexities("model2vec")
        sym = _sym_to_query(self._values(), query)
        if metric == "symmetric":
            return sym
        a = self.alpha if alpha is None else float(alpha)
        return sym - a * self._complexities("asymmetric")

    def select(
        self,
        task_embedding: TaskEmbedding,
        k: int | None = 5,
        metric: Metric = "asymmetric",
        *,
        alpha: float | None = None,
    ) -> list[ExpertMatch]:
        """The ``k`` experts nearest to a task, best first.

        Args:
            task_embedding: the new task, embedded like the experts (same probe and settings).
            k: how many experts to return (``None``: all).
            metric: ``"asymmetric"`` (default, the paper's rule), ``"symmetric"`` or ``"model2vec"``.
            alpha: override the asymmetric weight.

        Returns:
            `ExpertMatch` records; ``score`` is the distance (lower is better); ties keep insertion order.

        Raises:
            IncompatibleEmbeddingsError: the query was embedded with another probe / estimator / size.
        """
        if k is not None and k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        d = self.distances(task_embedding, metric, alpha=alpha)
        n = d.size if k is None else min(k, d.size)
        if n < d.size:
            part = np.argpartition(d, n - 1)[:n]
            cand = part[np.lexsort((part, d[part]))]
        else:
            cand = np.lexsort((np.arange(d.size), d))
        return [
            ExpertMatch(self._ids[i], float(d[i]), r + 1, metric, dict(self._info[i]))
            for r, i in enumerate(cand[:n].tolist())
        ]

    # -- embedding queries like the experts ----------------------------------------------------
    def embedder(self, *, probe: Probe | str | None = None, **overrides: Any) -> Task2Vec:
        """A `Task2Vec` configured like the embeddings of this index's experts (probe, estimator,
        image size, max_samples, n_samples, seed), so that its embeddings can be searched.

        ``probe`` and ``overrides`` (any `Task2Vec` option) replace the recorded settings.
        """
        from .probes import load_probe
        from .task2vec import Task2Vec

        if self._settings is None:
            raise ValueError("the expert index is empty: there are no settings to embed queries with")
        meta = self._reference_meta
        if probe is None:
            name = meta.get("probe", "embedded")
            if name.endswith("-random-init"):
                probe = load_probe(name[: -len("-random-init")], pretrained=False)
            else:
                probe = load_probe(name)
        options: dict[str, Any] = {"method": meta.get("method") or "montecarlo"}
        if meta.get("image_size"):
            options["image_size"] = int(meta["image_size"])
        if meta.get("max_samples") not in (None, "", "None"):
            options["max_samples"] = int(meta["max_samples"])
        if meta.get("seed"):
            options["seed"] = int(meta["seed"])
        try:
            method_options = json.loads(meta.get("method_options") or "{}")
        except ValueError:
            method_options = {}
        if "n_samples" in method_options and options["method"] == "montecarlo":
            options["n_samples"] = int(method_options["n_samples"])
        options.update(overrides)
        return Task2Vec(probe, **options)

    # -- experts from the Hub ------------------------------------------------------------------
    def add_hub_models(
        self,
        model_ids: Iterable[str],
        probe: Probe | str | None = None,
        mapping: Mapping[str, str] | None = None,
        *,
        split: str = "train",
        token: str | bool | None = None,
        replace: bool = False,
        progress: bool = True,
        **embed_options: Any,
    ) -> list[str]:
        """Add Hub models as experts by embedding the dataset each one was trained on.

        The training dataset is read from the model card metadata (``datasets:`` in the README's
        YAML header) unless ``mapping`` names it. Several models trained on the same dataset share
        one embedding.

        Args:
            model_ids: Hub model ids.
            probe: the probe to embed with; default: the index's probe (``"embedded"`` for an empty index).
            mapping: ``{model_id: dataset}`` overriding the card (any source `load_task` accepts).
            split: the dataset split to embed.
            token: Hub token (default: ``HF_TOKEN`` / the saved login).
            replace: replace experts already in the index.
            progress: show a progress bar over the models.
            **embed_options: `Task2Vec` options (``image_size``, ``max_samples``, ``seed``...); for a
                non-empty index they default to the index's settings.

        Returns:
            The ids added.

        Raises:
            Task2VecError: a model card names no dataset (and no mapping is given) or cannot be read.
        """
        from .task2vec import Task2Vec
        from .tasks import load_task

        model_ids = list(model_ids)
        mapping = dict(mapping or {})
        if self._settings is not None:
            embedder = self.embedder(probe=probe, **embed_options)
        else:
            embedder = Task2Vec(probe if probe is not None else "embedded", **embed_options)
        embedder.progress = embedder.progress and progress
        cache: dict[tuple[str, str], TaskEmbedding] = {}
        added: list[str] = []
        for model_id in tqdm(model_ids, desc="experts", unit="model", disable=not progress or len(model_ids) < 2):
            if model_id in self._pos and not replace:
                raise ValueError(f"expert {model_id!r} is already in the index; pass replace=True to re-embed it")
            card_info = _read_model_card(model_id, token=token)
            dataset = mapping.get(model_id) or card_info.get("dataset")
            if not dataset:
                raise Task2VecError(
                    f"the model card of {model_id!r} names no training dataset (no `datasets:` entry in its README "
                    f"metadata); pass mapping={{{model_id!r}: '<dataset id or path>'}} "
                    f"(CLI: --dataset {model_id}=<dataset>)"
                )
            key = (str(dataset), split)
            if key not in cache:
                logger.info("embedding %s (split %s), the training data of %s", dataset, split, model_id)
                cache[key] = embedder.embed(load_task(dataset, split=split))
            emb = cache[key]
            info = {
                "source": "hub",
                "dataset": str(dataset),
                "dataset_revision": emb.meta.get("task_revision", ""),
                "split": split,
                "model_revision": card_info.get("sha", ""),
            }
            for k in ("pipeline_tag", "library_name", "datasets_in_card"):
                if card_info.get(k):
                    info[k] = card_info[k]
            self.add(model_id, emb, replace=replace, **info)
            added.append(model_id)
        return added

    # -- Model2Vec -----------------------------------------------------------------------------
    def fit_model2vec(
        self,
        task_embeddings: Sequence[TaskEmbedding],
        errors: np.ndarray,
        *,
        model_ids: Sequence[str] | None = None,
        **options: Any,
    ) -> Model2Vec:
        """Learn Model2Vec offsets ``b_j`` from measured errors and store them (``metric="model2vec"``).

        Args:
            task_embeddings: ``T`` tasks embedded like the experts.
            errors: ``[T, J]`` test error of expert ``j`` on task ``t`` (NaN: not measured).
            model_ids: the ``J`` experts the columns refer to (default: all, in index order).
            **options: `Model2Vec` options (``alpha``, ``a``, ``lr``, ``weight_decay``, ``steps``...);
                ``alpha`` defaults to the index's.
        """
        ids = list(model_ids) if model_ids is not None else list(self._ids)
        rows = [self._index_of(m) for m in ids]
        for i, t in enumerate(task_embeddings):
            self._check_compatible(t, what=f"training task {i}")
        options.setdefault("alpha", self.alpha)
        model = Model2Vec(**options)
        values = self._values()[rows]
        trivial = self._trivial()
        model.fit(
            values,
            np.stack([t.values for t in task_embeddings]),
            errors,
            expert_trivial=trivial if trivial.shape[0] == 1 else trivial[rows],
        )
        for r, b in zip(rows, model.offsets_, strict=True):
            self._offset_rows[r] = b.astype(np.float32)
        self.model2vec_info = {
            "alpha": model.alpha,
            "gamma": model.gamma_,
            "a": model.a,
            "num_tasks": int(len(task_embeddings)),
            "experts": ids,
            "final_loss": model.loss_history_[-1] if model.loss_history_ else None,
        }
        self._cache.clear()
        return model

    # -- persistence ---------------------------------------------------------------------------
    def _table(self) -> dict[str, Any]:
        return {
            "format": INDEX_FORMAT,
            "format_version": INDEX_FORMAT_VERSION,
            "experts": [
                {"model_id": mid, **info, "has_model2vec_offset": off is not None, "embedding_meta": meta}
                for mid, info, off, meta in zip(self._ids, self._info, self._offset_rows, self._emb_meta, strict=True)
            ],
        }

    def to_bytes(self) -> tuple[bytes, bytes]:
        """The two files of a saved index: (``experts.safetensors`` bytes, ``experts.json`` bytes)."""
        import hashlib

        from safetensors.numpy import save

        if not self._ids:
            raise ValueError("cannot save an empty expert index")
        table = json.dumps(self._table(), indent=1, sort_keys=False, allow_nan=True).encode() + b"\n"
        tensors = {"values": self._values(), "trivial": np.ascontiguousarray(self._trivial())}
        if self.has_model2vec:
            tensors["offsets"] = self._offsets()
        digest = hashlib.sha256()
        for name in sorted(tensors):
            digest.update(name.encode())
            digest.update(tensors[name].tobytes())
        meta = {
            "format": INDEX_FORMAT,
            "format_version": INDEX_FORMAT_VERSION,
            "alpha": repr(self.alpha),
            "num_experts": str(len(self)),
            "dim": str(self._dim),
            "model_ids": json.dumps(self._ids),
            "settings": json.dumps(self._settings),
            "reference_meta": json.dumps(self._reference_meta),
            "layers": json.dumps([[sl.name, sl.start, sl.stop] for sl in self._layers]),
            "trivial_shared": str(tensors["trivial"].shape[0] == 1 and len(self) > 1).lower(),
            "model2vec": json.dumps(self.model2vec_info),
            "tensors_sha256": digest.hexdigest(),
            "table_sha256": hashlib.sha256(table).hexdigest(),
        }
        return save(tensors, metadata=meta), table

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Save to a folder: ``experts.safetensors`` (stacked embeddings, trivial embeddings, Model2Vec
        offsets) and ``experts.json`` (one row per expert). Each file is written atomically and the
        tensors file records a hash of the table, so a half-updated pair is refused by `load`."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        tensors, table = self.to_bytes()
        atomic_write_bytes(folder / TABLE_FILE, table)
        atomic_write_bytes(folder / TENSORS_FILE, tensors)
        logger.info("saved expert index (%d experts) to %s", len(self), folder)
        return folder

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ExpertIndex:
        """Load an index written by `save` (a folder, or the path of its ``experts.safetensors``)."""
        import hashlib

        from safetensors.numpy import load

        p = Path(path)
        folder = p.parent if p.is_file() else p
        tensors_path, table_path = folder / TENSORS_FILE, folder / TABLE_FILE
        fix = "re-create it with ExpertIndex.save / `hf-task2vec experts add`"
        if not tensors_path.is_file() or not table_path.is_file():
            raise EmbeddingFileError(
                f"{str(folder)!r} is not an expert index: it needs {TENSORS_FILE} and {TABLE_FILE}; {fix}"
            )
        data, table_bytes = tensors_path.read_bytes(), table_path.read_bytes()
        try:
            tensors = load(data)
            header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
            table = json.loads(table_bytes)
        except Exception as exc:
            raise EmbeddingFileError(f"expert index {str(folder)!r} is unreadable ({exc}); {fix}") from exc
        meta = header.get("__metadata__") or {}
        if meta.get("format") != INDEX_FORMAT:
            raise EmbeddingFileError(f"{str(tensors_path)!r} is a safetensors file but not an hf_task2vec expert index")
        if meta.get("format_version") != INDEX_FORMAT_VERSION:
            raise EmbeddingFileError(
                f"{str(tensors_path)!r} has expert-index format {meta.get('format_version')!r}; this hf_task2vec "
                f"reads version {INDEX_FORMAT_VERSION}: upgrade hf_task2vec or {fix}"
            )
        if hashlib.sha256(table_bytes).hexdigest() != meta.get("table_sha256"):
            raise EmbeddingFileError(
                f"expert index {str(folder)!r}: {TABLE_FILE} does not belong to {TENSORS_FILE} (it was edited or "
                f"the two files come from different saves); {fix}"
            )
        digest = hashlib.sha256()
        for name in sorted(tensors):
            digest.update(name.encode())
            digest.update(tensors[name].tobytes())
        if digest.hexdigest() != meta.get("tensors_sha256"):
            raise EmbeddingFileError(f"expert index {str(folder)!r} failed its integrity check; {fix}")
        ids = json.loads(meta["model_ids"])
        rows = table.get("experts", [])
        if [r.get("model_id") for r in rows] != ids:
            raise EmbeddingFileError(f"expert index {str(folder)!r}: table and tensors list different experts; {fix}")
        index = cls(alpha=float(meta.get("alpha", DEFAULT_ALPHA)))
        values, trivial = tensors["values"], tensors["trivial"]
        offsets = tensors.get("offsets")
        index._settings = json.loads(meta["settings"])
        index._reference_meta = json.loads(meta.get("reference_meta") or "{}")
        index._layers = [LayerSlice(str(n), int(a), int(b)) for n, a, b in json.loads(meta.get("layers") or "[]")]
        index._dim = int(meta["dim"])
        index.model2vec_info = json.loads(meta.get("model2vec") or "{}")
        shared = trivial[0].copy() if trivial.shape[0] == 1 else None
        index._value_blocks = [np.ascontiguousarray(values, dtype=np.float32)]
        for i, row in enumerate(rows):
            row = dict(row)
            mid = row.pop("model_id")
            has_offset = bool(row.pop("has_model2vec_offset", False))
            emb_meta = {str(k): str(v) for k, v in (row.pop("embedding_meta", None) or {}).items()}
            index._pos[mid] = i
            index._ids.append(mid)
            index._info.append(row)
            index._emb_meta.append(emb_meta)
            index._trivial_rows.append(shared if shared is not None else trivial[i].copy())
            index._offset_rows.append(offsets[i].copy() if has_offset and offsets is not None else None)
        return index

    def push_to_hub(
        self,
        repo_id: str,
        *,
        token: str | None = None,
        private: bool | None = None,
        revision: str | None = None,
        commit_message: str | None = None,
    ) -> str:
        """Upload the index to a Hub *dataset* repo (created if missing); returns the commit url.

        Uses ``huggingface_hub.upload_folder``; honours ``HF_ENDPOINT`` and ``HF_TOKEN``.
        """
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="expert-index-") as tmp:
            self.save(tmp)
            (Path(tmp) / "README.md").write_text(self._card(repo_id))
            info = api.upload_folder(
                folder_path=tmp,
                repo_id=repo_id,
                repo_type="dataset",
                revision=revision,
                commit_message=commit_message or f"Expert index: {len(self)} experts",
            )
        return str(getattr(info, "commit_url", info))

    @classmethod
    def from_hub(
        cls,
        repo_id: str,
        *,
        revision: str | None = None,
        token: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> ExpertIndex:
        """Download an index pushed with `push_to_hub` (``huggingface_hub.snapshot_download``)."""
        from huggingface_hub import snapshot_download

        folder = snapshot_download(
            repo_id,
            repo_type="dataset",
            revision=revision,
            token=token,
            cache_dir=cache_dir,
            allow_patterns=[TENSORS_FILE, TABLE_FILE],
        )
        return cls.load(folder)

    def _card(self, repo_id: str) -> str:
        s = self._settings or {}
        lines = [
            "---",
            "tags:",
            "- task2vec",
            "- hf_task2vec",
            "- expert-index",
            "---",
            f"# {repo_id}",
            "",
            f"An [hf_task2vec](https://github.com/) expert index: {len(self)} experts embedded with probe "
            f"`{s.get('probe')}` ({s.get('method')}, image size {s.get('image_size')}).",
            "",
            "```python",
            "from hf_task2vec import ExpertIndex",
            f'index = ExpertIndex.from_hub("{repo_id}")',
            "```",
            "",
            "| model_id | task | dataset |",
            "|---|---|---|",
        ]
        lines += [f"| {r['model_id']} | {r.get('task', '')} | {r.get('dataset', '')} |" for r in self.rows()]
        return "\n".join(lines) + "\n"


def _read_model_card(model_id: str, *, token: str | bool | None = None) -> dict[str, Any]:
    """The training dataset named by a Hub model's card metadata, and a few facts about the repo."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        info = api.model_info(model_id, token=token)
    except Exception as exc:
        raise Task2VecError(
            f"cannot read Hub model {model_id!r} ({type(exc).__name__}: {exc}). Check the id, your token "
            "(HF_TOKEN) and that the Hub is reachable (HF_ENDPOINT, HF_HUB_OFFLINE)."
        ) from exc
    card = info.card_data
    datasets_field = getattr(card, "datasets", None) if card is not None else None
    if card is None:
        try:  # the API answer may omit cardData: read the README itself
            from huggingface_hub import ModelCard

            datasets_field = ModelCard.load(model_id, token=token).data.datasets
        except Exception as exc:  # no README: handled as "names no dataset"
            logger.info("%s has no readable model card (%s)", model_id, exc)
    if isinstance(datasets_field, str):
        datasets_field = [datasets_field]
    names = [str(d) for d in (datasets_field or []) if d]
    if len(names) > 1:
        logger.warning(
            "%s names several datasets %s in its card; embedding the first. Pass mapping= to choose.", model_id, names
        )
    return {
        "dataset": names[0] if names else None,
        "datasets_in_card": names,
        "sha": info.sha or "",
        "pipeline_tag": getattr(info, "pipeline_tag", None) or "",
        "library_name": getattr(info, "library_name", None) or getattr(card, "library_name", None) or "",
    }


# -- Model2Vec ----------------------------------------------------------------------------------------
def _as_matrix(x: Sequence[TaskEmbedding] | np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray | None]:
    if isinstance(x, np.ndarray):
        arr = np.atleast_2d(np.asarray(x, np.float64))
        return arr, None
    embs = list(x)
    if not embs:
        raise ValueError(f"{what}: need at least one embedding")
    for e in embs[1:]:
        embs[0].check_compatible(e)
    return np.stack([e.values for e in embs]).astype(np.float64), np.stack([e.trivial for e in embs]).astype(np.float64)


@dataclass
class LeaveOneOutResult:
    """Model2Vec evaluated leave-one-task-out.

    Attributes:
        distances: ``[T, J]``: row ``t`` holds the Model2Vec distances of task ``t`` to every expert,
            from a fit on the other ``T - 1`` tasks (lower = better).
        selected: ``[T]`` the expert chosen for each task (argmin of its row).
        selected_error: ``[T]`` the measured error of that expert.
        optimal_error: ``[T]`` the best measured error of the task.
        gammas: ``[T]`` the learned scale of each fit.
    """

    distances: np.ndarray
    selected: np.ndarray
    selected_error: np.ndarray
    optimal_error: np.ndarray
    gammas: np.ndarray

    @property
    def relative_error_increase(self) -> float:
        """``mean(selected error) / mean(optimal error) - 1``."""
        opt = float(np.mean(self.optimal_error))
        return float(np.mean(self.selected_error)) / opt - 1.0 if opt > 0 else float("nan")


class Model2Vec:
    """The paper's Model2Vec: a learned co-embedding of experts and tasks (DESIGN.md).

    Each expert ``j`` gets a vector ``m_j = F_j + b_j`` (``F_j`` the embedding of its training task),
    and a scale ``gamma`` is learned, so that ``p(j | t) = softmax_j(-gamma * d_asym(m_j -> t))``
    matches soft labels built from the measured errors, ``softmax_j(-a * zscore_j(error[t, j]))``
    (``a = 20``), by minimising the cross-entropy with Adam (lr 0.05, weight decay 5e-4).

    The offset is parametrised multiplicatively, ``m_j = F_j * exp(c_j + s_j)`` (so
    ``b_j = F_j (exp(c_j + s_j) - 1)``) with a per-filter ``c_j`` and a per-expert log-scale ``s_j``:
    ``m_j`` stays positive like a Fisher diagonal and the step size does not depend on the scale of
    the Fisher values. ``s_j`` is redundant with ``c_j`` (same family of ``m_j``) but lets Adam move an
    expert's overall Fisher magnitude in one coordinate: embeddings of tasks with different numbers
    of examples and classes differ in scale by orders of magnitude, and per-filter steps alone
    disagree in sign and stall (on the benchmark's data the in-sample loss stays near its start).
    The weight decay acts on ``c_j``, pulling the profile of ``m_j`` back to that of ``F_j``.

    Args:
        alpha: the asymmetric weight in ``d_asym``.
        a: the sharpness of the soft labels.
        lr, weight_decay: Adam settings.
        steps: full-batch optimisation steps.
        gamma_init: initial ``gamma`` (default: the inverse of the mean spread of the initial distances).
        dtype: ``torch.float32`` (default, fast) or ``torch.float64``.
        seed: unused by the deterministic full-batch fit; recorded for completeness.
        progress: show a tqdm bar over the steps.

    After `fit`: ``offsets_`` (``[J, D]`` the ``b_j``), ``gamma_``, ``loss_history_``.
    """

    def __init__(
        self,
        *,
        alpha: float = DEFAULT_ALPHA,
        a: float = 20.0,
        lr: float = 0.05,
        weight_decay: float = 5e-4,
        steps: int = 200,
        gamma_init: float | None = None,
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.alpha = float(alpha)
        self.a = float(a)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.steps = int(steps)
        self.gamma_init = gamma_init
        self.dtype = dtype
        self.seed = seed
        self.progress = progress
        self.expert_values_: np.ndarray | None = None
        self.expert_trivial_: np.ndarray | None = None
        self.log_scale_: np.ndarray | None = None
        self.gamma_: float | None = None
        self.loss_history_: list[float] = []

    def __repr__(self) -> str:
        fitted = "unfitted" if self.gamma_ is None else f"gamma={self.gamma_:.4g}"
        return f"Model2Vec(alpha={self.alpha}, a={self.a}, steps={self.steps}, {fitted})"

    @staticmethod
    def soft_labels(errors: np.ndarray, a: float = 20.0) -> np.ndarray:
        """``softmax_j(-a * zscore_j(errors[t, j]))`` per task; NaN (unmeasured) entries get 0.
        A task whose measured errors are all equal gets uniform labels over them."""
        e = np.asarray(errors, np.float64)
        mask = np.isfinite(e)
        count = mask.sum(1, keepdims=True)
        mean = np.where(mask, e, 0).sum(1, keepdims=True) / np.maximum(count, 1)
        var = np.where(mask, (e - mean) ** 2, 0).sum(1, keepdims=True) / np.maximum(count, 1)
        std = np.sqrt(var)
        z = np.where(std > 0, (e - mean) / np.where(std > 0, std, 1), 0.0)
        logits = np.where(mask, -a * z, -np.inf)
        logits = logits - logits.max(1, keepdims=True)
        w = np.where(mask, np.exp(logits), 0.0)
        return w / w.sum(1, keepdims=True)

    # -- fitting -------------------------------------------------------------------------------
    def fit(
        self,
        experts: Sequence[TaskEmbedding] | np.ndarray,
        tasks: Sequence[TaskEmbedding] | np.ndarray,
        errors: np.ndarray,
        *,
        expert_trivial: np.ndarray | None = None,
    ) -> Model2Vec:
        """Fit the offsets and gamma.

        Args:
            experts: ``J`` training-task embeddings of the experts (or an array ``[J, D]``).
            tasks: ``T`` task embeddings with measured errors (or ``[T, D]``).
            errors: ``[T, J]`` error of expert ``j`` on task ``t``; NaN where not measured.
            expert_trivial: ``[J, D]`` or ``[1, D]`` trivial embeddings (taken from the embeddings
                when they are `TaskEmbedding`s; required with arrays).
        """
        f, triv = _as_matrix(experts, "experts")
        t, _ = _as_matrix(tasks, "tasks")
        if expert_trivial is not None:
            triv = np.atleast_2d(np.asarray(expert_trivial, np.float64))
        if triv is None:
            raise ValueError("Model2Vec.fit with arrays needs expert_trivial=[J, D] or [1, D]")
        e = np.asarray(errors, np.float64)
        if e.shape != (t.shape[0], f.shape[0]):
            raise ValueError(f"errors must be [tasks, experts] = [{t.shape[0]}, {f.shape[0]}], got {list(e.shape)}")
        if f.shape[1] != t.shape[1]:
            raise ValueError(f"experts have dimension {f.shape[1]} but tasks {t.shape[1]}")
        if np.any(f < 0) or np.any(t < 0):
            raise ValueError("Model2Vec needs non-negative (Fisher) embeddings")
        usable = np.isfinite(e).sum(1) >= 2
        if not usable.any():
            raise ValueError("Model2Vec needs at least one task with measured errors for two or more experts")
        q = torch.from_numpy(self.soft_labels(e[usable], self.a)).to(self.dtype)
        mask = torch.from_numpy(np.isfinite(e[usable]))
        F = torch.from_numpy(f).to(self.dtype)
        T = torch.from_numpy(t[usable]).to(self.dtype)
        T0 = torch.from_numpy(triv).to(self.dtype)
        c = torch.zeros_like(F, requires_grad=True)
        scale = torch.zeros(F.shape[0], 1, dtype=self.dtype, requires_grad=True)  # per-expert log-scale
        with torch.no_grad():
            d0 = torch_asymmetric_distance(F, T, T0, self.alpha).T  # [T, J]
            spread = float(torch.nan_to_num(d0.std(1)).mean())
        g0 = self.gamma_init if self.gamma_init is not None else 1.0 / max(spread, 1e-6)
        log_gamma = torch.tensor(math.log(g0), dtype=self.dtype, requires_grad=True)
        opt = torch.optim.Adam(
            [{"params": [c], "weight_decay": self.weight_decay}, {"params": [scale, log_gamma], "weight_decay": 0.0}],
            lr=self.lr,
        )
        self.loss_history_ = []
        workspace = _PairwiseSymWorkspace(T, F.shape[0])
        for _ in tqdm(range(self.steps), desc="Model2Vec", disable=not self.progress, leave=False):
            opt.zero_grad()
            m = F * torch.exp(c + scale)
            with torch.no_grad():
                sym = workspace.forward(m.detach()).requires_grad_(True)  # [J, T]
            complexity = torch_symmetric_distance(m, T0.expand_as(m))  # [J], through autograd
            loss = self._loss(sym - self.alpha * complexity[:, None], q, mask, log_gamma)
            loss.backward()
            with torch.no_grad():  # the big pairwise term: hand-written backward, then dm/dc = m
                grad_m, _ = workspace.backward(sym.grad)
                grad_c = grad_m * m.detach()
                c.grad += grad_c
                scale.grad += grad_c.sum(1, keepdim=True)
            opt.step()
            self.loss_history_.append(float(loss.detach()))
        del workspace
        self.expert_values_ = f
        self.expert_trivial_ = triv
        self.log_scale_ = (c + scale).detach().to(torch.float64).numpy()
        self.gamma_ = float(torch.exp(log_gamma.detach()))
        logger.info(
            "Model2Vec: loss %.4f -> %.4f, gamma %.4g", self.loss_history_[0], self.loss_history_[-1], self.gamma_
        )
        return self

    def _loss(self, d_experts_tasks, q, mask, log_gamma) -> torch.Tensor:
        d = d_experts_tasks.T  # [T, J]
        logits = (-torch.exp(log_gamma) * d).masked_fill(~mask, float("-inf"))
        logp = torch.log_softmax(logits, dim=1).masked_fill(~mask, 0.0)
        return -(q * logp).sum(1).mean()

    # -- using the fit -------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if self.log_scale_ is None:
            raise ValueError("this Model2Vec is not fitted yet: call fit(experts, tasks, errors) first")

    @property
    def expert_vectors_(self) -> np.ndarray:
        """``[J, D]``: the learned ``m_j = F_j + b_j``."""
        self._check_fitted()
        return self.expert_values_ * np.exp(self.log_scale_)

    @property
    def offsets_(self) -> np.ndarray:
        """``[J, D]``: the learned ``b_j = m_j - F_j``."""
        return self.expert_vectors_ - self.expert_values_

    def distances(self, tasks: Sequence[TaskEmbedding] | np.ndarray) -> np.ndarray:
        """``[T, J]`` ``d_asym(m_j -> t)`` (lower = better)."""
        self._check_fitted()
        t, _ = _as_matrix(tasks, "tasks")
        with torch.no_grad():
            d = torch_asymmetric_distance(
                torch.from_numpy(self.expert_vectors_),
                torch.from_numpy(t),
                torch.from_numpy(self.expert_trivial_),
                self.alpha,
            )
        return d.T.numpy()

    def predict_proba(self, tasks: Sequence[TaskEmbedding] | np.ndarray) -> np.ndarray:
        """``[T, J]`` ``p(j | t) = softmax_j(-gamma * d_asym(m_j -> t))``."""
        logits = -self.gamma_ * self.distances(tasks)
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(1, keepdims=True)

    def select(self, tasks: Sequence[TaskEmbedding] | np.ndarray) -> np.ndarray:
        """``[T]``: the best expert for each task (argmin of the distances)."""
        return np.argmin(self.distances(tasks), axis=1)

    @classmethod
    def leave_one_task_out(
        cls,
        experts: Sequence[TaskEmbedding] | np.ndarray,
        tasks: Sequence[TaskEmbedding] | np.ndarray,
        errors: np.ndarray,
        *,
        expert_trivial: np.ndarray | None = None,
        progress: bool = False,
        **options: Any,
    ) -> LeaveOneOutResult:
        """Evaluate Model2Vec honestly: for each task, fit on all the other tasks, then select for it.

        Arguments as in `fit`; ``options`` go to the constructor.
        """
        t, _ = _as_matrix(tasks, "tasks")
        e = np.asarray(errors, np.float64)
        if t.shape[0] < 2:
            raise ValueError("leave-one-task-out needs at least two tasks")
        rows, gammas = [], []
        for i in tqdm(range(t.shape[0]), desc="Model2Vec leave-one-out", disable=not progress, leave=False):
            keep = np.arange(t.shape[0]) != i
            model = cls(**options).fit(experts, t[keep], e[keep], expert_trivial=expert_trivial)
            rows.append(model.distances(t[i : i + 1])[0])
            gammas.append(model.gamma_)
        d = np.stack(rows)
        selected = np.argmin(d, axis=1)
        return LeaveOneOutResult(
            distances=d,
            selected=selected,
            selected_error=e[np.arange(e.shape[0]), selected],
            optimal_error=np.nanmin(e, axis=1),
            gammas=np.asarray(gammas),
        )
