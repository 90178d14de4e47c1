"""Which columns of a dataset are a task's input (image, text or a text pair) and label, and how they
are cast (``Image`` / ``ClassLabel``) — detected from the features unless given. Used by `load_task`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import TaskError

_INPUT_NAMES = ("image", "img", "images", "pixel_values", "picture", "photo")
_LABEL_NAMES = ("label", "labels", "class", "target", "y", "fine_label", "category")
#: Column names read as the text of a text task (when no other string column decides it).
_TEXT_NAMES = ("text", "sentence", "content", "document", "review", "comment", "body", "tweet", "passage", "question")
#: Column pairs read as a text-pair task (encoded as one sequence with the tokenizer's separator).
_PAIR_NAMES = (("sentence1", "sentence2"), ("premise", "hypothesis"), ("question1", "question2"), ("text_a", "text_b"))
#: String columns that are never text (file paths of images, ids).
_NOT_TEXT_NAMES = ("path", "file", "filename", "file_name", "image_path", "img_path", "id", "idx", "uid", "url")


def _detect_columns(features: Any, input_column: str | None, label_column: str | None, source: str) -> tuple[str, str]:
    import datasets

    names = list(features)

    def pick(kind: str, given: str | None, typ: type, preferred: tuple[str, ...]) -> str:
        if given is not None:
            if given not in names:
                raise TaskError(f"{source!r} has no column {given!r}; its columns are {names}")
            return given
        typed = [n for n in names if isinstance(features[n], typ)]
        if len(typed) == 1:
            return typed[0]
        if len(typed) > 1:
            raise TaskError(
                f"{source!r} has several {typ.__name__} columns {typed}: pass {kind}_column=... to choose one"
            )
        named = [n for n in names if n.lower() in preferred]
        if len(named) == 1:
            return named[0]
        raise TaskError(
            f"cannot tell the {kind} column of {source!r} (columns {names}, none of type {typ.__name__}): "
            f"pass {kind}_column=..."
        )

    inp = pick("input", input_column, datasets.Image, _INPUT_NAMES)
    lab = pick("label", label_column, datasets.ClassLabel, _LABEL_NAMES)
    if inp == lab:
        raise TaskError(f"{source!r}: the input and label column are both {inp!r}; pass input_column/label_column")
    return inp, lab


def _is_string(feature: Any) -> bool:
    import datasets

    return isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")


def _all_missing(ds: Any, column: str) -> bool:
    """Whether every value of ``column`` is missing (a CSV column with no text reads as float NaNs)."""
    if ds is None or len(ds) == 0:
        return False
    col = ds.data.column(column) if ds._indices is None else ds.select_columns([column]).data.column(column)
    return col.null_count == len(col)


def _empty_column_error(ds: Any, column: str, source: str) -> TaskError:
    return TaskError(
        f"{source!r}: text column {column!r} is empty: all {len(ds)} of its values are missing, so there is no "
        "text to embed; check the file and the split, or pass input_column=... (--input-column) for the column "
        "that holds the texts"
    )


def _detect_text_columns(
    features: Any, input_column: str | None, label_column: str | None, source: str, ds: Any = None
) -> tuple[str, str | None] | None:
    """``(text_column, pair_column)`` when the features describe a text task, else ``None``.

    A text task has no ``Image`` column and either a text pair (``sentence1``/``sentence2``,
    ``premise``/``hypothesis``...), a column named like text (``text``, ``sentence``,
    ``content``...) or exactly one other string column next to its label column. ``ds`` (the data,
    when at hand) tells an all-missing text column from a column of numbers.
    """
    import datasets

    names = list(features)
    if input_column is not None:
        if input_column not in names or isinstance(features[input_column], datasets.Image):
            return None
        if input_column.lower() in _INPUT_NAMES:
            return None  # image paths
        if not _is_string(features[input_column]):
            if input_column.lower() in _TEXT_NAMES and _all_missing(ds, input_column):
                raise _empty_column_error(ds, input_column, source)
            if input_column.lower() in _TEXT_NAMES:
                raise TaskError(
                    f"{source!r}: column {input_column!r} has type {features[input_column]}, not strings; a text task "
                    "needs a string column (cast it with dataset.cast_column(col, datasets.Value('string')))"
                )
            return None
        return input_column, None
    if any(isinstance(f, datasets.Image) for f in features.values()):
        return None
    lower = {n.lower(): n for n in names}
    for first, second in _PAIR_NAMES:
        if first in lower and second in lower:
            a, b = lower[first], lower[second]
            for col in (a, b):
                if not _is_string(features[col]) and _all_missing(ds, col):
                    raise _empty_column_error(ds, col, source)
                if not _is_string(features[col]):
                    raise TaskError(
                        f"{source!r}: column {col!r} of the text pair ({a!r}, {b!r}) has type {features[col]}, not "
                        "strings; cast it with dataset.cast_column(col, datasets.Value('string'))"
                    )
            return a, b
    candidates = [n for n in names if n != label_column and n.lower() not in _LABEL_NAMES]
    named = [n for n in candidates if n.lower() in _TEXT_NAMES]
    if len(named) == 1:
        col = named[0]
        if not _is_string(features[col]) and _all_missing(ds, col):
            raise _empty_column_error(ds, col, source)
        if not _is_string(features[col]):
            raise TaskError(
                f"{source!r}: column {col!r} has type {features[col]}, not strings; a text task needs a string column "
                "(cast it with dataset.cast_column(col, datasets.Value('string')), or pass input_column=...)"
            )
        return col, None
    strings = [
        n for n in candidates if _is_string(features[n]) and n.lower() not in _INPUT_NAMES + _NOT_TEXT_NAMES
    ]
    if len(strings) == 1:
        return strings[0], None
    if len(strings) > 1:
        raise TaskError(f"{source!r} has several string columns {strings}: pass input_column=... to choose the text")
    return None


def _detect_label_column(features: Any, label_column: str | None, source: str) -> str:
    """The label column of a text task: the one given, the one ``ClassLabel``, or one named like a label."""
    import datasets

    names = list(features)
    if label_column is not None:
        if label_column not in names:
            raise TaskError(f"{source!r} has no column {label_column!r}; its columns are {names}")
        return label_column
    typed = [n for n in names if isinstance(features[n], datasets.ClassLabel)]
    if len(typed) == 1:
        return typed[0]
    if len(typed) > 1:
        raise TaskError(f"{source!r} has several ClassLabel columns {typed}: pass label_column=... to choose one")
    named = [n for n in names if n.lower() in _LABEL_NAMES]
    if len(named) == 1:
        return named[0]
    raise TaskError(f"cannot tell the label column of {source!r} (columns {names}): pass label_column=...")


def _detect_task_columns(
    features: Any, input_column: str | None, label_column: str | None, source: str, *, ds: Any = None
) -> tuple[str, str, str | None, str]:
    """``(modality, input_column, pair_column, label_column)`` of a dataset: text or image (``ds``:
    the data, when at hand, for clearer messages about empty columns)."""
    text = _detect_text_columns(features, input_column, label_column, source, ds)
    if text is None:
        inp, lab = _detect_columns(features, input_column, label_column, source)
        return "image", inp, None, lab
    lab = _detect_label_column(features, label_column, source)
    if lab in text:
        raise TaskError(f"{source!r}: the text and label column are both {lab!r}; pass input_column/label_column")
    return "text", text[0], text[1], lab


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def _holds_image_paths(ds: Any, column: str, probe_rows: int = 16) -> bool:
    """Whether a string column holds image file paths (its first non-empty values end like image files)."""
    values = [v for v in ds.select(range(min(len(ds), probe_rows)))[column] if isinstance(v, str) and v.strip()]
    return bool(values) and all(v.strip().lower().endswith(IMAGE_SUFFIXES) for v in values)


def _check_text_columns(
    ds: Any, columns: Sequence[str], source: str, *, allow_empty: bool = False
) -> list[int] | None:
    """Refuse a text column that holds nothing but empty strings (or nulls), and one with some empty
    or missing texts (they would be embedded as ``""`` without a word) unless ``allow_empty``: then
    the rows to keep are returned (``None``: keep every row)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    empty = None
    for col in columns:
        table_col = ds.data.column(col) if ds._indices is None else ds.select_columns([col]).data.column(col)
        lengths = pc.utf8_length(pc.utf8_trim_whitespace(table_col))
        longest = pc.max(lengths).as_py()
        if not longest:
            raise TaskError(
                f"{source!r}: text column {col!r} holds only empty strings (or nulls) in {len(ds)} rows: there is no "
                "text to embed; check the column (input_column=...) and the split"
            )
        blank = pc.fill_null(pc.equal(lengths, 0), True)
        blank = blank.combine_chunks() if isinstance(blank, pa.ChunkedArray) else blank
        mask = np.asarray(blank.to_numpy(zero_copy_only=False), dtype=bool)
        if mask.any() and not allow_empty:
            rows = np.flatnonzero(mask)
            raise TaskError(
                f"{source!r}: {rows.size} of the {len(ds)} texts in column {col!r} are empty or missing (rows "
                f"{', '.join(str(int(r)) for r in rows[:5])}{'...' if rows.size > 5 else ''}); they would be embedded "
                "as empty texts. Drop or fill them (e.g. dataset.filter), or pass --allow-empty (allow_empty=True) to "
                "leave them out"
            )
        empty = mask if empty is None else empty | mask
    if empty is None or not empty.any():
        return None
    return np.flatnonzero(~empty).tolist()


