"""A local fake of the Hugging Face Hub HTTP API, for tests (stdlib only).

It speaks the part of the Hub API that ``huggingface_hub`` 2.x and ``datasets`` use for
``create_repo``, ``upload_file``/``upload_folder``/``create_commit`` (regular and LFS uploads),
``hf_hub_download``, ``snapshot_download``, ``list_repo_files``/``list_repo_tree``,
``get_paths_info``, ``HfFileSystem`` and ``Dataset.push_to_hub`` / ``load_dataset`` (also with
``streaming=True``). Repos (model, dataset, space) live in memory; each has a linear history of
commits on ``main`` (40-hex shas, random so that client-side caches keyed by commit never go
stale across tests) and a per-repo LFS object store.

Usage
-----
``tests/conftest.py`` imports the fixture (this import must stay the FIRST import of the conftest,
before anything that imports ``huggingface_hub``, ``datasets``, ``timm`` or ``hf_task2vec``)::

    from tests.hub_server import hub_server  # noqa: F401

    def test_x(hub_server):
        HfApi().create_repo("user/ds", repo_type="dataset")
        hub_server.fail_next(r"/tree/", status=500)  # next matching request answers 500
        assert ("POST", "/api/datasets/user/ds/commit/main") in hub_server.requests

Import order: why the environment is set when this module is imported
--------------------------------------------------------------------------
``huggingface_hub.constants`` reads ``HF_ENDPOINT`` (-> ``ENDPOINT`` and
``HUGGINGFACE_CO_URL_TEMPLATE``), ``HF_HUB_DISABLE_XET``, ``HF_HUB_OFFLINE``, ``HF_HOME`` and the
cache paths derived from it ONCE, at import time; ``datasets.config`` does the same
(``HF_ENDPOINT``, ``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE``, its cache under ``HF_HOME``). The
module-level ``HfApi`` used by the ``huggingface_hub.upload_file``-style functions captures
``ENDPOINT`` when it is created. Setting the variables in a fixture with ``monkeypatch.setenv`` is
therefore too late once these modules are imported. So, importing this module:

* starts ONE server for the whole session on 127.0.0.1 with a free port (a daemon thread), so the
  endpoint is known before any Hub client is imported (tests that do not use the fixture and touch
  the Hub get fast, clean errors from it instead of ~48 s of connection retries);
* sets in ``os.environ``: ``HF_ENDPOINT=http://127.0.0.1:<port>``, ``HF_HUB_DISABLE_XET=1`` (with
  ``hf_xet`` installed, 2.x uploads through Xet unless this is set, whatever the server answers),
  ``HF_HUB_OFFLINE=0``, ``HF_DATASETS_OFFLINE=0``, ``HF_HUB_DISABLE_TELEMETRY=1``,
  ``HF_HOME=<session temp dir>`` (and ``HF_HUB_CACHE``/``HF_DATASETS_CACHE``/``HF_XET_CACHE``/
  ``HF_ASSETS_CACHE``/``HF_TOKEN_PATH`` under it, so a developer's real cache and token are
  never used), and adds 127.0.0.1/localhost to ``NO_PROXY``.

The ``hub_server`` fixture then checks that ``huggingface_hub.constants`` and ``datasets.config``
(if already imported) really point at the server, and fails with an explanation otherwise (that
means something imported them before this module). It resets the store, sets ``HF_TOKEN`` to a
valid write token (``monkeypatch``; ``HF_TOKEN`` is read at call time, so per-test changes such as
``monkeypatch.delenv("HF_TOKEN")`` do work), clears fsspec's ``HfFileSystem`` instance cache and
fails the test if the server itself raised (a bug in this fake).
``HF_HOME`` is one temp dir for the session (constants cannot follow a per-test value); pass
``cache_dir=tmp_path`` where a test needs an empty cache. Client code may also pass
``endpoint=hub_server.url`` explicitly where the API allows it.

Auth model (as the real Hub)
----------------------------
Tokens are configured on the server (``add_token``). Defaults: ``TOKEN`` (user ``user``, member of
org ``org``, write), ``READ_TOKEN`` (user ``user``, read), ``OTHER_TOKEN`` (user ``other``, write).
An unknown bearer token -> 401 ``X-Error-Message: Invalid credentials in Authorization header``
(client: ``HfHubHTTPError``). Private repo without token -> 401 ``X-Error-Code: RepoNotFound``;
with a token that has no access -> 404 ``RepoNotFound`` (client: ``RepositoryNotFoundError`` in both
cases; the Hub never says "private"). Missing repo -> 404 ``RepoNotFound``. Gated repo files
without access -> 401/403 ``X-Error-Code: GatedRepo`` (``GatedRepoError``). Writes need a write
token whose user or org owns the namespace (401 without token, 403 otherwise).

Fault injection and recording
-----------------------------
``fail_next(path_regex, status=500, times=1, method=None, ...)``: the next ``times`` requests whose
(unquoted) path matches ``re.search(path_regex)`` (and method, if given) get ``status`` with a JSON
error body; ``status=0`` drops the connection without an answer; ``delay`` sleeps first;
``status=None`` with ``delay`` only slows the request down. A failed ``/commit/`` leaves the repo
unchanged (uploaded LFS objects stay, as on the Hub). ``requests`` is the list of
``(method, unquoted path)``; ``log`` holds ``RequestRecord``s (method, path, query, status, headers);
``calls(method, pattern)`` filters them; ``unhandled`` lists requests to routes this fake does not
implement (answered 404); ``errors`` lists tracebacks of exceptions inside the server.
"""

