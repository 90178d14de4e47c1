"""The safety checks of an upload, before anything of it is used: its type and size, a zip's central
directory (entry count, declared sizes, per-entry and running compression ratio, encryption, absolute
and ``..`` paths, backslashes, over-long names, symlinks and other special files, duplicates, members
named like images that do not start like images), a capped streaming extraction, and a pixel-capped
decode of every image. `hf_task2vec.uploads` builds the task's dataset from what passes.
"""

from __future__ import annotations

import errno
import io
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

from PIL import Image

from .errors import UploadError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
TABLE_EXTENSIONS = frozenset({".csv", ".parquet"})
UPLOAD_EXTENSIONS = frozenset({".zip"}) | TABLE_EXTENSIONS
_IGNORED_SILENTLY = ("__MACOSX/", ".DS_Store", "Thumbs.db", "desktop.ini")
MAX_NAME_BYTES = 255  # one file or folder name (NAME_MAX of Linux file systems)
MAX_PATH_BYTES = 1024  # a whole zip entry path (well under PATH_MAX with the extraction folder)


@dataclass(frozen=True)
class UploadLimits:
    """What one upload may use. Defaults suit a free CPU server; override with environment variables
    ``<ENV_PREFIX><FIELD>`` (``T2V_UPLOAD_MAX_IMAGES=2000``) via `UploadLimits.from_env`."""

    ENV_PREFIX: ClassVar[str] = "T2V_UPLOAD_"

    max_upload_bytes: int = 200 * 2**20
    max_zip_entries: int = 20_000
    max_images: int = 5_000
    max_total_bytes: int = 1 * 2**30
    max_entry_bytes: int = 64 * 2**20
    max_ratio: float = 200.0
    ratio_min_bytes: int = 2**20
    max_image_pixels: int = 40_000_000
    max_classes: int = 1_000
    max_table_rows: int = 20_000

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None):
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, f in cls.__dataclass_fields__.items():
            var = f"{cls.ENV_PREFIX}{name.upper()}"
            raw = env.get(var)
            if raw:
                try:
                    values[name] = type(f.default)(float(raw))
                except ValueError as exc:
                    raise ValueError(f"environment variable {var}={raw!r} is not a number") from exc
        return cls(**values)


def _mb(n: int) -> str:
    return f"{n / 2**20:.0f} MB"


