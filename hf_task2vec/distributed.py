"""Accelerate: the Fisher across processes and GPUs, and batch embedding of many tasks.

The same code runs in one process, in N CPU processes (gloo) or on N GPUs across machines, under
``accelerate launch`` (or ``torchrun``):

* `DistributedTask2Vec` / `embed_distributed` embed **one** task with its examples sharded over
  the processes. Every process draws the same class-balanced sample; process ``r`` of ``W`` takes
  the examples at positions ``r, r + W, r + 2W, ...`` of it. The pooled features of all shards are
  gathered (in the original order) so that every process fits the same linear head on the full
  sample; the head is then broadcast from the main process so that it is bit-identical everywhere.
  Each process accumulates the per-filter Fisher sums of its shard and the sums are added across
  processes (``fisher_diagonal(reduce=...)``). For ``method="exact"`` the result equals the
  one-process result up to the order of floating-point sums. For ``method="montecarlo"`` each
  process draws the labels of its own examples (the main process with ``seed``, process ``r``
  with a seed derived from ``(seed, r)``): an equally valid Monte Carlo estimate, but not the same
  draws as one process. The ``variational`` estimator is an optimisation over the whole sample:
  it runs on the main process (exactly as `Task2Vec` would) and its result is broadcast; only the
  feature pass is sharded.
* `run_batch` (``hf-task2vec batch CONFIG``) embeds a list of tasks from a YAML config into an
  `EmbeddingStore` (a local folder or a Hub dataset repo: ``embeddings/<probe>/<task>.safetensors``,
  ``index.parquet``, ``README.md``). Tasks are spread round-robin over the processes
  (``shard: tasks``), or each task's examples are sharded over all processes (``shard: samples``);
  ``auto`` does full rounds of whole tasks and shards the examples of the few tasks left over.
  Only the main process writes: the embeddings of each round are pushed together at the end of
  that round (atomically: one commit on the Hub, temporary files and renames in a folder); a rerun
  skips what the store already holds; a failing task is reported at the end and does not stop the
  others.

Launch on the CPU with two real processes (``--cpu`` alone starts only one)::

    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \\
        --dynamo_backend no -m hf_task2vec batch cfg.yaml

Without GPUs this module creates the Accelerate state with ``cpu=True``, so both ranks use gloo.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .embedding import TaskEmbedding
from .errors import Task2VecError
from .fisher import FisherResult, fisher_diagonal
from .hub import EmbeddingStore, sanitize_name
from .probes import Probe, load_probe
from .task2vec import METHODS, Method, Task2Vec
from .tasks import Task, load_task

logger = logging.getLogger(__name__)

ShardMode = Literal["tasks", "samples", "auto"]
SHARD_MODES: tuple[str, ...] = ("tasks", "samples", "auto")

__all__ = [
    "DistributedTask2Vec",
    "embed_distributed",
    "shard_indices",
    "TaskSpec",
    "BatchConfig",
    "BatchConfigError",
    "BatchReport",
    "load_batch_config",
    "run_batch",
]


class BatchConfigError(Task2VecError, ValueError):
    """A batch config (YAML) that cannot be used; the message names the entry and the fix."""


# -- the process group -------------------------------------------------------------------------
class _Comm:
    """Rank, world size, device and the few collectives this module needs, over an Accelerate
    ``Accelerator`` / ``PartialState`` (or a plain single process when Accelerate is absent)."""

    def __init__(self, accelerator: Any = None, *, cpu: bool | None = None, timeout_minutes: float | None = None):
        self.state: Any = None
        env_world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if accelerator is None:
            try:
                from accelerate import PartialState
            except ImportError as exc:
                if env_world > 1:
                    raise Task2VecError(
                        f"WORLD_SIZE={env_world} but accelerate is not installed: "
                        "pip install 'hf_task2vec[distributed]'"
                    ) from exc
                self.rank, self.world = 0, 1
                self.device = torch.device("cuda" if torch.cuda.is_available() and not cpu else "cpu")
                return
            use_cpu = (not torch.cuda.is_available()) if cpu is None else cpu
            kwargs: dict[str, Any] = {}
            if timeout_minutes is not None:
                kwargs["timeout"] = _dt.timedelta(minutes=timeout_minutes)
            try:
                accelerator = PartialState(cpu=use_cpu, **kwargs)
            except ValueError:  # the process already set Accelerate up on a GPU
                accelerator = PartialState()
                if accelerator.num_processes > 1:
                    raise Task2VecError(
                        "cpu=True was asked for, but this process already set Accelerate up on "
                        f"{accelerator.device}; pass cpu=True to the first Accelerator/PartialState instead"
                    ) from None
        self.state = accelerator
        self.rank = int(accelerator.process_index)
        self.world = int(accelerator.num_processes)
        self.device = torch.device(accelerator.device)
        if cpu and self.world == 1:
            self.device = torch.device("cpu")
        group_world = (
            torch.distributed.get_world_size()
            if torch.distributed.is_available() and torch.distributed.is_initialized()
            else 1
        )
        if max(env_world, group_world) != self.world:
            raise Task2VecError(
                f"the launcher started {max(env_world, group_world)} processes but Accelerate reports "
                f"{self.world} ({getattr(accelerator, 'distributed_type', '?')}): the work would silently not be "
                "split. On a machine without GPUs create Accelerator(cpu=True) (or set ACCELERATE_USE_CPU=true) "
                "and launch with `accelerate launch --multi_gpu --num_processes N ...` (not `--cpu`)."
            )

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed_type(self) -> str:
        return str(getattr(self.state, "distributed_type", "NO")).split(".")[-1]

    def reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return t
        from accelerate.utils import reduce

        return reduce(t.to(self.device), reduction="sum")

    def broadcast_(self, t: torch.Tensor) -> torch.Tensor:
        """Broadcast from the main process (returns the tensor, on the caller's device)."""
        if self.world == 1:
            return t
        from accelerate.utils import broadcast

        return broadcast(t.to(self.device).contiguous(), from_process=0).to(t.device)

    def gather_rows(self, local: torch.Tensor, counts: Sequence[int]) -> list[torch.Tensor]:
        """All ranks' ``[n_r, ...]`` tensors (``n_r = counts[r]``, may differ by rank), on every rank."""
        if self.world == 1:
            return [local]
        from accelerate.utils import gather

        m = max(counts)
        padded = local.new_zeros((m, *local.shape[1:]))
        padded[: local.shape[0]] = local
        full = gather(padded.to(self.device)).cpu()
        return [full[r * m : r * m + counts[r]] for r in range(self.world)]

    def gather_objects(self, obj: Any) -> list[Any]:
        """One picklable object per rank, in rank order, on every rank (small metadata only)."""
        if self.world == 1:
            return [obj]
        from accelerate.utils import gather_object

        return list(gather_object([obj]))

    def broadcast_object(self, obj: Any) -> Any:
        if self.world == 1:
            return obj
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([obj], from_process=0)[0]

    def barrier(self) -> None:
        """Wait for every process. (Not ``wait_for_everyone``: it passes ``device_ids=[local rank]``
        to ``torch.distributed.barrier``, which fails on CPU processes of a machine that has fewer
        GPUs than processes.)"""
        if self.world > 1:
            self.reduce_sum(torch.zeros(1, device=self.device))


def shard_indices(indices: np.ndarray, rank: int, world: int) -> np.ndarray:
    """The examples process ``rank`` of ``world`` takes: positions ``rank, rank + world, ...``."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside 0..{world - 1}")
    return np.asarray(indices)[rank::world]


def rank_seed(seed: int, rank: int) -> int:
    """The label-draw seed of process ``rank``: ``seed`` itself on the main process (so that one
    process reproduces `Task2Vec`), a seed derived from ``(seed, rank)`` elsewhere."""
    if rank == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(rank)]).generate_state(1)[0])


# -- one task, examples sharded over the processes -----------------------------------------------
class DistributedTask2Vec(Task2Vec):
    """`Task2Vec` with the examples of each task sharded over the processes of an Accelerate run.

    Every process must call `embed` with the same task and options (a collective operation);
    every process returns the same embedding. In a single process it computes exactly what
    `Task2Vec` computes.

    Args:
        probe: as for `Task2Vec`.
        accelerator: an ``accelerate.Accelerator`` or ``PartialState``; default: a ``PartialState``
            created with ``cpu=True`` when CUDA is not available (so that N CPU processes use gloo).
        **options: `Task2Vec` options (``method``, ``max_samples``, ``image_size``, ``seed``...).
            ``device`` defaults to the process's Accelerate device; progress bars show on the main
            process only.
    """

    def __init__(self, probe: Probe | str | nn.Module = "embedded", *, accelerator: Any = None, **options: Any):
        self.comm = accelerator if isinstance(accelerator, _Comm) else _Comm(accelerator)
        options.setdefault("device", self.comm.device)
        options["progress"] = bool(options.get("progress", True)) and self.comm.is_main
        super().__init__(probe, **options)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", processes={self.comm.world})"

    @torch.no_grad()
    def features(self, task: Task, indices: np.ndarray) -> torch.Tensor:
        """Pooled features of all ``indices`` (in order), each process computing its own shard."""
        comm = self.comm
        if comm.world == 1:
            return super().features(task, indices)
        mine = shard_indices(indices, comm.rank, comm.world)
        if len(mine):
            local = super().features(task, mine)
        else:  # fewer examples than processes: learn the feature width from one example
            local = super().features(task, indices[:1])[:0]
        counts = [len(range(r, len(indices), comm.world)) for r in range(comm.world)]
        parts = comm.gather_rows(local, counts)
        out = local.new_empty((len(indices), *local.shape[1:]))
        for r, part in enumerate(parts):
            out[r :: comm.world] = part
        return out

    def _sync_head(self) -> None:
        """Make the head bit-identical on every process (the main process's copy wins)."""
        head = self.probe.head
        if head is None or self.comm.world == 1:
            return
        with torch.no_grad():
            for p in (head.weight, head.bias):
                p.copy_(self.comm.broadcast_(p.detach()))

    def _fisher(self, task: Task, indices: np.ndarray) -> FisherResult:
        comm = self.comm
        self._sync_head()
        if comm.world == 1:
            return super()._fisher(task, indices)
        if self.method == "variational":
            # An optimisation over the whole sample: run it on the main process, broadcast the result.
            dim = self.probe.dim
            packed = torch.zeros(2 * dim + 2, dtype=torch.float64)
            options: dict[str, str] = {}
            if comm.is_main:
                res = super()._fisher(task, indices)
                trivial = res.trivial if res.trivial is not None else np.full(dim, np.nan)
                packed = torch.from_numpy(np.concatenate([res.values, trivial, [res.num_inputs, res.num_draws]]))
                options = res.options
            packed = comm.broadcast_(packed)
            options = comm.broadcast_object(options)
            values, trivial = packed[:dim].numpy(), packed[dim : 2 * dim].numpy()
            return FisherResult(
                values.copy(),
                int(packed[-2]),
                int(packed[-1]),
                dict(options),
                trivial=None if np.isnan(trivial).all() else trivial.copy(),
            )
        mine = shard_indices(indices, comm.rank, comm.world)
        result = fisher_diagonal(
            self.probe,
            self.batches(task, mine, desc=f"fisher {task.name}"),
            method=self.method,  # type: ignore[arg-type]
            n_samples=self.n_samples,
            seed=rank_seed(self.seed, comm.rank),
            strategy=self.strategy,
            reduce=comm.reduce_sum,
            precision=getattr(self, "precision", "fp32"),
            channels_last=getattr(self, "channels_last", False),
        )
        result.options["seed_per_process"] = "seed on the main process, SeedSequence([seed, rank]) elsewhere"
        return result

    def embed(self, task: Task | Any, **load_kwargs: Any) -> TaskEmbedding:
        emb = super().embed(task, **load_kwargs)
        emb.meta["fisher_processes"] = str(self.comm.world)
        if self.comm.world == 1:
            sharding = "none"
        elif self.method == "variational":
            sharding = "features sharded; variational optimisation on the main process"
        else:
            sharding = "examples sharded, Fisher sums reduced"
        emb.meta["fisher_sharding"] = sharding
        return emb


def embed_distributed(
    source: Task | Any,
    probe: Probe | str | nn.Module = "embedded",
    method: Method = "montecarlo",
    *,
    accelerator: Any = None,
    input_column: str | None = None,
    label_column: str | None = None,
    split: str = "train",
    classes: list[str | int] | None = None,
    name: str | None = None,
    revision: str | None = None,
    config: str | None = None,
    **options: Any,
) -> TaskEmbedding:
    """`hf_task2vec.embed` with the task's examples sharded over the processes of an Accelerate
    run (call it on every process; every process returns the same embedding)::

        # accelerate launch --multi_gpu --num_processes 2 script.py
        emb = embed_distributed("offline:animal-mnist", classes=["cat", "dog"], max_samples=2000)
    """
    if isinstance(source, Task):
        task = source.subtask(classes, name=name) if classes is not None else source
    else:
        task = load_task(
            source,
            input_column=input_column,
            label_column=label_column,
            split=split,
            classes=classes,
            name=name,
            revision=revision,
            config=config,
        )
    return DistributedTask2Vec(probe, method=method, accelerator=accelerator, **options).embed(task)


# -- batch config ------------------------------------------------------------------------------
_TASK2VEC_OPTIONS = (
    "n_samples",
    "max_samples",
    "fit_head",
    "head_epochs",
    "head_l2",
    "batch_size",
    "seed",
    "image_size",
    "variational_epochs",
    "beta",
    "strategy",
    "precision",
    "channels_last",
)
_TOP_KEYS = ("tasks", "probe", "method", "options", "store", "shard", "timeout_minutes")
_TASK_KEYS = ("source", "name", "split", "classes", "groups", "input_column", "label_column", "revision", "config")


@dataclass(frozen=True)
class TaskSpec:
    """One task of a batch: where its data is and the name it is stored under."""

    name: str
    source: str
    split: str = "train"
    classes: tuple[str | int, ...] | None = None
    input_column: str | None = None
    label_column: str | None = None
    revision: str | None = None
    config: str | None = None

    def load(self) -> Task:
        return load_task(
            self.source,
            input_column=self.input_column,
            label_column=self.label_column,
            split=self.split,
            classes=list(self.classes) if self.classes is not None else None,
            name=self.name,
            revision=self.revision,
            config=self.config,
        )


@dataclass
class BatchConfig:
    """What `run_batch` embeds and where (see `load_batch_config` for the YAML form)."""

    tasks: list[TaskSpec]
    probe: str = "embedded"
    method: Method = "montecarlo"
    options: dict[str, Any] = field(default_factory=dict)
    store: str | None = None
    shard: ShardMode = "auto"
    timeout_minutes: float = 180.0


def _default_task_name(source: str, split: str, classes: Sequence[Any] | None) -> str:
    base = source.split(":", 1)[1] if source.startswith("offline:") else source
    base = base.rstrip("/").split("/")[-1] or "task"
    if split != "train":
        base += f"-{split}"
    if classes is not None:
        base += "[" + ",".join(str(c) for c in classes) + "]"
    return base


def _as_classes(value: Any, where: str) -> tuple[str | int, ...]:
    if not isinstance(value, list | tuple) or not value:
        raise BatchConfigError(f"{where}: classes must be a non-empty list of class names or ids, got {value!r}")
    for c in value:
        if not isinstance(c, str | int) or isinstance(c, bool):
            raise BatchConfigError(f"{where}: class {c!r} must be a name (string) or an id (integer)")
    return tuple(value)


def _parse_task_entry(entry: Any, i: int) -> list[TaskSpec]:
    where = f"tasks[{i}]"
    if isinstance(entry, str):
        entry = {"source": entry}
    if not isinstance(entry, Mapping):
        raise BatchConfigError(f"{where} must be a source string or a mapping with 'source', got {entry!r}")
    unknown = sorted(set(entry) - set(_TASK_KEYS))
    if unknown:
        raise BatchConfigError(f"{where} has unknown keys {unknown}; a task entry may have {list(_TASK_KEYS)}")
    source = entry.get("source")
    if not isinstance(source, str) or not source:
        raise BatchConfigError(f"{where} needs 'source': a Hub dataset id, a local folder or 'offline:<name>'")
    split = str(entry.get("split", "train"))
    common = {
        "source": source,
        "split": split,
        "input_column": entry.get("input_column"),
        "label_column": entry.get("label_column"),
        "revision": entry.get("revision"),
        "config": entry.get("config"),
    }
    if "groups" in entry:
        if "classes" in entry or "name" in entry:
            raise BatchConfigError(f"{where}: use either 'groups' (one task per group) or 'classes'/'name', not both")
        groups = entry["groups"]
        if not isinstance(groups, Mapping) or not groups:
            raise BatchConfigError(f"{where}: groups must be a mapping {{task name: [classes]}}, got {groups!r}")
        return [
            TaskSpec(name=str(name), classes=_as_classes(cls, f"{where}.groups.{name}"), **common)
            for name, cls in groups.items()
        ]
    classes = _as_classes(entry["classes"], where) if entry.get("classes") is not None else None
    name = str(entry.get("name") or _default_task_name(source, split, classes))
    return [TaskSpec(name=name, classes=classes, **common)]


def load_batch_config(config: str | os.PathLike[str] | Mapping[str, Any] | BatchConfig) -> BatchConfig:
    """Read a batch config: a YAML file path, an already parsed mapping, or a `BatchConfig`.

    YAML form (relative paths are relative to the current directory)::

        store: ./task2vec-store          # the output store: a local folder or a Hub dataset repo user/name
        probe: embedded                  # anything load_probe accepts
        method: montecarlo               # montecarlo | exact | variational
        shard: auto                      # tasks | samples | auto
        options: {max_samples: 1000, image_size: 64, seed: 0}   # Task2Vec options
        tasks:
          - offline:digits                                       # a source string
          - {source: offline:animal-mnist, classes: [cat, dog], name: cat-dog}
          - source: offline:fashion-mnist                        # one task per label group
            split: test
            groups: {tops: [T-shirt/top, Pullover, Shirt], shoes: [Sandal, Sneaker, Ankle boot]}
          - {source: user/my-dataset, revision: main, split: validation}
    """
    if isinstance(config, BatchConfig):
        return config
    where = "batch config"
    if not isinstance(config, Mapping):
        import yaml

        path = Path(config)
        where = repr(str(path))
        if not path.is_file():
            raise BatchConfigError(f"batch config {where} does not exist")
        try:
            config = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise BatchConfigError(f"batch config {where} is not valid YAML: {exc}") from exc
        if not isinstance(config, Mapping):
            raise BatchConfigError(f"batch config {where} must be a YAML mapping with a 'tasks' list")
    unknown = sorted(set(config) - set(_TOP_KEYS))
    if unknown:
        raise BatchConfigError(f"{where} has unknown keys {unknown}; the keys are {list(_TOP_KEYS)}")
    raw_tasks = config.get("tasks")
    if not isinstance(raw_tasks, list) or not raw_tasks:
        raise BatchConfigError(f"{where} needs a non-empty 'tasks' list")
    tasks = [spec for i, entry in enumerate(raw_tasks) for spec in _parse_task_entry(entry, i)]
    seen: dict[str, str] = {}
    for spec in tasks:
        key = sanitize_name(spec.name)
        if key in seen:
            raise BatchConfigError(
                f"{where}: tasks {seen[key]!r} and {spec.name!r} would be stored under the same name {key!r}; "
                "give them distinct 'name's"
            )
        seen[key] = spec.name
    method = config.get("method", "montecarlo")
    if method not in METHODS:
        raise BatchConfigError(f"{where}: unknown method {method!r}; use one of {list(METHODS)}")
    shard = config.get("shard", "auto")
    if shard not in SHARD_MODES:
        raise BatchConfigError(f"{where}: unknown shard {shard!r}; use one of {list(SHARD_MODES)}")
    options = dict(config.get("options") or {})
    bad = sorted(set(options) - set(_TASK2VEC_OPTIONS))
    if bad:
        raise BatchConfigError(f"{where}: unknown options {bad}; options may be {list(_TASK2VEC_OPTIONS)}")
    probe = config.get("probe", "embedded")
    if not isinstance(probe, str):
        raise BatchConfigError(f"{where}: probe must be a string (a load_probe spec), got {probe!r}")
    store = config.get("store")
    return BatchConfig(
        tasks=tasks,
        probe=probe,
        method=method,
        options=options,
        store=str(store) if store is not None else None,
        shard=shard,
        timeout_minutes=float(config.get("timeout_minutes", 180.0)),
    )


# -- the output store (hub.EmbeddingStore: a Hub dataset repo or a local folder) -----------------
def open_store(target: str | os.PathLike[str] | EmbeddingStore) -> EmbeddingStore:
    """An `EmbeddingStore` for ``target``: a store, an existing folder, a path starting with ``/``,
    ``./``, ``../``, ``~`` or ``file://``, or a Hub dataset repo id ``user/name``."""
    if isinstance(target, EmbeddingStore):
        return target
    if isinstance(target, str) and Path(target).expanduser().is_dir():
        return EmbeddingStore(Path(target))
    return EmbeddingStore(target)


def remove_stale_files(store: EmbeddingStore) -> list[Path]:
    """Delete what a local-store writer killed mid-write leaves behind: its temporary files
    (``.<name>.<random>.tmp``, never renamed into place) and backup links (``.<name>.<tag>.bak``,
    copies of files that are still, or already again, in place)."""
    if not store.is_local or store.path is None or not store.path.is_dir():
        return []
    stale = [
        p
        for pattern in (".*.tmp", ".*.bak")
        for p in store.path.rglob(pattern)
        if p.is_file() and p.name.startswith(".") and len(p.name.split(".")) >= 4
    ]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


# -- batch run ---------------------------------------------------------------------------------
@dataclass
class BatchReport:
    """What `run_batch` did. ``failed`` maps a task name to its error."""

    store: str
    num_processes: int
    distributed_type: str
    embedded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    plan: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    process_index: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        return (
            f"batch: {len(self.embedded) + len(self.skipped) + len(self.failed)} tasks, {self.num_processes} "
            f"process{'es' if self.num_processes != 1 else ''} ({self.distributed_type}): {len(self.embedded)} "
            f"embedded, {len(self.skipped)} already in the store, {len(self.failed)} failed "
            f"-> {self.store} ({self.seconds:.1f} s)"
        )


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class _TaskLoader:
    """Loads task specs, reusing the base dataset of consecutive label-group sub-tasks."""

    def __init__(self, size: int = 2):
        self.cache: OrderedDict[tuple, Task] = OrderedDict()
        self.size = size

    def __call__(self, spec: TaskSpec) -> Task:
        if spec.classes is None:
            return spec.load()
        key = (spec.source, spec.split, spec.input_column, spec.label_column, spec.revision, spec.config)
        base = self.cache.get(key)
        if base is None:
            base = load_task(
                spec.source,
                input_column=spec.input_column,
                label_column=spec.label_column,
                split=spec.split,
                revision=spec.revision,
                config=spec.config,
            )
            self.cache[key] = base
            while len(self.cache) > self.size:
                self.cache.popitem(last=False)
        self.cache.move_to_end(key)
        return base.subtask(list(spec.classes), name=spec.name)


def _resume_status(store: EmbeddingStore, key: str, existing: set[str], want: Mapping[str, str]) -> str:
    """``"pending"``, ``"done"``, or an error when the store holds this task made differently."""
    if key not in existing:
        return "pending"
    try:
        meta = store.pull(key).meta
    except Exception as exc:
        return f"error: the stored embedding {key} cannot be read ({_error_text(exc)}); delete it to recompute"
    stored_defaults = {"precision": "fp32"}  # embeddings made before the option existed
    diffs = [
        f"{k}: stored {meta.get(k, stored_defaults.get(k, ''))!r} vs config {v!r}"
        for k, v in want.items()
        if meta.get(k, stored_defaults.get(k, "")) != v
    ]
    if diffs:
        return (
            f"error: the store already holds {key} made with other settings ({'; '.join(diffs)}); "
            "use another store or delete that embedding"
        )
    return "done"


def _plan(n: int, world: int, shard: str) -> tuple[int, int]:
    """How many of ``n`` pending tasks go round-robin (whole tasks) and how many get their samples
    sharded: ``(n_round_robin, n_sharded)``."""
    if world == 1 or shard == "tasks":
        return n, 0
    if shard == "samples":
        return 0, n
    full = (n // world) * world
    return full, n - full


def run_batch(
    config: str | os.PathLike[str] | Mapping[str, Any] | BatchConfig,
    *,
    store: str | os.PathLike[str] | None = None,
    accelerator: Any = None,
    dry_run: bool = False,
    progress: bool = True,
    cpu: bool | None = None,
) -> BatchReport:
    """Embed every task of a batch config into a store (call on every process of a launch).

    Args:
        config: a YAML path, a mapping or a `BatchConfig` (see `load_batch_config`).
        store: the output store (overrides the config's ``store``): an `EmbeddingStore`, a local
            folder (an existing one, or a path starting with ``/``, ``./``, ``~``, ``file://``) or
            a Hub dataset repo id ``user/name``.
        accelerator: an ``Accelerator``/``PartialState``; default: one created here (``cpu=True``
            without CUDA, process-group timeout ``timeout_minutes`` from the config).
        dry_run: only report what would be embedded (``plan``) and what the store already holds.
        progress: one tqdm bar (tasks) on the main process.
        cpu: force the CPU (default: CUDA when available).

    Returns:
        a `BatchReport` (the same on every process). Tasks that fail are in ``report.failed``; the
        others are embedded regardless.
    """
    started = time.perf_counter()
    cfg = load_batch_config(config)
    target = store if store is not None else cfg.store
    if target is None:
        raise BatchConfigError("no output store: set 'store:' in the batch config or pass --out STORE")
    comm = (
        accelerator
        if isinstance(accelerator, _Comm)
        else _Comm(accelerator, cpu=cpu, timeout_minutes=cfg.timeout_minutes)
    )
    store_ = open_store(target)
    image_size = cfg.options.get("image_size")
    try:
        probe = load_probe(cfg.probe, image_size=image_size)
    except Exception as exc:
        raise BatchConfigError(f"batch config probe {cfg.probe!r} cannot be loaded: {_error_text(exc)}") from exc
    resolution = probe.input_resolution
    keys = {spec.name: f"{sanitize_name(probe.name)}/{sanitize_name(spec.name)}" for spec in cfg.tasks}
    # settings that must agree for an embedding already in the store to count as done
    want = {
        "method": cfg.method,
        "probe_revision": probe.revision,
        "image_size": str(resolution or ""),
        "max_samples": str(cfg.options.get("max_samples", 10_000)),
        "seed": str(cfg.options.get("seed", 0)),
        "precision": str(cfg.options.get("precision", "fp32")),
    }

    status: dict[str, str] = {}
    if comm.is_main:
        if not dry_run:
            for p in remove_stale_files(store_):
                logger.warning("removed %s, left by an interrupted write", p)
        existing = set(store_.keys())
        status = {spec.name: _resume_status(store_, keys[spec.name], existing, want) for spec in cfg.tasks}
    status = comm.broadcast_object(status)

    report = BatchReport(store=store_.name, num_processes=comm.world, distributed_type=comm.distributed_type)
    pending: list[TaskSpec] = []
    for spec in cfg.tasks:
        st = status[spec.name]
        if st == "done":
            report.skipped.append(spec.name)
        elif st.startswith("error: "):
            report.failed[spec.name] = st[len("error: ") :]
        else:
            pending.append(spec)
    n_rr, n_sh = _plan(len(pending), comm.world, cfg.shard)
    report.plan = [(s.name, f"process {i % comm.world}") for i, s in enumerate(pending[:n_rr])] + [
        (s.name, f"all {comm.world} processes") for s in pending[n_rr:]
    ]
    if dry_run:
        report.seconds = time.perf_counter() - started
        report.process_index = comm.rank
        return report

    options = dict(cfg.options)
    options.pop("image_size", None)
    bar = tqdm(total=len(pending), desc="task2vec batch", unit="task", disable=not (progress and comm.is_main))
    loader = _TaskLoader()

    def collect(results: list[tuple[str, bytes | None, str | None] | None]) -> None:
        """Main process: write this round's embeddings, record failures."""
        if not comm.is_main:
            return
        done: list[tuple[str, TaskEmbedding]] = []  # (task name, embedding)
        for item in results:
            if item is None:
                continue
            name, data, err = item
            if err is not None:
                report.failed[name] = err
                continue
            try:
                done.append((name, TaskEmbedding.from_bytes(data, source=name)))  # type: ignore[arg-type]
                report.embedded.append(name)
            except Exception as exc:
                report.failed[name] = _error_text(exc)
        if done:
            try:
                store_.push([emb for _, emb in done], message=f"hf-task2vec batch: {', '.join(n for n, _ in done)}")
            except Exception as exc:
                for name, _ in done:
                    report.embedded.remove(name)
                    report.failed[name] = f"cannot write to the store {store_.name}: {_error_text(exc)}"
        bar.update(sum(1 for r in results if r is not None))
        bar.set_postfix(failed=len(report.failed), refresh=False)

    try:
        # Whole tasks, round-robin: in round k process r embeds pending[k * W + r].
        embedder = Task2Vec(probe, method=cfg.method, device=comm.device, progress=False, **options)
        for start in range(0, n_rr, comm.world):
            item: tuple[str, bytes | None, str | None] | None = None
            if start + comm.rank < n_rr:
                spec = pending[start + comm.rank]
                try:
                    emb = embedder.embed(loader(spec))
                    emb.meta["fisher_processes"] = "1"
                    item = (spec.name, emb.to_bytes(), None)
                except Exception as exc:
                    logger.warning("task %s failed on process %d: %s", spec.name, comm.rank, exc, exc_info=True)
                    item = (spec.name, None, _error_text(exc))
            collect(comm.gather_objects(item))
        # The tasks left over: every process takes a shard of each one's examples.
        sharded = DistributedTask2Vec(probe, accelerator=comm, method=cfg.method, progress=False, **options)
        for spec in pending[n_rr:]:
            task: Task | None = None
            err: str | None = None
            try:
                task = loader(spec)
            except Exception as exc:
                err = _error_text(exc)
            errors = [e for e in comm.gather_objects(err) if e is not None]
            if errors or task is None:  # every process agrees to skip it (no collective is left waiting)
                collect([(spec.name, None, errors[0] if errors else "task could not be loaded")])
                continue
            # A failure inside the sharded computation cannot be skipped safely (the other processes
            # would wait in a collective): it propagates and ends the launch; a rerun resumes.
            emb = sharded.embed(task)
            collect([(spec.name, emb.to_bytes(), None) if comm.is_main else None])
    finally:
        bar.close()
    report = comm.broadcast_object(report) if comm.world > 1 else report
    report.seconds = time.perf_counter() - started
    report.process_index = comm.rank
    comm.barrier()
    return report


def format_plan(report: BatchReport) -> str:
    """The dry-run table: each task and where it would run, or its store status."""
    lines = [f"{'task':40s} status"]
    lines += [f"{name:40s} pending ({where})" for name, where in report.plan]
    lines += [f"{name:40s} already in the store" for name in report.skipped]
    lines += [f"{name:40s} error: {err}" for name, err in report.failed.items()]
    return "\n".join(lines)
