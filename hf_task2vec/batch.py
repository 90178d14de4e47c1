"""Batch embedding of many tasks: a YAML config, a store to resume from, and the schedule.

`run_batch` (``hf-task2vec batch CONFIG``) embeds a list of tasks (`hf_task2vec.tasks.TaskSpec`)
from a YAML config into an `EmbeddingStore` (a local folder or a Hub dataset repo:
``embeddings/<probe>/<task>.safetensors``, ``index.parquet``, ``README.md``). Tasks are spread
round-robin over the processes (``shard: tasks``), or each task's examples are sharded over all
processes (``shard: samples``, `hf_task2vec.distributed`); ``auto`` does full rounds of whole tasks
and shards the examples of the few tasks left over. Only the main process writes: the embeddings of
each round are pushed together at the end of that round (atomically: one commit on the Hub,
temporary files and renames in a folder); a rerun skips what the store already holds (when its
provenance agrees, `Task2Vec.provenance_differences`); a failing task is reported at the end and
does not stop the others.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tqdm.auto import tqdm

from .checks import check_embedder_options, check_float, check_int, check_max_length, check_output_dir
from .distributed import DistributedTask2Vec, _Comm
from .embedding import TaskEmbedding
from .errors import OptionError, Task2VecError
from .hub import EmbeddingStore, sanitize_name
from .lifeline import die_with_launcher, launched
from .probes import load_probe
from .task2vec import DEFAULT_METHOD, METHODS, Method, Task2Vec
from .tasks import Task, TaskSpec

logger = logging.getLogger(__name__)

ShardMode = Literal["tasks", "samples", "auto"]
SHARD_MODES: tuple[str, ...] = ("tasks", "samples", "auto")

__all__ = [
    "BatchConfig",
    "BatchConfigError",
    "BatchReport",
    "load_batch_config",
    "run_batch",
    "format_plan",
]


class BatchConfigError(Task2VecError, ValueError):
    """A batch config (YAML) that cannot be used; the message names the entry and the fix."""


# -- batch config ------------------------------------------------------------------------------
_TASK2VEC_OPTIONS = (
    "n_samples",
    "max_samples",
    "fit_head",
    "head_epochs",
    "head_l2",
    "head",
    "batch_size",
    "seed",
    "image_size",
    "variational_epochs",
    "beta",
    "strategy",
    "precision",
    "channels_last",
    "max_length",
)
_TOP_KEYS = ("tasks", "probe", "method", "options", "store", "shard", "timeout_minutes")
_TASK_KEYS = (
    "source", "name", "split", "classes", "groups", "input_column", "label_column", "revision", "config", "allow_empty"
)


@dataclass
class BatchConfig:
    """What `run_batch` embeds and where (see `load_batch_config` for the YAML form)."""

    tasks: list[TaskSpec]
    probe: str = "embedded"
    method: Method = DEFAULT_METHOD
    options: dict[str, Any] = field(default_factory=dict)
    store: str | None = None
    shard: ShardMode = "auto"
    timeout_minutes: float = 180.0
    #: the YAML file it was read from (named in messages), if any
    source: str = ""


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
    split = entry.get("split", "train")
    if not isinstance(split, str) or not split:
        raise BatchConfigError(f"{where}: split must be a string (e.g. train, test), got {split!r}")
    for column in ("input_column", "label_column", "revision", "config", "name"):
        if entry.get(column) is not None and not isinstance(entry[column], str | int):
            raise BatchConfigError(f"{where}: {column} must be a string, got {entry[column]!r}")
    allow_empty = entry.get("allow_empty", False)
    if not isinstance(allow_empty, bool):
        raise BatchConfigError(f"{where}: allow_empty must be true or false, got {allow_empty!r}")
    common = {
        "source": source,
        "split": split,
        "allow_empty": allow_empty,
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


def _unique_key_loader(where: str) -> type:
    """A `yaml.SafeLoader` that refuses a key given twice in one mapping (plain YAML keeps the last
    one silently, so a second ``options:`` would drop the first without a word)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        pass

    def construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = loader.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: SafeLoader reports it
                continue
            if first != key_node.start_mark.line + 1:
                raise BatchConfigError(
                    f"batch config {where}: key {key!r} is given twice in one mapping (lines {first} and "
                    f"{key_node.start_mark.line + 1}); keep one (YAML would silently use the last)"
                )
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return UniqueKeyLoader


