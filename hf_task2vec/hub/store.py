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
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from ..checks import check_int
from ..compat import Incompatibility, incompatibilities, incompatibility_message
from ..distance import DEFAULT_ALPHA, KINDS, Kind, pairwise_distances
from ..embedding import TaskEmbedding, atomic_write_bytes, unverified_reason
from ..errors import EmbeddingNotFoundError, HubError, IncompatibleEmbeddingsError
from ..gateway import HubTarget, hub_call, status_of
from ..locking import StoreLock
from .backend import HubBackend, LocalBackend, Snapshot, parse_location
from .card import DEFAULT_LICENSE, render_card
from .index import (
    CARD_PATH,
    EMBEDDINGS_DIR,
    INDEX_PATH,
    CorruptIndexError,
    _empty_index,
    _frame_rows,
    _index_from_bytes,
    _index_row,
    _index_to_bytes,
    _key_path,
    _normalize_key,
    _sha256,
    canonical_bytes,
    comparable_meta,
    content_digest,
    embedding_key,
    input_columns,
    sanitize_name,
)

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

T = TypeVar("T")
_HEX40 = re.compile(r"[0-9a-f]{40}")
#: `EmbeddingStore.nearest` logs at most this many "skipped" lines, then a count.
SKIP_LINES = 20


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


