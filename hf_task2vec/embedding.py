"""`TaskEmbedding`: the per-filter Fisher of a task, its trivial embedding, and where it came from.

Saved as safetensors: two float32 tensors (`values`, `trivial`) and str -> str metadata holding
the provenance (DESIGN.md), the layer slices, and a sha256 over the tensors AND the metadata, so
that a file edited after it was written (its values, or its probe, method, image size...) is refused
instead of silently compared. The hash detects edits and corruption, not forgery: it has no secret.

Format versions: 2 (written now) hashes tensors, layers and metadata; 1 (hf_task2vec 0.1.0) hashed
the tensors only, so its metadata cannot be verified (a "downgrade" to format 1 would hide an edit).
Version-1 files are read only with an explicit ``allow_unverified=True`` (CLI ``--allow-unverified``);
such an embedding carries the `UNVERIFIED_KEY` metadata entry, which saving keeps (it is covered by the
format-2 hash), so re-saving never turns an unverified file into a verified one, and stores refuse it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .compat import ALWAYS_RECORDED, check_comparable
from .errors import EmbeddingFileError, OutputError, Task2VecError

logger = logging.getLogger(__name__)

FORMAT = "hf_task2vec.embedding"
FORMAT_VERSION = "2"
#: Versions this release reads: "1" hashed the tensors only (its metadata is not verified; read only
#: with ``allow_unverified=True``).
READABLE_VERSIONS: tuple[str, ...] = ("1", "2")
#: The metadata entry marking an embedding whose metadata was never verified (read from a format-1
#: file with ``allow_unverified=True``). Kept by `TaskEmbedding.save`; such files are again read only
#: with ``allow_unverified=True`` and are never pushed to a store.
UNVERIFIED_KEY = "unverified_metadata"

# The metadata keys every embedding records that decide comparability (an `ExpertIndex` keeps them as its
# ``settings``, a store index has a column for each). The whole rule is `hf_task2vec.compat`.
COMPATIBILITY_KEYS: tuple[str, ...] = ALWAYS_RECORDED
# text embeddings: the truncation and pooling decide what the probe saw, as the image size does for
# images; compared where both embeddings record them (older files may not), by `hf_task2vec.compat`
TEXT_INPUT_KEYS: tuple[str, ...] = ("max_length", "pooling")


@dataclass(frozen=True)
class LayerSlice:
    """The filters of one probe layer occupy ``values[start:stop]``."""

    name: str
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass
class TaskEmbedding:
    """A Task2Vec embedding.

    Attributes:
        values: float32 ``[D]``, one entry per filter of the probe: the diagonal Fisher
            information averaged over the weights of that filter (``montecarlo`` / ``exact``), or
            ``(beta / 2N) * Lambda`` for the ``variational`` estimator (DESIGN.md).
        trivial: float32 ``[D]``, the embedding of a task with nothing to learn under the same
            probe and estimator (the prior). For ``variational`` it is ``(beta / 2N) * lambda^2``
            of each layer's learned prior. For ``montecarlo`` / ``exact`` the Fisher of such a task
            is zero; the trivial embedding is then the constant ``prior_fisher`` (a per-probe
            floor recorded in ``meta["trivial"]``) - the Fisher of an isotropic Gaussian prior on
            the weights - so that ``d_sym(t, t0)`` measures how far a task rises above it.
        layers: the slice of ``values`` that belongs to each probe layer, in probe order.
        meta: str -> str provenance: probe id and revision, estimator and options, task source,
            revision, split, columns, label names, number of samples, seed, library version.
    """

    values: np.ndarray
    trivial: np.ndarray
    layers: list[LayerSlice] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.values = np.ascontiguousarray(np.asarray(self.values, dtype=np.float32).reshape(-1))
        self.trivial = np.ascontiguousarray(np.asarray(self.trivial, dtype=np.float32).reshape(-1))
        if self.values.shape != self.trivial.shape:
            raise ValueError(
                f"values has {self.values.size} entries but trivial has {self.trivial.size}; "
                "both must have one entry per probe filter"
            )
        self.layers = [sl if isinstance(sl, LayerSlice) else LayerSlice(*sl) for sl in self.layers]
        if self.layers and self.layers[-1].stop != self.values.size:
            raise ValueError(
                f"layer slices cover {self.layers[-1].stop} filters but the embedding has {self.values.size}"
            )
        self.meta = {str(k): str(v) for k, v in self.meta.items()}

    # -- convenience -------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """Number of filters (the embedding dimension)."""
        return int(self.values.size)

    @property
    def probe(self) -> str:
        return self.meta.get("probe", "")

    @property
    def method(self) -> str:
        return self.meta.get("method", "")

    @property
    def name(self) -> str:
        return self.meta.get("task", "")

    @property
    def norm(self) -> float:
        """L1 norm of the values (the paper's measure of task complexity, Fig. 2 right)."""
        return float(np.abs(self.values.astype(np.float64)).sum())

    @property
    def data_norm(self) -> float:
        """L1 norm of the data part of the embedding, ``values - trivial``, in the units the estimator
        measured it: the norm that tracks a task's difficulty (Fig. 2 right) without the prior. For the
        default ``relative`` estimator, whose values are the Fisher divided by the task's own level
        ``c`` (recorded as ``fisher_scale``), it is ``c * ||values - trivial||_1``. `norm` includes
        the prior."""
        data = np.abs(self.values.astype(np.float64) - self.trivial.astype(np.float64)).sum()
        scale = _method_options(self.meta).get("fisher_scale")
        return float(data * float(scale)) if self.method == "relative" and scale is not None else float(data)

    def layer(self, name: str) -> np.ndarray:
        """The values of one layer's filters."""
        for sl in self.layers:
            if sl.name == name:
                return self.values[sl.start : sl.stop]
        raise KeyError(f"no layer {name!r}; layers are {[sl.name for sl in self.layers][:8]}...")

    def check_compatible(self, other: TaskEmbedding) -> None:
        """Raise `IncompatibleEmbeddingsError` unless `other` was made the same way: the comparability
        rule of `hf_task2vec.compat` (probe, weights, estimator, robust prior, image size, text
        truncation and pooling, dimension, trivial embedding), one line naming the option that fixes it."""
        check_comparable(self, other)

    def __repr__(self) -> str:
        return (
            f"TaskEmbedding(task={self.name!r}, probe={self.probe!r}, method={self.method!r}, "
            f"dim={self.dim}, norm={self.norm:.4g})"
        )

    # -- safetensors I/O ---------------------------------------------------------------------
    def _tensor_digest(self) -> str:
        """The format-1 hash: the tensor bytes only."""
        h = hashlib.sha256()
        h.update(self.values.astype("<f4").tobytes())
        h.update(self.trivial.astype("<f4").tobytes())
        return h.hexdigest()

    def _digest(self) -> str:
        """The format-2 hash: the tensors, the layer slices and every metadata entry (canonical JSON)."""
        h = hashlib.sha256()
        h.update(f"{FORMAT}/{FORMAT_VERSION}\0".encode())
        for arr in (self.values, self.trivial):
            data = arr.astype("<f4").tobytes()
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
        described = {"layers": [[sl.name, sl.start, sl.stop] for sl in self.layers], "meta": self.meta}
        h.update(json.dumps(described, sort_keys=True, ensure_ascii=True, separators=(",", ":")).encode())
        return h.hexdigest()

    def check_finite(self) -> None:
        """Raise `EmbeddingFileError` if any value is NaN or infinite (such an embedding is refused
        by `save` and by the distances)."""
        for label, arr in (("values", self.values), ("trivial", self.trivial)):
            bad = ~np.isfinite(arr)
            if bad.any():
                first = int(np.argmax(bad))
                raise EmbeddingFileError(
                    f"embedding {self.name!r} is not finite: {int(bad.sum())} of its {arr.size} {label} are NaN or "
                    f"infinite (first at filter {first}). Check the task's inputs for NaN/inf and embed it again "
                    "(with precision='fp32')"
                )

    def to_bytes(self) -> bytes:
        """The safetensors serialisation (what `save` writes); refuses a non-finite embedding."""
        from safetensors.numpy import save

        self.check_finite()
        meta = dict(self.meta)
        meta.update(
            format=FORMAT,
            format_version=FORMAT_VERSION,
            layers=json.dumps([[sl.name, sl.start, sl.stop] for sl in self.layers]),
            sha256=self._digest(),
        )
        return save({"values": self.values, "trivial": self.trivial}, metadata=meta)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the embedding to ``path`` atomically (temp file + rename); returns the path.

        Raises:
            EmbeddingFileError: the embedding is not finite (nothing is written).
            OutputError: ``path`` cannot be written (a directory, read-only, no space left...); an
                existing file at ``path`` is left as it was and no temporary file remains.
        """
        path = Path(path)
        data = self.to_bytes()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, data)
        except Task2VecError:
            raise
        except OSError as exc:
            raise OutputError(f"cannot write the embedding to {str(path)!r}: {_write_reason(exc, path)}") from exc
        return path

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "<bytes>", allow_unverified: bool = False) -> TaskEmbedding:
        """Parse and verify a safetensors serialisation.

        Args:
            data: the bytes `to_bytes` / `save` wrote.
            source: how to name the data in messages (e.g. the file path).
            allow_unverified: also read an embedding whose metadata cannot be verified (format 1,
                hashed over the tensors only, or a file saved from such an embedding). It is marked
                with `UNVERIFIED_KEY` in ``meta`` (see `unverified_reason`) and stores refuse it.

        Raises:
            EmbeddingFileError: unreadable, truncated, edited or corrupted; or unverified metadata
                without ``allow_unverified``.
        """
        from safetensors import safe_open  # noqa: F401  (import check only)
        from safetensors.numpy import load

        fix = "re-create it with `hf-task2vec embed` or download it again"
        try:
            tensors = load(data)
            header_len = int.from_bytes(data[:8], "little")
            header = json.loads(data[8 : 8 + header_len])
        except Exception as exc:  # safetensors raises several types for bad bytes
            raise EmbeddingFileError(
                f"{source} is not a readable safetensors file ({exc}); it may be truncated: {fix}"
            ) from exc
        meta = header.get("__metadata__") or {}
        if meta.get("format") != FORMAT:
            raise EmbeddingFileError(f"{source} is a safetensors file but not a hf_task2vec embedding")
        version = meta.get("format_version")
        if version not in READABLE_VERSIONS:
            raise EmbeddingFileError(
                f"{source} has embedding format version {version!r}; this hf_task2vec reads versions "
                f"{', '.join(READABLE_VERSIONS)}: upgrade hf_task2vec (pip install -U hf_task2vec) or {fix}"
            )
        if set(tensors) != {"values", "trivial"}:
            raise EmbeddingFileError(f"{source} holds tensors {sorted(tensors)}, expected values and trivial")
        try:
            layers = [LayerSlice(str(n), int(a), int(b)) for n, a, b in json.loads(meta.pop("layers", "[]"))]
        except (ValueError, TypeError) as exc:
            raise EmbeddingFileError(f"{source} has unreadable layer metadata: {fix}") from exc
        digest = meta.pop("sha256", None)
        meta.pop("format", None)
        meta.pop("format_version", None)
        try:
            emb = cls(tensors["values"], tensors["trivial"], layers, meta)
        except ValueError as exc:
            raise EmbeddingFileError(f"{source} is inconsistent ({exc}): {fix}") from exc
        if version == "1":
            if digest != emb._tensor_digest():
                raise EmbeddingFileError(
                    f"{source} failed its integrity check (the sha256 of its values does not match the one "
                    f"recorded when it was written): the file was modified or corrupted; {fix}"
                )
            if not allow_unverified:
                raise EmbeddingFileError(
                    f"{source} is in embedding format 1, whose hash covers the tensors only: its metadata (probe, "
                    "method, image size, label names...) cannot be verified, so it is not read. Re-create it with "
                    "`hf-task2vec embed` (recommended), or read it anyway with --allow-unverified "
                    "(TaskEmbedding.load(path, allow_unverified=True)); an unverified embedding is never pushed to "
                    "a store"
                )
            emb.meta.setdefault(UNVERIFIED_KEY, "format 1: the hash covered the tensors only")
        elif digest != emb._digest():
            raise EmbeddingFileError(
                f"{source} failed its integrity check: the sha256 recorded when it was written does not match its "
                "tensors and metadata, so the file was modified (e.g. its probe, method or image size edited) or "
                f"corrupted; {fix}"
            )
        elif UNVERIFIED_KEY in emb.meta and not allow_unverified:
            raise EmbeddingFileError(
                f"{source} was saved from an unverified embedding ({emb.meta[UNVERIFIED_KEY]}): its metadata "
                "(probe, method, image size, label names...) was never verified, so it is not read. Re-create it "
                "with `hf-task2vec embed`, or read it anyway with --allow-unverified "
                "(TaskEmbedding.load(path, allow_unverified=True))"
            )
        if UNVERIFIED_KEY in emb.meta:
            logger.warning(
                "%s: reading an embedding whose metadata is not verified (%s; allow_unverified=True). Saving it "
                "keeps it unverified, and stores refuse it; re-create it with `hf-task2vec embed` to verify it",
                source,
                emb.meta[UNVERIFIED_KEY],
            )
        if not np.all(np.isfinite(emb.values)):
            raise EmbeddingFileError(f"{source} contains non-finite values: {fix}")
        return emb

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, allow_unverified: bool = False) -> TaskEmbedding:
        """Read and verify an embedding written by `save` (``allow_unverified``: see `from_bytes`)."""
        path = Path(path)
        if not path.is_file():
            raise EmbeddingFileError(f"embedding file {str(path)!r} does not exist")
        return cls.from_bytes(path.read_bytes(), source=repr(str(path)), allow_unverified=allow_unverified)


def unverified_reason(embedding: TaskEmbedding) -> str | None:
    """Why ``embedding``'s metadata is not verified (it was read with ``allow_unverified=True``),
    or ``None`` for a verified one."""
    return embedding.meta.get(UNVERIFIED_KEY)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename, so
    that a reader (or a crash) never sees a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_reason(exc: OSError, path: Path) -> str:
    """Why an output file could not be written, and what to do."""
    import errno

    if isinstance(exc, IsADirectoryError) or path.is_dir():
        return "it is a directory; give a file path (e.g. .../task.safetensors)"
    if isinstance(exc, NotADirectoryError):
        return "a part of that path is a file, not a directory; choose another location"
    reasons = {
        errno.ENOSPC: "no space left on that file system; free some space or save it elsewhere",
        errno.EDQUOT: "the disk quota is exhausted; free some space or save it elsewhere",
        errno.EROFS: "that location is on a read-only file system; save it elsewhere",
        errno.EACCES: "permission denied; save it where you can write",
        errno.EPERM: "operation not permitted; save it where you can write",
        errno.ENAMETOOLONG: "the file name is too long; choose a shorter one",
    }
    return reasons.get(exc.errno or 0, f"{exc.strerror or exc}; choose another location")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _method_options(meta: Mapping[str, str]) -> dict[str, str]:
    """The estimator's own options recorded in ``method_options`` (JSON; empty when absent or unreadable)."""
    try:
        found = json.loads(meta.get("method_options") or "{}")
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}
