"""Tasks: a labeled `datasets` object (or tensors), its input and label columns, and provenance.

`load_task` accepts a Hub dataset id, a local folder (imagefolder layout or parquet/csv/json
files), a single data file, ``"offline:<name>"`` for the bundled offline datasets, or an
in-memory `datasets.Dataset` / `DatasetDict`. Columns are detected from the features (one
``Image`` column, one ``ClassLabel`` column) unless given. A `TaskSpec` says all of that in one
object (source, columns, split, classes, name, revision, config, streaming): `embed`, the batch
configs, the CLI and the Space pass one instead of repeating the keywords.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .checks import check_max_length
from .columns import (
    _check_text_columns,
    _check_unambiguous,
    _detect_task_columns,
    _holds_image_paths,
    _prepare_columns,
)
from .errors import HubDatasetError, HubError, TaskError
from .gateway import HubTarget, hub_call
from .sampling import class_index

logger = logging.getLogger(__name__)

DATA_FILE_BUILDERS = {
    ".parquet": "parquet",
    ".csv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".arrow": "arrow",
}
def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a PIL image of any mode (L, P, RGBA, LA, CMYK, YCbCr, I;16, I, F, 1) to 8-bit RGB.

    Transparent images are composited on white; 16-bit and 32-bit integer images are scaled from
    their full range; float images from [0, 1] (values outside are clipped).
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16"):
            arr = arr / 65535.0
        elif mode == "I":
            arr = arr / (65535.0 if arr.max(initial=0) > 255 else 255.0)
        arr = np.clip(arr, 0.0, 1.0)
        return Image.fromarray((arr * 255.0 + 0.5).astype(np.uint8), mode="L").convert("RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


@dataclass(frozen=True)
class TaskSpec:
    """Where a task's data is and how to read it: everything `load_task` needs.

    Attributes:
        source: a Hub dataset id (``"user/name"``), a local folder or data file, ``"offline:<name>"``,
            a `datasets.Dataset` / `DatasetDict` / `IterableDataset`, or a `Task`.
        input_column, label_column: the columns to use; detected from the features when ``None``.
        split: the split to use when the source has several.
        classes: keep only these label names or ids (relabelled ``0..k-1`` in this order).
        name: the task name (default: derived from the source).
        revision: the Hub revision (branch, tag or commit) of a Hub dataset.
        config: the dataset configuration name for Hub datasets with several.
        streaming: stream a Hub dataset or local files instead of downloading them; a stream is
            read only until ``max_examples`` class-balanced examples are found.
        max_examples: how many examples to keep from a stream (``None``: the whole stream).
        max_scan: stop reading a stream after this many examples whatever the class quotas.
        allow_empty: text tasks: leave out the rows whose text is empty or missing (logged) instead
            of refusing the dataset (CLI ``--allow-empty``).
    """

    source: Any
    input_column: str | None = None
    label_column: str | None = None
    split: str = "train"
    classes: tuple[str | int, ...] | None = None
    name: str | None = None
    revision: str | None = None
    config: str | None = None
    streaming: bool = False
    max_examples: int | None = None
    max_scan: int | None = None
    allow_empty: bool = False

    def __post_init__(self) -> None:
        if self.classes is not None and not isinstance(self.classes, tuple):
            object.__setattr__(self, "classes", tuple(self.classes))

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        """The names of the fields (the keywords `load_task` accepts besides ``source``)."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def of(cls, source: Any, **fields: Any) -> TaskSpec:
        """``source`` as a spec: a `TaskSpec` (with ``fields`` replaced) or a new spec over ``source``."""
        unknown = sorted(set(fields) - set(cls.fields()))
        if unknown:
            raise TypeError(f"unknown task option(s) {unknown}; a TaskSpec has {list(cls.fields()[1:])}")
        if isinstance(source, TaskSpec):
            return source.replace(**fields) if fields else source
        return cls(source, **fields)

    @classmethod
    def split_options(
        cls, source: Any, spec: TaskSpec | None, options: Mapping[str, Any]
    ) -> tuple[TaskSpec, dict[str, Any]]:
        """Separate keyword options into a spec over ``source`` (its fields) and the rest."""
        names = set(cls.fields()) - {"source"}
        mine = {k: v for k, v in options.items() if k in names and v is not None}
        rest = {k: v for k, v in options.items() if k not in names}
        return cls.of(spec if spec is not None else source, **mine), rest

    def replace(self, **changes: Any) -> TaskSpec:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def load(self, *, token: str | bool | None = None) -> Task:
        """`load_task` of this spec."""
        return load_task(self, token=token)