def load_batch_config(config: str | os.PathLike[str] | Mapping[str, Any] | BatchConfig) -> BatchConfig:
    """Read a batch config: a YAML file path, an already parsed mapping, or a `BatchConfig`.

    YAML form (relative paths are relative to the current directory)::

        store: ./task2vec-store          # the output store: a local folder or a Hub dataset repo user/name
        probe: embedded                  # anything load_probe accepts
        method: montecarlo               # relative (default) | variational | exact | montecarlo
        shard: auto                      # tasks | samples | auto
        options: {max_samples: 1000, image_size: 64, seed: 0}   # Task2Vec options
        # text: probe: embedded-text, options: {max_length: 128}, tasks: {source: offline:fortunes, ...}
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
    source = ""
    if not isinstance(config, Mapping):
        import yaml

        path = Path(config)
        where, source = repr(str(path)), str(path)
        if not path.is_file():
            raise BatchConfigError(f"batch config {where} does not exist")
        try:
            config = yaml.load(path.read_text(), Loader=_unique_key_loader(where))  # noqa: S506 (a SafeLoader)
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
    try:
        tasks = [spec for i, entry in enumerate(raw_tasks) for spec in _parse_task_entry(entry, i)]
    except BatchConfigError as exc:
        raise BatchConfigError(f"{where}: {exc}") from exc
    seen: dict[str, str] = {}
    for spec in tasks:
        key = sanitize_name(spec.name)
        if key in seen:
            raise BatchConfigError(
                f"{where}: tasks {seen[key]!r} and {spec.name!r} would be stored under the same name {key!r}; "
                "give them distinct 'name's"
            )
        seen[key] = spec.name
    method = config.get("method", DEFAULT_METHOD)
    if method not in METHODS:
        raise BatchConfigError(f"{where}: unknown method {method!r}; use one of {list(METHODS)}")
    shard = config.get("shard", "auto")
    if shard not in SHARD_MODES:
        raise BatchConfigError(f"{where}: unknown shard {shard!r}; use one of {list(SHARD_MODES)}")
    raw_options = config.get("options") or {}
    if not isinstance(raw_options, Mapping):
        raise BatchConfigError(f"{where}: options must be a mapping (e.g. {{max_samples: 1000}}), got {raw_options!r}")
    options = dict(raw_options)
    bad = sorted(set(options) - set(_TASK2VEC_OPTIONS))
    if bad:
        raise BatchConfigError(f"{where}: unknown options {bad}; options may be {list(_TASK2VEC_OPTIONS)}")
    try:  # the same checks as Task2Vec's, before anything is loaded
        options = check_embedder_options(options)
        if "max_length" in options:  # text probes: truncation length in tokens (special tokens included)
            options["max_length"] = check_int("max_length", options["max_length"], minimum=2, allow_none=True)
        timeout_minutes = check_float("timeout_minutes", config.get("timeout_minutes", 180.0), positive=True)
    except OptionError as exc:
        raise BatchConfigError(f"{where}: {exc}") from exc
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
        timeout_minutes=float(timeout_minutes),  # type: ignore[arg-type]
        source=source,
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


def _expected(exc: BaseException) -> bool:
    """A failure of the task's data or settings (reported in one line), not a bug (with its traceback)."""
    return isinstance(exc, Task2VecError | ValueError | OSError)


class _TaskLoader:
    """Loads task specs, reusing the base dataset of consecutive label-group sub-tasks."""

    def __init__(self, size: int = 2):
        self.cache: OrderedDict[TaskSpec, Task] = OrderedDict()
        self.size = size

    def __call__(self, spec: TaskSpec) -> Task:
        if spec.classes is None:
            return spec.load()
        key = spec.replace(classes=None, name=None)
        base = self.cache.get(key)
        if base is None:
            base = self.cache[key] = key.load()
            while len(self.cache) > self.size:
                self.cache.popitem(last=False)
        self.cache.move_to_end(key)
        return base.subtask(list(spec.classes), name=spec.name)


