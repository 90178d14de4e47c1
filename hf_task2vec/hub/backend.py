"""Where a store's files live: a Hub dataset repo (`HubBackend`) or a local folder (`LocalBackend`).

Both read a consistent snapshot and write a set of files all-or-nothing: one Hub commit made
against the commit that was read (``parent_commit``), or temporary files and renames in a folder
(the index last), rolled back on failure. Retries and error messages are `hf_task2vec.gateway`'s.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import HubError
from .index import CARD_PATH, INDEX_PATH, _git_blob_sha1, _sha256

logger = logging.getLogger(__name__)

@dataclass
class Remote:
    size: int | None = None
    sha256: str | None = None  # known for LFS files
    git_oid: str | None = None


@dataclass
class Snapshot:
    revision: str | None  # the commit read (Hub), None for a folder
    files: dict[str, Remote] | None = field(default=None)  # None: unknown
    offline: bool = False  # read from the local cache (HF_HUB_OFFLINE)


class LocalBackend:
    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def label(self) -> str:
        return f"local store {str(self.root)!r}"

    def snapshot(self) -> Snapshot:
        return Snapshot(None, None)

    def exists(self, snap: Snapshot, path: str) -> bool:
        return (self.root / path).is_file()

    def read(self, snap: Snapshot, path: str) -> bytes:
        return (self.root / path).read_bytes()

    def has(self, snap: Snapshot, path: str, sha256: str | None) -> bool:
        target = self.root / path
        return target.is_file() and (sha256 is None or _sha256(target.read_bytes()) == sha256)

    def unchanged(self, snap: Snapshot, path: str, data: bytes) -> bool:
        target = self.root / path
        return target.is_file() and target.stat().st_size == len(data) and target.read_bytes() == data

    def commit(self, snap: Snapshot, uploads: dict[str, bytes], message: str) -> tuple[str | None, str | None]:
        _transactional_write(self.root, uploads)
        return None, None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600: a shared store must be readable by its group
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


class HubBackend:
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

    def snapshot(self) -> Snapshot:
        from huggingface_hub.errors import OfflineModeIsEnabled

        try:
            info = self.api.dataset_info(self.repo_id, revision=self.revision or "main", files_metadata=True)
        except OfflineModeIsEnabled:
            return self._cached_snapshot()
        files = {
            s.rfilename: Remote(s.size, getattr(s.lfs, "sha256", None) if s.lfs else None, s.blob_id)
            for s in info.siblings or []
        }
        return Snapshot(info.sha, files)

    def _cached_snapshot(self) -> Snapshot:
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
        files = {f.file_path.relative_to(rev.snapshot_path).as_posix(): Remote(f.size_on_disk) for f in rev.files}
        logger.info("HF_HUB_OFFLINE is set: reading %s at cached commit %s", self.label, rev.commit_hash[:12])
        return Snapshot(rev.commit_hash, files, offline=True)

    def exists(self, snap: Snapshot, path: str) -> bool:
        if snap.files is None:
            try:
                self._download(snap, path)
            except Exception:
                return False
            return True
        return path in snap.files

    def _download(self, snap: Snapshot, path: str) -> Path:
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

    def read(self, snap: Snapshot, path: str) -> bytes:
        return self._download(snap, path).read_bytes()

    def has(self, snap: Snapshot, path: str, sha256: str | None) -> bool:
        remote = (snap.files or {}).get(path)
        return remote is not None and (remote.sha256 is None or sha256 is None or remote.sha256 == sha256)

    def unchanged(self, snap: Snapshot, path: str, data: bytes) -> bool:
        remote = (snap.files or {}).get(path)
        if remote is None:
            return False
        if remote.sha256 is not None:
            return remote.sha256 == _sha256(data)
        return remote.git_oid == _git_blob_sha1(data)

    def create(self, private: bool | None) -> None:
        self.api.create_repo(self.repo_id, repo_type="dataset", private=private, exist_ok=True)
        logger.info("created %s%s", self.label, " (private)" if private else "")

    def commit(self, snap: Snapshot, uploads: dict[str, bytes], message: str) -> tuple[str | None, str | None]:
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


def parse_location(repo_or_path: str | os.PathLike[str]) -> tuple[str, str | Path]:
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