@dataclass
class _Item:
    key: str
    data: bytes
    embedding: TaskEmbedding
    digest: str


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
        lock_timeout: a local store has one writer at a time (`hf_task2vec.locking.StoreLock`): a
            push waits this many seconds for another writer, then raises `StoreLockedError`
            (default ``HF_TASK2VEC_LOCK_TIMEOUT`` or 600).

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
        lock_timeout: float | None = None,
    ) -> None:
        kind, where = parse_location(repo_or_path)
        self.lock_timeout = lock_timeout
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
            self._backend: LocalBackend | HubBackend = LocalBackend(self.path)
        else:
            self.path = None
            self.repo_id = str(where)
            self._backend = HubBackend(self.repo_id, token=token, revision=revision, endpoint=endpoint)
        self._token_given = token

    def __repr__(self) -> str:
        where = str(self.path) if self.is_local else self.repo_id
        rev = f", revision={self.revision!r}" if self.revision else ""
        return f"EmbeddingStore({where!r}{rev})"

    @property
    def name(self) -> str:
        """The repo id, or the folder path."""
        return str(self.path) if self.is_local else str(self.repo_id)

    # -- errors and retries (hf_task2vec.gateway) -----------------------------------------------
    @property
    def _target(self) -> HubTarget:
        namespace = (self.repo_id or "").split("/")[0]
        return HubTarget(
            self._backend.label,
            endpoint=getattr(self._backend, "endpoint", ""),
            revision=self.revision,
            token=self._token_given,
            not_found_hint="a store repo is created by its first push",
            forbidden_hint=f"pushing needs a token with write access to {namespace!r} (a 'write' token of that "
            "user or a member of that org)",
            local=self.is_local,
        )

    def _retry(self, what: str, fn: Callable[[], T], *, extra: Callable[[BaseException], bool] | None = None) -> T:
        if self._retrying:  # inside an operation that is retried as a whole
            return fn()
        self._retrying = True
        try:
            return hub_call(what, fn, self._target, retry_if=extra)
        finally:
            self._retrying = False

    # -- reading ---------------------------------------------------------------------------------
    def _snapshot(self) -> Snapshot:
        return self._retry("read", self._backend.snapshot)

    def _read_index(self, snap: Snapshot) -> pd.DataFrame:
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
        task, probe, probe_revision, estimator, image_size, modality, max_length, pooling, tokenizer,
        tokenizer_revision, task_source, task_revision, task_split, task_config, num_classes,
        samples, dim, norm, created, sha256, size, content_sha256, library_version). An index
        written before the input columns (modality ... tokenizer_revision) existed reads them as
        missing until the next push fills them in."""
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

    def _fetch(self, snap: Snapshot, row: dict[str, Any]) -> bytes:
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
        distance ``d(source -> query)`` (which stored task's expert would transfer best). Only stored
        embeddings comparable with the query by the rule of `hf_task2vec.compat` (probe, probe revision,
        estimator, robust prior, image size; text: max_length and pooling; dimension) are compared: the
        index's columns decide first, the stored files then decide what the index does not record (the
        prior; the text settings of rows written before those columns existed). Every other entry is
        skipped with one warning line (the line `distance` gives for the same mismatch; at most
        `SKIP_LINES` of them, then a count); the skipped keys and their lines are in ``.attrs["skipped"]``
        of the result. Returns a DataFrame sorted by ``distance`` (the index columns plus ``distance``).

        Raises:
            IncompatibleEmbeddingsError: no stored embedding can be compared with the query (the reasons
                named, each with the option that fixes it).
        """
        import pandas as pd

        if kind not in KINDS:
            raise ValueError(f"unknown distance kind {kind!r}; use one of {', '.join(KINDS)}")
        check_int("k", k)
        query = embedding if isinstance(embedding, TaskEmbedding) else TaskEmbedding.load(embedding)
        snap = self._snapshot()
        frame = self._read_index(snap)
        first = f"the query {query.name!r}"
        skipped: dict[str, list[Incompatibility]] = {}
        by_settings: dict[tuple[Any, ...], list[Incompatibility]] = {}
        keep: list[int] = []
        for i, row in enumerate(_frame_rows(frame)):
            meta = comparable_meta(row)
            settings = (*sorted(meta.items()), row.get("dim"))
            if settings not in by_settings:  # one check per distinct setting, not per row
                by_settings[settings] = incompatibilities(query.meta, meta, dims=(query.dim, row.get("dim")))
            if by_settings[settings]:
                skipped[row["key"]] = by_settings[settings]
            else:
                keep.append(i)
        candidates = frame.iloc[keep].reset_index(drop=True)
        rows = _frame_rows(candidates)
        stored: list[TaskEmbedding] = []
        if rows:
            with ThreadPoolExecutor(max_workers=min(8, len(rows))) as pool:
                blobs = list(pool.map(lambda r: self._fetch(snap, r), rows))
            stored = [
                TaskEmbedding.from_bytes(b, source=f"{self.name}:{r['path']}") for b, r in zip(blobs, rows, strict=True)
            ]
            keep = []
            for i, (row, emb) in enumerate(zip(rows, stored, strict=True)):  # the files decide the rest
                problems = incompatibilities(query.meta, emb.meta, dims=(query.dim, emb.dim),
                                             trivials=(query.trivial, emb.trivial))
                if problems:
                    skipped[row["key"]] = problems
                else:
                    keep.append(i)
            candidates = candidates.iloc[keep].reset_index(drop=True)
            stored = [stored[i] for i in keep]
        lines = {key: incompatibility_message(first, f"stored {key!r}", p) for key, p in sorted(skipped.items())}
        if not stored:
            raise self._nothing_comparable(query, len(frame), skipped, lines)
        for n, line in enumerate(lines.values()):
            if n == SKIP_LINES:
                logger.warning("%s: %d more stored embeddings skipped (not comparable)", self.name, len(lines) - n)
                break
            logger.warning("%s: skipped: %s", self.name, line)
        values = np.stack([e.values for e in stored])
        trivial = np.stack([e.trivial for e in stored])
        d = pairwise_distances(values, query.values[None, :], kind=kind, alpha=alpha, source_trivial=trivial)[:, 0]
        out = candidates.copy()
        out.insert(1, "distance", d)
        out = out.sort_values(["distance", "key"], kind="stable").head(k).reset_index(drop=True)
        result = pd.DataFrame(out)
        result.attrs["skipped"] = lines
        return result

    def _nothing_comparable(
        self, query: TaskEmbedding, total: int, skipped: dict[str, list[Incompatibility]], lines: dict[str, str]
    ) -> IncompatibleEmbeddingsError:
        if not total:
            return IncompatibleEmbeddingsError(
                f"{self._backend.label} holds no embeddings to compare {query.name!r} with: push some first"
            )
        reasons: dict[str, list[str]] = {}  # the reasons, with the keys that have them
        for key, problems in skipped.items():
            reasons.setdefault("; ".join(str(p) for p in problems), []).append(key)
        shown = [
            f"{text} ({len(keys)} embedding{'s' if len(keys) > 1 else ''}, e.g. {keys[0]!r})"
            for text, keys in sorted(reasons.items(), key=lambda kv: -len(kv[1]))[:3]
        ]
        more = f" | and {len(reasons) - 3} other settings" if len(reasons) > 3 else ""
        error = IncompatibleEmbeddingsError(
            f"none of the {total} embeddings in {self._backend.label} can be compared with the query "
            f"{query.name!r}: " + " | ".join(shown) + more
        )
        error.problems = [p for problems in skipped.values() for p in problems]  # type: ignore[attr-defined]
        return error

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
                emb = TaskEmbedding.from_bytes(data, source=repr(str(path)), allow_unverified=True)
            else:
                raise HubError(f"cannot push a {type(obj).__name__}: give TaskEmbedding objects or .safetensors files")
            unverified = unverified_reason(emb)
            if unverified is not None:
                shown = repr(str(obj)) if isinstance(obj, str | os.PathLike) else f"embedding {emb.name!r}"
                raise HubError(
                    f"cannot push {shown} to {self._backend.label}: its metadata (probe, method, image size, label "
                    f"names...) is not verified ({unverified}), and a store holds verified embeddings only; "
                    "re-create it with `hf-task2vec embed` and push that file"
                )
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
        if isinstance(backend, HubBackend):
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
        try:
            rows = {r["key"]: r for r in _frame_rows(self._read_index(snap))}
        except CorruptIndexError as exc:  # rebuilt from the stored files (the push writes it back)
            logger.warning("%s; rebuilding it from the stored embedding files", exc)
            rows = self._rows_from_files(snap)
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
        self._fill_input_columns(snap, rows)
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

    def _embedding_paths(self, snap: Snapshot) -> list[str]:
        """The stored embedding files (``embeddings/<key>.safetensors``), temporary files left out."""
        prefix, suffix = EMBEDDINGS_DIR + "/", ".safetensors"
        if self.is_local:
            assert self.path is not None
            root = self.path / EMBEDDINGS_DIR
            found = [p.relative_to(self.path).as_posix() for p in root.rglob("*" + suffix)] if root.is_dir() else []
        elif snap.files is not None:
            found = list(snap.files)
        else:
            raise HubError(
                f"cannot list the files of {self._backend.label} (offline or not reachable): rebuild its index when "
                "the Hub can be reached (unset HF_HUB_OFFLINE)"
            )
        return sorted(
            p for p in found
            if p.startswith(prefix) and p.endswith(suffix) and not any(part.startswith(".") for part in p.split("/"))
        )

    def _rows_from_files(self, snap: Snapshot) -> dict[str, dict[str, Any]]:
        """Index rows made from the stored embedding files; a file that cannot be read is left out (logged)."""
        rows: dict[str, dict[str, Any]] = {}
        for path in self._embedding_paths(snap):
            key = path[len(EMBEDDINGS_DIR) + 1 : -len(".safetensors")]
            try:
                data = self._retry("read", lambda path=path: self._backend.read(snap, path))
                emb = TaskEmbedding.from_bytes(data, source=f"{self.name}:{path}")
            except Exception as exc:
                logger.warning("%s: %s left out of the rebuilt index: %s", self.name, path, exc)
                continue
            rows[key] = _index_row(key, data, emb, content_digest(emb))
        return rows

    def rebuild_index(self) -> PushResult:
        """Rewrite ``index.parquet`` and the card from the stored embedding files (the fix for an
        index that cannot be read); files that cannot be read are left out and logged. One commit."""

        def once() -> PushResult:
            snap = self._snapshot()
            rows = self._rows_from_files(snap)
            all_rows = list(rows.values())
            uploads = {
                INDEX_PATH: _index_to_bytes(all_rows),
                CARD_PATH: render_card(all_rows, self.name, license=self.license).encode(),
            }
            commit, url = self._backend.commit(snap, uploads, "Rebuild the Task2Vec embedding index")
            self._index_cache = None
            return PushResult(self.name, sorted(rows), sorted(uploads), commit, url)

        if self.is_local:
            with self.lock(purpose="rebuild index"):
                return self._retry("rebuild the index", once)
        return self._retry("rebuild the index", once)

    def _fill_input_columns(self, snap: Snapshot, rows: dict[str, dict[str, Any]]) -> None:
        """Index rows written before the input columns existed (``modality`` missing): fill them
        (`hf_task2vec.hub.index.input_columns`) from the metadata of the stored files, so that the
        index this push writes has them for every row. A file that cannot be read leaves its row as
        it was (logged; the next push tries again)."""
        stale = [r for r in rows.values() if r.get("modality") is None and r.get("path")]
        if not stale:
            return

        def fill(row: dict[str, Any]) -> None:
            try:
                emb = TaskEmbedding.from_bytes(self._fetch(snap, row), source=f"{self.name}:{row['path']}")
            except Exception as exc:
                logger.warning("%s: cannot read %s to fill its index row (%s)", self.name, row["path"], exc)
                return
            row.update(input_columns(emb.meta))

        logger.info("%s: filling the input columns of %d index rows from their files", self.name, len(stale))
        with ThreadPoolExecutor(max_workers=min(8, len(stale))) as pool:
            list(pool.map(fill, stale))

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
            return status_of(exc) == 412

        if self.is_local:  # one writer at a time: the index is read, extended and written under the lock
            assert self.path is not None
            with self.lock(purpose="push"):
                self._index_cache = None
                return self._retry("push", lambda: self._push_once(items, message), extra=concurrent)
        return self._retry("push", lambda: self._push_once(items, message), extra=concurrent)

    def lock(self, *, purpose: str = "", timeout: float | None = None) -> StoreLock:
        """The write lock of a local store (a context manager; re-entrant in one process). A batch
        run holds it for the whole run. Hub stores have none (commits are checked against their base
        revision instead)."""
        if not self.is_local or self.path is None:
            raise HubError(f"{self._backend.label} is a Hub repo: only local stores have a lock")
        return StoreLock(self.path, timeout=self.lock_timeout if timeout is None else timeout, purpose=purpose)
