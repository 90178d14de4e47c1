"""Model selection: pick the pretrained *expert* that will transfer best to a new task.

The paper's practical payoff (Achille et al., ICCV 2019, Sect. 3 and 5): every expert is
represented by the Task2Vec embedding of the task it was trained on, a new task is embedded once
with the same probe, and the expert whose training task is nearest under the asymmetric distance
is chosen - one probe embedding instead of trying every expert.

* `ExpertIndex`: the experts (Hub / timm ids, transformers checkpoints, local files), each with the
  embedding of its training task, free-form info (task name, classes, dataset, measured error...)
  and an optional learned Model2Vec offset (`hf_task2vec.model2vec`); vectorised search;
  safetensors + JSON on disk; push / pull as a Hub dataset repo; experts from Hub model cards
  (`ExpertIndex.add_hub_models`). Every Hub call goes through `hf_task2vec.gateway`.

Distances follow `hf_task2vec.distance` (DESIGN.md): for selection the expert's task is the
*source* and the new task the *target*,
``d_asym(expert -> t) = d_sym(F_expert, F_t) - alpha * d_sym(F_expert, F_trivial)``.
Every score returned by this module is such a distance: **lower is better**.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ._dsym_kernels import ScaledRows
from .ann import TwoStageIndex
from .compat import comparability_settings, incompatibilities, incompatible_error
from .distance import DEFAULT_ALPHA, sym_rows
from .embedding import COMPATIBILITY_KEYS, LayerSlice, TaskEmbedding, atomic_write_bytes
from .errors import EmbeddingFileError
from .matches import ExpertMatch
from .model2vec import Model2Vec

if TYPE_CHECKING:  # pragma: no cover
    from .probes import Probe
    from .task2vec import Task2Vec
    from .tasks import Task

logger = logging.getLogger(__name__)

__all__ = ["ExpertIndex", "ExpertMatch", "SELECTION_METRICS"]

Metric = Literal["asymmetric", "symmetric", "model2vec"]
SELECTION_METRICS: tuple[str, ...] = ("asymmetric", "symmetric", "model2vec")

INDEX_FORMAT = "hf_task2vec.expert_index"
INDEX_FORMAT_VERSION = "1"
TENSORS_FILE = "experts.safetensors"
TABLE_FILE = "experts.json"
# select() scores every expert while experts x filters stays below this (one fused pass: ~20 ms, i.e.
# ~1,600 experts of 21,008 filters); above it, the two-stage search of `hf_task2vec.ann`.
EXACT_MAX_FILTER_PAIRS = 2**25


def _complexity(values: np.ndarray, trivial: np.ndarray) -> np.ndarray:
    """``d_sym(values[i], trivial[i])`` (trivial ``[N, D]`` or a shared ``[1, D]``)."""
    return sym_rows(values, trivial)



# -- the expert index -------------------------------------------------------------------------------
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

    All experts must be embedded the same way, by the comparability rule of `hf_task2vec.compat`
    (probe, weights, estimator, robust prior, image size; text: max_length and pooling; dimension):
    the first `add` fixes these settings and every later expert and every query is checked against
    them (`IncompatibleEmbeddingsError` with the one line `distance` gives for the same mismatch).
    Each expert's embedding metadata is kept in the index; an index saved before it was kept knows
    only its ``settings`` (probe, weights, estimator, image size), and the other keys are then
    unknown and not compared (the trivial embeddings, which every index holds, still decide the prior).

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
        self._cache: dict[str, Any] = {}  # stacked arrays, prepared search rows, two-stage indexes

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
        self._check_compatible(task_embedding, what=f"expert {model_id!r}", every_expert=False)
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

    def _prepared(self, metric: str) -> ScaledRows:
        """The expert rows of ``metric`` prepared once for the fused kernel (no copy of float32 rows)."""
        key = f"prepared:{metric}"
        if key not in self._cache:
            self._cache[key] = ScaledRows(self._m2v_vectors() if metric == "model2vec" else self._values())
        return self._cache[key]

    def _two_stage(self, metric: str, bias: np.ndarray | None, alpha: float) -> TwoStageIndex:
        """The two-stage (faiss HNSW + exact re-ranking) index of ``metric`` (and its ``alpha``: the
        graph ranks by ``d_sym + bias``), built on first use and kept until the experts change."""
        key = f"ann:{metric}:{alpha!r}"
        if key not in self._cache:
            rows = self._m2v_vectors() if metric == "model2vec" else self._values()
            self._cache[key] = TwoStageIndex.build(rows, bias=bias, exact_values=rows)
        return self._cache[key]

    def _complexities(self, metric: str) -> np.ndarray:
        key = f"complexity:{metric}"
        if key not in self._cache:
            rows = self._m2v_vectors() if metric == "model2vec" else self._values()
            self._cache[key] = _complexity(rows, self._trivial())
        return self._cache[key]

    # -- search --------------------------------------------------------------------------------
    def _expert_meta(self, i: int) -> dict[str, str]:
        """The metadata the comparability rule reads for expert ``i``: its recorded embedding metadata;
        for an index saved without it (older versions), the index's ``settings`` (probe, probe
        revision, method, image size), the other keys of the rule then being unknown."""
        return self._emb_meta[i] or dict(self._settings or {})

    def _rule_groups(self) -> list[int]:
        """One expert per distinct set of comparability settings (`hf_task2vec.compat`): checking a
        query against these checks it against every expert's metadata."""
        if "rule_groups" not in self._cache:
            seen: dict[tuple[tuple[str, str], ...], int] = {}
            for i in range(len(self._ids)):
                seen.setdefault(tuple(sorted(comparability_settings(self._expert_meta(i)).items())), i)
            self._cache["rule_groups"] = list(seen.values())
        return self._cache["rule_groups"]

    def _trivial_groups(self) -> list[int]:
        """One expert per distinct trivial embedding (usually one, shared by every expert)."""
        if "trivial_groups" not in self._cache:
            seen: dict[bytes, int] = {}
            for i, row in enumerate(self._trivial_rows):
                seen.setdefault(row.tobytes(), i)
            self._cache["trivial_groups"] = list(seen.values())
        return self._cache["trivial_groups"]

    def _check_compatible(self, emb: TaskEmbedding, what: str, *, every_expert: bool = True) -> None:
        """The comparability rule (`hf_task2vec.compat`) between ``emb`` and the experts: every distinct
        metadata setting and every distinct trivial embedding of the index (``every_expert=False``: the
        first expert only, whose settings every expert added since agrees with). Refuses with the one line
        `TaskEmbedding.check_compatible` (and so `distance`) gives for the same mismatch."""
        if self._settings is None:
            return
        checks = list(dict.fromkeys(self._rule_groups() + self._trivial_groups())) if every_expert else [0]
        for i in checks:
            problems = incompatibilities(
                emb.meta, self._expert_meta(i), dims=(emb.dim, self._dim), trivials=(emb.trivial, self._trivial_rows[i])
            )
            if problems:
                raise incompatible_error(f"{what} (task {emb.name!r})", f"expert {self._ids[i]!r}", problems)

    def _check_query(self, task_embedding: TaskEmbedding, metric: str) -> None:
        if metric not in SELECTION_METRICS:
            raise ValueError(f"unknown selection metric {metric!r}; use one of {', '.join(SELECTION_METRICS)}")
        if not self._ids:
            raise ValueError("the expert index is empty: add experts first (ExpertIndex.add / add_hub_models)")
        if not isinstance(task_embedding, TaskEmbedding):
            raise TypeError(f"select needs a TaskEmbedding, got {type(task_embedding).__name__}")
        self._check_compatible(task_embedding, what="the query")

    def distances(
        self, task_embedding: TaskEmbedding, metric: Metric = "asymmetric", *, alpha: float | None = None
    ) -> np.ndarray:
        """The distance of every expert (insertion order) to a task: ``[N]`` float64, lower = better.

        * ``"asymmetric"``: ``d_sym(F_j, t) - alpha * d_sym(F_j, trivial_j)`` (the paper's selection rule);
        * ``"symmetric"``: ``d_sym(F_j, t)``;
        * ``"model2vec"``: the asymmetric distance from the learned ``m_j = F_j + b_j`` (`fit_model2vec`),
          with the alpha used in that fit.
        """
        self._check_query(task_embedding, metric)
        query = task_embedding.values.astype(np.float64)
        if metric == "model2vec":
            if not self.has_model2vec:
                raise ValueError(
                    "this index has no Model2Vec offsets: fit them with index.fit_model2vec(task_embeddings, errors) "
                    "or use metric='asymmetric'"
                )
            a = float(self.model2vec_info.get("alpha", self.alpha)) if alpha is None else float(alpha)
            return self._prepared("model2vec").to_query(query) - a * self._complexities("model2vec")
        sym = self._prepared("values").to_query(query)
        if metric == "symmetric":
            return sym
        a = self.alpha if alpha is None else float(alpha)
        return sym - a * self._complexities("asymmetric")

    def select(
        self,
        task_embedding: TaskEmbedding | Task,
        k: int | None = 5,
        metric: Metric = "asymmetric",
        *,
        alpha: float | None = None,
        rerank: str | None = None,
        shortlist: int | None = None,
        examples: Task | None = None,
        exact: bool | None = None,
        candidates: int | None = None,
        **rerank_options: Any,
    ) -> list[ExpertMatch]:
        """The ``k`` experts nearest to a task, best first.

        Args:
            task_embedding: the new task, embedded like the experts (same probe and settings); with
                ``rerank``, also the `Task` itself (embedded here with `embedder`).
            k: how many experts to return (``None``: all).
            metric: ``"asymmetric"`` (default, the paper's rule), ``"symmetric"`` or ``"model2vec"``.
            alpha: override the asymmetric weight.
            rerank: two-stage selection (`hf_task2vec.rerank.two_stage_select`): the ``shortlist``
                nearest experts under ``metric`` are loaded from their recorded ``weights``, run forward
                on the task's examples and ranked by this transferability score (``"leep"``,
                ``"logme"``, ``"nce"``, ``"sfda"``, ``"nleep"``, ``"knn"``, ``"h_score"``...).
                Unloadable experts are skipped with an `ExpertSkippedWarning`.
            shortlist: stage-1 size with ``rerank`` (default ``max(k, 4)``).
            examples: the task whose examples are run (default: ``task_embedding`` when it is a `Task`).
            exact: ``True`` scores every expert (one fused pass over all of them); ``False`` uses the
                two-stage search of `hf_task2vec.ann` (faiss HNSW candidates on a PCA of the log Fisher,
                re-ranked by the exact distance; built on first use). Default: exact while experts x
                filters < `EXACT_MAX_FILTER_PAIRS` (or with ``k=None``), two-stage above.
            candidates: stage-1 size of the two-stage search (default `hf_task2vec.ann.default_candidates`:
                256 up to 20,000 experts, 1,024 above).
            **rerank_options: ``max_examples``, ``seed``, ``root``, ``device``, ``batch_size`` of the re-ranking.

        Returns:
            `ExpertMatch` records; ``score`` is the distance (lower is better); ties keep insertion order.
            With ``rerank``: a `Selection` of `RerankedMatch` ordered by ``rerank_score`` (higher is
            better), recording both stages' scores, the skipped experts and the cost.

        Raises:
            IncompatibleEmbeddingsError: the query was embedded with another probe / estimator / size.
        """
        if k is not None and k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if rerank is not None:
            from .rerank import two_stage_select

            return two_stage_select(
                self, task_embedding, rerank=rerank, k=k, shortlist=shortlist, metric=metric, alpha=alpha,
                examples=examples, **rerank_options,
            )
        if shortlist is not None or examples is not None or rerank_options:
            raise ValueError("shortlist=, examples= and re-ranking options need rerank=... (e.g. rerank='leep')")
        if exact is None:
            exact = k is None or len(self) * (self._dim or 0) < EXACT_MAX_FILTER_PAIRS
        if not exact:
            if k is None:
                raise ValueError("exact=False needs a k (the two-stage search returns the k best experts)")
            return self._select_two_stage(task_embedding, k, metric, alpha, candidates)
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

    def _select_two_stage(
        self, task_embedding: TaskEmbedding, k: int, metric: Metric, alpha: float | None, candidates: int | None
    ) -> list[ExpertMatch]:
        self._check_query(task_embedding, metric)
        if metric == "model2vec" and not self.has_model2vec:
            raise ValueError("this index has no Model2Vec offsets: fit them with index.fit_model2vec(...)")
        bias, a = None, 0.0
        if metric != "symmetric":
            default = float(self.model2vec_info.get("alpha", self.alpha)) if metric == "model2vec" else self.alpha
            a = default if alpha is None else float(alpha)
            bias = -a * self._complexities(metric)
        k = min(k, len(self))
        idx, scores = self._two_stage(metric, bias, a).search(
            task_embedding.values, k, candidates=candidates, bias=bias
        )
        return [
            ExpertMatch(self._ids[i], float(s), r + 1, metric, dict(self._info[i]))
            for r, (i, s) in enumerate(zip(idx.tolist(), scores.tolist(), strict=True))
        ]

    # -- embedding queries like the experts ----------------------------------------------------
    def embedder(self, *, probe: Probe | str | None = None, **overrides: Any) -> Task2Vec:
        """A `Task2Vec` configured like the embeddings of this index's experts (`Task2Vec.from_provenance`
        of the first expert's metadata: probe, estimator and its options, image size, max_samples,
        seed, ...), so that its embeddings can be searched.

        ``probe`` and ``overrides`` (any `Task2Vec` option) replace the recorded settings.
        """
        from .task2vec import Task2Vec

        if self._settings is None:
            raise ValueError("the expert index is empty: there are no settings to embed queries with")
        return Task2Vec.from_provenance(self._reference_meta, probe=probe, **overrides)

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

        Each expert's info records ``weights``: ``{"load_probe": "hf-hub:<id>"`` (timm models) or
        ``"<id>"`` (transformers), ``"hub_revision": <commit embedded>}``, so that two-stage selection
        (``select(..., rerank=...)``) can load it.

        Returns:
            The ids added.

        Raises:
            Task2VecError: a model card names no dataset (and no mapping is given) or cannot be read.
        """
        from .hub.experts import add_hub_models

        return add_hub_models(
            self, model_ids, probe, mapping, split=split, token=token, replace=replace, progress=progress,
            **embed_options,
        )

    # -- experts that ship as repos ------------------------------------------------------------
    @classmethod
    def from_expert_repos(
        cls,
        repos: Iterable[str | os.PathLike[str]],
        *,
        relative_to: str | os.PathLike[str] | None = None,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        alpha: float = DEFAULT_ALPHA,
    ) -> ExpertIndex:
        """An index of expert repos (`hf_task2vec.experts`: base + PEFT adapter + head + card), from their
        cards and the task embeddings they ship (no network is run). See `add_expert_repos`.

        Example::

            index = ExpertIndex.from_expert_repos(sorted(Path("benchmarks/zoo").glob("lite*-*")))
            index.select(query, rerank="logme")   # loads the shortlisted experts with load_expert
        """
        out = cls(alpha=alpha)
        out.add_expert_repos(repos, relative_to=relative_to, revision=revision, token=token, cache_dir=cache_dir)
        return out

    def add_expert_repos(
        self,
        repos: Iterable[str | os.PathLike[str]],
        *,
        relative_to: str | os.PathLike[str] | None = None,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        replace: bool = False,
    ) -> list[str]:
        """Add expert repos (local folders or Hub model ids) as experts; returns the ids added.

        Each expert's info holds its card's facts and ``weights = {"expert_repo": ...}`` (the Hub id with its
        commit, or the folder, relative to ``relative_to`` when given: e.g. the repository root, so that the
        saved index works from any clone), which two-stage re-ranking loads with `hf_task2vec.experts.load_expert`.

        Raises:
            ExpertError: not an expert repo, or its task embedding differs from the hash its card records.
            HubError: a Hub repo cannot be downloaded.
            IncompatibleEmbeddingsError: an expert embedded otherwise than the index's experts.
        """
        from .experts import expert_entry

        added = []
        for repo in repos:
            model_id, emb, info = expert_entry(
                repo, relative_to=relative_to, revision=revision, token=token, cache_dir=cache_dir
            )
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

        Uses ``huggingface_hub.upload_folder`` through `hf_task2vec.gateway` (retries, `HubError`);
        honours ``HF_ENDPOINT`` and ``HF_TOKEN``.
        """
        from .hub.experts import expert_index_card, upload_folder

        with tempfile.TemporaryDirectory(prefix="expert-index-") as tmp:
            self.save(tmp)
            (Path(tmp) / "README.md").write_text(expert_index_card(repo_id, len(self), self.settings, self.rows()))
            return upload_folder(
                tmp,
                repo_id,
                token=token,
                private=private,
                revision=revision,
                message=commit_message or f"Expert index: {len(self)} experts",
            )

    @classmethod
    def from_hub(
        cls,
        repo_id: str,
        *,
        revision: str | None = None,
        token: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> ExpertIndex:
        """Download an index pushed with `push_to_hub` (``huggingface_hub.snapshot_download``, through
        `hf_task2vec.gateway`: retries, `HubError`)."""
        from .hub.experts import download_files

        return cls.load(
            download_files(repo_id, [TENSORS_FILE, TABLE_FILE], revision=revision, token=token, cache_dir=cache_dir)
        )
