"""The Space's inputs: an upload, a Hub dataset, the Hub push, and the per-request folders.

Uploads are read by the library (`hf_task2vec.uploads.read_upload`: a zip of class folders, a CSV or a
parquet file, with every safety limit) and turned into a task by `hf_task2vec.load_task`, exactly as
``hf_task2vec.load_task("my.zip")`` and ``hf-task2vec embed my.zip`` do. This module only words the
messages for the page (the boxes as they are labelled) and adds the Hub dataset input and the push.

Problems the user can fix raise `InputError` (the library's `UploadError`): the app shows the message
in its status area.
"""

from __future__ import annotations

import contextlib
import html
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hf_task2vec.errors import TaskError
from hf_task2vec.errors import UploadError as InputError
from hf_task2vec.uploads import (
    NAME_INPUT,
    UPLOAD_EXTENSIONS,
    UploadLimits,
    count_examples,
    dataset_from_records,
    public_text,
    read_upload,
    safe_task_name,
)

#: The boxes of the page, as they are labelled there (the messages name them so).
INPUT_BOX = "image or text column"
LABEL_BOX = "label column"
_HUB_ID = re.compile(r"^(?!.*\.\.)(?!.*--)[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")
_NAME_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Limits(UploadLimits):
    """What one request may use: the upload limits of `UploadLimits`, plus the rows scanned in a Hub
    dataset and the most examples embedded. Environment variables ``T2V_SPACE_<FIELD>``
    (``T2V_SPACE_MAX_IMAGES=2000``) via `Limits.from_env`."""

    ENV_PREFIX = "T2V_SPACE_"

    max_hub_rows: int = 5_000
    max_samples: int = 5_000


def box_words(text: str) -> str:
    """A library message with the page's words: "pass input_column=..." becomes the box to fill in."""
    where = f"name it in the '{INPUT_BOX}' box (under Options)"
    text = text.replace(NAME_INPUT, where)
    text = re.sub(r"pass input_column=\.\.\.( \(--input-column\))?( to choose (the text|one))?", where, text)
    text = re.sub(r"--input-column \(input_column=\.\.\.\)", f"the '{INPUT_BOX}' box (under Options)", text)
    text = re.sub(r"--input-column ([\w.-]+)", rf"'\1' in the '{INPUT_BOX}' box", text)
    text = re.sub(r"pass label_column=\.\.\.", f"name it in the '{LABEL_BOX}' box (under Options)", text)
    return text


def unit(task: Any) -> str:
    """What the task's examples are called on the page: ``"texts"`` or ``"images"``."""
    return "texts" if getattr(task, "is_text", False) else "images"


def for_text(text: str, task: Any) -> str:
    """A sentence written for images, worded for a text task (the slider is "max examples", the same for both)."""
    if not getattr(task, "is_text", False):
        return text
    return re.sub(r"\bimage(s|\(s\))?\b", lambda m: "text" + (m.group(1) or ""), text)


@dataclass
class PreparedTask:
    """A validated task and what was left out on the way."""

    task: Any  # hf_task2vec.Task
    notes: list[str]
    source: str

    @property
    def summary(self) -> str:
        t = self.task
        classes = ", ".join(f"{html.escape(n)} ({c})" for n, c in zip(t.label_names, t.class_counts(), strict=True))
        return f"**{html.escape(t.name)}**: {len(t)} {unit(t)}, {t.num_classes} classes: {classes}"


def _load(dataset: Any, **kw: Any) -> Any:
    """`load_task` of an in-memory dataset, its messages in the page's words."""
    from hf_task2vec import load_task

    try:
        return load_task(dataset, **kw)
    except TaskError as exc:
        raise InputError(box_words(str(exc))[:600]) from exc


def task_from_upload(
    path: str | os.PathLike[str] | None,
    workdir: str | os.PathLike[str],
    limits: Limits,
    *,
    name: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
) -> PreparedTask:
    """A task from an uploaded .zip / .csv / .parquet (`read_upload`, then `load_task`). Rows with an
    empty text are left out and counted in the notes."""
    try:
        up = read_upload(path, limits=limits, workdir=workdir, image_column=image_column, label_column=label_column,
                         name=name, progress=False)  # the page shows progress; keep the server's log quiet
    except InputError as exc:
        raise InputError(box_words(str(exc))) from exc
    task = _load(up.dataset, input_column=up.input_column, label_column=up.label_column, name=up.name,
                 allow_empty=True)
    notes = [html.escape(n) for n in up.notes]
    if task.is_text:
        if len(task) < len(up.dataset):
            notes.append(f"Left out {len(up.dataset) - len(task)} row(s) with an empty text")
        notes.append(f"Read texts from column {html.escape(task.input_column)} and labels from "
                     f"{html.escape(task.label_column)}")
    if task.num_classes > limits.max_classes:
        raise InputError(f"{task.num_classes} classes; this Space takes at most {limits.max_classes}")
    return PreparedTask(task=task, notes=notes, source=up.source)


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
        raise InputError(box_words(str(exc))[:500]) from exc
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
    ds = dataset_from_records(records, source=repo_id, notes=notes, limits=limits, progress=False)
    t = _load(ds, input_column="image", label_column="label", name=safe_task_name(name or repo_id.split("/")[-1]))
    t.source, t.revision, t.split, t.config = repo_id, sha, split, config or ""
    return PreparedTask(task=t, notes=notes, source=repo_id)




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


__all__ = [
    "HUB_UNREACHABLE",
    "INPUT_BOX",
    "LABEL_BOX",
    "UPLOAD_EXTENSIONS",
    "InputError",
    "Limits",
    "PreparedTask",
    "box_words",
    "count_examples",
    "for_text",
    "hub_unreachable",
    "output_dir",
    "public_text",
    "push_embedding",
    "safe_task_name",
    "scratch_dir",
    "task_from_hub",
    "task_from_upload",
    "unit",
]
