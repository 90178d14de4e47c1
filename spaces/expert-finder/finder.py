"""The expert finder without the UI: safe input handling and the search pipeline.

The Gradio app (``app.py``) is a thin layer over this module, which is importable and tested on
its own (``tests/test_space.py``). Everything a user uploads is hostile until proven otherwise:

* an upload is size-checked before it is opened;
* a zip is checked from its central directory before anything is extracted (entry count, declared
  sizes, per-entry compression ratio, encrypted entries, absolute paths, ``..``, backslashes,
  symlinks and other special files), and then extracted by streaming with a byte cap into a fresh
  temporary folder, writing only image and table files (others are listed as ignored);
* every image is opened with a pixel cap and fully decoded before it is used; unreadable images are
  left out and named in the notes; a task needs at least two classes;
* image paths in a table are resolved only inside the uploaded zip.

Problems the user can fix raise `InputError`, whose message says what was wrong and what to do; the
app shows it with ``gr.Error``.

The search embeds the task with `hf_task2vec.Task2Vec` (same probe, estimator and image size as the
expert index), ranks the experts with the index's ``select(embedding, k, metric)``, and draws a 2-D
map (classical MDS or t-SNE of the symmetric Task2Vec distances) and a distance heatmap of the task
among the experts' training tasks. With ``rerank`` (a transferability score of
`hf_task2vec.transferability`), the Task2Vec shortlist of ``shortlist`` experts is re-ranked by one
forward pass of each over the task's images (`hf_task2vec.rerank`); experts the index cannot load are
listed as skipped, and when none can be loaded the Task2Vec ranking is shown.

Text: a .csv / .parquet whose input column holds texts (no image column; ``text``, ``sentence``... or
the one string column next to the label, as `hf_task2vec.load_task` detects) is a text task, ranked
with a text expert index (`load_text_expert_index`: the offline MiniLM experts of
``benchmarks/build_text_experts.py`` by default). An index is only searched with tasks of its own
modality (`index_modality`); the other kind is refused with a one-line reason.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import html
import io
import logging
import math
import os
import re
import shutil
import stat
import tempfile
import threading
import time
import warnings
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

logger = logging.getLogger("expert_finder")

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
TABLE_EXTENSIONS = frozenset({".csv", ".parquet"})
UPLOAD_EXTENSIONS = frozenset({".zip"}) | TABLE_EXTENSIONS
METADATA_NAMES = ("metadata.csv", "metadata.parquet")
IMAGE_COLUMN_NAMES = ("image", "img", "file_name", "filename", "file", "path", "image_path", "filepath", "picture")
LABEL_COLUMN_NAMES = ("label", "labels", "class", "target", "category", "y")
PROJECTIONS = ("mds", "tsne")
SPLIT_NAMES = frozenset({"train", "test", "validation", "valid", "val"})
_IGNORED_SILENTLY = ("__MACOSX/", ".DS_Store", "Thumbs.db", "desktop.ini")
_HUB_ID = re.compile(r"^(?!.*\.\.)(?!.*--)[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")
_NAME_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_NAME_BYTES = 255  # one file or folder name (NAME_MAX of Linux file systems)
MAX_PATH_BYTES = 1024  # a whole zip entry path (well under PATH_MAX with the extraction folder)


class InputError(ValueError):
    """A problem with the user's input; the message names it and says how to fix it."""


@dataclass(frozen=True)
class Limits:
    """What one request may use. Defaults suit a free CPU Space; override with environment
    variables ``T2V_SPACE_<FIELD>`` (e.g. ``T2V_SPACE_MAX_IMAGES=2000``) via `Limits.from_env`."""

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
    max_hub_rows: int = 5_000
    max_samples: int = 5_000

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Limits:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, f in cls.__dataclass_fields__.items():
            raw = env.get(f"T2V_SPACE_{name.upper()}")
            if raw:
                try:
                    values[name] = type(f.default)(float(raw)) if f.default is not None else raw
                except ValueError as exc:
                    raise ValueError(f"environment variable T2V_SPACE_{name.upper()}={raw!r} is not a number") from exc
        return cls(**values)


def _mb(n: int) -> str:
    return f"{n / 2**20:.0f} MB"


# -- names ----------------------------------------------------------------------------------------
def safe_task_name(text: str, default: str = "my-task") -> str:
    """A file-system and Hub friendly task name from user text (an upload name or a repo id)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-._")[:64]
    return stem or default


def _zip_member_parts(name: str) -> tuple[str, ...]:
    """The path parts of a zip member, or `InputError` if the name could escape the target folder."""
    if "\x00" in name or "\\" in name:
        raise InputError(f"the zip holds an entry with an unsafe name {name!r} (NUL or backslash); rebuild the zip")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise InputError(f"the zip holds an entry with an absolute path {name!r}; zip the folder with relative paths")
    parts = tuple(p for p in PurePosixPath(name).parts if p not in ("", "."))
    if ".." in parts:
        raise InputError(
            f"the zip holds an entry that points outside its folder ({name!r}, path traversal); this is refused. "
            "Zip your class folders directly."
        )
    long_part = next((p for p in parts if len(p.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES), None)
    if long_part is not None:
        raise InputError(
            f"the zip entry {_short(name)} has a file or folder name of {len(long_part)} characters; names may have "
            f"at most {MAX_NAME_BYTES} bytes. Rename it (short class folder and file names) and zip again."
        )
    if len(name.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        raise InputError(
            f"the zip entry {_short(name)} has a path of {len(name)} characters; the limit is {MAX_PATH_BYTES}. "
            "Use shorter folder names and zip again."
        )
    return parts


def _short(name: str, n: int = 60) -> str:
    """A quoted, shortened name for messages (a 300-character name would swamp the message)."""
    return repr(name if len(name) <= n else name[: n - 3] + "...")


def _public(exc: BaseException, *roots: str | os.PathLike[str]) -> str:
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


# -- uploads --------------------------------------------------------------------------------------
def check_upload(path: str | os.PathLike[str] | None, limits: Limits) -> Path:
    """Check that an uploaded file exists, has a supported type and is within the size limit."""
    if path is None or str(path) == "":
        raise InputError("no file was uploaded: upload a .zip of class folders, a .csv or a .parquet")
    p = Path(path)
    if not p.is_file():
        raise InputError(f"the uploaded file {p.name!r} is missing on the server; upload it again")
    if p.suffix.lower() not in UPLOAD_EXTENSIONS:
        raise InputError(
            f"{p.name!r} is not a supported upload: use a .zip of class folders, or a .csv / .parquet table "
            "of images and labels"
        )
    size = p.stat().st_size
    if size > limits.max_upload_bytes:
        raise InputError(
            f"{p.name!r} is {_mb(size)}; this Space takes uploads up to {_mb(limits.max_upload_bytes)}. "
            "Use fewer images (a few hundred per class is enough) or embed locally with `hf-task2vec embed`."
        )
    if size == 0:
        raise InputError(f"{p.name!r} is empty")
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
        raise InputError(
            f"the zip entry {_short(info.filename)} is damaged ({_public(exc)}); create the zip again"
        ) from exc


def _zip_entry_count(fh: Any, label: str = "the uploaded file") -> int:
    """The entry count from the end-of-central-directory record, read before the (possibly huge)
    central directory is parsed."""
    endrec = zipfile._EndRecData(fh)  # stable private helper (since Python 2) that also handles zip64
    if not endrec:
        raise InputError(f"{label} is not a zip archive (no end-of-archive record); upload a real .zip")
    return int(endrec[zipfile._ECD_ENTRIES_TOTAL])


def safe_extract_zip(path: str | os.PathLike[str], dest: str | os.PathLike[str], limits: Limits) -> ExtractedZip:
    """Check a zip from its central directory, then extract its image and table files into ``dest``.

    Refused with `InputError`: not a zip, too many entries, declared or actual sizes over the limits,
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
            raise InputError(f"{path.name!r} cannot be read as a zip ({_public(exc, path.parent)})") from exc
        if count > limits.max_zip_entries:
            raise InputError(
                f"{path.name!r} holds {count} entries; the limit is {limits.max_zip_entries}. Use fewer images."
            )
        try:
            zf = zipfile.ZipFile(fh)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
            raise InputError(
                f"{path.name!r} is not a valid zip archive ({_public(exc, path.parent)}); create it again"
            ) from exc
        with zf:
            return _extract_checked(zf, path.name, root, limits)


