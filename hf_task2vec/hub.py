"""`EmbeddingStore`: Task2Vec embeddings shared as a Hugging Face Hub dataset repo (or a local folder).

Layout of a store (the same on the Hub and on disk)::

    embeddings/<probe>/<task>.safetensors   one TaskEmbedding per file (key = "<probe>/<task>")
    index.parquet                           one row per embedding (see INDEX_COLUMNS)
    README.md                               a generated dataset card (YAML header, files, how to load)

On the Hub every `EmbeddingStore.push` is ONE commit holding all changed files (embeddings, index
and card together), made against the commit the index was read from (``parent_commit``), so a
concurrent writer can never be silently overwritten. Unchanged embeddings (same content digest as
the stored one) are not uploaded again, and a push that changes nothing makes no commit at all. A
push that fails leaves the repo at its previous commit; the caller's files are only ever read.
A local-folder store writes every file through a temporary file and a rename, the index last, and
rolls the folder back if any step fails.

The Hub is reached with the usual ``huggingface_hub`` machinery: ``HF_ENDPOINT``, ``HF_TOKEN`` or
the token saved by ``hf auth login`` (never logged), ``HF_HOME`` cache, ``HF_HUB_OFFLINE`` (reads
from the cache). Transient failures (HTTP 5xx/429, dropped connections) are retried with
exponential backoff; every other client error becomes a `HubError` naming the repo and the fix.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import io
import json
import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from .distance import DEFAULT_ALPHA, KINDS, Kind, pairwise_distances
from .embedding import COMPATIBILITY_KEYS, TaskEmbedding
from .errors import IncompatibleEmbeddingsError, Task2VecError

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

__all__ = [
    "EmbeddingStore",
    "HubError",
    "EmbeddingNotFoundError",
    "PushResult",
    "INDEX_COLUMNS",
    "embedding_key",
    "sanitize_name",
    "content_digest",
    "canonical_bytes",
    "render_card",
]

EMBEDDINGS_DIR = "embeddings"
INDEX_PATH = "index.parquet"
CARD_PATH = "README.md"
DEFAULT_LICENSE = "apache-2.0"
CARD_TABLE_ROWS = 200  # the card lists at most this many embeddings; index.parquet holds them all

# name, arrow type, meaning (the card documents the index with these)
_INDEX_SPEC: tuple[tuple[str, str, str], ...] = (
    ("key", "string", "`<probe>/<task>`, the name to pull an embedding by"),
    ("path", "string", "the file in this repo"),
    ("task", "string", "the task name"),
    ("probe", "string", "the probe network"),
    ("probe_revision", "string", "the probe's weights revision / hash"),
    ("estimator", "string", "the Fisher estimator (montecarlo, exact, variational)"),
    ("image_size", "string", "the input resolution of the probe"),
    ("task_source", "string", "where the task came from (Hub dataset id, path, ...)"),
    ("task_revision", "string", "the resolved commit of a Hub dataset"),
    ("task_split", "string", "the dataset split"),
    ("task_config", "string", "the dataset configuration"),
    ("num_classes", "int64", "classes in the task"),
    ("samples", "int64", "examples the Fisher was computed on"),
    ("dim", "int64", "embedding dimension (number of probe filters)"),
    ("norm", "float64", "L1 norm of the embedding (task complexity, paper Fig. 2)"),
    ("created", "string", "when the embedding was computed (UTC)"),
    ("sha256", "string", "sha256 of the file"),
    ("size", "int64", "file size in bytes"),
    ("content_sha256", "string", "digest of the tensors and metadata (pushes skip unchanged ones)"),
    ("library_version", "string", "hf_task2vec version that computed it"),
)
INDEX_COLUMNS: tuple[str, ...] = tuple(name for name, _, _ in _INDEX_SPEC)

RETRIES = 4  # attempts of every Hub operation on transient errors
RETRY_WAIT = 1.0  # seconds before the first retry, doubled each time
_TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)
_HEX40 = re.compile(r"[0-9a-f]{40}")
# how the metadata keys that decide comparability (embedding.COMPATIBILITY_KEYS) are named in the index
_META_TO_COLUMN = {
    "probe": "probe",
    "probe_revision": "probe_revision",
    "method": "estimator",
    "image_size": "image_size",
}
T = TypeVar("T")


class HubError(Task2VecError):
    """A Hub or store operation failed. The message names the repo (or folder) and the fix."""


class EmbeddingNotFoundError(HubError, KeyError):
    """No embedding with that key in the store."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class PushResult:
    """What `EmbeddingStore.push` did.

    Attributes:
        store: the repo id or folder.
        keys: the keys of the embeddings pushed (changed or not).
        uploaded: the files written by this push (empty when everything was up to date).
        commit: the new commit sha on the Hub (``None``: no commit was needed, or a local folder).
        url: the commit URL on the Hub, if any.
    """

    store: str
    keys: list[str]
    uploaded: list[str]
    commit: str | None = None
    url: str | None = None

    @property
    def changed(self) -> bool:
        return bool(self.uploaded)


# --------------------------------------------------------------------------------- naming
def sanitize_name(name: str) -> str:
    """A file-system and Hub safe version of a probe or task name (``[A-Za-z0-9._-]``, no leading dot).

    >>> sanitize_name("offline:animal-mnist[cat,dog]")
    'offline_animal-mnist_cat_dog'
    """
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name).strip())
    text = re.sub(r"_+", "_", text).strip("_").lstrip(".")
    return text[:200] or "unnamed"


def embedding_key(embedding: TaskEmbedding) -> str:
    """The default key of an embedding in a store: ``"<probe>/<task>"`` (both sanitised)."""
    return f"{sanitize_name(embedding.probe or 'probe')}/{sanitize_name(embedding.name or 'task')}"