from __future__ import annotations

import atexit
import base64
import fnmatch
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

import pytest

__all__ = [
    "HubServer",
    "Repo",
    "Commit",
    "Blob",
    "Fault",
    "RequestRecord",
    "SERVER",
    "TOKEN",
    "READ_TOKEN",
    "OTHER_TOKEN",
    "USER",
    "hub_server",
]

USER = "user"
ORG = "org"
TOKEN = "hf_test_user_write_token_000000000"
READ_TOKEN = "hf_test_user_read_token_0000000000"
OTHER_TOKEN = "hf_test_other_write_token_00000000"

REPO_TYPES = ("model", "dataset", "space")
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_PLURAL = {"models": "model", "datasets": "dataset", "spaces": "space"}

# The .gitattributes the Hub writes in the first commit of a new repo (abridged).
DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in (
        "*.7z *.arrow *.bin *.bz2 *.ckpt *.ftz *.gz *.h5 *.joblib *.lfs.* *.lz4 *.mlmodel *.model *.msgpack "
        "*.npy *.npz *.onnx *.ot *.parquet *.pb *.pickle *.pkl *.pt *.pth *.rar *.safetensors "
        "saved_model/**/* *.tar.* *.tar *.tflite *.tgz *.wasm *.xz *.zip *.zst *tfevents* "
        "*.wav *.mp3 *.flac *.png *.jpg *.jpeg *.gif *.bmp *.tiff *.webp *.mp4 *.webm"
    ).split()
)
LFS_THRESHOLD = 10 * 1024 * 1024  # files at least this big are LFS whatever their name (as on the Hub)
_LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n"
_HEX40 = re.compile(r"[0-9a-f]{40}")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob with this content."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Blob:
    """File content in a commit. ``lfs`` files are stored as a pointer in git and the bytes in LFS."""

    __slots__ = ("data", "lfs", "size", "sha256", "pointer", "oid")

    def __init__(self, data: bytes, lfs: bool = False):
        self.data = bytes(data)
        self.lfs = lfs
        self.size = len(self.data)
        self.sha256 = hashlib.sha256(self.data).hexdigest()
        self.pointer = _LFS_POINTER.format(oid=self.sha256, size=self.size).encode() if lfs else None
        self.oid = git_blob_sha1(self.pointer if lfs else self.data)

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.oid


@dataclass
class Commit:
    sha: str
    title: str
    message: str
    author: str
    date: str
    files: dict[str, Blob]
    parent: str | None = None


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool = False
    gated: bool = False
    created_at: str = field(default_factory=_now)
    commits: list[Commit] = field(default_factory=list)  # oldest first
    lfs_objects: dict[str, bytes] = field(default_factory=dict)  # sha256 -> bytes
    gated_users: set[str] = field(default_factory=set)

    @property
    def namespace(self) -> str:
        return self.repo_id.split("/")[0]

    @property
    def head(self) -> Commit:
        return self.commits[-1]

    def find_commit(self, revision: str | None) -> Commit | None:
        rev = revision or "main"
        if rev in ("main", "refs/heads/main"):
            return self.head
        if re.fullmatch(r"[0-9a-f]{7,40}", rev):
            for commit in reversed(self.commits):
                if commit.sha.startswith(rev):
                    return commit
        return None

    def url(self, base: str) -> str:
        return f"{base}/{_URL_PREFIX[self.repo_type]}{self.repo_id}"


@dataclass
class Fault:
    pattern: re.Pattern
    status: int | None = 500
    times: int = 1
    method: str | None = None
    headers: dict = field(default_factory=dict)
    body: object = None
    delay: float = 0.0
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        return (
            self.hits < self.times
            and (self.method is None or self.method.upper() == method)
            and self.pattern.search(path) is not None
        )


@dataclass
class RequestRecord:
    method: str
    path: str  # unquoted, without query
    query: dict
    headers: dict
    status: int | None = None


@dataclass
class TokenInfo:
    user: str
    orgs: tuple[str, ...] = ()
    role: str = "write"

    @property
    def namespaces(self) -> tuple[str, ...]:
        return (self.user, *self.orgs)


class _HttpError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


def _not_found_repo() -> _HttpError:
    return _HttpError(404, "Repository not found", "RepoNotFound")


def _gitattributes_lfs_patterns(text: str) -> list[str]:
    patterns = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and not parts[0].startswith("#") and "filter=lfs" in parts[1:]:
            patterns.append(parts[0])
    return patterns


def _matches_gitattributes(path: str, pattern: str) -> bool:
    if "/" in pattern:
        return fnmatch.fnmatchcase(path, pattern.lstrip("/"))
    return fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], pattern)


def _front_matter(text: str) -> str | None:
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    return match.group(1) if match else None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tests-hub-server/1.0"
    hub: HubServer  # set on the subclass created per server

    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        pass

    def _handle(self):
        self.hub._dispatch(self)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _handle


class _ThreadingServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # snapshot_download & co. open several connections at once