def _image_like_columns(ds: Any, skip: Sequence[str]) -> list[str]:
    """Columns that hold images: an ``Image`` feature, ``{bytes, path}`` structs, a column named like
    images (``image``, ``img``...) or strings that are image file paths."""
    import datasets

    found = []
    for name, feat in ds.features.items():
        if name in skip:
            continue
        if isinstance(feat, datasets.Image) or (isinstance(feat, dict) and {"bytes", "path"} <= set(feat)):
            found.append(name)
        elif _is_string(feat) and (name.lower() in _INPUT_NAMES or _holds_image_paths(ds, name)):
            found.append(name)
    return found


def _text_like_columns(features: Any, skip: Sequence[str]) -> list[str]:
    """String columns named like text (``text``, ``sentence``... or a text-pair name)."""
    pair_names = {n for pair in _PAIR_NAMES for n in pair}
    return [
        n for n, f in features.items()
        if n not in skip and _is_string(f) and (n.lower() in _TEXT_NAMES or n.lower() in pair_names)
    ]


def _check_unambiguous(ds: Any, modality: str, inp: str, pair: str | None, lab: str, source: str) -> None:
    """Refuse a table with both an image column and a text column when no input column was given:
    either could be the task's input (an image task would ignore the texts, a text task the images)."""
    used = [c for c in (inp, pair, lab) if c]
    if modality == "text":
        images, texts = _image_like_columns(ds, used), [c for c in (inp, pair) if c]
    else:
        images, texts = [inp], _text_like_columns(ds.features, used)
    if images and texts:
        raise TaskError(
            f"{source!r} has an image column ({', '.join(map(repr, images))}) and a text column "
            f"({', '.join(map(repr, texts))}): say which one is the input with --input-column (input_column=...), "
            f"e.g. --input-column {images[0]} for an image task or --input-column {texts[0]} for a text task"
        )