def _resume_status(store: EmbeddingStore, key: str, existing: set[str], embedder: Task2Vec) -> str:
    """``"pending"``, ``"done"``, or an error when the store holds this task made differently
    (`Task2Vec.provenance_differences`: the settings of the provenance schema that must agree)."""
    if key not in existing:
        return "pending"
    try:
        meta = store.pull(key).meta
    except Exception as exc:
        return f"error: the stored embedding {key} cannot be read ({_error_text(exc)}); delete it to recompute"
    diffs = embedder.provenance_differences(meta)
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
    where = f"batch config {cfg.source!r}" if cfg.source else "batch config"
    target = store if store is not None else cfg.store
    if target is None:
        raise BatchConfigError("no output store: set 'store:' in the batch config or pass --out STORE")
    comm = (
        accelerator
        if isinstance(accelerator, _Comm)
        else _Comm(accelerator, cpu=cpu, timeout_minutes=cfg.timeout_minutes)
    )
    store_ = open_store(target)
    if store_.is_local and store_.path is not None and not dry_run:  # a bad store fails now, not after the work
        check_output_dir(store_.path, option="store")
    if comm.world > 1 or launched():
        die_with_launcher()  # workers must not outlive their launcher (they would write the store as orphans)
    image_size = cfg.options.get("image_size")
    try:
        probe = load_probe(cfg.probe, image_size=image_size)
    except Exception as exc:
        raise BatchConfigError(f"{where}: probe {cfg.probe!r} cannot be loaded: {_error_text(exc)}") from exc
    if cfg.options.get("max_length") is not None and getattr(probe, "modality", "image") != "text":
        raise BatchConfigError(
            f"{where}: options.max_length applies to text probes, and {cfg.probe!r} is not one "
            "(use probe: embedded-text, or drop max_length)"
        )
    try:  # the probe's position limit (512 for MiniLM), before any task is loaded
        check_max_length(cfg.options.get("max_length"), probe, name="options.max_length")
    except OptionError as exc:
        raise BatchConfigError(f"{where}: {exc}") from exc
    keys = {spec.name: f"{sanitize_name(probe.name)}/{sanitize_name(spec.name)}" for spec in cfg.tasks}
    options = dict(cfg.options)
    options.pop("image_size", None)  # given to the probe
    # whole tasks, round-robin (and the resume check: the settings a stored embedding must agree with)
    embedder = Task2Vec(probe, method=cfg.method, device=comm.device, progress=False, **options)

    # One writer per local store: the main process holds the store's lock for the whole run (another
    # run waits, then finds its tasks done); temp files are only removed under the lock.
    held = contextlib.ExitStack()
    status: dict[str, str] = {}
    try:
        if comm.is_main:
            if not dry_run and store_.is_local:
                held.enter_context(store_.lock(purpose=f"hf-task2vec batch, {comm.world} process(es)"))
            if not dry_run:
                for p in remove_stale_files(store_):
                    logger.warning("removed %s, left by an interrupted write", p)
            existing = set(store_.keys())
            status = {spec.name: _resume_status(store_, keys[spec.name], existing, embedder) for spec in cfg.tasks}
        status = comm.broadcast_object(status)
        return _run_pending(cfg, comm, store_, status, embedder, probe, options, dry_run, progress, started)
    finally:
        held.close()


def _run_pending(
    cfg: BatchConfig,
    comm: _Comm,
    store_: EmbeddingStore,
    status: dict[str, str],
    embedder: Task2Vec,
    probe: Any,
    options: dict[str, Any],
    dry_run: bool,
    progress: bool,
    started: float,
) -> BatchReport:
    """`run_batch` after the resume check: embed the pending tasks and push them."""

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
        for start in range(0, n_rr, comm.world):
            item: tuple[str, bytes | None, str | None] | None = None
            if start + comm.rank < n_rr:
                spec = pending[start + comm.rank]
                try:
                    emb = embedder.embed(loader(spec))
                    emb.meta["fisher_processes"] = "1"
                    item = (spec.name, emb.to_bytes(), None)
                except Exception as exc:
                    # an expected failure (bad task, file, option) is one line; a bug keeps its traceback
                    logger.warning("task %s failed on process %d: %s", spec.name, comm.rank, exc,
                                   exc_info=not _expected(exc) or logger.isEnabledFor(logging.DEBUG))
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
    except KeyboardInterrupt as exc:  # say what the completed rounds left in the store (the CLI prints it)
        kept = report.embedded
        exc.hf_task2vec_note = (  # type: ignore[attr-defined]
            f"the {len(kept)} task(s) finished before it are kept in {store_.name} ({', '.join(kept)}); run the same "
            "command again to embed the rest (tasks already in the store are skipped)"
            if kept
            else f"nothing was written to {store_.name}"
        )
        raise
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
