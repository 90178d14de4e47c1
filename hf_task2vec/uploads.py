"""Uploads: a zip of class folders, a CSV or a parquet file -> an in-memory `datasets.Dataset`, with
the safety limits a server needs. `hf_task2vec.load_task` reads ``.zip`` / ``.csv`` / ``.parquet``
files through `read_upload`, the ``hf-task2vec embed`` command through `load_task`, and the
expert-finder Space calls `read_upload` directly: all three accept the same files, with the same
limits and the same messages.

Everything read here is hostile until proven otherwise:

* a file is size-checked before it is opened (`check_upload`);
* a zip is checked from its central directory before anything is extracted (entry count, declared
  sizes, per-entry and running compression ratio, encrypted entries, absolute paths, ``..``,
  backslashes, over-long names, symlinks and other special files, duplicates), the members named
  like images are checked to start like images, and only then are image and table files extracted
  by streaming, with a byte cap, into a fresh temporary folder (others are listed as ignored);
* every image is opened with a pixel cap and fully decoded before it is used; unreadable images are
  left out and named in the notes; an image task needs at least two classes;
* image paths in a table are resolved only inside the uploaded zip (``local_paths=True``, what
  `load_task` uses for a table on your own disk: relative to the table's folder, or absolute);
* a CSV's number-only columns are read as numbers (never as texts); a table with labels but no
  image or text column says so.

The images end up in the dataset as bytes (with their name inside the upload as ``path``), so no
extracted file outlives the call. Problems the user can fix raise `UploadError` (a `TaskError`),
whose message names the file and the fix and shows no server path. Limits: `UploadLimits`
(environment variables ``T2V_UPLOAD_<FIELD>``, e.g. ``T2V_UPLOAD_MAX_IMAGES=2000``).
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import re
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import UploadError
from .upload_safety import (
    IMAGE_EXTENSIONS,
    TABLE_EXTENSIONS,
    UPLOAD_EXTENSIONS,
    ExtractedZip,
    UploadLimits,
    _is_hidden,
    _mb,
    _zip_entry_count,
    check_image,
    check_upload,
    public_text,
    safe_extract_zip,
    safe_task_name,
)

METADATA_NAMES = ("metadata.csv", "metadata.parquet")
#: Columns read as images whatever their cells look like (their paths are then checked, and refused if bad).
IMAGE_COLUMN_NAMES = ("image", "img", "file_name", "filename", "file", "path", "image_path", "filepath", "picture")
LABEL_COLUMN_NAMES = ("label", "labels", "class", "target", "category", "y", "fine_label")
SPLIT_NAMES = frozenset({"train", "test", "validation", "valid", "val"})
#: What the messages say to name the input column; a caller with other words (a page's box) replaces it.
NAME_INPUT = "pass input_column=... (--input-column)"


# -- what an upload becomes -------------------------------------------------------------------------------
@dataclass
class Upload:
    """What `read_upload` made of a file: an in-memory ``dataset`` (images as bytes, labels and any
    other columns), the ``input_column`` / ``label_column`` when the layout says them (class folders:
    ``image`` / ``label``; a table: the ones given, else ``None`` for `load_task` to detect), the
    ``notes`` for the user (files ignored, images left out), and the task's default ``name`` and
    ``source`` (``upload:<file name>``)."""

    dataset: Any  # datasets.Dataset
    name: str
    source: str
    input_column: str | None = None
    label_column: str | None = None
    notes: list[str] = field(default_factory=list)


def _checked_images(
    values: Sequence[str | bytes], labels: Sequence[str], limits: UploadLimits, *, root: Path | None = None,
    progress: bool = True,
) -> tuple[list[int], list[dict[str, Any]], list[str]]:
    """Decode every image within the pixel limit. Returns the rows that are readable, their cells as
    ``{"bytes", "path"}`` (a file under ``root`` is read into bytes and named relative to it; another
    local file is kept as a path) and a line per unreadable one."""
    from tqdm.auto import tqdm

    keep: list[int] = []
    cells: list[dict[str, Any]] = []
    bad: list[str] = []
    bar = tqdm(values, desc="checking images", unit="img", mininterval=0.5, leave=False, disable=not progress)
    for i, value in enumerate(bar):
        reason = check_image(value, limits)
        if reason is not None:
            where = Path(value).name if isinstance(value, str) else f"row {i}"
            bad.append(f"{where} ({labels[i]}): {reason}")
            continue
        keep.append(i)
        if isinstance(value, bytes | bytearray):
            cells.append({"bytes": bytes(value), "path": None})
        elif root is not None:
            p = Path(value)
            cells.append({"bytes": p.read_bytes(), "path": p.relative_to(root).as_posix()})
        else:
            cells.append({"bytes": None, "path": str(value)})
    return keep, cells, bad


def _left_out_note(bad: Sequence[str]) -> str:
    shown = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
    return f"Left out {len(bad)} unreadable image(s): {shown}"


def dataset_from_records(
    records: Sequence[tuple[str | bytes, str]],
    *,
    source: str,
    notes: list[str],
    limits: UploadLimits,
    root: Path | None = None,
    progress: bool = True,
) -> Any:
    """An image task's dataset (``image``: `datasets.Image`, ``label``: `datasets.ClassLabel` of the
    sorted names) from ``(image path or bytes, label name)`` records. Unreadable images are left out
    (and named in ``notes``); fewer than two classes, or more than ``limits.max_classes``, are refused.
    ``progress``: a progress bar while the images are checked."""
    import datasets

    if not records:
        raise UploadError("no images found: give at least two classes with a few images each")
    if len(records) > limits.max_images:
        raise UploadError(f"{len(records)} images; uploads may hold at most {limits.max_images}")
    labels = [lab for _, lab in records]
    keep, cells, bad = _checked_images([img for img, _ in records], labels, limits, root=root, progress=progress)
    if bad:
        notes.append(_left_out_note(bad))
    if not keep:
        raise UploadError(f"none of the {len(records)} images could be read: {bad[0] if bad else ''}")
    good = [labels[i] for i in keep]
    names = sorted(set(good))
    if len(names) < 2:
        # files dropped before (not images) or here (unreadable) may be why a class is missing
        dropped = bad or any(n.startswith("Ignored ") for n in notes)
        raise UploadError(
            f"the data has a single class ({names[0]!r}{' after leaving out unreadable images' if dropped else ''}): a "
            "task needs at least two classes. Add a folder (or label) for another class."
        )
    if len(names) > limits.max_classes:
        raise UploadError(f"{len(names)} classes; uploads may have at most {limits.max_classes}")
    missing = sorted(set(labels) - set(names))
    if missing:
        notes.append(f"Class(es) with no readable image dropped: {', '.join(missing[:10])}")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    return datasets.Dataset.from_dict(
        {"image": cells, "label": [names.index(lab) for lab in good]},
        features=features,
        info=datasets.DatasetInfo(dataset_name=source, features=features),
    )


def _strip_common_prefix(paths: list[PurePosixPath], keep: int) -> tuple[list[tuple[str, ...]], tuple[str, ...]]:
    """Drop leading folders shared by every path while each keeps at least ``keep`` parts."""
    parts = [p.parts for p in paths]
    prefix: tuple[str, ...] = ()
    while parts and all(len(p) > keep for p in parts) and len({p[0] for p in parts}) == 1:
        prefix += (parts[0][0],)
        parts = [p[1:] for p in parts]
    return parts, prefix


def _read_zip(
    p: Path, workdir: Path, limits: UploadLimits, *, name: str, source: str,
    image_column: str | None, label_column: str | None, progress: bool = True,
) -> Upload:
    """Class folders (``<class>/<image>``, optionally under one top folder; with ``train/``/``test/``
    split folders the train split is used), or a ``metadata.csv`` / ``metadata.parquet`` naming image
    files inside the zip (the Hub's imagefolder layout)."""
    ex = safe_extract_zip(p, workdir / "extracted", limits)
    notes: list[str] = []
    rel_parts, prefix = _strip_common_prefix(ex.images + ex.tables, keep=1)
    top = {PurePosixPath(*r) for r in rel_parts if len(r) == 1}
    table = next((t for t in sorted(top) if t.name.lower() in METADATA_NAMES), None)
    unused = [str(t) for t in ex.tables if table is None or t != PurePosixPath(*prefix, table)]
    ignored = ex.ignored + unused + ex.not_images
    if ignored:
        shown = ", ".join(ignored[:5]) + (" ..." if len(ignored) > 5 else "")
        notes.append(f"Ignored {len(ignored)} file(s) that are not images: {shown}")
    if table is not None:
        base = ex.root.joinpath(*prefix)
        df = _read_table(base / table, limits)
        ds = _table_dataset(
            df, base=base, root=ex.root, label=table.name, source=source, notes=notes, limits=limits,
            image_column=image_column, label_column=label_column, progress=progress,
        )
        notes.append(f"Read images and labels from {table.name} in the zip")
        return Upload(ds, name, source, image_column, label_column, notes)
    if not ex.images:
        raise UploadError(
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
        raise UploadError(
            f"{p.name!r} has images outside class folders (e.g. {str(loose[0])!r}): put each image in a folder "
            "named after its class (<class>/<image>.png), or add a metadata.csv with file_name and label columns"
        )
    records = [(str(ex.root.joinpath(*prefix, *r)), r[0]) for r in image_parts]
    ds = dataset_from_records(records, source=source, notes=notes, limits=limits, root=ex.root, progress=progress)
    return Upload(ds, name, source, "image", "label", notes)


# -- tables ---------------------------------------------------------------------------------------------
def _read_table(path: Path, limits: UploadLimits) -> Any:
    import pandas as pd

    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        try:
            meta = pq.ParquetFile(path).metadata
        except Exception as exc:
            raise UploadError(
                f"{path.name!r} is not a readable parquet file ({public_text(exc, path.parent)}); write it again "
                "(e.g. DataFrame.to_parquet or Dataset.to_parquet)"
            ) from exc
        if meta.num_rows > limits.max_table_rows:
            raise UploadError(f"{path.name!r} has {meta.num_rows} rows; the limit is {limits.max_table_rows}")
        expanded = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        if expanded > limits.max_total_bytes:
            raise UploadError(
                f"{path.name!r} expands to {_mb(expanded)} in memory; the limit is {_mb(limits.max_total_bytes)}"
            )
        try:
            return pd.read_parquet(path)
        except Exception as exc:
            raise UploadError(f"{path.name!r} cannot be read as parquet ({public_text(exc, path.parent)})") from exc
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
        raise UploadError(f"{path.name!r}: its rows have more fields than its header has columns: {quoting}") from exc
    except pd.errors.ParserError as exc:
        found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
        where = (
            f"line {found.group(2)} has {found.group(3)} fields but the header has {found.group(1)} columns"
            if found
            else public_text(exc, path.parent)
        )
        raise UploadError(f"{path.name!r} is not a well-formed CSV file ({where}): {quoting}") from exc
    except pd.errors.EmptyDataError as exc:
        raise UploadError(
            f"{path.name!r} is empty: a CSV needs a header (e.g. image,label) and one row per image"
        ) from exc
    except (UnicodeDecodeError, ValueError, OSError) as exc:
        raise UploadError(
            f"{path.name!r} is not a readable CSV file ({public_text(exc, path.parent)}); save it as UTF-8 text with a "
            "header row"
        ) from exc
    if len(df) > limits.max_table_rows:
        raise UploadError(f"{path.name!r} has more than {limits.max_table_rows} rows; use fewer images")
    return df



def _image_value(value: Any, row: int, base: Path | None, label: str, *, inside: bool) -> str | bytes:
    """Image bytes or a checked path from one table cell. ``base``: the folder relative paths are
    read from (``None``: only the table was uploaded); ``inside``: paths must stay inside ``base``
    (an uploaded zip), else absolute paths are allowed too (a table on the caller's own disk)."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        value = value.get("path")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if not isinstance(value, str) or not value.strip():
        raise UploadError(f"{label!r} row {row}: the image cell is empty or not a path/bytes ({type(value).__name__})")
    value = value.strip()
    if value.startswith("data:image/"):
        try:
            return base64.b64decode(value.split(",", 1)[1], validate=True)
        except (IndexError, binascii.Error) as exc:
            raise UploadError(f"{label!r} row {row}: the data URI is not valid base64") from exc
    if base is None:
        raise UploadError(
            f"{label!r} row {row} names an image file ({value[:60]!r}) but only the table was uploaded. Put the "
            "table and the images in one zip (metadata.csv with file_name and label columns), or store the "
            "images themselves in the table (parquet bytes, or data:image/...;base64 URIs in a CSV)"
        )
    if "://" in value:
        raise UploadError(
            f"{label!r} row {row}: image path {value[:60]!r} must be relative to the table's folder (a file, not a URL)"
        )
    if not inside:
        target = (base / value).resolve()
        if not target.is_file():
            raise UploadError(f"{label!r} row {row}: image file {value[:60]!r} does not exist")
        return str(target)
    if value.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", value):
        raise UploadError(f"{label!r} row {row}: image path {value[:60]!r} must be relative to the table's folder")
    parts = PurePosixPath(value.replace("\\", "/")).parts
    if ".." in parts:
        raise UploadError(f"{label!r} row {row}: image path {value[:60]!r} points outside the zip (path traversal)")
    target = base.joinpath(*parts).resolve()
    if not target.is_relative_to(base.resolve()):
        raise UploadError(f"{label!r} row {row}: image path {value[:60]!r} points outside the zip")
    if not target.is_file():
        raise UploadError(f"{label!r} row {row}: image {value[:60]!r} is not in the zip")
    return str(target)


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


def _looks_like_images(values: Sequence[Any], probe_rows: int = 16) -> bool:
    """Whether a column's first non-empty cells are images (bytes, ``{"bytes"...}`` structs, data
    URIs or image file names) rather than text or numbers."""
    cells = [v for v in values[:probe_rows] if not _missing(v)]

    def image_like(v: Any) -> bool:
        if isinstance(v, bytes | bytearray | memoryview | dict):
            return True
        if not isinstance(v, str):
            return False
        text = v.strip().lower()
        return text.startswith("data:image/") or PurePosixPath(text).suffix in IMAGE_EXTENSIONS

    return bool(cells) and all(image_like(v) for v in cells)


_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _as_numbers(values: list[Any]) -> list[Any] | None:
    """A column of strings that are all numbers (or empty), as ints (or floats); else ``None``. A CSV
    is read as text, and a column of ids or scores must never become the text of a text task."""
    cells = [v for v in values if not _missing(v)]
    if not cells or not all(isinstance(v, str) and _NUMBER.match(v.strip()) for v in cells):
        return None
    nums = [None if _missing(v) else float(v) for v in values]
    if all(x is None or x.is_integer() for x in nums) and all(x is None or abs(x) < 2**62 for x in nums):
        return [None if x is None else int(x) for x in nums]
    return nums


def _is_number_column(values: Sequence[Any]) -> bool:
    cells = [v for v in values if not _missing(v)]
    return bool(cells) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in cells)


def _table_dataset(
    df: Any,
    *,
    base: Path | None,
    root: Path | None,
    label: str,
    source: str,
    notes: list[str],
    limits: UploadLimits,
    image_column: str | None,
    label_column: str | None,
    local_paths: bool = False,
    progress: bool = True,
) -> Any:
    """A table's dataset, every column kept, for `load_task` to pick the input and label columns:
    columns of images (bytes, data URIs, file names) become `datasets.Image` columns of checked images
    (rows with an unreadable image are left out and named in ``notes``), number-only columns numbers,
    empty cells missing values. ``root``: the extraction folder whose files are read into bytes."""
    import datasets

    if len(df) == 0:
        raise UploadError(f"{label!r} has no rows")
    columns = [str(c) for c in df.columns]
    df.columns = columns
    for given in (image_column, label_column):
        if given and given not in columns:
            raise UploadError(f"{label!r} has no column {given!r}; its columns are {columns}")
    if image_column and image_column == label_column:
        raise UploadError(f"{label!r}: the input and label column are both {image_column!r}; name two columns")
    data: dict[str, list[Any]] = {}
    for c in columns:
        values = [None if _missing(v) else v for v in df[c].tolist()]
        values = [v.decode("utf-8", "replace") if isinstance(v, bytes) and c == label_column else v for v in values]
        data[c] = _as_numbers(values) or values
    lab = label_column or next((c for c in columns if c.lower() in LABEL_COLUMN_NAMES), None)
    if lab is not None:
        empty = [i for i, v in enumerate(data[lab]) if v is None]
        if empty:
            raise UploadError(f"{label!r} row {empty[0]}: the label is empty; give every row a label")
    if image_column:
        if _is_number_column(data[image_column]):
            raise UploadError(
                f"{label!r}: column {image_column!r} holds numbers, not images or texts; name the column that holds "
                f"the images or the texts ({NAME_INPUT})"
            )
        image_cols = [image_column] if _looks_like_images(data[image_column]) else []
    else:
        named = [c for c in columns if c.lower() in IMAGE_COLUMN_NAMES and any(isinstance(v, str) for v in data[c])]
        image_cols = [c for c in columns if c != lab and (c in named or _looks_like_images(data[c]))]
    # an all-empty column counts: `load_task` says that it is empty
    inputs = [c for c in columns if c != lab and (c in image_cols or not _is_number_column(data[c]))]
    if not inputs:
        kinds = "labels and numbers" if len(columns) > 1 else "labels"
        raise UploadError(
            f"{label!r} has no image or text column: its columns {columns} hold {kinds} only. A task needs an input "
            "for every label: a column of images (image bytes, data:image/...;base64 URIs in a CSV, or file names "
            f"with the images in one zip) or a column of texts. Add one, or {NAME_INPUT} if it is there"
        )
    features: dict[str, Any] = {}
    drop: set[int] = set()
    for c in image_cols:
        values = [_image_value(v, row, base, label, inside=not local_paths) for row, v in enumerate(data[c])]
        if len(values) > limits.max_images:
            raise UploadError(f"{label!r} has {len(values)} images; uploads may hold at most {limits.max_images}")
        names = [str(data[lab][i]) if lab else "?" for i in range(len(values))]
        keep, cells, bad = _checked_images(values, names, limits, root=root, progress=progress)
        if bad:
            notes.append(_left_out_note(bad))
        if not keep:
            raise UploadError(f"none of the {len(values)} images of {label!r} could be read: {bad[0]}")
        full: list[Any] = [None] * len(values)
        for i, cell in zip(keep, cells, strict=True):
            full[i] = cell
        data[c] = full
        drop |= set(range(len(values))) - set(keep)
        features[c] = datasets.Image()
    if drop:
        rows = [i for i in range(len(df)) if i not in drop]
        data = {c: [v[i] for i in rows] for c, v in data.items()}
    ds = datasets.Dataset.from_dict(data, info=datasets.DatasetInfo(dataset_name=source))
    for c, feat in features.items():
        ds = ds.cast_column(c, feat)
    return ds


def read_upload(
    path: str | os.PathLike[str] | None,
    *,
    limits: UploadLimits | None = None,
    workdir: str | os.PathLike[str] | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    local_paths: bool = False,
    name: str | None = None,
    progress: bool = True,
) -> Upload:
    """Read an uploaded ``.zip`` (class folders, or a ``metadata.csv`` naming the images in it), ``.csv``
    or ``.parquet`` (images as bytes or data URIs, or texts) into an `Upload`, within ``limits``.

    Args:
        workdir: where a zip is extracted (default: a temporary folder, removed before returning; the
            images are in the dataset as bytes).
        image_column, label_column: a table's input (images or texts) and label columns; detected when
            ``None`` (by `load_task`, from the dataset).
        local_paths: a table's image file names are read from the table's folder (or are absolute):
            for a file on the caller's own disk. Off (a server): only a zip may hold image files.
        name: the task name (default: from the file name).
        progress: a progress bar while the images are checked (off for a server).

    Raises:
        UploadError: the file is unsafe, over a limit, unreadable, or holds no task (the message says
            what to change).
    """
    limits = limits or UploadLimits()
    p = check_upload(path, limits)
    task_name = safe_task_name(name or p.stem)
    source = f"upload:{safe_task_name(p.name, 'upload')}"
    if p.suffix.lower() == ".zip":
        if workdir is not None:
            return _read_zip(p, Path(workdir), limits, name=task_name, source=source, image_column=image_column,
                             label_column=label_column, progress=progress)
        with tempfile.TemporaryDirectory(prefix="t2v-upload-") as tmp:
            return _read_zip(p, Path(tmp), limits, name=task_name, source=source, image_column=image_column,
                             label_column=label_column, progress=progress)
    notes: list[str] = []
    ds = _table_dataset(
        _read_table(p, limits), base=p.parent if local_paths else None, root=None, label=p.name, source=source,
        notes=notes, limits=limits, image_column=image_column, label_column=label_column, local_paths=local_paths,
        progress=progress,
    )
    return Upload(ds, task_name, source, image_column, label_column, notes)


def count_examples(path: str | os.PathLike[str] | None, limits: UploadLimits) -> int | None:
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



__all__ = [
    "IMAGE_EXTENSIONS",
    "TABLE_EXTENSIONS",
    "UPLOAD_EXTENSIONS",
    "ExtractedZip",
    "Upload",
    "UploadError",
    "UploadLimits",
    "check_image",
    "check_upload",
    "count_examples",
    "dataset_from_records",
    "public_text",
    "read_upload",
    "safe_extract_zip",
    "safe_task_name",
]