class HubServer:
    """The fake Hub. ``url`` is its endpoint; see the module docstring for the API."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        handler = type("Handler", (_Handler,), {"hub": self})
        self._httpd = _ThreadingServer((host, port), handler)
        self.host, self.port = self._httpd.server_address[:2]
        self.url = f"http://{self.host}:{self.port}"
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._lfs_secret = secrets.token_hex(8)
        self.reset()

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> HubServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True, name="hub-server"
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(5)
            self._thread = None
        self._httpd.server_close()

    def reset(self) -> None:
        """Forget all repos, recorded requests, faults and errors; restore the default tokens/settings."""
        with self._lock:
            self.repos: dict[tuple[str, str], Repo] = {}
            self.tokens: dict[str, TokenInfo] = {
                TOKEN: TokenInfo(USER, (ORG,), "write"),
                READ_TOKEN: TokenInfo(USER, (ORG,), "read"),
                OTHER_TOKEN: TokenInfo("other", (), "write"),
            }
            self.requests: list[tuple[str, str]] = []
            self.log: list[RequestRecord] = []
            self.unhandled: list[tuple[str, str]] = []
            self.errors: list[str] = []
            self.faults: list[Fault] = []
            self.lfs_threshold = LFS_THRESHOLD
            self.tree_page_size = 1000  # entries per /tree page (Link header pagination beyond)
            self.commits_page_size = 50

    # ----------------------------------------------------------------- test helpers
    @property
    def token(self) -> str:
        """The default write token (user ``user``); the fixture puts it in ``HF_TOKEN``."""
        return TOKEN

    def add_token(self, token: str, user: str, orgs: tuple[str, ...] | list[str] = (), role: str = "write"):
        with self._lock:
            self.tokens[token] = TokenInfo(user, tuple(orgs), role)

    def fail_next(
        self,
        path_regex: str,
        status: int | None = 500,
        times: int = 1,
        *,
        method: str | None = None,
        headers: dict | None = None,
        body: object = None,
        delay: float = 0.0,
    ) -> Fault:
        """Make the next ``times`` matching requests fail (see module docstring). Returns the Fault (``.hits``)."""
        fault = Fault(re.compile(path_regex), status, times, method, dict(headers or {}), body, delay)
        with self._lock:
            self.faults.append(fault)
        return fault

    def calls(self, method: str | None = None, pattern: str | None = None) -> list[RequestRecord]:
        """Recorded requests, filtered by method and by ``re.search(pattern, path)``."""
        with self._lock:
            records = list(self.log)
        return [
            r
            for r in records
            if (method is None or r.method == method.upper()) and (pattern is None or re.search(pattern, r.path))
        ]

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        with self._lock:
            return self.repos[(repo_type, repo_id)]

    def create_repo(
        self, repo_id: str, repo_type: str = "model", *, private: bool = False, gated: bool = False, author: str = USER
    ) -> Repo:
        """Create a repo directly (no HTTP), with the Hub's initial ``.gitattributes`` commit."""
        if repo_type not in REPO_TYPES or repo_id.count("/") != 1:
            raise ValueError(f"bad repo {repo_type}:{repo_id}")
        with self._lock:
            if (repo_type, repo_id) in self.repos:
                raise ValueError(f"{repo_type} repo {repo_id} already exists")
            repo = Repo(repo_type, repo_id, private=private, gated=gated)
            self.repos[(repo_type, repo_id)] = repo
            self._append_commit(
                repo, {".gitattributes": Blob(DEFAULT_GITATTRIBUTES.encode())}, "initial commit", "", author
            )
            return repo

    def commit(
        self,
        repo_id: str,
        files: dict[str, bytes | str] | None = None,
        *,
        repo_type: str = "model",
        delete: tuple[str, ...] | list[str] = (),
        message: str = "Commit from test",
        lfs: bool | None = None,
        author: str = USER,
    ) -> str:
        """Commit files directly (no HTTP); ``lfs=None`` decides like preupload. Returns the commit sha."""
        with self._lock:
            repo = self.repo(repo_id, repo_type)
            new = dict(repo.head.files)
            for path in delete:
                new.pop(path)
            for path, data in (files or {}).items():
                data = data.encode() if isinstance(data, str) else data
                is_lfs = self._upload_mode(repo, path, len(data)) == "lfs" if lfs is None else lfs
                if is_lfs:
                    repo.lfs_objects[hashlib.sha256(data).hexdigest()] = data
                new[path] = Blob(data, is_lfs)
            return self._append_commit(repo, new, message, "", author).sha

    def get_file(self, repo_id: str, path: str, repo_type: str = "model", revision: str = "main") -> bytes:
        with self._lock:
            commit = self.repo(repo_id, repo_type).find_commit(revision)
            if commit is None:
                raise KeyError(revision)
            return commit.files[path].data

    def list_files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> list[str]:
        with self._lock:
            commit = self.repo(repo_id, repo_type).find_commit(revision)
            if commit is None:
                raise KeyError(revision)
            return sorted(commit.files)

    def head_sha(self, repo_id: str, repo_type: str = "model") -> str:
        return self.repo(repo_id, repo_type).head.sha

    # ----------------------------------------------------------------- internals
    def _append_commit(self, repo: Repo, files: dict[str, Blob], title: str, message: str, author: str) -> Commit:
        parent = repo.commits[-1].sha if repo.commits else None
        commit = Commit(secrets.token_hex(20), title, message, author, _now(), files, parent)
        repo.commits.append(commit)
        return commit

    def _upload_mode(self, repo: Repo, path: str, size: int) -> str:
        if size >= self.lfs_threshold:
            return "lfs"
        attributes = repo.head.files.get(".gitattributes")
        patterns = _gitattributes_lfs_patterns(attributes.data.decode(errors="replace")) if attributes else []
        return "lfs" if any(_matches_gitattributes(path, p) for p in patterns) else "regular"

    def _can_read(self, repo: Repo, tok: TokenInfo | None) -> bool:
        return not repo.private or (tok is not None and repo.namespace in tok.namespaces)

    def _get_repo(self, repo_type: str, repo_id: str, tok: TokenInfo | None, write: bool = False) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise _not_found_repo()
        if not self._can_read(repo, tok):
            if tok is None:
                raise _HttpError(401, "Invalid username or password.", "RepoNotFound")
            raise _not_found_repo()
        if write:
            self._check_write(repo.namespace, tok)
        return repo

    @staticmethod
    def _check_write(namespace: str, tok: TokenInfo | None) -> None:
        if tok is None:
            raise _HttpError(401, "Invalid username or password.")
        if namespace not in tok.namespaces:
            raise _HttpError(403, f"You don't have the rights to write to the namespace {namespace}")
        if tok.role != "write":
            raise _HttpError(403, "This token has read-only permissions.")

    def _get_commit(self, repo: Repo, revision: str) -> Commit:
        commit = repo.find_commit(revision)
        if commit is None:
            raise _HttpError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _check_gated(self, repo: Repo, tok: TokenInfo | None) -> None:
        if repo.gated and not (tok is not None and (repo.namespace in tok.namespaces or tok.user in repo.gated_users)):
            status = 401 if tok is None else 403
            raise _HttpError(status, f"Access to model {repo.repo_id} is restricted.", "GatedRepo")

    # ---- tree helpers
    def _last_commit(self, repo: Repo, commit: Commit, path: str, is_dir: bool) -> dict:
        history = repo.commits[: repo.commits.index(commit) + 1]

        def view(c: Commit):
            if not is_dir:
                blob = c.files.get(path)
                return blob.oid if blob else None
            return tuple(sorted((p, b.oid) for p, b in c.files.items() if p.startswith(path + "/")))

        found = history[0]
        for older, newer in zip(history, history[1:], strict=False):
            if view(older) != view(newer):
                found = newer
        return {"id": found.sha, "title": found.title, "date": found.date}

    def _file_entry(self, repo: Repo, commit: Commit, path: str, expand: bool) -> dict:
        blob = commit.files[path]
        entry = {"type": "file", "oid": blob.oid, "size": blob.size, "path": path}
        if blob.lfs:
            entry["lfs"] = {"oid": blob.sha256, "size": blob.size, "pointerSize": len(blob.pointer)}
        if expand:
            entry["lastCommit"] = self._last_commit(repo, commit, path, is_dir=False)
        return entry

    def _dir_entry(self, repo: Repo, commit: Commit, path: str, expand: bool) -> dict:
        listing = "".join(f"{p}\0{b.oid}\n" for p, b in sorted(commit.files.items()) if p.startswith(path + "/"))
        entry = {"type": "directory", "oid": hashlib.sha1(listing.encode()).hexdigest(), "size": 0, "path": path}
        if expand:
            entry["lastCommit"] = self._last_commit(repo, commit, path, is_dir=True)
        return entry

    @staticmethod
    def _is_dir(commit: Commit, path: str) -> bool:
        return path == "" or any(p.startswith(path + "/") for p in commit.files)

    def _tree(self, repo: Repo, commit: Commit, base: str, recursive: bool, expand: bool) -> list[dict]:
        prefix = f"{base}/" if base else ""
        files, dirs = [], set()
        for path in sorted(commit.files):
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix) :].split("/")
            if recursive:
                dirs.update(prefix + "/".join(parts[:i]) for i in range(1, len(parts)))
                files.append(path)
            elif len(parts) == 1:
                files.append(path)
            else:
                dirs.add(prefix + parts[0])
        entries = [self._dir_entry(repo, commit, d, expand) for d in sorted(dirs)]
        return entries + [self._file_entry(repo, commit, f, expand) for f in files]

    def _repo_info(self, repo: Repo, commit: Commit, blobs: bool) -> dict:
        siblings = []
        for path in sorted(commit.files):
            sibling: dict = {"rfilename": path}
            if blobs:
                blob = commit.files[path]
                sibling.update(size=blob.size, blobId=blob.oid)
                if blob.lfs:
                    sibling["lfs"] = {"size": blob.size, "sha256": blob.sha256, "pointerSize": len(blob.pointer)}
            siblings.append(sibling)
        info = {
            "_id": hashlib.md5(f"{repo.repo_type}/{repo.repo_id}".encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": repo.namespace,
            "sha": commit.sha,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "private": repo.private,
            "gated": "manual" if repo.gated else False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(b.size for b in commit.files.values()),
        }
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
        readme = commit.files.get("README.md")
        if readme is not None:
            card = self._parse_yaml(_front_matter(readme.data.decode(errors="replace")) or "")
            if isinstance(card, dict):
                info["cardData"] = card
        return info

    @staticmethod
    def _parse_yaml(text: str):
        import yaml

        try:
            return yaml.safe_load(text) if text.strip() else {}
        except yaml.YAMLError as e:
            return e

    # ----------------------------------------------------------------- HTTP plumbing
    def _dispatch(self, h: _Handler) -> None:
        method = h.command
        split = urlsplit(h.path)
        raw_path, query = split.path, parse_qs(split.query, keep_blank_values=True)
        path = unquote(raw_path)
        record = RequestRecord(method, path, query, {k.lower(): v for k, v in h.headers.items()})
        try:
            body = self._read_body(h)
        except Exception:  # malformed request: drop it
            h.close_connection = True
            return
        with self._lock:
            self.requests.append((method, path))
            self.log.append(record)
            fault = next((f for f in self.faults if f.matches(method, path)), None)
            if fault is not None:
                fault.hits += 1
        try:
            if fault is not None:
                if fault.delay:
                    time.sleep(fault.delay)
                if fault.status == 0:
                    record.status = 0
                    h.close_connection = True
                    try:
                        h.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                if fault.status is not None:
                    payload = fault.body if fault.body is not None else {"error": "Injected failure"}
                    if not isinstance(payload, bytes):
                        payload = json.dumps(payload).encode()
                    headers = {"X-Error-Message": "Injected failure", **fault.headers}
                    self._send(h, record, fault.status, payload, headers)
                    return
            self._route(h, record, method, raw_path, query, body)
        except _HttpError as e:
            headers = {"X-Error-Message": e.message, **e.headers}
            if e.code:
                headers["X-Error-Code"] = e.code
            self._send(h, record, e.status, json.dumps({"error": e.message}).encode(), headers)
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True
        except Exception:
            tb = traceback.format_exc()
            with self._lock:
                self.errors.append(f"{method} {h.path}\n{tb}")
            self._send(h, record, 500, json.dumps({"error": tb}).encode(), {"X-Error-Message": "Internal error"})

    @staticmethod
    def _read_body(h: _Handler) -> bytes:
        if "chunked" in h.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(h.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(h.rfile.read(size))
                h.rfile.readline()
        length = int(h.headers.get("Content-Length") or 0)
        return h.rfile.read(length) if length else b""

    def _send(
        self,
        h: _Handler,
        record: RequestRecord,
        status: int,
        body: bytes = b"",
        headers: dict | None = None,
        content_type: str = "application/json; charset=utf-8",
    ) -> None:
        record.status = status
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("X-Request-Id", secrets.token_hex(8))
        headers = dict(headers or {})
        length = headers.pop("Content-Length", len(body))
        for key, value in headers.items():
            h.send_header(key, str(value))
        h.send_header("Content-Length", str(length))
        h.end_headers()
        if h.command != "HEAD" and body:
            h.wfile.write(body)

    def _json(self, h, record, payload, status: int = 200, headers: dict | None = None) -> None:
        self._send(h, record, status, json.dumps(payload).encode(), headers)

    def _auth(self, h: _Handler) -> TokenInfo | None:
        value = h.headers.get("Authorization")
        if not value:
            return None
        token = value[7:].strip() if value.lower().startswith("bearer ") else value.strip()
        with self._lock:
            info = self.tokens.get(token)
        if info is None:
            raise _HttpError(401, "Invalid credentials in Authorization header")
        return info

    # ----------------------------------------------------------------- routes
    _API_REPO = r"^/api/(models|datasets|spaces)/([^/]+)/([^/]+)"
    _ROUTES = [
        ("GET", re.compile(r"^/api/whoami-v2$"), "_whoami"),
        ("POST", re.compile(r"^/api/repos/create$"), "_create"),
        ("DELETE", re.compile(r"^/api/repos/delete$"), "_delete"),
        ("POST", re.compile(r"^/api/validate-yaml$"), "_validate_yaml"),
        ("GET", re.compile(_API_REPO + r"(?:/revision/(.+))?$"), "_info"),
        ("PUT", re.compile(_API_REPO + r"/settings$"), "_settings"),
        ("POST", re.compile(_API_REPO + r"/preupload/(.+)$"), "_preupload"),
        ("POST", re.compile(_API_REPO + r"/commit/(.+)$"), "_commit"),
        ("GET", re.compile(_API_REPO + r"/tree/([^/]+)(?:/(.*))?$"), "_tree_route"),
        ("POST", re.compile(_API_REPO + r"/paths-info/(.+)$"), "_paths_info"),
        ("GET", re.compile(_API_REPO + r"/commits/(.+)$"), "_commits"),
        ("GET", re.compile(_API_REPO + r"/refs$"), "_refs"),
        ("POST", re.compile(r"^/(?:(datasets|spaces)/)?([^/]+)/([^/]+?)\.git/info/lfs/objects/batch$"), "_lfs_batch"),
        ("PUT", re.compile(r"^/_lfs/(model|dataset|space)/([^/]+)/([^/]+)/([0-9a-f]{64})$"), "_lfs_put"),
        ("GET", re.compile(r"^/(?:(datasets|spaces)/)?([^/]+)/([^/]+)/resolve/([^/]+)/(.+)$"), "_resolve"),
        ("HEAD", re.compile(r"^/(?:(datasets|spaces)/)?([^/]+)/([^/]+)/resolve/([^/]+)/(.+)$"), "_resolve"),
    ]

    def _route(self, h, record, method, raw_path, query, body) -> None:
        for route_method, pattern, name in self._ROUTES:
            match = pattern.match(raw_path)
            if match and method == route_method:
                groups = [unquote(g) if g is not None else None for g in match.groups()]
                getattr(self, name)(h, record, groups, query, body)
                return
        with self._lock:
            self.unhandled.append((method, record.path))
        raise _HttpError(404, f"Route not implemented by tests/hub_server.py: {method} {record.path}")

    def _repo_from_api(self, groups) -> tuple[str, str]:
        return _PLURAL[groups[0]], f"{groups[1]}/{groups[2]}"

    def _whoami(self, h, record, groups, query, body):
        tok = self._auth(h)
        if tok is None:
            raise _HttpError(401, "Invalid username or password.")
        self._json(
            h,
            record,
            {
                "type": "user",
                "id": hashlib.md5(tok.user.encode()).hexdigest()[:24],
                "name": tok.user,
                "fullname": tok.user.title(),
                "email": f"{tok.user}@example.com",
                "emailVerified": True,
                "isPro": False,
                "orgs": [{"type": "org", "name": o, "fullname": o.title(), "roleInOrg": "write"} for o in tok.orgs],
                "auth": {"type": "access_token", "accessToken": {"displayName": "tests", "role": tok.role}},
            },
        )

    def _create(self, h, record, groups, query, body):
        tok = self._auth(h)
        payload = json.loads(body or b"{}")
        repo_type = payload.get("type") or "model"
        if repo_type not in REPO_TYPES:
            raise _HttpError(400, f"Invalid repo type {repo_type}")
        if tok is None:
            raise _HttpError(401, "Invalid username or password.")
        namespace = payload.get("organization") or tok.user
        name = payload.get("name") or ""
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}", name):
            raise _HttpError(400, f"Invalid repo name {name!r}")
        self._check_write(namespace, tok)
        repo_id = f"{namespace}/{name}"
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        with self._lock:
            existing = self.repos.get((repo_type, repo_id))
            if existing is not None:
                self._json(
                    h,
                    record,
                    {"error": f"You already created this {repo_type} repo", "url": existing.url(self.url)},
                    status=409,
                    headers={"X-Error-Message": f"You already created this {repo_type} repo"},
                )
                return
            repo = self.create_repo(repo_id, repo_type, private=private, author=tok.user)
        self._json(h, record, {"url": repo.url(self.url), "name": repo_id, "id": repo_id})

    def _delete(self, h, record, groups, query, body):
        tok = self._auth(h)
        payload = json.loads(body or b"{}")
        repo_type = payload.get("type") or "model"
        namespace = payload.get("organization") or (tok.user if tok else "")
        with self._lock:
            repo = self._get_repo(repo_type, f"{namespace}/{payload.get('name')}", tok, write=True)
            del self.repos[(repo.repo_type, repo.repo_id)]
        self._json(h, record, {})

    def _validate_yaml(self, h, record, groups, query, body):
        content = json.loads(body or b"{}").get("content", "")
        meta = _front_matter(content)
        parsed = self._parse_yaml(meta) if meta is not None else {}
        if isinstance(parsed, Exception) or not isinstance(parsed, dict | type(None)):
            message = f"Invalid YAML metadata in README.md: {parsed}"
            self._json(h, record, {"errors": [{"message": message}], "warnings": []}, status=400)
            return
        self._json(h, record, {"errors": [], "warnings": []})

    def _info(self, h, record, groups, query, body):
        tok = self._auth(h)
        repo_type, repo_id = self._repo_from_api(groups)
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, tok)
            commit = self._get_commit(repo, groups[3] or "main")
            blobs = query.get("blobs", ["false"])[0].lower() == "true"
            info = self._repo_info(repo, commit, blobs)
        self._json(h, record, info)

    def _settings(self, h, record, groups, query, body):
        tok = self._auth(h)
        repo_type, repo_id = self._repo_from_api(groups)
        payload = json.loads(body or b"{}")
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, tok, write=True)
            if "private" in payload:
                repo.private = bool(payload["private"])
            if "visibility" in payload:
                repo.private = payload["visibility"] == "private"
            if "gated" in payload:
                repo.gated = bool(payload["gated"])
        self._json(h, record, {})

    def _preupload(self, h, record, groups, query, body):
        tok = self._auth(h)
        repo_type, repo_id = self._repo_from_api(groups)
        payload = json.loads(body or b"{}")
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, tok, write=True)
            commit = self._get_commit(repo, groups[3])
            files = []
            for item in payload.get("files", []):
                mode = self._upload_mode(repo, item["path"], int(item.get("size", 0)))
                entry = {"path": item["path"], "uploadMode": mode, "shouldIgnore": False}
                existing = commit.files.get(item["path"])
                if existing is not None:
                    entry["oid"] = existing.sha256 if mode == "lfs" else git_blob_sha1(existing.data)
                files.append(entry)
        self._json(h, record, {"files": files, "commitOid": commit.sha})

    def _commit(self, h, record, groups, query, body):
        tok = self._auth(h)
        repo_type, repo_id = self._repo_from_api(groups)
        if query.get("create_pr", ["0"])[0] not in ("0", "", "false"):
            raise _HttpError(400, "Pull requests are not supported by tests/hub_server.py")
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next((line["value"] for line in lines if line.get("key") == "header"), {})
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, tok, write=True)
            if groups[3] not in ("main", "refs/heads/main"):
                raise _HttpError(404, f"Invalid rev id: {groups[3]}", "RevisionNotFound")
            parent = header.get("parentCommit")
            if parent and parent != repo.head.sha:
                raise _HttpError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(repo.head.files)
            for line in lines:
                key, value = line.get("key"), line.get("value", {})
                if key == "file":
                    data = (
                        base64.b64decode(value["content"])
                        if value.get("encoding") == "base64"
                        else (value["content"].encode())
                    )
                    files[value["path"]] = Blob(data)
                elif key == "lfsFile":
                    data = repo.lfs_objects.get(value["oid"])
                    if data is None:
                        raise _HttpError(
                            422,
                            f"Your push was rejected because an LFS pointer pointed to a file that does not exist."
                            f" For instance: {value['path']}",
                        )
                    files[value["path"]] = Blob(data, lfs=True)
                elif key == "deletedFile":
                    if value["path"] not in files:
                        raise _HttpError(404, "A file with this name doesn't exist", "EntryNotFound")
                    del files[value["path"]]
                elif key == "deletedFolder":
                    folder = value["path"].rstrip("/") + "/"
                    for path in [p for p in files if p.startswith(folder)]:
                        del files[path]
                elif key != "header":
                    raise _HttpError(400, f"Unsupported commit operation {key!r}")
            commit = self._append_commit(
                repo, files, header.get("summary", ""), header.get("description", ""), tok.user
            )
            url = f"{repo.url(self.url)}/commit/{commit.sha}"
        self._json(h, record, {"success": True, "commitOid": commit.sha, "commitUrl": url, "pullRequestUrl": None})

    def _tree_route(self, h, record, groups, query, body):
        tok = self._auth(h)
        repo_type, repo_id = self._repo_from_api(groups)
        base = (groups[4] or "").strip("/")
        recursive = query.get("recursive", ["false"])[0].lower() in ("true", "1")
        expand = query.get("expand", ["false"])[0].lower() in ("true", "1")
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, tok)
            commit = self._get_commit(repo, groups[3])
            if not self._is_dir(commit, base):
                raise _HttpError(404, f"Entry not found: {base}", "EntryNotFound", {"X-Repo-Commit": commit.sha})
            entries = self._tree(repo, commit, base, recursive, expand)
            page_size = self.tree_page_size
        start = int(query.get("cursor", ["0"])[0] or 0)
        headers = {"X-Repo-Commit": commit.sha}
        if start + page_size < len(entries):
            params = {"recursive": str(recursive), "expand": str(expand), "cursor": str(start + page_size)}
            next_url = f"{self.url}{urlsplit(h.path).path}?{urlencode(params)}"
            headers["Link"] = f'<{next_url}>; rel="next"'
        self._json(h, record, entries[start : start + page_size], headers=headers)

    def _paths_info(self, h, record, groups, query, body):
        tok = self._auth(h)
        repo_type, repo_id = self._repo_from_api(groups)
        if h.headers.get("Content-Type", "").startswith("application/json"):
            payload = json.loads(body or b"{}")
            paths, expand = payload.get("paths", []), bool(payload.get("expand"))
        else:
            form = parse_qs(body.decode(), keep_blank_values=True)
            paths = form.get("paths", [])
            expand = form.get("expand", ["false"])[0].lower() in ("true", "1")
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, tok)
            commit = self._get_commit(repo, groups[3])
            out = []
            for raw in paths if isinstance(paths, list) else [paths]:
                path = raw.strip("/")
                if path in commit.files:
                    out.append(self._file_entry(repo, commit, path, expand))
                elif path and self._is_dir(commit, path):
                    out.append(self._dir_entry(repo, commit, path, expand))
        self._json(h, record, out, headers={"X-Repo-Commit": commit.sha})

    def _commits(self, h, record, groups, query, body):
        tok = self._auth(h)
        repo_type, repo_id = self._repo_from_api(groups)
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, tok)
            commit = self._get_commit(repo, groups[3])
            history = repo.commits[: repo.commits.index(commit) + 1][::-1]
            page_size = self.commits_page_size
        start = int(query.get("p", ["0"])[0] or 0) * page_size
        items = [
            {"id": c.sha, "title": c.title, "message": c.message, "authors": [{"user": c.author}], "date": c.date}
            for c in history[start : start + page_size]
        ]
        headers = {}
        if start + page_size < len(history):
            next_url = f"{self.url}{urlsplit(h.path).path}?{urlencode({'p': start // page_size + 1})}"
            headers["Link"] = f'<{next_url}>; rel="next"'
        self._json(h, record, items, headers=headers)

    def _refs(self, h, record, groups, query, body):
        tok = self._auth(h)
        repo_type, repo_id = self._repo_from_api(groups)
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, tok)
            branch = {"name": "main", "ref": "refs/heads/main", "targetCommit": repo.head.sha}
        self._json(h, record, {"branches": [branch], "converts": [], "tags": []})

    def _lfs_batch(self, h, record, groups, query, body):
        tok = self._auth(h)
        repo_type = {"datasets": "dataset", "spaces": "space"}.get(groups[0] or "", "model")
        repo_id = f"{groups[1]}/{groups[2]}"
        payload = json.loads(body or b"{}")
        if payload.get("operation") != "upload":
            raise _HttpError(400, "Only the LFS upload operation is supported by tests/hub_server.py")
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, tok, write=True)
            objects = []
            for obj in payload.get("objects", []):
                oid, size = obj["oid"], int(obj["size"])
                if oid in repo.lfs_objects:
                    objects.append({"oid": oid, "size": size})
                    continue
                href = f"{self.url}/_lfs/{repo_type}/{repo_id}/{oid}?{urlencode({'sig': self._lfs_secret})}"
                objects.append({"oid": oid, "size": size, "authenticated": True, "actions": {"upload": {"href": href}}})
        self._send(
            h,
            record,
            200,
            json.dumps({"transfer": "basic", "objects": objects, "hash_algo": "sha256"}).encode(),
            content_type="application/vnd.git-lfs+json",
        )

    def _lfs_put(self, h, record, groups, query, body):
        # Like an S3 pre-signed URL: no Authorization header, the signature in the URL is the credential.
        if query.get("sig", [""])[0] != self._lfs_secret:
            raise _HttpError(403, "Bad signature")
        repo_type, repo_id, oid = groups[0], f"{groups[1]}/{groups[2]}", groups[3]
        if hashlib.sha256(body).hexdigest() != oid:
            raise _HttpError(400, "Uploaded content does not match the LFS oid")
        with self._lock:
            repo = self.repos.get((repo_type, repo_id))
            if repo is None:
                raise _not_found_repo()
            repo.lfs_objects[oid] = body
        self._send(h, record, 200, b"", {"ETag": f'"{oid}"'})

    def _resolve(self, h, record, groups, query, body):
        tok = self._auth(h)
        repo_type = {"datasets": "dataset", "spaces": "space"}.get(groups[0] or "", "model")
        repo_id, revision, path = f"{groups[1]}/{groups[2]}", groups[3], groups[4]
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, tok)
            commit = self._get_commit(repo, revision)
            blob = commit.files.get(path)
            if blob is None:
                raise _HttpError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.sha})
            self._check_gated(repo, tok)
        headers = {
            "ETag": f'"{blob.etag}"',
            "X-Repo-Commit": commit.sha,
            "Accept-Ranges": "bytes",
            "Content-Disposition": f"inline; filename*=UTF-8''{quote(path.rsplit('/', 1)[-1])}",
        }
        if blob.lfs:
            headers.update({"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(blob.size)})
        data, status = blob.data, 200
        range_header = h.headers.get("Range")
        if range_header:
            match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", range_header)
            if match is None or match.groups() == ("", ""):
                raise _HttpError(416, "Invalid range", headers={"Content-Range": f"bytes */{blob.size}"})
            first, last = match.groups()
            if first == "":
                start, end = max(blob.size - int(last), 0), blob.size - 1
            else:
                start, end = int(first), min(int(last) if last else blob.size - 1, blob.size - 1)
            if start >= blob.size or start > end:
                raise _HttpError(416, "Range Not Satisfiable", headers={"Content-Range": f"bytes */{blob.size}"})
            data, status = blob.data[start : end + 1], 206
            headers["Content-Range"] = f"bytes {start}-{end}/{blob.size}"
        self._send(h, record, status, data, headers, content_type="application/octet-stream")


# --------------------------------------------------------------------- session setup (at import time)
def _configure_environment(server: HubServer) -> str:
    home = tempfile.mkdtemp(prefix="hf-home-tests-")
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    os.environ.update(
        {
            "HF_ENDPOINT": server.url,
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_OFFLINE": "0",
            "HF_DATASETS_OFFLINE": "0",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HOME": home,
            "HF_HUB_CACHE": os.path.join(home, "hub"),
            "HF_ASSETS_CACHE": os.path.join(home, "assets"),
            "HF_XET_CACHE": os.path.join(home, "xet"),
            "HF_DATASETS_CACHE": os.path.join(home, "datasets"),
            "HF_TOKEN_PATH": os.path.join(home, "token"),
        }
    )
    os.environ.pop("TRANSFORMERS_OFFLINE", None)
    for var in ("NO_PROXY", "no_proxy"):
        current = [v for v in os.environ.get(var, "").split(",") if v]
        os.environ[var] = ",".join(dict.fromkeys([*current, "127.0.0.1", "localhost"]))
    return home


SERVER = HubServer().start()
HF_HOME = _configure_environment(SERVER)
atexit.register(SERVER.stop)


def _import_order_problems() -> list[str]:
    problems = []
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        if constants.ENDPOINT != SERVER.url:
            problems.append(f"huggingface_hub.constants.ENDPOINT={constants.ENDPOINT!r}")
        if not constants.HF_HUB_DISABLE_XET:
            problems.append("huggingface_hub.constants.HF_HUB_DISABLE_XET is False")
        if constants.HF_HUB_OFFLINE:
            problems.append("huggingface_hub.constants.HF_HUB_OFFLINE is True")
    config = sys.modules.get("datasets.config")
    if config is not None:
        if config.HF_ENDPOINT != SERVER.url:
            problems.append(f"datasets.config.HF_ENDPOINT={config.HF_ENDPOINT!r}")
        if config.HF_HUB_OFFLINE:
            problems.append("datasets.config.HF_HUB_OFFLINE is True")
    return problems


@pytest.fixture
def hub_server(monkeypatch):
    """The session's fake Hub (``HubServer``), emptied for this test, with ``HF_TOKEN`` = ``TOKEN``."""
    problems = _import_order_problems()
    if problems:
        pytest.fail(
            "huggingface_hub/datasets were imported before tests/hub_server.py set HF_ENDPOINT etc. ("
            + "; ".join(problems)
            + "). Make `from tests.hub_server import hub_server` the first import of tests/conftest.py.",
            pytrace=False,
        )
    SERVER.reset()
    for var, value in {
        "HF_ENDPOINT": SERVER.url,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_OFFLINE": "0",
        "HF_DATASETS_OFFLINE": "0",
        "HF_TOKEN": SERVER.token,
    }.items():
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    hffs = sys.modules.get("huggingface_hub.hf_file_system")
    if hffs is not None:
        hffs.HfFileSystem.clear_instance_cache()  # fsspec caches instances (and their dircache) across tests
    yield SERVER
    errors = list(SERVER.errors)
    SERVER.reset()
    if errors:
        pytest.fail("tests/hub_server.py raised while serving:\n" + "\n".join(errors), pytrace=False)