def _normalize_key(key: str, embedding: TaskEmbedding | None = None) -> str:
    text = str(key).strip().replace("\\", "/")
    if text.startswith(EMBEDDINGS_DIR + "/"):
        text = text[len(EMBEDDINGS_DIR) + 1 :]
    if text.endswith(".safetensors"):
        text = text[: -len(".safetensors")]
    parts = [p for p in text.split("/") if p]
    if len(parts) == 1 and embedding is not None:
        parts = [embedding.probe or "probe", parts[0]]
    if len(parts) != 2:
        raise HubError(f"bad embedding key {key!r}: use '<probe>/<task>' (e.g. 'embedded/my-task') or '<task>'")
    return "/".join(sanitize_name(p) for p in parts)


def _key_path(key: str) -> str:
    return f"{EMBEDDINGS_DIR}/{key}.safetensors"


def content_digest(embedding: TaskEmbedding) -> str:
    """A sha256 of what an embedding holds (tensors, layers, metadata), independent of how its
    safetensors header happens to be ordered: equal digests mean the same embedding."""
    h = hashlib.sha256()
    h.update(embedding.values.tobytes())
    h.update(embedding.trivial.tobytes())
    h.update(json.dumps([[sl.name, sl.start, sl.stop] for sl in embedding.layers]).encode())
    h.update(json.dumps(embedding.meta, sort_keys=True).encode())
    return h.hexdigest()


def canonical_bytes(embedding: TaskEmbedding) -> bytes:
    """``embedding.to_bytes()`` with its safetensors JSON header written with sorted keys, so that
    the same embedding always serialises to the same bytes (safetensors itself orders metadata
    arbitrarily). The tensor bytes and offsets are unchanged; any safetensors reader loads it."""
    data = embedding.to_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # safetensors pads the header to a multiple of 8 bytes
    return len(text).to_bytes(8, "little") + text + data[8 + n :]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


# --------------------------------------------------------------------------------- index
def _int_or_none(text: str | None) -> int | None:
    try:
        return int(str(text))
    except (TypeError, ValueError):
        return None


def _index_row(key: str, data: bytes, emb: TaskEmbedding, digest: str) -> dict[str, Any]:
    meta = emb.meta
    return {
        "key": key,
        "path": _key_path(key),
        "task": emb.name,
        "probe": emb.probe,
        "probe_revision": meta.get("probe_revision", ""),
        "estimator": emb.method,
        "image_size": meta.get("image_size", ""),
        "task_source": meta.get("task_source", ""),
        "task_revision": meta.get("task_revision", ""),
        "task_split": meta.get("task_split", ""),
        "task_config": meta.get("task_config", ""),
        "num_classes": _int_or_none(meta.get("num_classes")),
        "samples": _int_or_none(meta.get("num_samples")),
        "dim": emb.dim,
        "norm": emb.norm,
        "created": meta.get("created", ""),
        "sha256": _sha256(data),
        "size": len(data),
        "content_sha256": digest,
        "library_version": meta.get("library_version", ""),
    }


def _index_schema():
    import pyarrow as pa

    types = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64()}
    return pa.schema([(name, types[t]) for name, t, _ in _INDEX_SPEC])


def _index_to_bytes(rows: list[dict[str, Any]]) -> bytes:
    """The index as parquet bytes; the same rows always give the same bytes (sorted by key)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = sorted(rows, key=lambda r: r["key"])
    table = pa.Table.from_pydict({c: [r.get(c) for r in rows] for c in INDEX_COLUMNS}, schema=_index_schema())
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="snappy")
    return sink.getvalue()


def _empty_index() -> pd.DataFrame:
    return _table_to_frame(_index_schema().empty_table())


def _table_to_frame(table) -> pd.DataFrame:
    import pandas as pd
    import pyarrow as pa

    frame = table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    for name, typ, _ in _INDEX_SPEC:  # older or hand-made indexes: add missing columns
        if name not in frame.columns:
            frame[name] = pd.Series([pd.NA] * len(frame), dtype="Int64" if typ == "int64" else object)
    return frame[list(INDEX_COLUMNS)].sort_values("key", kind="stable").reset_index(drop=True)


def _index_from_bytes(data: bytes, source: str) -> pd.DataFrame:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as exc:
        raise HubError(
            f"{source}: {INDEX_PATH} is not a readable parquet file ({exc}); push again to rewrite it"
        ) from exc
    if "key" not in table.column_names or "path" not in table.column_names:
        raise HubError(f"{source}: {INDEX_PATH} has no key/path columns; it was not written by hf_task2vec")
    return _table_to_frame(table)


def _frame_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Index rows as plain dicts (missing values as ``None``, numpy scalars as Python numbers)."""
    import pandas as pd

    rows = []
    for record in frame.to_dict("records"):
        row = {}
        for k, v in record.items():
            if v is None or (not isinstance(v, str) and pd.isna(v)):
                row[k] = None
            else:
                row[k] = v.item() if isinstance(v, np.generic) else v
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------- card
def _cell(value: Any) -> str:
    text = "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _commented(code: list[tuple[str, str]]) -> list[str]:
    width = max(len(line) for line, _ in code) + 2
    return [f"{line.ljust(width)}# {comment}" if comment else line for line, comment in code]


def _size_category(n: int) -> str:
    return "n<1K" if n < 1000 else "1K<n<10K" if n < 10_000 else "10K<n<100K"