class Task:
    """A labeled dataset to embed.

    Build one with `load_task`, `Task.from_tensors` or `split_tasks`; do not call the constructor
    with unchecked data.

    Attributes:
        name: a short human name (recorded in embeddings and used as file name in stores).
        label_names: the human name of each label ``0..K-1``.
        input_column, label_column: the dataset columns used (``None`` for tensor tasks).
        source, revision, split, config: where the data came from.
        stream_stats: for a task read from a stream, ``{"rows_read": n, "exhausted": bool}``
            (`hf_task2vec.sampling.BalancedPrefix`); ``None`` otherwise.
    """

    def __init__(
        self,
        *,
        name: str,
        label_names: Sequence[str],
        labels: np.ndarray,
        dataset: Any = None,
        input_column: str | None = None,
        label_column: str | None = None,
        inputs: torch.Tensor | None = None,
        source: str = "",
        revision: str = "",
        split: str = "",
        config: str = "",
        validate: bool = True,
        modality: str = "image",
        pair_column: str | None = None,
    ) -> None:
        self.name = name
        self.modality = "tensor" if inputs is not None else modality
        self.pair_column = pair_column
        self.label_names = [str(n) for n in label_names]
        self._labels = np.asarray(labels, dtype=np.int64)
        self.dataset = dataset
        self.input_column = input_column
        self.label_column = label_column
        self.inputs = inputs
        self.source = source
        self.revision = revision
        self.split = split
        self.config = config
        self.stream_stats: dict[str, int | bool] | None = None
        if validate:
            _validate_labels(self._labels, len(self.label_names), name)

    # -- constructors ------------------------------------------------------------------------
    @classmethod
    def from_tensors(
        cls,
        inputs: torch.Tensor | np.ndarray,
        labels: torch.Tensor | np.ndarray | Sequence[int],
        *,
        name: str = "tensors",
        label_names: Sequence[str] | None = None,
    ) -> Task:
        """A task over in-memory inputs ``[N, ...]`` and integer labels ``[N]`` (toy and analytic checks)."""
        x = torch.as_tensor(inputs)
        y = _integer_labels(labels, name)
        if x.shape[0] != y.shape[0]:
            raise TaskError(f"task {name!r}: {x.shape[0]} inputs but {y.shape[0]} labels; give one label per input")
        if y.size == 0:
            raise TaskError(f"task {name!r} is empty: give at least two examples of two classes")
        if label_names is None:
            label_names = [str(i) for i in range(int(y.max()) + 1)]
        return cls(name=name, label_names=label_names, labels=y, inputs=x, source="tensors")

    # -- basic facts -------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._labels.size)

    @property
    def labels(self) -> np.ndarray:
        """Integer labels ``0..K-1`` of every example (int64 array)."""
        return self._labels

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    @property
    def is_image(self) -> bool:
        return self.inputs is None and self.modality == "image"

    @property
    def is_text(self) -> bool:
        """A text (or text-pair) task: inputs are strings, tokenised by the probe's tokenizer."""
        return self.modality == "text"

    def class_counts(self) -> np.ndarray:
        return np.bincount(self._labels, minlength=self.num_classes)

    def text_lengths(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Characters of each text (and its pair) at ``indices``: a cheap stand-in for the token count
        that orders a text pass by length. Raises `TaskError` for a task that holds no texts."""
        if not self.is_text:
            raise TaskError(f"task {self.name!r} holds no texts")
        rows = self.dataset[[int(i) for i in indices]]
        out = np.array([len(t or "") for t in rows[self.input_column]], dtype=np.int64)
        if self.pair_column:
            out += np.array([len(t or "") for t in rows[self.pair_column]], dtype=np.int64)
        return out

    def __repr__(self) -> str:
        return f"Task(name={self.name!r}, examples={len(self)}, classes={self.num_classes}, source={self.source!r})"

    def meta(self) -> dict[str, str]:
        """Provenance recorded in embeddings (str -> str)."""
        return {
            "task": self.name,
            "task_source": self.source,
            "task_revision": self.revision,
            "task_split": self.split,
            "task_config": self.config,
            "input_column": self.input_column or "",
            "label_column": self.label_column or "",
            "label_names": json.dumps(self.label_names),
            "num_classes": str(self.num_classes),
            **({"modality": "text", "pair_column": self.pair_column or ""} if self.is_text else {}),
        }

    # -- sub-tasks ---------------------------------------------------------------------------
    def subset(self, indices: Sequence[int] | np.ndarray, *, name: str | None = None) -> Task:
        """The same task restricted to some examples (labels and label names unchanged)."""
        idx = np.asarray(indices, dtype=np.int64)
        return self._derive(idx, self._labels[idx], self.label_names, name or self.name)

    def subtask(self, classes: Sequence[str | int], *, name: str | None = None) -> Task:
        """Keep only ``classes`` (names or ids), relabelled ``0..k-1`` in the order given."""
        ids = [self._class_id(c) for c in classes]
        if len(set(ids)) != len(ids):
            raise TaskError(f"task {self.name!r}: classes {list(classes)} name a class twice")
        mapping = np.full(self.num_classes, -1, dtype=np.int64)
        mapping[ids] = np.arange(len(ids))
        new_labels = mapping[self._labels]
        idx = np.nonzero(new_labels >= 0)[0]
        names = [self.label_names[i] for i in ids]
        default = f"{self.name}[{','.join(names)}]"
        return self._derive(idx, new_labels[idx], names, name or default)

    def _class_id(self, c: str | int) -> int:
        return class_index(c, self.label_names, f"task {self.name!r}")

    def _derive(self, idx: np.ndarray, labels: np.ndarray, names: Sequence[str], name: str) -> Task:
        dataset = self.dataset.select(idx) if self.dataset is not None else None
        inputs = self.inputs[torch.as_tensor(idx)] if self.inputs is not None else None
        return Task(
            name=name,
            label_names=names,
            labels=labels,
            dataset=dataset,
            input_column=self.input_column,
            label_column=self.label_column,
            inputs=inputs,
            source=self.source,
            revision=self.revision,
            split=self.split,
            config=self.config,
            modality=self.modality,
            pair_column=self.pair_column,
        )

    # -- reading inputs ----------------------------------------------------------------------
    def get_inputs(
        self, indices: Sequence[int] | np.ndarray, transform: Callable[[Any], torch.Tensor] | None
    ) -> torch.Tensor:
        """A batch of model inputs for ``indices``: tensors as stored, or images decoded, converted
        to RGB and passed through ``transform`` (the probe's preprocessing)."""
        idx = [int(i) for i in indices]
        if self.inputs is not None:
            return self.inputs[torch.as_tensor(idx, dtype=torch.long)]
        if self.is_text:
            return self._text_inputs(idx, transform)
        if getattr(transform, "modality", "image") == "text":
            raise TaskError(
                f"task {self.name!r} holds images but the probe is a text probe: embed it with an image probe "
                "(e.g. 'embedded')"
            )
        if transform is None:
            raise TaskError(f"task {self.name!r} holds images: a probe with an image preprocessing config is needed")
        try:
            images = self.dataset[idx][self.input_column]
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            bad = _find_bad_row(self.dataset, self.input_column, idx)
            file = _row_file(self.dataset, self.input_column, bad)
            what = f"the image file {file!r} (row {bad} of column {self.input_column!r})" if file else (
                f"the image in row {bad} of column {self.input_column!r}"
            )
            raise TaskError(
                f"task {self.name!r}: {what} cannot be decoded ({exc}). Remove or replace "
                f"{'that file' if file else 'that example (e.g. dataset.filter)'} and try again."
            ) from exc
        out = []
        for i, img in zip(idx, images, strict=True):
            if not isinstance(img, Image.Image):
                raise TaskError(
                    f"task {self.name!r}: row {i} of column {self.input_column!r} is {type(img).__name__}, not an "
                    "image; cast the column with dataset.cast_column(col, datasets.Image())"
                )
            out.append(transform(to_rgb(img)))
        return torch.stack(out)


    def _text_inputs(self, idx: list[int], transform: Callable[..., Any] | None) -> Any:
        """Tokenised texts (or text pairs) of rows ``idx``: the probe's text transform's output."""
        if transform is None or getattr(transform, "modality", "image") != "text":
            raise TaskError(
                f"task {self.name!r} holds text (column {self.input_column!r}): embed it with a text probe such as "
                "'embedded-text' (or any transformers text encoder)"
            )
        probe = getattr(transform, "probe", None)
        if probe is not None:  # a truncation beyond the model's positions (Task2Vec(max_length=...)): refuse
            check_max_length(getattr(probe, "max_length", None), probe)
        rows = self.dataset[idx]
        texts = [t if t is not None else "" for t in rows[self.input_column]]
        pairs = [t if t is not None else "" for t in rows[self.pair_column]] if self.pair_column else None
        return transform(texts, pairs)


def _row_file(dataset: Any, column: str, row: int | str) -> str | None:
    """The file an image of row ``row`` was read from (an image folder or a table of paths), if known."""
    if not isinstance(row, int):
        return None
    try:
        import datasets

        raw = dataset.cast_column(column, datasets.Image(decode=False))[row][column]
    except Exception:  # no path to name: the row number is all there is
        return None
    path = raw.get("path") if isinstance(raw, dict) else None
    return str(path) if path else None


def _find_bad_row(dataset: Any, column: str, idx: list[int]) -> int | str:
    for i in idx:
        try:
            img = dataset[i][column]
            if isinstance(img, Image.Image):
                img.load()
        except Exception:
            return i
    return "?"


def _validate_labels(labels: np.ndarray, num_classes: int, name: str) -> None:
    if labels.size == 0:
        raise TaskError(f"task {name!r} is empty (0 examples): check the split and the class filter")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise TaskError(f"task {name!r}: labels must lie in 0..{num_classes - 1}; found {labels.min()}..{labels.max()}")
    present = np.unique(labels)
    if present.size < 2:
        only = present[0] if present.size else "?"
        raise TaskError(
            f"task {name!r} has a single class (label {only}): a task needs at least two classes to "
            "learn anything. Add examples of another class or choose other classes."
        )


# -- loading --------------------------------------------------------------------------------------
def _pick_split(dsd: Any, split: str, source: str) -> Any:
    if split not in dsd:
        raise TaskError(f"{source!r} has no split {split!r}; its splits are {sorted(dsd)}. Pass split=...")
    return dsd[split]


def _integer_labels(labels: Any, name: str) -> np.ndarray:
    """Labels as int64 ``[N]``; fractional, non-finite or multi-column labels are refused, not truncated."""
    raw = np.asarray(torch.as_tensor(labels).cpu().numpy() if torch.is_tensor(labels) else labels)
    if raw.ndim > 1 and not (raw.ndim == 2 and raw.shape[1] == 1):
        raise TaskError(f"task {name!r}: labels have shape {raw.shape}; give one label per input (shape [N])")
    raw = raw.reshape(-1)
    if raw.dtype.kind == "f":
        if not np.isfinite(raw).all():
            raise TaskError(f"task {name!r}: labels are not finite (NaN or infinity); give integer class ids 0..K-1")
        frac = raw[raw != np.round(raw)]
        if frac.size:
            raise TaskError(
                f"task {name!r}: labels are not whole numbers (e.g. {frac[0]!r}); give integer class ids 0..K-1 "
                "(bin continuous targets into classes first)"
            )
    elif raw.dtype.kind not in "iub":
        raise TaskError(f"task {name!r}: labels have dtype {raw.dtype}; give integer class ids 0..K-1")
    y = raw.astype(np.int64)
    if y.size and y.min() < 0:
        raise TaskError(f"task {name!r}: labels must lie in 0..K-1 (non-negative); found {int(y.min())}")
    return y


def _load_local(path: Path, split: str, streaming: bool = False) -> Any:
    import datasets

    if path.is_file():
        builder = DATA_FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise TaskError(f"{str(path)!r}: unsupported file type; use one of {sorted(DATA_FILE_BUILDERS)}")
        if path.stat().st_size == 0:
            raise TaskError(f"{str(path)!r} is empty (0 bytes): write the {builder} file again")
        try:
            return datasets.load_dataset(builder, data_files={split: str(path)}, streaming=streaming)
        except Exception as exc:
            raise TaskError(
                f"{str(path)!r} cannot be read as a {builder} file ({type(exc).__name__}: {str(exc)[:200]}); "
                "check that it is complete and write it again"
            ) from exc
    files = [p for p in sorted(path.rglob("*")) if p.is_file() and p.suffix.lower() in DATA_FILE_BUILDERS]
    if files:
        builder = DATA_FILE_BUILDERS[files[0].suffix.lower()]
        return datasets.load_dataset(builder, data_dir=str(path), streaming=streaming)
    ds = datasets.load_dataset("imagefolder", data_dir=str(path), streaming=streaming)
    _check_class_folders(ds, path)
    return ds


def _is_upload(path: Path, streaming: bool) -> bool:
    """A file read like the Space reads an upload (`hf_task2vec.uploads`): a zip (of class folders, or
    with a metadata table), or a CSV / parquet table that is not streamed."""
    suffix = path.suffix.lower()
    return suffix == ".zip" or (suffix in (".csv", ".parquet") and not streaming)


def _load_upload(path: Path, spec: TaskSpec) -> Any:
    """The in-memory dataset of an upload-like file, with the upload limits and messages (`read_upload`:
    images checked and kept as bytes; a table's image file names relative to its folder)."""
    from .uploads import UploadLimits, read_upload

    upload = read_upload(
        path,
        limits=UploadLimits.from_env(),
        image_column=spec.input_column,
        label_column=spec.label_column,
        local_paths=True,
    )
    for note in upload.notes:
        logger.warning("%s: %s", path.name, note)
    return upload.dataset


def _check_class_folders(ds: Any, path: Path) -> None:
    """An imagefolder with a single class folder gets no label column from `datasets`: say so."""
    first = next(iter(ds.values())) if hasattr(ds, "values") else ds
    features = getattr(first, "features", None)
    if features is None or "label" in features:
        return
    folders = sorted({p.parent.name for p in path.rglob("*") if p.is_file() and p.parent != path})
    if len(folders) == 1:
        raise TaskError(
            f"folder {str(path)!r} holds a single class ({folders[0]!r}): a task needs at least two classes. "
            "Add a folder with images of another class next to it (<folder>/<class>/<image>)"
        )


def _looks_like_path(text: str) -> bool:
    """A source that cannot be a Hub id, or whose first folder exists here: a path, not a Hub dataset."""
    if "://" in text:
        return False
    if "\\" in text or text.count("/") > 1 or Path(text).suffix.lower() in {*DATA_FILE_BUILDERS, ".zip"}:
        return True
    head = text.split("/", 1)[0]
    return "/" in text and Path(head).is_dir()


def _resolve_hub_revision(
    source: str, revision: str | None, token: str | bool | None = None, *, raise_unavailable: bool = False,
    attempts: int | None = None,
) -> str:
    """The commit sha a Hub dataset id (at ``revision``, default ``main``) resolves to.

    Asked through `hf_task2vec.gateway` (retries). A missing or inaccessible repo, an unknown
    revision or a rejected token raise a `HubDatasetError` (a `TaskError`) that names the dataset and
    the fix. When the Hub cannot be asked (offline mode, no network), the revision as given is
    returned (``''`` for the default branch) and the load itself goes on from the local cache if it can.
    """
    from huggingface_hub import HfApi

    target = HubTarget(f"Hub dataset {source!r}", revision=revision, token=token)
    try:
        info = hub_call("", lambda: HfApi().dataset_info(source, revision=revision, token=token), target,
                        error=HubDatasetError, attempts=attempts)
    except HubError as exc:
        if exc.reason in ("not_found", "revision", "gated", "auth", "forbidden"):
            raise
        if raise_unavailable and exc.reason == "unavailable":
            raise
        logger.info("could not resolve the revision of %r (%s); loading it anyway", source, exc)
        return revision or ""
    return info.sha or (revision or "")


def load_task(source: Any, *, token: str | bool | None = None, **fields: Any) -> Task:
    """Load a labeled dataset as a `Task`.

    Args:
        source: a `TaskSpec`, or what its ``source`` may be: a Hub dataset id (``"user/name"``), a
            local folder or data file, ``"offline:<name>"`` (see `hf_task2vec.data.available_offline`),
            a `datasets.Dataset` or `DatasetDict`, or a `Task` (returned, restricted to ``classes``
            if given).
        token: a Hub token for private datasets (default: ``HF_TOKEN`` or the saved login;
            ``False``: send none).
        **fields: `TaskSpec` fields (``input_column``, ``label_column``, ``split``, ``classes``,
            ``name``, ``revision``, ``config``, ``streaming``, ``max_examples``, ``max_scan``); with a
            `TaskSpec` source they replace its own. A streamed source (also a
            `datasets.IterableDataset` given directly) is read only until ``max_examples``
            class-balanced examples are found (`hf_task2vec.sampling.take_balanced`); they become an
            in-memory dataset. ``max_examples`` is ignored for in-memory sources (`Task2Vec`
            samples those with ``max_samples``).

    Raises:
        TaskError: for a missing split/column, ambiguous columns, an empty task or a single class
            (`HubDatasetError`, also a `HubError`, when the Hub refuses or lacks the dataset).
    """
    import datasets

    spec = TaskSpec.of(source, **fields)
    classes = list(spec.classes) if spec.classes is not None else None
    stream_stats: dict[str, int | bool] | None = None
    if isinstance(spec.source, Task):
        task = spec.source
    else:
        src_label, revision_used, ds = _open_source(spec, token)
        if isinstance(ds, datasets.DatasetDict | datasets.IterableDatasetDict):
            ds = _pick_split(ds, spec.split, src_label)
        if isinstance(ds, datasets.IterableDataset):
            from .sampling import take_balanced

            features = ds.features if ds.features is not None else ds._resolve_features().features
            *_, lab_stream = _detect_task_columns(features, spec.input_column, spec.label_column, src_label)
            prefix = take_balanced(
                ds, lab_stream, spec.max_examples, classes=classes, max_scan=spec.max_scan, source=src_label
            )
            ds, stream_stats = prefix.dataset, {"rows_read": prefix.rows_read, "exhausted": prefix.exhausted}
        if len(ds) == 0:
            raise TaskError(f"{src_label!r} (split {spec.split!r}) is empty: nothing to embed")
        modality, inp, pair, lab = _detect_task_columns(
            ds.features, spec.input_column, spec.label_column, src_label, ds=ds
        )
        if modality == "text" and pair is None and _holds_image_paths(ds, inp):
            modality = "image"  # a CSV of image file paths: the strings name images, they are not the text
        if spec.input_column is None:  # an image column AND a text column: say so, do not pick one silently
            _check_unambiguous(ds, modality, inp, pair, lab, src_label)
        if modality == "text":
            keep = _check_text_columns(ds, [c for c in (inp, pair) if c], src_label, allow_empty=spec.allow_empty)
            if keep is not None:
                logger.warning("%r: left out %d row(s) whose text is empty or missing (allow_empty=True)",
                               src_label, len(ds) - len(keep))
                ds = ds.select(keep)
        ds = _prepare_columns(ds, inp, lab, src_label, modality=modality)
        label_names = list(ds.features[lab].names)
        labels = np.array(ds.data.column(lab).to_numpy() if ds._indices is None else ds[lab], dtype=np.int64)
        default_name = src_label.rstrip("/").split("/")[-1] or "task"
        task = Task(
            name=spec.name or default_name,
            label_names=label_names,
            labels=labels,
            dataset=ds,
            input_column=inp,
            label_column=lab,
            source=src_label,
            revision=revision_used,
            split=spec.split,
            config=spec.config or "",
            validate=classes is None,  # a class filter comes next; check the sub-task instead
            modality=modality,
            pair_column=pair,
        )
    if classes is not None:
        task = task.subtask(classes, name=spec.name)
    elif spec.name:
        task.name = spec.name
    if stream_stats is not None:
        task.stream_stats = stream_stats
    return task


def _open_source(spec: TaskSpec, token: str | bool | None = None) -> tuple[str, str, Any]:
    import datasets

    source, split, revision, config, streaming = spec.source, spec.split, spec.revision, spec.config, spec.streaming
    if isinstance(source, datasets.Dataset | datasets.DatasetDict | datasets.IterableDataset):
        label = getattr(getattr(source, "info", None), "dataset_name", None) or "in-memory"
        return str(label), revision or "", source
    if isinstance(source, datasets.IterableDatasetDict):
        return "in-memory", revision or "", source
    if not isinstance(source, str | os.PathLike):
        raise TaskError(f"cannot load a task from a {type(source).__name__}; give a Hub id, a path or a Dataset")
    text = os.fspath(source)
    if text.startswith("offline:"):
        from .data import load_offline

        return text, "", load_offline(text.split(":", 1)[1], split=split)
    path = Path(text)
    if path.is_file() and _is_upload(path, streaming):
        return str(path), "", _load_upload(path, spec)
    if path.exists():
        return str(path), "", _load_local(path, split, streaming)
    if text.startswith(("/", "./", "../", "file://", "~")) or _looks_like_path(text):
        raise TaskError(f"local path {text!r} does not exist (relative to {os.getcwd()!r}): check the path")
    try:
        # a missing relative path also reads as a Hub id: two tries, not a long round of retries
        resolved = _resolve_hub_revision(text, revision, token, raise_unavailable=True, attempts=2)
    except HubError as exc:
        if exc.reason not in ("unavailable", "not_found"):
            raise
        # a relative path that does not exist looks like a Hub id: say both, at once (no second round of retries)
        raise HubDatasetError(
            f"no local file or folder {text!r} exists (relative to {os.getcwd()!r}), and as a Hub dataset id: {exc}",
            reason=exc.reason,
            status=exc.status,
        ) from exc
    try:
        ds = datasets.load_dataset(
            text, config, split=split, revision=resolved or revision, streaming=streaming, token=token
        )
    except Exception as exc:
        raise TaskError(
            f"could not load Hub dataset {text!r} (split {split!r}): {type(exc).__name__}: {exc}. Check the id, "
            "the split/config, your token (HF_TOKEN) for private datasets, and that the Hub is reachable "
            "(HF_ENDPOINT, HF_HUB_OFFLINE)."
        ) from exc
    return text, resolved, ds


def split_tasks(dataset: Any, groups: dict[str, Sequence[str | int]], **load_kwargs: Any) -> list[Task]:
    """Cut a dataset into sub-tasks, one per label group (the paper cuts iNaturalist into orders).

    Args:
        dataset: anything `load_task` accepts (``load_kwargs``: `TaskSpec` fields).
        groups: ``{task_name: [class names or ids]}``; each sub-task is relabelled ``0..k-1``.
    """
    base = load_task(dataset, **load_kwargs) if not isinstance(dataset, Task) else dataset
    if not groups:
        raise TaskError("split_tasks needs at least one label group")
    return [base.subtask(classes, name=name) for name, classes in groups.items()]