def _prepare_columns(ds: Any, inp: str, lab: str, source: str, *, modality: str = "image") -> Any:
    """Make the input column an ``Image`` feature (paths/bytes are cast; text columns stay strings)
    and the label a ``ClassLabel``."""
    import datasets

    feat = ds.features[inp]
    if modality == "image" and not isinstance(feat, datasets.Image):
        is_text = isinstance(feat, datasets.Value) and feat.dtype in ("string", "large_string")
        is_struct = isinstance(feat, dict) and {"bytes", "path"} <= set(feat)
        if is_text or is_struct:
            ds = ds.cast_column(inp, datasets.Image())
        else:
            raise TaskError(
                f"{source!r}: column {inp!r} has type {feat}; an image column (datasets.Image, file paths or bytes) "
                "is needed. For non-image inputs use Task.from_tensors"
            )
    lab_feat = ds.features[lab]
    if isinstance(lab_feat, datasets.Value) and lab_feat.dtype.startswith("float"):
        column = ds.data.column(lab).to_numpy(zero_copy_only=False) if ds._indices is None else ds[lab]
        values = np.asarray(column, dtype=np.float64)
        bad = values[~np.isfinite(values) | (values != np.round(values))]
        if bad.size:
            raise TaskError(
                f"{source!r}: label column {lab!r} holds floats that are not whole numbers (e.g. {bad[0]!r}); a task "
                "needs class labels: integers or strings. Bin continuous targets into classes first, or pass "
                "label_column=... if another column holds the classes"
            )
        ds = ds.cast_column(lab, datasets.Value("int64"))
    if not isinstance(ds.features[lab], datasets.ClassLabel):
        try:
            ds = ds.class_encode_column(lab)
        except Exception as exc:
            raise TaskError(f"{source!r}: label column {lab!r} cannot be turned into classes ({exc})") from exc
    return ds