def render_card(rows: list[dict[str, Any]], store: str, *, license: str = DEFAULT_LICENSE) -> str:
    """The dataset card (``README.md``) of a store holding ``rows`` (index rows)."""
    rows = sorted(rows, key=lambda r: r["key"])
    name = store.rstrip("/").split("/")[-1] or store
    probes = sorted({str(r.get("probe") or "") for r in rows} - {""})
    estimators = sorted({str(r.get("estimator") or "") for r in rows} - {""})
    example_key = rows[0]["key"] if rows else "embedded/my-task"
    lines = [
        "---",
        f"license: {license}",
        "tags:",
        "- task2vec",
        "- embeddings",
        "- task-embedding",
        "- safetensors",
        "- hf_task2vec",
        f"pretty_name: Task2Vec embeddings ({name})",
        "size_categories:",
        f"- {_size_category(len(rows))}",
        "configs:",
        "- config_name: default",
        "  data_files:",
        "  - split: train",
        f"    path: {INDEX_PATH}",
        "---",
        "",
        f"# Task2Vec embeddings: {name}",
        "",
        "[Task2Vec](https://arxiv.org/abs/1902.03545) task embeddings (Achille et al., ICCV 2019), made and "
        "shared with the `hf_task2vec` library. A task is a labeled dataset; its embedding is the "
        "diagonal Fisher information of a fixed pretrained *probe* network, averaged over the weights of each "
        "filter. Distances between embeddings predict how similar two tasks are and which pretrained expert "
        "transfers best to a new task.",
        "",
        f"This repo holds **{len(rows)}** embedding{'s' if len(rows) != 1 else ''}"
        + (f" made with probe{'s' if len(probes) > 1 else ''} {', '.join(f'`{p}`' for p in probes)}" if probes else "")
        + (
            f" and estimator{'s' if len(estimators) > 1 else ''} {', '.join(f'`{e}`' for e in estimators)}"
            if estimators
            else ""
        )
        + ". Only embeddings made with the same probe, probe revision, estimator and image size can be compared.",
        "",
        "## Files",
        "",
        f"- `{EMBEDDINGS_DIR}/<probe>/<task>.safetensors`: one embedding per file, keyed `<probe>/<task>`. Two "
        "float32 tensors of shape `[D]`, D = the number of probe filters: `values` (the per-filter Fisher "
        "information) and `trivial` (the embedding of a task with nothing to learn, used by the asymmetric "
        "distance). The safetensors metadata (str -> str) records how it was made: probe and its revision, "
        "estimator and its options, task source, revision, split, columns and label names, number of samples, "
        "seed, library version, layer slices, and a sha256 of the tensors that is checked on load.",
        f"- `{INDEX_PATH}`: one row per embedding (also the default config of this dataset):",
        "",
        "  | column | meaning |",
        "  |---|---|",
        *[f"  | `{c}` | {m} |" for c, _, m in _INDEX_SPEC],
        "",
        f"- `{CARD_PATH}`: this card, regenerated by every push.",
        "",
        "## How to load",
        "",
        "```python",
        "import hf_task2vec as t2v",
        "",
        *_commented(
            [
                (f'store = t2v.EmbeddingStore("{store}")', ""),
                ("store.index()", "the index as a pandas DataFrame"),
                (f'emb = store.pull("{example_key}")', "a TaskEmbedding"),
                ('query = t2v.embed("user/my-dataset", image_size=64)', "embed your task"),
                ("store.nearest(query, k=5)", "the nearest stored tasks (asymmetric distance)"),
            ]
        ),
        "```",
        "",
        "From the command line:",
        "",
        "```bash",
        f"hf-task2vec index --repo {store}",
        f"hf-task2vec pull --repo {store} --out embeddings/",
        f"hf-task2vec nearest query.safetensors --repo {store} -k 5",
        "```",
        "",
        "Without hf_task2vec, each file is a plain safetensors file: "
        '`safetensors.numpy.load_file(path)["values"]`, metadata via `safetensors.safe_open(path, "np").metadata()`.',
        "",
        "## Embeddings",
        "",
    ]
    if not rows:
        lines.append("No embeddings yet.")
    else:
        lines += [
            "| key | task | probe | estimator | samples | norm | task source | task revision |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows[:CARD_TABLE_ROWS]:
            norm = r.get("norm")
            lines.append(
                "| "
                + " | ".join(
                    [
                        f"`{_cell(r['key'])}`",
                        _cell(r.get("task")),
                        _cell(r.get("probe")),
                        _cell(r.get("estimator")),
                        _cell(r.get("samples")),
                        f"{norm:.4g}" if isinstance(norm, int | float) and np.isfinite(norm) else "",
                        _cell(r.get("task_source")),
                        _cell((r.get("task_revision") or "")[:12]),
                    ]
                )
                + " |"
            )
        if len(rows) > CARD_TABLE_ROWS:
            lines += ["", f"... and {len(rows) - CARD_TABLE_ROWS} more: see `{INDEX_PATH}`."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------- errors
def _transport_errors() -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, names in (
        ("httpx2", ("TransportError",)),
        ("httpx", ("TransportError",)),
        ("requests", ("ConnectionError", "Timeout")),
    ):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        for name in names:
            cls = getattr(mod, name, None)
            if isinstance(cls, type) and issubclass(cls, BaseException):
                found.append(cls)
    return tuple(found)


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return int(status) if isinstance(status, int) else None


def _is_transient(exc: BaseException) -> bool:
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(exc, OfflineModeIsEnabled):
        return False
    if isinstance(exc, HfHubHTTPError):
        return _status(exc) in _TRANSIENT_STATUS
    return isinstance(exc, _transport_errors())


# --------------------------------------------------------------------------------- backends
@dataclass
class _Remote:
    size: int | None = None
    sha256: str | None = None  # known for LFS files
    git_oid: str | None = None


@dataclass
class _Snapshot:
    revision: str | None  # the commit read (Hub), None for a folder
    files: dict[str, _Remote] | None = field(default=None)  # None: unknown
    offline: bool = False  # read from the local cache (HF_HUB_OFFLINE)


class _LocalBackend:
    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def label(self) -> str:
        return f"local store {str(self.root)!r}"

    def snapshot(self) -> _Snapshot:
        return _Snapshot(None, None)

    def exists(self, snap: _Snapshot, path: str) -> bool:
        return (self.root / path).is_file()

    def read(self, snap: _Snapshot, path: str) -> bytes:
        return (self.root / path).read_bytes()

    def has(self, snap: _Snapshot, path: str, sha256: str | None) -> bool:
        target = self.root / path
        return target.is_file() and (sha256 is None or _sha256(target.read_bytes()) == sha256)

    def unchanged(self, snap: _Snapshot, path: str, data: bytes) -> bool:
        target = self.root / path
        return target.is_file() and target.stat().st_size == len(data) and target.read_bytes() == data

    def commit(self, snap: _Snapshot, uploads: dict[str, bytes], message: str) -> tuple[str | None, str | None]:
        _transactional_write(self.root, uploads)
        return None, None


def _replace(src: Path, dst: Path) -> None:
    os.replace(src, dst)


def _transactional_write(root: Path, uploads: dict[str, bytes]) -> None:
    """Write several files under ``root`` all-or-nothing: stage temp files, keep hard-link backups of
    the files replaced, rename the temps into place (``index.parquet`` last); undo on any failure."""
    tag = secrets.token_hex(4)
    staged: list[tuple[Path, Path]] = []
    backups: list[tuple[Path, Path | None]] = []  # (target, backup or None when the target is new)
    made_dirs: list[Path] = []
    order = sorted(uploads, key=lambda p: (p == INDEX_PATH, p == CARD_PATH, p))
    try:
        for rel in order:
            target = root / rel
            missing = [d for d in [target.parent, *target.parent.parents] if not d.exists()]
            target.parent.mkdir(parents=True, exist_ok=True)
            made_dirs.extend(reversed(missing))
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
            staged.append((target, Path(tmp)))
            with os.fdopen(fd, "wb") as fh:
                fh.write(uploads[rel])
                fh.flush()
                os.fsync(fh.fileno())
        for target, tmp in staged:
            backup = None
            if target.exists():
                backup = target.with_name(f".{target.name}.{tag}.bak")
                try:
                    os.link(target, backup)
                except OSError:  # no hard links on this file system
                    backup.write_bytes(target.read_bytes())
            backups.append((target, backup))
            _replace(tmp, target)
    except BaseException:
        for target, backup in reversed(backups):
            try:
                if backup is not None:
                    if target.exists() and os.path.samefile(backup, target):
                        backup.unlink()  # never replaced (rename() between two links of one file does nothing)
                    else:
                        os.replace(backup, target)
                else:
                    target.unlink(missing_ok=True)
            except OSError:
                logger.error("could not restore %s after a failed write", target)
        for _, tmp in staged:
            tmp.unlink(missing_ok=True)
        for d in reversed(made_dirs):
            try:
                d.rmdir()
            except OSError:
                pass
        raise
    for _, backup in backups:
        if backup is not None:
            backup.unlink(missing_ok=True)


class _HubBackend:
    def __init__(self, repo_id: str, *, token: str | bool | None, revision: str | None, endpoint: str | None) -> None:
        from huggingface_hub import HfApi

        self.repo_id = repo_id
        self.token = token
        self.revision = revision
        self.api = HfApi(endpoint=endpoint, token=token, library_name="hf_task2vec")
        self.endpoint = self.api.endpoint

    @property
    def label(self) -> str:
        return f"Hub dataset repo {self.repo_id!r}"

    def snapshot(self) -> _Snapshot:
        from huggingface_hub.errors import OfflineModeIsEnabled

        try:
            info = self.api.dataset_info(self.repo_id, revision=self.revision or "main", files_metadata=True)
        except OfflineModeIsEnabled:
            return self._cached_snapshot()
        files = {
            s.rfilename: _Remote(s.size, getattr(s.lfs, "sha256", None) if s.lfs else None, s.blob_id)
            for s in info.siblings or []
        }
        return _Snapshot(info.sha, files)

    def _cached_snapshot(self) -> _Snapshot:
        """Offline (``HF_HUB_OFFLINE=1``): the cached commit of the wanted revision, else the newest
        cached commit that has an index."""
        from huggingface_hub import scan_cache_dir

        wanted = self.revision or "main"
        try:
            repos = [r for r in scan_cache_dir().repos if r.repo_id == self.repo_id and r.repo_type == "dataset"]
        except Exception as exc:  # no cache at all
            logger.info("no Hub cache to read %s from (%s)", self.label, exc)
            repos = []
        revisions = [rev for repo in repos for rev in repo.revisions]
        chosen = [rev for rev in revisions if rev.commit_hash.startswith(wanted) or wanted in rev.refs]
        if not chosen:
            chosen = sorted(
                (rev for rev in revisions if any(f.file_name == INDEX_PATH for f in rev.files)),
                key=lambda rev: rev.last_modified,
                reverse=True,
            )[:1]
        if not chosen:
            from huggingface_hub.errors import OfflineModeIsEnabled

            raise OfflineModeIsEnabled(f"{self.label} is not in the local cache")
        rev = chosen[0]
        files = {f.file_path.relative_to(rev.snapshot_path).as_posix(): _Remote(f.size_on_disk) for f in rev.files}
        logger.info("HF_HUB_OFFLINE is set: reading %s at cached commit %s", self.label, rev.commit_hash[:12])
        return _Snapshot(rev.commit_hash, files, offline=True)

    def exists(self, snap: _Snapshot, path: str) -> bool:
        if snap.files is None:
            try:
                self._download(snap, path)
            except Exception:
                return False
            return True
        return path in snap.files

    def _download(self, snap: _Snapshot, path: str) -> Path:
        from huggingface_hub import hf_hub_download

        return Path(
            hf_hub_download(
                self.repo_id,
                path,
                repo_type="dataset",
                revision=snap.revision,
                token=self.token,
                endpoint=self.endpoint,
                library_name="hf_task2vec",
            )
        )

    def read(self, snap: _Snapshot, path: str) -> bytes:
        return self._download(snap, path).read_bytes()

    def has(self, snap: _Snapshot, path: str, sha256: str | None) -> bool:
        remote = (snap.files or {}).get(path)
        return remote is not None and (remote.sha256 is None or sha256 is None or remote.sha256 == sha256)

    def unchanged(self, snap: _Snapshot, path: str, data: bytes) -> bool:
        remote = (snap.files or {}).get(path)
        if remote is None:
            return False
        if remote.sha256 is not None:
            return remote.sha256 == _sha256(data)
        return remote.git_oid == _git_blob_sha1(data)

    def create(self, private: bool | None) -> None:
        self.api.create_repo(self.repo_id, repo_type="dataset", private=private, exist_ok=True)
        logger.info("created %s%s", self.label, " (private)" if private else "")

    def commit(self, snap: _Snapshot, uploads: dict[str, bytes], message: str) -> tuple[str | None, str | None]:
        from huggingface_hub import CommitOperationAdd

        operations = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=data) for p, data in sorted(uploads.items())]
        info = self.api.create_commit(
            self.repo_id,
            operations,
            commit_message=message,
            repo_type="dataset",
            revision=self.revision or "main",
            parent_commit=snap.revision,
        )
        return info.oid, info.commit_url