def _extract_checked(zf: zipfile.ZipFile, label: str, root: Path, limits: Limits) -> ExtractedZip:
    infos = zf.infolist()
    if len(infos) > limits.max_zip_entries:
        raise InputError(f"{label!r} holds {len(infos)} entries; the limit is {limits.max_zip_entries}")
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
            raise InputError(f"the zip entry {info.filename!r} is {kind}; only regular files are accepted")
        if info.flag_bits & 0x1:
            raise InputError(f"the zip entry {info.filename!r} is encrypted; upload an unencrypted zip")
        if not parts or _is_hidden(parts):
            continue
        suffix = PurePosixPath(parts[-1]).suffix.lower()
        if suffix not in IMAGE_EXTENSIONS and suffix not in TABLE_EXTENSIONS:
            ignored.append(info.filename)
            continue
        if parts in seen:
            raise InputError(f"the zip holds {info.filename!r} twice; rebuild it")
        seen.add(parts)
        if info.file_size > limits.max_entry_bytes:
            raise InputError(
                f"the zip entry {info.filename!r} is {_mb(info.file_size)} uncompressed; the limit per file is "
                f"{_mb(limits.max_entry_bytes)}"
            )
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size >= limits.ratio_min_bytes and ratio > limits.max_ratio:
            raise InputError(
                f"the zip entry {info.filename!r} expands {ratio:.0f}x ({_mb(info.file_size)} from "
                f"{info.compress_size} bytes): this looks like a zip bomb and is refused"
            )
        declared_total += info.file_size
        compressed_total += info.compress_size
        wanted.append((info, parts))
        # The ratio of the running total too: many entries just under `ratio_min_bytes` add up.
        total_ratio = declared_total / max(compressed_total, 1)
        if declared_total >= limits.ratio_min_bytes and total_ratio > limits.max_ratio:
            raise InputError(
                f"{label!r} expands {total_ratio:.0f}x ({_mb(declared_total)} from {_mb(compressed_total)} over its "
                f"first {len(wanted)} files; the limit is {limits.max_ratio:.0f}x): this looks like a zip bomb and is "
                "refused. Zip ordinary image files (PNG/JPEG)."
            )
    cap = _total_cap(root, limits)
    if declared_total > cap:
        raise InputError(
            f"{label!r} would expand to {_mb(declared_total)}; the limit is {_mb(cap)}. "
            "This looks like a zip bomb, or the dataset is too large for this Space: use fewer images."
        )
    n_images = sum(PurePosixPath(p[-1]).suffix.lower() in IMAGE_EXTENSIONS for _, p in wanted)
    if n_images > limits.max_images:
        raise InputError(
            f"{label!r} holds {n_images} images; this Space takes at most {limits.max_images}. Keep a few hundred "
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
            raise InputError(
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
            raise InputError(f"the zip entry {info.filename!r} points outside the extraction folder")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(
                f"the folder of zip entry {_short(info.filename)} cannot be created ({_public(exc, root)}); "
                "rename it and zip again"
            ) from exc
        written += _copy_capped(zf, info, target, cap - written)
        rel = PurePosixPath(*parts)
        (tables if rel.suffix.lower() in TABLE_EXTENSIONS else images).append(rel)
    return ExtractedZip(root, images, tables, ignored, not_images)


def _total_cap(root: Path, limits: Limits) -> int:
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
        raise InputError(f"the zip holds {_short(info.filename)} twice; rebuild it") from exc
    except OSError as exc:  # ENAMETOOLONG, EILSEQ (a name this file system refuses), ENOSPC...
        raise InputError(
            f"the zip entry {_short(info.filename)} cannot be written ({_public(exc, target.parent)}); "
            "rename it with a short plain name and zip again"
        ) from exc
    try:
        with os.fdopen(fd, "wb") as out, zf.open(info) as src:
            while chunk := src.read(1 << 16):
                n += len(chunk)
                if n > cap:
                    raise InputError(
                        f"the zip entry {info.filename!r} expands beyond its declared size or the total limit: "
                        "refused as a zip bomb"
                    )
                out.write(chunk)
    except InputError:
        target.unlink(missing_ok=True)
        raise
    except (zipfile.BadZipFile, EOFError, OSError, RuntimeError, NotImplementedError, ValueError) as exc:
        target.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise InputError(
                "the server ran out of disk space while unpacking the zip; try again later with fewer images"
            ) from exc
        raise InputError(
            f"the zip entry {_short(info.filename)} is damaged ({_public(exc, target.parent)}); create the zip again"
        ) from exc
    return n


# -- images -----------------------------------------------------------------------------------------
def check_image(source: str | os.PathLike[str] | bytes, limits: Limits) -> str | None:
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
        return f"is not a readable image ({type(exc).__name__}: {_public(exc, *where)[:80]})"
    return None


# -- building the task ---------------------------------------------------------------------------------
def unit(task: Any) -> str:
    """What the task's examples are called on the page: ``"texts"`` or ``"images"``."""
    return "texts" if getattr(task, "is_text", False) else "images"


def _for_text(text: str, task: Any) -> str:
    """A sentence written for images (`ranking`'s verdicts and warnings), worded for a text task."""
    if not getattr(task, "is_text", False):
        return text
    # "*max images*" names the slider and stays as it is
    return re.sub(r"(?<!max )\bimage(s|\(s\))?\b", lambda m: "text" + (m.group(1) or ""), text)


@dataclass
class PreparedTask:
    """A validated task and what was left out on the way."""

    task: Any  # hf_task2vec.Task
    notes: list[str]
    source: str

    @property
    def summary(self) -> str:
        t = self.task
        counts = t.class_counts()
        classes = ", ".join(f"{html.escape(n)} ({c})" for n, c in zip(t.label_names, counts, strict=True))
        return f"**{html.escape(t.name)}**: {len(t)} {unit(t)}, {t.num_classes} classes: {classes}"


def _task_from_records(
    records: list[tuple[str | bytes, str]], *, name: str, source: str, notes: list[str], limits: Limits
) -> PreparedTask:
    """Validate (image, label) records and build a `hf_task2vec.Task` over an in-memory dataset."""
    import datasets

    from hf_task2vec import load_task

    if not records:
        raise InputError("no images found: give at least two classes with a few images each")
    if len(records) > limits.max_images:
        raise InputError(f"{len(records)} images; this Space takes at most {limits.max_images}")
    good: list[tuple[str | bytes, str]] = []
    bad: list[str] = []
    for i, (img, label) in enumerate(tqdm(records, desc="checking images", unit="img", mininterval=0.5)):
        reason = check_image(img, limits)
        if reason is None:
            good.append((img, label))
        else:
            where = Path(img).name if isinstance(img, str) else f"row {i}"
            bad.append(f"{where} ({label}): {reason}")
    if bad:
        shown = "; ".join(html.escape(b) for b in bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        notes.append(f"Left out {len(bad)} unreadable image(s): {shown}")
    if not good:
        raise InputError(f"none of the {len(records)} images could be read: {bad[0] if bad else ''}")
    names = sorted({lab for _, lab in good})
    if len(names) < 2:
        only = names[0]
        # files dropped before (not images) or here (unreadable) may be why a class is missing
        dropped = bad or any(n.startswith("Ignored ") for n in notes)
        raise InputError(
            f"the data has a single class ({only!r}{' after leaving out unreadable images' if dropped else ''}): a "
            "task needs at least two classes. Add a folder (or label) for another class."
        )
    if len(names) > limits.max_classes:
        raise InputError(f"{len(names)} classes; this Space takes at most {limits.max_classes}")
    missing = sorted({lab for _, lab in records} - set(names))
    if missing:
        notes.append(f"Class(es) with no readable image dropped: {html.escape(', '.join(missing[:10]))}")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    column = [img if isinstance(img, str) else {"bytes": bytes(img), "path": None} for img, _ in good]
    ds = datasets.Dataset.from_dict(
        {"image": column, "label": [names.index(lab) for _, lab in good]},
        features=features,
        info=datasets.DatasetInfo(dataset_name=source, features=features),
    )
    task = load_task(ds, input_column="image", label_column="label", name=name)
    return PreparedTask(task=task, notes=notes, source=source)


def _strip_common_prefix(paths: list[PurePosixPath], keep: int) -> tuple[list[tuple[str, ...]], tuple[str, ...]]:
    """Drop leading folders shared by every path while each keeps at least ``keep`` parts."""
    parts = [p.parts for p in paths]
    prefix: tuple[str, ...] = ()
    while parts and all(len(p) > keep for p in parts) and len({p[0] for p in parts}) == 1:
        prefix += (parts[0][0],)
        parts = [p[1:] for p in parts]
    return parts, prefix


def task_from_zip(
    path: str | os.PathLike[str],
    workdir: str | os.PathLike[str],
    limits: Limits,
    *,
    name: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
) -> PreparedTask:
    """A task from an uploaded zip: class folders (``<class>/<image>``, optionally under one top
    folder; with ``train/``/``test/`` split folders the train split is used), or a
    ``metadata.csv`` / ``metadata.parquet`` table naming image files inside the zip (the Hub's
    imagefolder layout)."""
    p = check_upload(path, limits)
    if p.suffix.lower() != ".zip":
        raise InputError(f"{p.name!r} is not a zip")
    ex = safe_extract_zip(p, Path(workdir) / "extracted", limits)
    notes: list[str] = []
    task_name = safe_task_name(name or p.stem)
    source = f"upload:{safe_task_name(p.name, 'upload.zip')}"
    all_files = ex.images + ex.tables
    rel_parts, prefix = _strip_common_prefix(all_files, keep=1)
    top = {PurePosixPath(*r) for r in rel_parts if len(r) == 1}
    table = next((t for t in sorted(top) if t.name.lower() in METADATA_NAMES), None)
    unused = [str(t) for t in ex.tables if table is None or t != PurePosixPath(*prefix, table)]
    ignored = ex.ignored + unused + ex.not_images
    if ignored:
        shown = ", ".join(html.escape(n) for n in ignored[:5]) + (" ..." if len(ignored) > 5 else "")
        notes.append(f"Ignored {len(ignored)} file(s) that are not images: {shown}")
    if table is not None:
        base = ex.root.joinpath(*prefix)
        records = _records_from_table(
            base / table, limits, base=base, image_column=image_column, label_column=label_column, label=table.name
        )
        notes.append(f"Read images and labels from {html.escape(table.name)} in the zip")
        return _task_from_records(records, name=task_name, source=source, notes=notes, limits=limits)
    if not ex.images:
        raise InputError(
            f"{p.name!r} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); zip one folder per class"
        )
    image_parts, prefix = _strip_common_prefix(ex.images, keep=2)
    splits = {r[0] for r in image_parts}
    if len(splits) > 1 and splits <= SPLIT_NAMES and all(len(r) >= 3 for r in image_parts):
        use = "train" if "train" in splits else sorted(splits)[0]
        notes.append(f"Found split folders {sorted(splits)}: used {use!r}")
        prefix += (use,)
        image_parts = [r[1:] for r in image_parts if r[0] == use]
    loose = [PurePosixPath(*prefix, *r) for r in image_parts if len(r) < 2]
    if loose:
        raise InputError(
            f"{p.name!r} has images outside class folders (e.g. {str(loose[0])!r}): put each image in a folder "
            "named after its class (<class>/<image>.png), or add a metadata.csv with file_name and label columns"
        )
    records = [(str(ex.root.joinpath(*prefix, *r)), r[0]) for r in image_parts]
    return _task_from_records(records, name=task_name, source=source, notes=notes, limits=limits)


def _pick_column(columns: Sequence[str], given: str | None, preferred: Sequence[str], kind: str, label: str) -> str:
    if given:
        if given not in columns:
            raise InputError(f"{label!r} has no column {given!r}; its columns are {list(columns)}")
        return given
    found = [c for c in columns if str(c).lower() in preferred]
    if len(found) == 1:
        return found[0]
    raise InputError(
        f"cannot tell the {kind} column of {label!r} (columns {list(columns)}): name it in the "
        f"'{kind} column' box (usual names: {', '.join(preferred[:4])})"
    )


def _read_table(path: Path, limits: Limits) -> Any:
    import pandas as pd

    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        try:
            meta = pq.ParquetFile(path).metadata
        except Exception as exc:
            raise InputError(
                f"{path.name!r} is not a readable parquet file ({_public(exc, path.parent)}); write it again "
                "(e.g. DataFrame.to_parquet or Dataset.to_parquet)"
            ) from exc
        if meta.num_rows > limits.max_table_rows:
            raise InputError(f"{path.name!r} has {meta.num_rows} rows; the limit is {limits.max_table_rows}")
        expanded = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        if expanded > limits.max_total_bytes:
            raise InputError(
                f"{path.name!r} expands to {_mb(expanded)} in memory; the limit is {_mb(limits.max_total_bytes)}"
            )
        try:
            return pd.read_parquet(path)
        except Exception as exc:
            raise InputError(f"{path.name!r} cannot be read as parquet ({_public(exc, path.parent)})") from exc
    import warnings

    quoting = (
        "a value holds an unquoted comma (a data:image/...;base64,... URI has one): put such values in double "
        'quotes ("data:image/png;base64,...") or upload a parquet file'
    )
    try:
        with warnings.catch_warnings():
            # index_col=False: a row with one extra field must not silently turn the first column into the index
            warnings.simplefilter("error", pd.errors.ParserWarning)
            df = pd.read_csv(path, nrows=limits.max_table_rows + 1, dtype=str, keep_default_na=False, index_col=False)
    except pd.errors.ParserWarning as exc:
        raise InputError(f"{path.name!r}: its rows have more fields than its header has columns: {quoting}") from exc
    except pd.errors.ParserError as exc:
        found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
        where = (
            f"line {found.group(2)} has {found.group(3)} fields but the header has {found.group(1)} columns"
            if found
            else _public(exc, path.parent)
        )
        raise InputError(f"{path.name!r} is not a well-formed CSV file ({where}): {quoting}") from exc
    except pd.errors.EmptyDataError as exc:
        raise InputError(
            f"{path.name!r} is empty: a CSV needs a header (e.g. image,label) and one row per image"
        ) from exc
    except (UnicodeDecodeError, ValueError, OSError) as exc:
        raise InputError(
            f"{path.name!r} is not a readable CSV file ({_public(exc, path.parent)}); save it as UTF-8 text with a "
            "header row"
        ) from exc
    if len(df) > limits.max_table_rows:
        raise InputError(f"{path.name!r} has more than {limits.max_table_rows} rows; use fewer images")
    return df


def _image_value(value: Any, row: int, base: Path | None, label: str) -> str | bytes:
    """Image bytes or a checked local path from one table cell."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        value = value.get("path")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{label!r} row {row}: the image cell is empty or not a path/bytes ({type(value).__name__})")
    value = value.strip()
    if value.startswith("data:image/"):
        try:
            return base64.b64decode(value.split(",", 1)[1], validate=True)
        except (IndexError, binascii.Error) as exc:
            raise InputError(f"{label!r} row {row}: the data URI is not valid base64") from exc
    if base is None:
        raise InputError(
            f"{label!r} row {row} names an image file ({value[:60]!r}) but only the table was uploaded. Put the "
            "table and the images in one zip (metadata.csv with file_name and label columns), or store the "
            "images themselves in the table (parquet bytes, or data:image/...;base64 URIs in a CSV)"
        )
    if value.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", value) or "://" in value:
        raise InputError(f"{label!r} row {row}: image path {value[:60]!r} must be relative to the table's folder")
    parts = PurePosixPath(value.replace("\\", "/")).parts
    if ".." in parts:
        raise InputError(f"{label!r} row {row}: image path {value[:60]!r} points outside the zip (path traversal)")
    target = base.joinpath(*parts).resolve()
    if not target.is_relative_to(base.resolve()):
        raise InputError(f"{label!r} row {row}: image path {value[:60]!r} points outside the zip")
    if not target.is_file():
        raise InputError(f"{label!r} row {row}: image {value[:60]!r} is not in the zip")
    return str(target)


def _records_from_table(
    path: Path,
    limits: Limits,
    *,
    base: Path | None,
    image_column: str | None,
    label_column: str | None,
    label: str,
    df: Any = None,
) -> list[tuple[str | bytes, str]]:
    df = _read_table(path, limits) if df is None else df
    if len(df) == 0:
        raise InputError(f"{label!r} has no rows")
    columns = [str(c) for c in df.columns]
    img_col = _pick_column(columns, image_column, IMAGE_COLUMN_NAMES, "image", label)
    lab_col = _pick_column(columns, label_column, LABEL_COLUMN_NAMES, "label", label)
    if img_col == lab_col:
        raise InputError(f"{label!r}: the image and label column are both {img_col!r}")
    records: list[tuple[str | bytes, str]] = []
    for row, (img, lab) in enumerate(zip(df[img_col].tolist(), df[lab_col].tolist(), strict=True)):
        if lab is None or (isinstance(lab, float) and math.isnan(lab)) or str(lab).strip() == "":
            raise InputError(f"{label!r} row {row}: the label is empty; give every image a label")
        records.append((_image_value(img, row, base, label), str(lab).strip()))
    return records


def _looks_like_images(values: Sequence[Any], probe_rows: int = 16) -> bool:
    """Whether a column's first non-empty cells are images (bytes, ``{"bytes"...}`` structs, data
    URIs or image file names) rather than text."""
    cells = [v for v in values[:probe_rows] if v is not None and not (isinstance(v, float) and math.isnan(v))]
    cells = [v for v in cells if not (isinstance(v, str) and not v.strip())]

    def image_like(v: Any) -> bool:
        if isinstance(v, bytes | bytearray | memoryview | dict):
            return True
        text = str(v).strip().lower()
        return text.startswith("data:image/") or PurePosixPath(text).suffix in IMAGE_EXTENSIONS

    return bool(cells) and all(image_like(v) for v in cells)


def is_text_table(df: Any, image_column: str | None = None, label_column: str | None = None) -> bool:
    """Whether a table is a text task: its input column (the one named in the image/text box, else
    any non-label column) holds text, not images, and no column is named like an image column."""
    columns = [str(c) for c in df.columns]
    if image_column:
        return image_column in columns and not _looks_like_images(df[image_column].tolist())
    if any(c.lower() in IMAGE_COLUMN_NAMES for c in columns):
        return False
    inputs = [c for c in columns if c != label_column and c.lower() not in LABEL_COLUMN_NAMES]
    return any(not _looks_like_images(df[c].tolist()) for c in inputs)


def _text_task_from_table(
    df: Any,
    *,
    name: str,
    source: str,
    text_column: str | None,
    label_column: str | None,
    label: str,
    limits: Limits,
) -> PreparedTask:
    """A text task from a table: the label column picked as for images, the text column (or a text
    pair) detected by `hf_task2vec.load_task` among the other string columns. Rows with an empty
    label are refused; rows with an empty text are left out (and counted in the notes)."""
    import datasets

    from hf_task2vec import Task2VecError, load_task

    columns = [str(c) for c in df.columns]
    if len(df) == 0:
        raise InputError(f"{label!r} has no rows")
    lab_col = _pick_column(columns, label_column, LABEL_COLUMN_NAMES, "label", label)
    if text_column == lab_col:
        raise InputError(f"{label!r}: the text and label column are both {lab_col!r}")

    def cell(v: Any) -> str | None:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return None
        return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)

    labels = [cell(v) for v in df[lab_col].tolist()]
    for row, lab in enumerate(labels):
        if lab is None or not lab.strip():
            raise InputError(f"{label!r} row {row}: the label is empty; give every text a label")
    labels = [lab.strip() for lab in labels]
    data = {c: [cell(v) for v in df[c].tolist()] for c in columns if c != lab_col}
    if text_column and text_column not in data:
        raise InputError(f"{label!r} has no column {text_column!r}; its columns are {columns}")
    names = sorted(set(labels))
    if len(names) < 2:
        raise InputError(
            f"the data has a single class ({names[0]!r}): a task needs at least two classes. Add texts of another "
            "class."
        )
    if len(names) > limits.max_classes:
        raise InputError(f"{len(names)} classes; this Space takes at most {limits.max_classes}")
    features = datasets.Features(
        {
            **{c: datasets.Value("string") for c in data},
            lab_col: datasets.ClassLabel(names=names),
        }
    )
    ds = datasets.Dataset.from_dict(
        {**data, lab_col: [names.index(lab) for lab in labels]},
        features=features,
        info=datasets.DatasetInfo(dataset_name=source, features=features),
    )
    notes: list[str] = []
    try:
        # allow_empty: empty texts are left out here (and counted in the notes below), not refused
        task = load_task(ds, input_column=text_column or None, label_column=lab_col, name=name, allow_empty=True)
        if not task.is_text:
            raise InputError(f"{label!r}: column {task.input_column!r} does not hold text")
        text_cols = [task.input_column] + ([task.pair_column] if getattr(task, "pair_column", None) else [])
        keep = [i for i in range(len(ds)) if all((ds[c][i] or "").strip() for c in text_cols)]
        if len(keep) < len(ds):
            notes.append(f"Left out {len(ds) - len(keep)} row(s) with an empty text")
            ds = ds.select(keep)
            task = load_task(ds, input_column=task.input_column, label_column=lab_col, name=name)
    except Task2VecError as exc:
        text = str(exc).replace("pass input_column=...", "name it in the 'image / text column' box")
        raise InputError(text[:500]) from exc
    notes.append(f"Read texts from column {html.escape(task.input_column)!s} and labels from {html.escape(lab_col)}")
    return PreparedTask(task=task, notes=notes, source=source)


def task_from_table(
    path: str | os.PathLike[str],
    limits: Limits,
    *,
    name: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
) -> PreparedTask:
    """A task from an uploaded .csv / .parquet whose image column holds the images themselves
    (parquet bytes or ``{"bytes": ...}`` structs as written by `datasets`, or data URIs in a CSV),
    or whose input column holds texts (`is_text_table`): a text task (``image_column`` then names the
    text column, if it must be named)."""
    p = check_upload(path, limits)
    if p.suffix.lower() not in TABLE_EXTENSIONS:
        raise InputError(f"{p.name!r} is not a .csv or .parquet table")
    df = _read_table(p, limits)
    if len(df) and is_text_table(df, image_column, label_column):
        return _text_task_from_table(
            df,
            name=safe_task_name(name or p.stem),
            source=f"upload:{safe_task_name(p.name, 'upload')}",
            text_column=image_column,
            label_column=label_column,
            label=p.name,
            limits=limits,
        )
    records = _records_from_table(
        p, limits, base=None, image_column=image_column, label_column=label_column, label=p.name, df=df
    )
    return _task_from_records(
        records,
        name=safe_task_name(name or p.stem),
        source=f"upload:{safe_task_name(p.name, 'upload')}",
        notes=[],
        limits=limits,
    )


def task_from_upload(path: str | os.PathLike[str], workdir: str | os.PathLike[str], limits: Limits, **kw: Any):
    """Dispatch on the upload's type (`task_from_zip` or `task_from_table`)."""
    p = check_upload(path, limits)
    if p.suffix.lower() == ".zip":
        return task_from_zip(p, workdir, limits, **kw)
    return task_from_table(p, limits, **kw)


def task_from_hub(
    repo_id: str,
    limits: Limits,
    *,
    split: str = "train",
    config: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    token: str | bool | None = None,
    name: str | None = None,
    max_samples: int = 256,
) -> PreparedTask:
    """A task from a Hub dataset, streamed: `hf_task2vec.load_task` of a streamed `TaskSpec` reads a
    class-balanced prefix of at most ``max_samples`` examples, scanning at most
    ``limits.max_hub_rows`` rows, so a huge dataset costs the Space neither disk nor time. Columns
    are detected as `load_task` does; the Hub is asked through the library's one gateway (retries,
    `HubError` with a ``reason``). The commit the id resolved to is recorded in the task.

    ``token``: the user's token; ``None`` uses the machine's credentials (``HF_TOKEN`` / login),
    ``False`` sends none (what a public Space must do for anonymous visitors)."""
    import datasets

    from hf_task2vec import HubError, Task2VecError, TaskSpec, load_task

    repo_id = (repo_id or "").strip()
    if not _HUB_ID.match(repo_id):
        raise InputError(f"{repo_id[:100]!r} is not a Hub dataset id; write it as user/name (e.g. ylecun/mnist)")
    split = (split or "train").strip()
    if not _NAME_PART.match(split):
        raise InputError(f"{split[:40]!r} is not a split name (e.g. train, test)")
    if config and not _NAME_PART.match(config):
        raise InputError(f"{config[:40]!r} is not a configuration name")
    spec = TaskSpec(
        repo_id,
        input_column=image_column or None,
        label_column=label_column or None,
        split=split,
        config=config or None,
        streaming=True,
        max_examples=max_samples,
        max_scan=limits.max_hub_rows,
    )
    try:
        loaded = load_task(spec, token=token)
    except HubError as exc:
        if exc.reason == "not_found":
            text = f"no dataset {repo_id!r} on the Hub (or it is private: log in or give a token with access)"
        elif exc.reason == "gated":
            text = f"{repo_id!r} is gated: accept its conditions on the Hub and log in"
        else:
            text = f"could not read {repo_id!r} from the Hub: {str(exc)[:300]}"
        raise InputError(text) from exc
    except Task2VecError as exc:
        raise InputError(str(exc)[:500]) from exc
    except Exception as exc:
        raise InputError(f"could not read {repo_id!r} ({split}): {type(exc).__name__}: {str(exc)[:300]}") from exc
    stats = loaded.stream_stats or {}
    sha = loaded.revision or ""
    if loaded.is_text:  # a text dataset: the streamed, class-balanced prefix is the task (tokenised by the probe)
        rows = stats.get("rows_read", len(loaded))
        notes = [
            f"Streamed {rows} rows of {html.escape(repo_id)} ({html.escape(split)}) at {sha[:8]}: a text task "
            f"(column {html.escape(loaded.input_column)})"
        ]
        if loaded.num_classes < 2:
            raise InputError(f"{repo_id!r} ({split}) gave a single class: a task needs at least two classes")
        loaded.name = safe_task_name(name or repo_id.split("/")[-1])
        return PreparedTask(task=loaded, notes=notes, source=repo_id)
    img_col = loaded.input_column
    records: list[tuple[str | bytes, str]] = []
    for i, row in enumerate(loaded.dataset.cast_column(img_col, datasets.Image(decode=False))):
        value = row[img_col]
        if not (isinstance(value, dict) and value.get("bytes")):
            raise InputError(f"{repo_id!r} row {i}: column {img_col!r} holds no image bytes; choose the image column")
        records.append((bytes(value["bytes"]), loaded.label_names[int(loaded.labels[i])]))
    stats = loaded.stream_stats or {}
    sha = loaded.revision or ""
    notes = [
        f"Streamed {stats.get('rows_read', len(records))} rows of {html.escape(repo_id)} ({html.escape(split)}) "
        f"at {sha[:8]}"
    ]
    if not stats.get("exhausted", True) and int(stats.get("rows_read", 0)) >= limits.max_hub_rows:
        notes.append(
            f"Stopped after {limits.max_hub_rows} rows before every class had its share; shuffle the dataset "
            "if it is sorted by class"
        )
    prepared = _task_from_records(
        records, name=safe_task_name(name or repo_id.split("/")[-1]), source=repo_id, notes=notes, limits=limits
    )
    t = prepared.task
    t.source, t.revision, t.split, t.config = repo_id, sha, split, config or ""
    return prepared


# -- the expert index ---------------------------------------------------------------------------------
def index_settings(index: Any) -> dict[str, str]:
    """How the index's experts were embedded: ``probe``, ``probe_revision``, ``method``, ``image_size``."""
    if len(index) == 0:
        raise InputError("the expert index is empty: add experts first")
    return dict(index.settings)


def index_modality(index: Any) -> str:
    """What an index's experts read: ``"text"`` when their embeddings record a text task, else ``"image"``."""
    opts = getattr(index, "embedding_options", {}) or {}
    return "text" if opts.get("modality") == "text" else "image"


def _load_index(source: str | os.PathLike[str] | None, token: str | None, env: str, folder: str) -> Any:
    """``source``, else ``$env`` (a folder or a Hub dataset repo id), else the first local ``folder``
    of `_index_paths` that exists (the benchmark's when none does)."""
    from hf_task2vec.selection import ExpertIndex

    if source is None:
        paths = _index_paths(folder)
        source = os.environ.get(env) or next((p for p in paths if p.is_dir()), paths[-1])
    if _looks_remote(source):
        return ExpertIndex.from_hub(os.fspath(source), token=token)
    return ExpertIndex.load(source)


def _index_paths(folder: str) -> list[Path]:
    """Local places searched for an index folder: beside the app, then under benchmarks/results."""
    here = Path(__file__).resolve().parent
    return [here / folder, here.parents[1] / "benchmarks" / "results" / folder]


def load_text_expert_index(source: str | os.PathLike[str] | None = None, *, token: str | None = None) -> Any:
    """The text expert index: ``source``, else ``$T2V_TEXT_EXPERT_INDEX_REPO`` (a folder or a Hub
    dataset repo id), else a ``text_expert_index`` folder next to this file, else the one
    ``benchmarks/build_text_experts.py`` writes, ``benchmarks/results/text_expert_index``."""
    return _load_index(source, token, "T2V_TEXT_EXPERT_INDEX_REPO", "text_expert_index")


def load_expert_index(source: str | os.PathLike[str] | None = None, *, token: str | None = None) -> Any:
    """Load the expert index (`hf_task2vec.selection.ExpertIndex`) from ``source`` (a folder or a Hub
    dataset repo id), else ``$T2V_EXPERT_INDEX_REPO`` (either of those), else an ``expert_index``
    folder next to this file (a Space can ship one), else the index built by the model-selection
    benchmark, ``benchmarks/results/expert_index`` (the offline default)."""
    return _load_index(source, token, "T2V_EXPERT_INDEX_REPO", "expert_index")


def default_index_paths() -> list[Path]:
    """Local places searched for an index: ``./expert_index`` beside the app, then the benchmark's."""
    return _index_paths("expert_index")


def _looks_remote(source: str | os.PathLike[str]) -> bool:
    s = os.fspath(source)
    return not Path(s).exists() and "/" in s and bool(_HUB_ID.match(s)) and not s.startswith((".", "/"))


# -- the search ---------------------------------------------------------------------------------------
@dataclass
class SearchResult:
    """Everything the app shows after a search.

    ``table`` holds the ranked experts as the page shows them (`TABLE_COLUMNS`: scores with three
    decimals, the range of ranks each expert takes over the resamples); ``records`` the raw
    `ExpertMatch` records; ``confidence`` how sure the ranking is (`ranking.Confidence`, over the
    shown embedding and its resamples); ``map_figure`` and ``heatmap_figure`` are Plotly figures
    (``heatmap_values`` the matrix drawn, in the ranking's metric); ``status`` the markdown summary
    for the page."""

    embedding: Any  # hf_task2vec.TaskEmbedding
    table: Any  # pandas.DataFrame
    records: list[Any]  # hf_task2vec.selection.ExpertMatch
    confidence: Any  # ranking.Confidence
    metric: str
    map_figure: Any
    heatmap_figure: Any
    heatmap_values: np.ndarray
    embedding_path: Path
    notes: list[str]
    seconds: float
    status: str = ""
    rerank: str | None = None  # the re-rank score asked for (None: Task2Vec ranking only)
    selection: Any = None  # hf_task2vec.rerank.Selection of a re-ranked search
    skipped: dict[str, str] = field(default_factory=dict)  # expert -> why it could not be re-ranked (page words)
    table_label: str = ""


_PROBES: dict[tuple[str, str], Any] = {}
_PROBES_LOCK = threading.Lock()


def get_probe(name: str, image_size: str = "") -> Any:
    """A probe, loaded once per (name, image size) and kept for later requests."""
    from hf_task2vec import list_probes, load_probe

    base = name.removesuffix("-random-init")
    if base not in list_probes():
        raise InputError(f"unknown probe {name!r}; choose one of {list_probes()}")
    key = (name, image_size)
    with _PROBES_LOCK:  # the start-up warm-up and a first request may ask at once: load once
        if key not in _PROBES:
            size = int(image_size) if image_size.isdigit() else None
            _PROBES[key] = load_probe(base, pretrained=base == name, image_size=size)
        return _PROBES[key]


def probe_loaded(name: str, image_size: str = "") -> bool:
    """Whether `get_probe` already holds this probe (the first search after start-up loads it)."""
    return (name, image_size) in _PROBES


def hub_url(model_id: str) -> str:
    """The Hub page of a model (honours ``HF_ENDPOINT``)."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    return f"{endpoint}/{model_id}"


def expert_link(model_id: str, info: dict[str, Any] | None = None) -> str:
    """The expert's id as markdown: a link to ``info["url"]`` when given (http/https), else to its
    Hub page when the index says it comes from the Hub (``source: "hub"``, as
    `ExpertIndex.add_hub_models` records), else plain text (local or benchmark experts)."""
    info = info or {}
    text = re.sub(r"([\\`*_{}\[\]()#+!|<>])", r"\\\1", model_id)
    url = info.get("url")
    if not (isinstance(url, str) and re.match(r"^https?://[^\s()<>]+$", url)):
        url = hub_url(model_id) if info.get("source") == "hub" and _HUB_ID.match(model_id) else None
    return f"[{text}]({url})" if url else text


def _trained_on(info: dict[str, Any], max_classes: int | None = 6) -> str:
    task = str(info.get("task") or info.get("dataset") or "")
    classes = info.get("classes")
    if isinstance(classes, list) and classes:
        cut = classes if max_classes is None else classes[:max_classes]
        shown = ", ".join(str(c) for c in cut) + (", ..." if len(cut) < len(classes) else "")
        task = f"{task} ({shown})" if task else shown
    return task


TABLE_COLUMNS = ("rank", "expert", "score", "rank in resamples", "trained on")
RERANK_TABLE_COLUMNS = (
    "rank",
    "expert",
    "re-rank score",
    "Task2Vec rank",
    "distance",
    "trained on",
)
TABLE_LABEL = (
    "Best experts, lowest score first (rank in resamples: the ranks each expert takes when your images are resampled)"
)
RERANK_OFF = "off"


def rerank_scores() -> list[str]:
    """The transferability scores the Task2Vec shortlist can be re-ranked by (`hf_task2vec.rerank`)."""
    from hf_task2vec.transferability import TRANSFERABILITY_METRICS

    return list(TRANSFERABILITY_METRICS)


def expert_root() -> Path:
    """The folder relative expert checkpoints are resolved against: ``$T2V_EXPERT_ROOT``, else the
    repository root (the benchmark's index records its checkpoints as ``benchmarks/cache/...``), else
    the app's folder (a deployed Space)."""
    if os.environ.get("T2V_EXPERT_ROOT"):
        return Path(os.environ["T2V_EXPERT_ROOT"])
    here = Path(__file__).resolve().parent
    repo = here.parents[1]
    return repo if (repo / "hf_task2vec").is_dir() else here


def skip_reason(reason: str, score: str = "") -> str:
    """One short line for the page saying why an expert could not be re-ranked (from the library's
    `hf_task2vec.rerank` reason), with the fix where there is one."""
    text = re.sub(r"^expert '[^']*': ", "", str(reason))
    if "checkpoint" in text and text.endswith("not found"):
        if "benchmarks/cache/" in text:
            return "checkpoint not found: run `python benchmarks/model_selection.py` to build it"
        return "checkpoint not found on this server"
    if "the file changed since it was indexed" in text:
        return "its checkpoint changed since the index was built (sha256 differs): rebuild the index"
    if "records no weights" in text or "must be a mapping" in text or "needs 'load_probe' or" in text:
        return "the index does not record how to load it"
    if "source classifier" in text:
        return (
            f"{score or 'this score'} needs the expert's source classifier, which it lacks: choose logme, sfda or knn"
        )
    return _public(Exception(text))


METHOD_WORDS = {
    "montecarlo": "Monte Carlo Fisher (labels drawn from the probe's own predictions)",
    "exact": "exact Fisher (the expectation over every label, no sampling)",
    "variational": "robust (variational) Fisher of the paper",
    "relative": "robust Fisher, prior at the task's own level",
}


def index_options(index: Any, limits: Limits | None = None) -> dict[str, Any]:
    """What the page may offer, all derived from the index: the ``probe``, ``method`` and
    ``image_size`` its experts were embedded with (the only ones that can be compared with them),
    the ``max_samples`` they used (the default for a query, capped by ``limits``), the ``metrics``
    it supports and the number of ``experts``; plus one-line ``help`` texts."""
    limits = limits or Limits()
    s = index_settings(index)
    opts = dict(getattr(index, "embedding_options", {}) or {})
    try:
        used = int(opts.get("max_samples") or 0)
    except ValueError:
        used = 0
    default_samples = min(limits.max_samples, used or 500)
    metrics = ["asymmetric", "symmetric"] + (["model2vec"] if getattr(index, "has_model2vec", False) else [])
    size = s.get("image_size") or "the probe's own"
    method = s.get("method", "")
    return {
        "probe": s.get("probe", ""),
        "method": method,
        "image_size": s.get("image_size", ""),
        "max_samples": default_samples,
        "metrics": metrics,
        "experts": len(index),
        "reranks": [RERANK_OFF, *rerank_scores()],
        "shortlist": min(4, len(index)),
        "help": {
            "probe": f"The network that reads your images. Fixed: the {len(index)} experts were embedded with it.",
            "method": f"How the Fisher information is estimated: {METHOD_WORDS.get(method, method)}. Fixed by the "
            "index, like the probe.",
            "image_size": f"Images are resized to {size} px, as for the experts.",
            "max_samples": "At most this many of your images are used (class-balanced); more is slower and surer.",
            "k": "How many experts the table and the heatmap show.",
            "metric": "asymmetric: the paper's rule (recommended); symmetric: plain distance"
            + ("; model2vec: learned from the experts' fine-tuning errors." if "model2vec" in metrics else "."),
            "projection": "How the task map is drawn: MDS keeps distances as faithfully as 2-D allows; t-SNE "
            "keeps only neighbours.",
            "rerank": "Run the Task2Vec shortlist's experts on your images and re-rank them by this score (higher "
            "is better): one forward pass per expert. leep and nce need the expert's source classifier.",
            "shortlist": "How many of the best Task2Vec experts are re-ranked (and run).",
        },
    }


def expert_table(index: Any) -> Any:
    """Every expert of the index with its training task (a ``pandas.DataFrame`` for the page):
    ``expert`` (a link only where the index gives a URL or a Hub source), ``training task``,
    ``classes``, ``data``."""
    import pandas as pd

    rows = []
    for row in index.rows():
        classes = row.get("classes")
        rows.append(
            {
                "expert": expert_link(row["model_id"], row),
                "training task": str(row.get("task") or ""),
                "classes": ", ".join(str(c) for c in classes) if isinstance(classes, list) else "",
                "data": str(row.get("dataset") or row.get("source") or "").removeprefix("offline:"),
            }
        )
    return pd.DataFrame(rows, columns=["expert", "training task", "classes", "data"])


def count_examples(path: str | os.PathLike[str] | None, limits: Limits) -> int | None:
    """A cheap count of the examples in an upload, to cap the *max images* slider: image entries of
    a zip (from its central directory, nothing is extracted), rows of a parquet (its footer) or of a
    CSV (its lines, up to the row limit). ``None`` when it cannot tell (the search says why)."""
    try:
        p = check_upload(path, limits)
        suffix = p.suffix.lower()
        if suffix == ".zip":
            with open(p, "rb") as fh:
                if _zip_entry_count(fh) > limits.max_zip_entries:
                    return None
                with zipfile.ZipFile(fh) as zf:
                    names = [i.filename for i in zf.infolist() if not i.is_dir()]
            parts = [PurePosixPath(n).parts for n in names]
            if any(PurePosixPath(n).name.lower() in METADATA_NAMES for n in names):
                return None  # a table decides which files count
            return (
                sum(
                    1
                    for pp in parts
                    if pp and not _is_hidden(pp) and PurePosixPath(pp[-1]).suffix.lower() in IMAGE_EXTENSIONS
                )
                or None
            )
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(p).metadata.num_rows) or None
        with open(p, "rb") as fh:
            lines = sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
        return max(0, min(lines, limits.max_table_rows)) or None
    except Exception:  # the search itself reports what is wrong with the upload
        return None


def _status(
    prepared: PreparedTask,
    emb: Any,
    records: list[Any],
    conf: Any,
    metric: str,
    seconds: float,
    notes: Sequence[str],
    rerank_lines: Sequence[str] = (),
    task2vec_best: str | None = None,
) -> str:
    from ranking import score_meaning

    best = records[0].model_id if records else "none"
    reranked = bool(records) and hasattr(records[0], "rerank_score")
    if reranked:
        r = records[0]
        meaning = f"re-ranked by {r.rerank}, higher is better; Task2Vec rank #{r.stage1_rank}"
        verdict = "Task2Vec stage: " + conf.verdict(html.escape(task2vec_best or best))
    else:
        meaning, verdict = score_meaning(metric), conf.verdict(html.escape(best))
    lines = [
        f"{prepared.summary}",
        f"Embedded with probe `{emb.probe}` and the `{emb.method}` estimator on {emb.meta.get('num_samples')} "
        f"{unit(prepared.task)} (plus {conf.resamples - 1} resamples for the confidence) in {seconds:.1f} s.",
        f"**Best expert: {html.escape(best)}** ({meaning}).",
        *rerank_lines,
        _for_text(verdict, prepared.task),
    ]
    lines += [f"**Warning:** {_for_text(w, prepared.task)}" for w in conf.warnings]
    lines += [f"- {n}" for n in notes]
    return "\n\n".join(lines)


def _rerank(
    index: Any, emb: Any, task: Any, *, rerank: str, shortlist: int | None, k: int, metric: str, max_examples: int
) -> tuple[Any, dict[str, str], list[str], str]:
    """Stage 2: re-rank the Task2Vec shortlist by ``rerank`` (`ExpertIndex.select(..., rerank=...)`).
    Returns the `Selection` (``None`` when nothing could be re-ranked), the skipped experts in page
    words, the status lines and the table label. Never raises: the Task2Vec ranking is the fallback."""
    from hf_task2vec.rerank import ExpertSkippedWarning

    m = max(1, min(len(index), int(shortlist or 4)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExpertSkippedWarning)  # the page lists them instead
            selection = index.select(
                emb,
                k=int(k),
                metric=metric,
                rerank=rerank,
                shortlist=m,
                examples=task,
                max_examples=int(max_examples),
                root=expert_root(),
            )
    except Exception as exc:  # a bad score name, an expert that breaks the library: keep the Task2Vec ranking
        logger.warning("re-ranking by %s failed", rerank, exc_info=True)
        return (
            None,
            {},
            [
                f"**Re-ranking by {html.escape(str(rerank))} failed** ({html.escape(_public(exc))}): the "
                "table shows the Task2Vec ranking."
            ],
            TABLE_LABEL,
        )
    skipped = {mid: skip_reason(why, selection.rerank) for mid, why in selection.skipped.items()}
    skip_lines = [f"- Skipped **{html.escape(mid)}**: {html.escape(why)}" for mid, why in skipped.items()]
    if not selection.reranked:
        return (
            None,
            skipped,
            [
                f"**Re-ranking by {selection.rerank} was not possible:** none of the {m} shortlisted experts could be "
                "loaded, so the table shows the Task2Vec ranking.",
                "\n".join(skip_lines),
            ],
            TABLE_LABEL,
        )
    c = selection.cost
    cost = (
        f"{c.forward_passes} expert forward pass{'es' if c.forward_passes != 1 else ''} over {c.examples} "
        f"{unit(task)}, {c.total_s:.1f} s "
        f"({c.forward_fraction:.0%} of the forward passes of running all {c.experts_in_index} experts)"
    )
    lines = [f"Re-ranked the Task2Vec shortlist of {m} of {len(index)} experts by **{selection.rerank}**: {cost}."]
    if skip_lines:
        lines.append("\n".join(skip_lines))
    label = (
        f"Best experts by {selection.rerank} (higher is better) among the {m} nearest by Task2Vec "
        f"(Task2Vec rank, distance: lower is better); cost: {cost}"
    )
    return selection, skipped, lines, label


def search(
    prepared: PreparedTask,
    index: Any,
    outdir: str | os.PathLike[str],
    *,
    probe: str | None = None,
    method: str | None = None,
    max_samples: int = 256,
    k: int = 5,
    metric: str = "asymmetric",
    projection: str = "mds",
    limits: Limits | None = None,
    progress: bool = False,
    resamples: int | None = None,
    on_step: Any = None,
    rerank: str | None = None,
    shortlist: int | None = None,
) -> SearchResult:
    """Embed the task like the index's experts, rank the experts, and measure how sure the ranking is.

    Args:
        prepared: the task (`task_from_upload` / `task_from_hub`).
        index: the expert index (`hf_task2vec.selection.ExpertIndex`).
        outdir: where the embedding file is written.
        probe, method: default to the index's; a different choice is refused with the reason
            (embeddings made differently cannot be compared).
        max_samples: images used at most (class-balanced).
        k: number of experts in the table.
        metric: ``"asymmetric"`` (the paper's rule), ``"symmetric"`` or ``"model2vec"``.
        projection: ``"mds"`` (classical MDS) or ``"tsne"`` for the 2-D map.
        progress: tqdm bars (for a terminal; the page gets ``on_step`` texts).
        resamples: embeddings for the confidence, the shown one included (default `ranking.RESAMPLES`;
            1 = no confidence).
        on_step: ``(fraction, text)`` callback with human progress text.
        rerank: a score of `rerank_scores` (``None`` / ``"off"``: the Task2Vec ranking only): the
            ``shortlist`` (default 4) nearest experts are run forward on the task's images (at most
            ``max_samples``) and re-ranked by it; the table then shows both stages.
    """
    import pandas as pd
    import ranking
    from figures import distance_heatmap, task_map

    from hf_task2vec import IncompatibleEmbeddingsError, Task2VecError

    limits = limits or Limits()
    step = on_step or (lambda fraction, text: None)
    start = time.perf_counter()
    settings = index_settings(index)
    probe = probe or settings["probe"]
    method = method or settings["method"]
    wrong = [
        f"{what} {mine!r} (the index uses {theirs!r})"
        for what, mine, theirs in (("probe", probe, settings["probe"]), ("estimator", method, settings["method"]))
        if mine != theirs
    ]
    if wrong:
        raise InputError(
            "the experts were embedded with another setting: "
            + "; ".join(wrong)
            + ". Embeddings made differently cannot be compared: choose the index's probe and estimator."
        )
    task_modality = "text" if getattr(prepared.task, "is_text", False) else "image"
    if index_modality(index) != task_modality:
        raise InputError(
            f"this is {'a text' if task_modality == 'text' else 'an image'} task but the expert index holds "
            f"{index_modality(index)} experts (probe {settings['probe']!r}): rank it with a {task_modality} expert "
            "index"
        )
    if projection not in PROJECTIONS:
        raise InputError(f"unknown map {projection!r}; choose one of {PROJECTIONS}")
    if not 2 <= int(max_samples) <= limits.max_samples:
        raise InputError(f"max samples must lie in 2..{limits.max_samples}, got {max_samples}")
    n_emb = max(1, int(ranking.RESAMPLES if resamples is None else resamples))
    size = settings.get("image_size", "")
    if not probe_loaded(probe, size):
        step(0.12, "Loading the probe network (only the first search after start-up; about 20 s)")
    probe_obj = get_probe(probe, size)

    def make_embedder(seed: int | None = None) -> Any:
        extra = {} if seed is None else {"seed": seed}
        return index.embedder(probe=probe_obj, max_samples=int(max_samples), progress=progress, **extra)

    embedder = make_embedder()
    used = embedder.sample(prepared.task)
    counts = np.bincount(prepared.task.labels[used], minlength=prepared.task.num_classes)
    step(0.2, f"Embedding your {len(used)} {unit(prepared.task)} (1 of {n_emb})")
    try:
        emb = embedder.embed(prepared.task)
        records = list(index.select(emb, k=int(k), metric=metric))
        shown = np.asarray(index.distances(emb, metric), np.float64)
        extra = ranking.resample_scores(
            prepared.task,
            make_embedder,
            lambda e: index.distances(e, metric),
            max_samples=int(max_samples),
            base_seed=int(getattr(embedder, "seed", 0)),
            resamples=n_emb - 1,
            on_step=lambda r: step(
                0.2 + 0.6 * r / n_emb,
                f"Resampling your {unit(prepared.task)} to see how sure the ranking is ({r + 1} of {n_emb})",
            ),
        )
    except IncompatibleEmbeddingsError as exc:
        raise InputError(str(exc)) from exc
    except (Task2VecError, ValueError) as exc:
        raise InputError(f"cannot rank the experts: {exc}") from exc
    scores = np.vstack([shown[None], extra]) if extra.size else shown[None]
    conf = ranking.summarize(scores, counts)
    pos = {mid: i for i, mid in enumerate(index.model_ids)}
    selection, skipped, rerank_lines, label = None, {}, [], TABLE_LABEL
    rerank_s = 0.0  # the status's "embedded in" leaves it out: the re-ranking line gives its own time
    task2vec_best = records[0].model_id if records else None
    if rerank and rerank != RERANK_OFF:
        step(0.8, f"Re-ranking: running the shortlisted experts on your {unit(prepared.task)}")
        rerank_start = time.perf_counter()
        selection, skipped, rerank_lines, label = _rerank(
            index,
            emb,
            prepared.task,
            rerank=rerank,
            shortlist=shortlist,
            k=int(k),
            metric=metric,
            max_examples=int(max_samples),
        )
        rerank_s = time.perf_counter() - rerank_start
    rows = []
    if selection is not None:
        records = list(selection)
        for r in records:
            rows.append(
                {
                    "rank": r.rank,
                    "expert": expert_link(r.model_id, dict(r.info)),
                    "re-rank score": ranking.fmt(r.rerank_score),
                    "Task2Vec rank": r.stage1_rank,
                    "distance": ranking.fmt(r.score),
                    "trained on": _trained_on(dict(r.info)),
                }
            )
    else:
        for r in records:
            rows.append(
                {
                    "rank": r.rank,
                    "expert": expert_link(r.model_id, dict(r.info)),
                    "score": ranking.fmt(r.score),
                    "rank in resamples": conf.label(pos[r.model_id]),
                    "trained on": _trained_on(dict(r.info)),
                }
            )
    table = pd.DataFrame(rows, columns=list(RERANK_TABLE_COLUMNS if selection is not None else TABLE_COLUMNS))
    step(0.85, "Drawing the figures")
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    emb_path = emb.save(out / f"{safe_task_name(prepared.task.name)}.safetensors")
    top = [r.model_id for r in records]
    map_fig, _ = task_map(emb, index, top, projection=projection)
    heat_fig, heat = distance_heatmap(emb, index, top, metric=metric)
    seconds = time.perf_counter() - start
    notes = list(prepared.notes)
    return SearchResult(
        embedding=emb,
        table=table,
        records=records,
        confidence=conf,
        metric=metric,
        map_figure=map_fig,
        heatmap_figure=heat_fig,
        heatmap_values=heat,
        embedding_path=emb_path,
        notes=notes,
        seconds=seconds,
        status=_status(prepared, emb, records, conf, metric, seconds - rerank_s, notes, rerank_lines, task2vec_best),
        rerank=rerank if rerank and rerank != RERANK_OFF else None,
        selection=selection,
        skipped=skipped,
        table_label=label,
    )


# -- figures -----------------------------------------------------------------------------------------
def classical_mds(d: np.ndarray, dims: int = 2) -> tuple[np.ndarray, float]:
    """Torgerson's classical MDS of a symmetric distance matrix: points whose Euclidean distances
    best match ``d`` (exactly, when ``d`` is Euclidean), and the share of the (positive) spectrum
    the ``dims`` axes keep - how faithful the picture is."""
    d = np.asarray(d, np.float64)
    n = d.shape[0]
    j = np.eye(n) - np.full((n, n), 1.0 / n)
    b = -0.5 * j @ (d**2) @ j
    vals, vecs = np.linalg.eigh(b)
    order = np.argsort(vals)[::-1][:dims]
    kept = np.clip(vals[order], 0.0, None)
    coords = vecs[:, order] * np.sqrt(kept)
    if coords.shape[1] < dims:
        coords = np.pad(coords, ((0, 0), (0, dims - coords.shape[1])))
    for c in range(dims):  # fix the sign so that the picture is deterministic
        i = int(np.argmax(np.abs(coords[:, c])))
        if coords[i, c] < 0:
            coords[:, c] *= -1
    positive = float(np.clip(vals, 0.0, None).sum())
    return coords, float(kept.sum()) / positive if positive > 0 else 1.0


# -- pushing -------------------------------------------------------------------------------------------
HUB_UNREACHABLE = "the Hub cannot be reached from this server"
_TRANSPORT_NAMES = frozenset(
    {
        "ConnectError",
        "ConnectTimeout",
        "ReadTimeout",
        "TimeoutException",
        "NetworkError",
        "ConnectionError",
        "NewConnectionError",
        "MaxRetryError",
        "OfflineModeIsEnabled",
        "RemoteProtocolError",
        "ProxyError",
        "gaierror",
        "ConnectionRefusedError",
        "ConnectionResetError",
    }
)


def hub_unreachable(exc: BaseException | None) -> bool:
    """Whether an error (or one it was raised from) means the Hub could not be reached at all: a
    connection/timeout error of the HTTP client, ``HF_HUB_OFFLINE``, or a `HubError` whose reason
    says so. Retrying cannot help; the page says so and suggests an upload."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if getattr(exc, "reason", None) in ("unavailable", "offline") and getattr(exc, "status", None) is None:
            return True
        if any(t.__name__ in _TRANSPORT_NAMES for t in type(exc).__mro__):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def push_embedding(embedding: Any, repo_id: str, token: str | bool | None) -> str:
    """Push the embedding to a Hub dataset repo (created if missing) with
    `hf_task2vec.hub.EmbeddingStore`; returns a short confirmation.

    ``token``: the user's token; ``None`` uses the machine's credentials (``HF_TOKEN`` / login; for
    a local run), ``False`` (an anonymous visitor of a public Space) is refused."""
    repo_id = (repo_id or "").strip()
    if not _HUB_ID.match(repo_id) or "/" not in repo_id:
        raise InputError(f"{repo_id[:100]!r} is not a dataset repo id; write it as user/name")
    if token is False or token == "":
        raise InputError("pushing needs you to log in (or paste a Hub token with write access)")
    from hf_task2vec import Task2VecError
    from hf_task2vec.hub import EmbeddingStore

    try:
        result = EmbeddingStore(repo_id, token=token).push(embedding)
    except Exception as exc:
        if hub_unreachable(exc):
            raise InputError(
                f"{HUB_UNREACHABLE}, so the embedding was not pushed to {repo_id!r}. Download the .safetensors file "
                "above and push it from a machine that can reach the Hub (`hf-task2vec` or EmbeddingStore.push)."
            ) from exc
        if isinstance(exc, Task2VecError):  # HubError: names the repo and the fix
            raise InputError(str(exc)) from exc
        raise InputError(f"could not push to {repo_id!r}: {type(exc).__name__}: {str(exc)[:300]}") from exc
    keys = ", ".join(result.keys)
    if not result.changed:
        return f"{repo_id} already holds this embedding ({keys}); nothing to push."
    return f"Pushed {keys} to {repo_id}" + (f": {result.url}" if result.url else "")


# -- per-request folders -------------------------------------------------------------------------------
@contextlib.contextmanager
def scratch_dir(prefix: str = "t2v-space-") -> Iterator[Path]:
    """A fresh private temporary folder, removed when the block ends (even on errors)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def output_dir(root: str | os.PathLike[str] | None = None, max_age_s: float = 3600.0) -> Path:
    """A fresh folder for one request's downloadable outputs; folders older than ``max_age_s``
    under the same root are removed first, so outputs never pile up."""
    base = Path(root or Path(tempfile.gettempdir()) / "t2v-space-outputs")
    base.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in base.iterdir():
        with contextlib.suppress(OSError):
            if old.is_dir() and now - old.stat().st_mtime > max_age_s:
                shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(dir=base))


def describe_index(index: Any) -> str:
    """One line about the index for the page."""
    try:
        s = index_settings(index)
    except InputError as exc:
        return str(exc)
    if index_modality(index) == "text":
        length = (getattr(index, "embedding_options", {}) or {}).get("max_length") or "the probe default"
        return f"{len(index)} text experts · probe `{s['probe']}` · estimator `{s['method']}` · max length {length}"
    return (
        f"{len(index)} experts · probe `{s['probe']}` · estimator `{s['method']}` · image size "
        f"{s['image_size'] or 'the probe default'}"
    )


__all__ = [
    "ExtractedZip",
    "InputError",
    "Limits",
    "PreparedTask",
    "SearchResult",
    "check_image",
    "check_upload",
    "classical_mds",
    "default_index_paths",
    "describe_index",
    "count_examples",
    "expert_link",
    "expert_root",
    "expert_table",
    "hub_unreachable",
    "index_modality",
    "index_options",
    "index_settings",
    "is_text_table",
    "load_expert_index",
    "load_text_expert_index",
    "output_dir",
    "push_embedding",
    "rerank_scores",
    "safe_extract_zip",
    "safe_task_name",
    "scratch_dir",
    "search",
    "skip_reason",
    "task_from_hub",
    "task_from_table",
    "task_from_upload",
    "task_from_zip",
]