def safe_task_name(text: str, default: str = "my-task") -> str:
    """A file-system and Hub friendly task name from user text (an upload name or a repo id)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-._")[:64]
    return stem or default


def _zip_member_parts(name: str) -> tuple[str, ...]:
    """The path parts of a zip member, or `UploadError` if the name could escape the target folder."""
    if "\x00" in name or "\\" in name:
        raise UploadError(f"the zip holds an entry with an unsafe name {name!r} (NUL or backslash); rebuild the zip")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise UploadError(f"the zip holds an entry with an absolute path {name!r}; zip the folder with relative paths")
    parts = tuple(p for p in PurePosixPath(name).parts if p not in ("", "."))
    if ".." in parts:
        raise UploadError(
            f"the zip holds an entry that points outside its folder ({name!r}, path traversal); this is refused. "
            "Zip your class folders directly."
        )
    long_part = next((p for p in parts if len(p.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES), None)
    if long_part is not None:
        raise UploadError(
            f"the zip entry {_short(name)} has a file or folder name of {len(long_part)} characters; names may have "
            f"at most {MAX_NAME_BYTES} bytes. Rename it (short class folder and file names) and zip again."
        )
    if len(name.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        raise UploadError(
            f"the zip entry {_short(name)} has a path of {len(name)} characters; the limit is {MAX_PATH_BYTES}. "
            "Use shorter folder names and zip again."
        )
    return parts


def _short(name: str, n: int = 60) -> str:
    """A quoted, shortened name for messages (a 300-character name would swamp the message)."""
    return repr(name if len(name) <= n else name[: n - 3] + "...")


def public_text(exc: BaseException, *roots: str | os.PathLike[str]) -> str:
    """An exception's text for the user: the server's paths (a temporary folder, the extraction
    folder) are replaced by the bare file name, and the text is shortened."""
    text = str(exc.strerror if isinstance(exc, OSError) and exc.strerror else exc)
    for root in (*roots, tempfile.gettempdir()):
        text = text.replace(os.fspath(root).rstrip("/") + "/", "")
    text = re.sub(r"(?<![\w.])/(?:[^\s'\"/:]+/)+([^\s'\"/:]+)", r"\1", text)  # any other absolute path
    return text[:200]


def _is_hidden(parts: Sequence[str]) -> bool:
    joined = "/".join(parts) + ("/" if parts else "")
    return any(p.startswith(".") for p in parts) or any(joined.startswith(s) or s in parts for s in _IGNORED_SILENTLY)



def check_upload(path: str | os.PathLike[str] | None, limits: UploadLimits) -> Path:
    """Check that an uploaded file exists, has a supported type and is within the size limit."""
    if path is None or str(path) == "":
        raise UploadError("no file was uploaded: upload a .zip of class folders, a .csv or a .parquet")
    p = Path(path)
    if not p.is_file():
        raise UploadError(f"the uploaded file {p.name!r} is missing on the server; upload it again")
    if p.suffix.lower() not in UPLOAD_EXTENSIONS:
        raise UploadError(
            f"{p.name!r} is not a supported upload: use a .zip of class folders, or a .csv / .parquet table "
            "of images and labels"
        )
    size = p.stat().st_size
    if size > limits.max_upload_bytes:
        raise UploadError(
            f"{p.name!r} is {_mb(size)}; uploads may be at most {_mb(limits.max_upload_bytes)}. "
            "Use fewer images (a few hundred per class is enough) or embed locally with `hf-task2vec embed`."
        )
    if size == 0:
        raise UploadError(f"{p.name!r} is empty")
    return p


@dataclass
class ExtractedZip:
    """What `safe_extract_zip` wrote: image files and table files, relative to ``root``."""

    root: Path
    images: list[PurePosixPath]
    tables: list[PurePosixPath]
    ignored: list[str] = field(default_factory=list)
    #: members named like images whose first bytes are not an image's (never extracted)
    not_images: list[str] = field(default_factory=list)


#: How each image format starts (checked on a member's first bytes before anything is extracted).
_IMAGE_MAGIC: tuple[tuple[bytes, ...], ...] = (
    (b"\x89PNG\r\n\x1a\n",),
    (b"\xff\xd8\xff",),
    (b"GIF87a", b"GIF89a"),
    (b"BM",),
    (b"II*\x00", b"MM\x00*"),
)


def _looks_like_image(head: bytes) -> bool:
    """Whether ``head`` (a file's first bytes) starts like a PNG, JPEG, GIF, BMP, TIFF or WebP file."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    return any(head.startswith(magic) for group in _IMAGE_MAGIC for magic in group)


def _member_head(zf: zipfile.ZipFile, info: zipfile.ZipInfo, n: int = 16) -> bytes:
    """The first ``n`` bytes of a member (only they are decompressed)."""
    try:
        with zf.open(info) as src:
            return src.read(n)
    except (zipfile.BadZipFile, EOFError, OSError, RuntimeError, NotImplementedError, ValueError, zlib.error) as exc:
        raise UploadError(
            f"the zip entry {_short(info.filename)} is damaged ({public_text(exc)}); create the zip again"
        ) from exc


def _zip_entry_count(fh: Any, label: str = "the uploaded file") -> int:
    """The entry count from the end-of-central-directory record, read before the (possibly huge)
    central directory is parsed."""
    endrec = zipfile._EndRecData(fh)  # stable private helper (since Python 2) that also handles zip64
    if not endrec:
        raise UploadError(f"{label} is not a zip archive (no end-of-archive record); upload a real .zip")
    return int(endrec[zipfile._ECD_ENTRIES_TOTAL])


def safe_extract_zip(path: str | os.PathLike[str], dest: str | os.PathLike[str], limits: UploadLimits) -> ExtractedZip:
    """Check a zip from its central directory, then extract its image and table files into ``dest``.

    Refused with `UploadError`: not a zip, too many entries, declared or actual sizes over the limits,
    a compression ratio typical of zip bombs, encrypted entries, absolute or ``..`` paths, symlinks
    and other non-regular files, duplicate names. Other files are skipped and listed in ``ignored``.
    """
    path, dest = Path(path), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    with open(path, "rb") as fh:
        try:
            count = _zip_entry_count(fh, repr(path.name))
        except OSError as exc:
            raise UploadError(f"{path.name!r} cannot be read as a zip ({public_text(exc, path.parent)})") from exc
        if count > limits.max_zip_entries:
            raise UploadError(
                f"{path.name!r} holds {count} entries; the limit is {limits.max_zip_entries}. Use fewer images."
            )
        try:
            zf = zipfile.ZipFile(fh)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
            raise UploadError(
                f"{path.name!r} is not a valid zip archive ({public_text(exc, path.parent)}); create it again"
            ) from exc
        with zf:
            return _extract_checked(zf, path.name, root, limits)


def _extract_checked(zf: zipfile.ZipFile, label: str, root: Path, limits: UploadLimits) -> ExtractedZip:
    infos = zf.infolist()
    if len(infos) > limits.max_zip_entries:
        raise UploadError(f"{label!r} holds {len(infos)} entries; the limit is {limits.max_zip_entries}")
    wanted: list[tuple[zipfile.ZipInfo, tuple[str, ...]]] = []
    ignored: list[str] = []
    declared_total = 0
    compressed_total = 0
    seen: set[tuple[str, ...]] = set()
    for info in infos:
        parts = _zip_member_parts(info.filename)
        mode = info.external_attr >> 16
        if info.is_dir():
            continue
        if mode and stat.S_IFMT(mode) not in (0, stat.S_IFREG):
            kind = "a symbolic link" if stat.S_ISLNK(mode) else "a special file"
            raise UploadError(f"the zip entry {info.filename!r} is {kind}; only regular files are accepted")
        if info.flag_bits & 0x1:
            raise UploadError(f"the zip entry {info.filename!r} is encrypted; upload an unencrypted zip")
        if not parts or _is_hidden(parts):
            continue
        suffix = PurePosixPath(parts[-1]).suffix.lower()
        if suffix not in IMAGE_EXTENSIONS and suffix not in TABLE_EXTENSIONS:
            ignored.append(info.filename)
            continue
        if parts in seen:
            raise UploadError(f"the zip holds {info.filename!r} twice; rebuild it")
        seen.add(parts)
        if info.file_size > limits.max_entry_bytes:
            raise UploadError(
                f"the zip entry {info.filename!r} is {_mb(info.file_size)} uncompressed; the limit per file is "
                f"{_mb(limits.max_entry_bytes)}"
            )
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size >= limits.ratio_min_bytes and ratio > limits.max_ratio:
            raise UploadError(
                f"the zip entry {info.filename!r} expands {ratio:.0f}x ({_mb(info.file_size)} from "
                f"{info.compress_size} bytes): this looks like a zip bomb and is refused"
            )
        declared_total += info.file_size
        compressed_total += info.compress_size
        wanted.append((info, parts))
        # The ratio of the running total too: many entries just under `ratio_min_bytes` add up.
        total_ratio = declared_total / max(compressed_total, 1)
        if declared_total >= limits.ratio_min_bytes and total_ratio > limits.max_ratio:
            raise UploadError(
                f"{label!r} expands {total_ratio:.0f}x ({_mb(declared_total)} from {_mb(compressed_total)} over its "
                f"first {len(wanted)} files; the limit is {limits.max_ratio:.0f}x): this looks like a zip bomb and is "
                "refused. Zip ordinary image files (PNG/JPEG)."
            )
    cap = _total_cap(root, limits)
    if declared_total > cap:
        raise UploadError(
            f"{label!r} would expand to {_mb(declared_total)}; the limit is {_mb(cap)}. "
            "This looks like a zip bomb, or the dataset is too large to upload: use fewer images."
        )
    n_images = sum(PurePosixPath(p[-1]).suffix.lower() in IMAGE_EXTENSIONS for _, p in wanted)
    if n_images > limits.max_images:
        raise UploadError(
            f"{label!r} holds {n_images} images; uploads may hold at most {limits.max_images}. Keep a few hundred "
            "per class (Task2Vec samples at most `max samples` of them anyway)."
        )
    # The members' type, from their first bytes, before anything is written: a zip of files named .png that
    # are not images is refused (or they are left out) without extracting them.
    not_images = [
        info.filename for info, parts in wanted
        if PurePosixPath(parts[-1]).suffix.lower() in IMAGE_EXTENSIONS and not _looks_like_image(_member_head(zf, info))
    ]
    if not_images:
        bad = set(not_images)
        wanted = [(info, parts) for info, parts in wanted if info.filename not in bad]
        if not any(PurePosixPath(p[-1]).suffix.lower() in IMAGE_EXTENSIONS for _, p in wanted):
            raise UploadError(
                f"{label!r}: none of its {len(not_images)} image files could be read as an image (e.g. "
                f"{_short(not_images[0])} does not start like a PNG, JPEG, GIF, BMP, TIFF or WebP file); nothing was "
                "extracted. Zip real image files, one folder per class"
            )
    images: list[PurePosixPath] = []
    tables: list[PurePosixPath] = []
    written = 0
    for info, parts in wanted:
        target = root.joinpath(*parts)
        if not target.resolve().is_relative_to(root):  # belt and braces: the parts were checked above
            raise UploadError(f"the zip entry {info.filename!r} points outside the extraction folder")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UploadError(
                f"the folder of zip entry {_short(info.filename)} cannot be created ({public_text(exc, root)}); "
                "rename it and zip again"
            ) from exc
        written += _copy_capped(zf, info, target, cap - written)
        rel = PurePosixPath(*parts)
        (tables if rel.suffix.lower() in TABLE_EXTENSIONS else images).append(rel)
    return ExtractedZip(root, images, tables, ignored, not_images)


def _total_cap(root: Path, limits: UploadLimits) -> int:
    """The most bytes one extraction may write: ``limits.max_total_bytes``, and never more than a
    quarter of the free space where it extracts (other requests and the outputs need room too)."""
    try:
        free = shutil.disk_usage(root).free
    except OSError:
        return limits.max_total_bytes
    return max(0, min(limits.max_total_bytes, free // 4))


def _copy_capped(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: int) -> int:
    """Stream one member to ``target`` (created exclusively, never through a link), stopping as soon
    as it exceeds its declared size or the remaining byte budget."""
    cap = min(info.file_size, budget)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    n = 0
    try:
        fd = os.open(target, flags, 0o600)
    except FileExistsError as exc:
        raise UploadError(f"the zip holds {_short(info.filename)} twice; rebuild it") from exc
    except OSError as exc:  # ENAMETOOLONG, EILSEQ (a name this file system refuses), ENOSPC...
        raise UploadError(
            f"the zip entry {_short(info.filename)} cannot be written ({public_text(exc, target.parent)}); "
            "rename it with a short plain name and zip again"
        ) from exc
    try:
        with os.fdopen(fd, "wb") as out, zf.open(info) as src:
            while chunk := src.read(1 << 16):
                n += len(chunk)
                if n > cap:
                    raise UploadError(
                        f"the zip entry {info.filename!r} expands beyond its declared size or the total limit: "
                        "refused as a zip bomb"
                    )
                out.write(chunk)
    except UploadError:
        target.unlink(missing_ok=True)
        raise
    except (zipfile.BadZipFile, EOFError, OSError, RuntimeError, NotImplementedError, ValueError) as exc:
        target.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise UploadError(
                "the server ran out of disk space while unpacking the zip; try again later with fewer images"
            ) from exc
        raise UploadError(
            f"the zip entry {_short(info.filename)} is damaged ({public_text(exc, target.parent)}); "
            "create the zip again"
        ) from exc
    return n


# -- images -----------------------------------------------------------------------------------------
def check_image(source: str | os.PathLike[str] | bytes, limits: UploadLimits) -> str | None:
    """``None`` if ``source`` (a path or encoded bytes) is a decodable image within the pixel limit,
    else a short reason."""
    try:
        handle = io.BytesIO(source) if isinstance(source, bytes | bytearray) else open(source, "rb")  # noqa: SIM115
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    try:
        with handle, Image.open(handle) as img:
            w, h = img.size
            if w * h > limits.max_image_pixels:
                return f"is {w}x{h} pixels; the limit is {limits.max_image_pixels:,} pixels per image"
            if w < 1 or h < 1:
                return "has no pixels"
            img.load()
    except Image.DecompressionBombError:
        return f"is larger than {limits.max_image_pixels:,} pixels"
    except Exception as exc:  # PIL raises many types for damaged files (OSError, SyntaxError, ValueError...)
        where = [os.path.dirname(os.fspath(source))] if not isinstance(source, bytes | bytearray) else []
        return f"is not a readable image ({type(exc).__name__}: {public_text(exc, *where)[:80]})"
    return None