# --------------------------------------------------------------------------------- the store
@dataclass
class _Item:
    key: str
    data: bytes
    embedding: TaskEmbedding
    digest: str


def _parse_location(repo_or_path: str | os.PathLike[str]) -> tuple[str, str | Path]:
    """``("local", Path)`` or ``("hub", repo_id)``."""
    if isinstance(repo_or_path, os.PathLike):
        return "local", Path(repo_or_path).expanduser()
    if not isinstance(repo_or_path, str):
        raise HubError(f"an EmbeddingStore needs a repo id or a path, not a {type(repo_or_path).__name__}")
    text = repo_or_path.strip()
    if text.startswith("file://"):
        return "local", Path(text[len("file://") :]).expanduser()
    if text.startswith(("/", "./", "../", "~")) or text in (".", ".."):
        return "local", Path(text).expanduser()
    for prefix in ("hf://datasets/", "datasets/"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    text = re.sub(r"^https?://[^/]+/datasets/", "", text).rstrip("/")
    from huggingface_hub.utils import validate_repo_id

    try:
        if text.count("/") != 1:
            raise ValueError("not of the form user/name")
        validate_repo_id(text)
    except Exception as exc:
        raise HubError(
            f"{repo_or_path!r} is neither a Hub dataset repo id ('user/name') nor a local path: start a local "
            f"folder with './', '/' or 'file://' ({exc})"
        ) from None
    return "hub", text


class EmbeddingStore:
    """A collection of Task2Vec embeddings in a Hub dataset repo or a local folder.

    Args:
        repo_or_path: a Hub dataset repo id ``"user/name"`` (created, as a dataset repo, on the
            first push), or a local folder with the same layout: a `pathlib.Path`, or a string
            starting with ``/``, ``./``, ``../``, ``~`` or ``file://``.
        token: a Hub token; by default ``HF_TOKEN`` or the token saved by ``hf auth login``
            (``False``: send none). Never logged.
        revision: read the store at this branch, tag or commit (default ``main``). Pushes go to
            the branch (a store opened at a commit is read-only).
        private: create the repo private when the first push creates it (an existing repo keeps
            its visibility).
        license: the license written in the generated dataset card.
        endpoint: the Hub URL (default: ``HF_ENDPOINT`` or https://huggingface.co).

    Example::

        store = EmbeddingStore("me/task-embeddings", private=True)
        store.push([emb_a, emb_b])           # one commit
        store.nearest(query, k=3)            # a pandas DataFrame
        emb = store.pull("embedded/cifar10")
    """

    def __init__(
        self,
        repo_or_path: str | os.PathLike[str],
        *,
        token: str | bool | None = None,
        revision: str | None = None,
        private: bool | None = None,
        license: str = DEFAULT_LICENSE,
        endpoint: str | None = None,
    ) -> None:
        kind, where = _parse_location(repo_or_path)
        self.is_local = kind == "local"
        self.private = private
        self.license = license
        self.revision = revision
        self._index_cache: tuple[Any, pd.DataFrame] | None = None
        self._retrying = False
        if self.is_local:
            if revision is not None:
                raise HubError(f"revision= applies to Hub repos only, not to the local folder {str(where)!r}")
            self.path: Path | None = Path(where)
            self.repo_id: str | None = None
            self._backend: _LocalBackend | _HubBackend = _LocalBackend(self.path)
        else:
            self.path = None
            self.repo_id = str(where)
            self._backend = _HubBackend(self.repo_id, token=token, revision=revision, endpoint=endpoint)
        self._token_given = token

    def __repr__(self) -> str:
        where = str(self.path) if self.is_local else self.repo_id
        rev = f", revision={self.revision!r}" if self.revision else ""
        return f"EmbeddingStore({where!r}{rev})"

    @property
    def name(self) -> str:
        """The repo id, or the folder path."""
        return str(self.path) if self.is_local else str(self.repo_id)

    # -- errors and retries --------------------------------------------------------------------
    def _has_token(self) -> bool:
        if self._token_given is False:
            return False
        if isinstance(self._token_given, str):
            return True
        from huggingface_hub import get_token

        return get_token() is not None

    def _error(self, exc: BaseException, what: str, attempts: int = 1) -> HubError:
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            OfflineModeIsEnabled,
            RemoteEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        if isinstance(exc, HubError):
            return exc
        target = self._backend.label
        where = getattr(self._backend, "endpoint", "")
        login = "log in with `hf auth login` or set HF_TOKEN"
        if isinstance(exc, GatedRepoError):
            msg = f"{what}: {target} is gated: request access on its Hub page, then {login} with that account"
        elif isinstance(exc, RepositoryNotFoundError):
            who = (
                f"you are not logged in: {login}"
                if not self._has_token()
                else "the token in use (HF_TOKEN or `hf auth login`) has no access to it"
            )
            msg = (
                f"{what}: {target} was not found at {where}. Check the repo id ('user/name'); a store repo is "
                f"created by its first push; if it is private, {who}"
            )
        elif isinstance(exc, RevisionNotFoundError):
            msg = f"{what}: {target} has no revision {self.revision!r}: pass an existing branch, tag or commit"
        elif isinstance(exc, RemoteEntryNotFoundError):
            msg = f"{what}: a file listed in the index of {target} is missing ({exc}); push the embedding again"
        elif isinstance(exc, OfflineModeIsEnabled | LocalEntryNotFoundError):
            msg = (
                f"{what}: {target} is not in the local cache and HF_HUB_OFFLINE is set (or the Hub cannot be "
                "reached): unset HF_HUB_OFFLINE and connect, or read it once online first"
            )
        elif isinstance(exc, HfHubHTTPError):
            status = _status(exc)
            if status == 401:
                msg = f"{what}: the Hub rejected the request for {target} (401): " + (
                    f"you are not logged in: {login}"
                    if not self._has_token()
                    else f"the token is invalid or expired: {login} with a valid token"
                )
            elif status == 403:
                ns = (self.repo_id or "").split("/")[0]
                msg = (
                    f"{what}: no permission on {target} (403): pushing needs a token with write access to "
                    f"{ns!r} (a 'write' token of that user or a member of that org); {login}"
                )
            elif status in _TRANSIENT_STATUS:
                msg = f"{what}: the Hub failed with HTTP {status} for {target} after {attempts} tries; try again later"
            else:
                detail = getattr(exc, "server_message", None) or str(exc).splitlines()[0]
                msg = f"{what}: the Hub answered HTTP {status} for {target}: {detail}"
        elif isinstance(exc, _transport_errors()):
            msg = (
                f"{what}: cannot reach the Hub at {where} for {target} after {attempts} tries ({type(exc).__name__}: "
                f"{exc}). Check your network/proxy and HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to read cached files"
            )
        elif isinstance(exc, OSError) and self.is_local:
            msg = f"{what}: {target}: {exc}"
        else:
            msg = f"{what}: {target}: {type(exc).__name__}: {exc}"
        return HubError(msg)

    def _retry(self, what: str, fn: Callable[[], T], *, extra: Callable[[BaseException], bool] | None = None) -> T:
        if self._retrying:  # inside an operation that is retried as a whole
            return fn()
        self._retrying = True
        try:
            return self._retry_loop(what, fn, extra)
        finally:
            self._retrying = False

    def _retry_loop(self, what: str, fn: Callable[[], T], extra: Callable[[BaseException], bool] | None) -> T:
        attempts = RETRIES if not self.is_local else 1
        for attempt in range(1, attempts + 1):
            try:
                return fn()
            except HubError:
                raise
            except Exception as exc:
                retry = _is_transient(exc) or (extra is not None and extra(exc))
                if retry and attempt < attempts:
                    wait = RETRY_WAIT * 2 ** (attempt - 1)
                    logger.warning(
                        "%s on %s failed (%s); retry %d/%d in %.1f s",
                        what,
                        self.name,
                        type(exc).__name__,
                        attempt,
                        attempts - 1,
                        wait,
                    )
                    time.sleep(wait)
                    continue
                raise self._error(exc, what, attempt) from exc
        raise AssertionError("unreachable")

    # -- reading ---------------------------------------------------------------------------------
    def _snapshot(self) -> _Snapshot:
        return self._retry("read", self._backend.snapshot)

    def _read_index(self, snap: _Snapshot) -> pd.DataFrame:
        if self.is_local:
            assert self.path is not None
            target = self.path / INDEX_PATH
            if not target.is_file():
                return _empty_index()
            stat = target.stat()
            cache_key: Any = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        else:
            if snap.files is not None and INDEX_PATH not in snap.files:
                return _empty_index()
            cache_key = snap.revision if snap.files is not None else None
        if cache_key is not None and self._index_cache is not None and self._index_cache[0] == cache_key:
            return self._index_cache[1]
        if not self.is_local and snap.files is None and not self._backend.exists(snap, INDEX_PATH):
            return _empty_index()
        data = self._retry("read index", lambda: self._backend.read(snap, INDEX_PATH))
        frame = _index_from_bytes(data, self._backend.label)
        if cache_key is not None:
            self._index_cache = (cache_key, frame)
        return frame

    def index(self) -> pd.DataFrame:
        """The index: one row per embedding, sorted by key (columns `INDEX_COLUMNS`: key, path,
        task, probe, probe_revision, estimator, image_size, task_source, task_revision, task_split,
        task_config, num_classes, samples, dim, norm, created, sha256, size, content_sha256,
        library_version)."""
        return self._read_index(self._snapshot()).copy()

    def keys(self) -> list[str]:
        """The keys (``"<probe>/<task>"``) of the stored embeddings, sorted."""
        return [str(k) for k in self._read_index(self._snapshot())["key"]]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self._read_index(self._snapshot()))

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        try:
            self._lookup(key, self._read_index(self._snapshot()))
        except EmbeddingNotFoundError:
            return False
        return True

    def _lookup(self, key: str, frame: pd.DataFrame) -> dict[str, Any]:
        keys = [str(k) for k in frame["key"]]
        try:
            wanted = _normalize_key(key)
        except HubError:
            wanted = None
            short = sanitize_name(str(key).removesuffix(".safetensors").split("/")[-1])
        if wanted is not None and wanted in keys:
            return _frame_rows(frame.iloc[[keys.index(wanted)]])[0]
        if wanted is None:
            matches = [k for k in keys if k.split("/", 1)[-1] == short]
            if len(matches) == 1:
                return _frame_rows(frame.iloc[[keys.index(matches[0])]])[0]
            if len(matches) > 1:
                raise HubError(f"key {key!r} is ambiguous in {self._backend.label}: use one of {matches}")
        close = difflib.get_close_matches(str(key), keys, n=3)
        hint = f"; did you mean {close}?" if close else f"; it holds {len(keys)} embeddings (see .keys())"
        raise EmbeddingNotFoundError(f"no embedding {key!r} in {self._backend.label}{hint}")

    def _fetch(self, snap: _Snapshot, row: dict[str, Any]) -> bytes:
        path = str(row["path"])
        data = self._retry(f"download {path}", lambda: self._backend.read(snap, path))
        if row.get("sha256") and _sha256(data) != row["sha256"]:
            raise HubError(
                f"{self._backend.label}: {path} does not match the sha256 recorded in {INDEX_PATH}; the store was "
                "modified by hand: push that embedding again"
            )
        return data

    def pull(self, key: str) -> TaskEmbedding:
        """The embedding stored under ``key`` (``"<probe>/<task>"``; ``"<task>"`` alone when unique).

        Raises:
            EmbeddingNotFoundError: no such key (a `KeyError` too).
            HubError: the store cannot be read.
        """
        snap = self._snapshot()
        row = self._lookup(key, self._read_index(snap))
        return TaskEmbedding.from_bytes(self._fetch(snap, row), source=f"{self.name}:{row['path']}")

    def pull_bytes(self, key: str) -> bytes:
        """The stored safetensors file of ``key``, byte for byte."""
        snap = self._snapshot()
        return self._fetch(snap, self._lookup(key, self._read_index(snap)))

    def download(self, key: str, directory: str | os.PathLike[str]) -> Path:
        """Write the file of ``key`` to ``directory/<probe>/<task>.safetensors`` (atomically, byte
        for byte as stored) and return its path."""
        from .embedding import atomic_write_bytes

        snap = self._snapshot()
        row = self._lookup(key, self._read_index(snap))
        data = self._fetch(snap, row)
        TaskEmbedding.from_bytes(data, source=f"{self.name}:{row['path']}")  # verify before writing
        target = Path(directory) / f"{row['key']}.safetensors"
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, data)
        return target

    def nearest(
        self,
        embedding: TaskEmbedding | str | os.PathLike[str],
        k: int = 5,
        kind: Kind = "asymmetric",
        *,
        alpha: float = DEFAULT_ALPHA,
    ) -> pd.DataFrame:
        """The ``k`` stored embeddings nearest to ``embedding`` (a `TaskEmbedding` or a file).

        The query is the *target* task and the stored embeddings the *sources* of the asymmetric
        distance ``d(source -> query)`` (which stored task's expert would transfer best). Only
        stored embeddings made the same way (probe, probe revision, estimator, image size) are
        compared; the others are skipped. Returns a DataFrame sorted by ``distance`` (the index
        columns plus ``distance``).

        Raises:
            IncompatibleEmbeddingsError: no stored embedding can be compared with the query.
        """
        import pandas as pd

        if kind not in KINDS:
            raise ValueError(f"unknown distance kind {kind!r}; use one of {', '.join(KINDS)}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        query = embedding if isinstance(embedding, TaskEmbedding) else TaskEmbedding.load(embedding)
        snap = self._snapshot()
        frame = self._read_index(snap)
        wanted = {_META_TO_COLUMN[m]: query.meta.get(m, "") for m in COMPATIBILITY_KEYS}
        mask = np.ones(len(frame), dtype=bool)
        for column, value in wanted.items():
            mask &= frame[column].fillna("").astype(str).to_numpy() == str(value)
        mask &= frame["dim"].fillna(-1).astype("int64").to_numpy() == query.dim
        candidates = frame[mask].reset_index(drop=True)
        if candidates.empty:
            made = sorted(
                {
                    f"{r['probe']}@{r['probe_revision']} {r['estimator']} image_size={r['image_size']}"
                    for r in _frame_rows(frame)
                }
            )
            raise IncompatibleEmbeddingsError(
                f"none of the {len(frame)} embeddings in {self._backend.label} can be compared with {query.name!r} "
                f"(probe {query.probe!r}, estimator {query.method!r}, image_size {wanted['image_size']!r}); the "
                f"store holds: {made or 'nothing'}. Embed the query with the same probe, estimator and image size."
            )
        if len(candidates) < len(frame):
            logger.info(
                "%s: %d of %d embeddings are not comparable with the query and were skipped",
                self.name,
                len(frame) - len(candidates),
                len(frame),
            )
        rows = _frame_rows(candidates)
        with ThreadPoolExecutor(max_workers=min(8, len(rows))) as pool:
            blobs = list(pool.map(lambda r: self._fetch(snap, r), rows))
        stored = [
            TaskEmbedding.from_bytes(b, source=f"{self.name}:{r['path']}") for b, r in zip(blobs, rows, strict=True)
        ]
        for emb in stored:
            emb.check_compatible(query)
        values = np.stack([e.values for e in stored])
        trivial = np.stack([e.trivial for e in stored])
        d = pairwise_distances(values, query.values[None, :], kind=kind, alpha=alpha, source_trivial=trivial)[:, 0]
        out = candidates.copy()
        out.insert(1, "distance", d)
        out = out.sort_values(["distance", "key"], kind="stable").head(k).reset_index(drop=True)
        return pd.DataFrame(out)

    # -- writing ---------------------------------------------------------------------------------
    def _items(
        self, embeddings: TaskEmbedding | str | os.PathLike[str] | Sequence[Any], key: str | None
    ) -> list[_Item]:
        if isinstance(embeddings, TaskEmbedding | str | os.PathLike):
            embeddings = [embeddings]
        embeddings = list(embeddings)
        if not embeddings:
            raise HubError(f"nothing to push to {self._backend.label}: give at least one embedding")
        if key is not None and len(embeddings) != 1:
            raise HubError(f"key={key!r} names one embedding but {len(embeddings)} were given; push them one by one")
        items: dict[str, _Item] = {}
        for obj in embeddings:
            if isinstance(obj, TaskEmbedding):
                emb, data = obj, canonical_bytes(obj)
            elif isinstance(obj, str | os.PathLike):
                path = Path(obj)
                if not path.is_file():
                    raise HubError(f"cannot push {str(path)!r}: no such file")
                data = path.read_bytes()
                emb = TaskEmbedding.from_bytes(data, source=repr(str(path)))
            else:
                raise HubError(f"cannot push a {type(obj).__name__}: give TaskEmbedding objects or .safetensors files")
            item_key = _normalize_key(key, emb) if key is not None else embedding_key(emb)
            if item_key in items:
                raise HubError(
                    f"two embeddings of this push have the key {item_key!r} (same probe and task name): give them "
                    "different task names, or push them one by one with key=..."
                )
            items[item_key] = _Item(item_key, data, emb, content_digest(emb))
        return list(items.values())

    def _push_once(self, items: list[_Item], message: str | None) -> PushResult:
        from huggingface_hub.errors import RepositoryNotFoundError

        backend = self._backend
        if isinstance(backend, _HubBackend):
            if self.revision is not None and _HEX40.fullmatch(self.revision):
                raise HubError(
                    f"{backend.label} was opened at commit {self.revision[:12]}, which is read-only: open it "
                    "without revision= (or with a branch name) to push"
                )
            try:
                snap = backend.snapshot()
            except RepositoryNotFoundError:
                backend.create(self.private)
                snap = backend.snapshot()
            if snap.offline:
                raise HubError(f"cannot push to {backend.label} while HF_HUB_OFFLINE is set: unset it to push")
        else:
            snap = backend.snapshot()
        frame = self._read_index(snap)
        rows = {r["key"]: r for r in _frame_rows(frame)}
        uploads: dict[str, bytes] = {}
        for item in items:
            old = rows.get(item.key)
            if (
                old is not None
                and old.get("content_sha256") == item.digest
                and backend.has(snap, str(old["path"]), old.get("sha256"))
            ):
                continue  # the same embedding is stored already
            uploads[_key_path(item.key)] = item.data
            rows[item.key] = _index_row(item.key, item.data, item.embedding, item.digest)
        all_rows = list(rows.values())
        extras = {
            INDEX_PATH: _index_to_bytes(all_rows),
            CARD_PATH: render_card(all_rows, self.name, license=self.license).encode(),
        }
        for path, data in extras.items():
            if path in uploads or not backend.unchanged(snap, path, data):
                uploads[path] = data
        keys = [item.key for item in items]
        if not uploads:
            logger.info("%s is up to date: nothing to push", self.name)
            return PushResult(self.name, keys, [])
        changed = sorted(p for p in uploads if p.startswith(EMBEDDINGS_DIR + "/"))
        summary = message or (
            f"Add {len(changed)} Task2Vec embedding{'s' if len(changed) != 1 else ''}"
            if changed
            else "Update the Task2Vec embedding index and card"
        )
        commit, url = backend.commit(snap, uploads, summary)
        self._index_cache = None
        logger.info("pushed %d files to %s%s", len(uploads), self.name, f" ({commit})" if commit else "")
        return PushResult(self.name, keys, sorted(uploads), commit, url)

    def push(
        self,
        embeddings: TaskEmbedding | str | os.PathLike[str] | Sequence[TaskEmbedding | str | os.PathLike[str]],
        key: str | None = None,
        *,
        message: str | None = None,
    ) -> PushResult:
        """Add or replace embeddings (objects or ``.safetensors`` files), all in ONE commit.

        Each embedding is stored under ``key`` (one embedding only) or ``"<probe>/<task>"`` from its
        metadata, replacing any embedding with that key. Files are stored byte for byte as given;
        embeddings whose content is already stored are skipped, and a push that changes nothing
        makes no commit. On the Hub the repo is created (a dataset repo, ``private=`` as given to
        the store) when missing. On failure nothing is changed.

        Raises:
            HubError: the push failed (the message says why and how to fix it).
        """
        items = self._items(embeddings, key)

        def concurrent(exc: BaseException) -> bool:  # someone committed since we read: read again
            return _status(exc) == 412

        return self._retry("push", lambda: self._push_once(items, message), extra=concurrent)
