"""The layout of an embedding store: key naming, content digests and the index (``index.parquet``)."""

from __future__ import annotations

import hashlib
import io
import json
import re
from typing import TYPE_CHECKING, Any

import numpy as np

from ..compat import RULE
from ..embedding import TEXT_INPUT_KEYS, TaskEmbedding
from ..errors import HubError

if TYPE_CHECKING:
    import pandas as pd

EMBEDDINGS_DIR = "embeddings"
INDEX_PATH = "index.parquet"
CARD_PATH = "README.md"

# name, arrow type, meaning (the card documents the index with these)
INDEX_SPEC: tuple[tuple[str, str, str], ...] = (
    ("key", "string", "`<probe>/<task>`, the name to pull an embedding by"),
    ("path", "string", "the file in this repo"),
    ("task", "string", "the task name"),
    ("probe", "string", "the probe network"),
    ("probe_revision", "string", "the probe's weights revision / hash"),
    ("estimator", "string", "the Fisher estimator (relative, variational, exact, montecarlo)"),
    ("image_size", "string", "the input resolution of the probe (images)"),
    ("modality", "string", "what the task's inputs are: `image` or `text` (empty: not recorded)"),
    ("max_length", "int64", "text: the truncation length in tokens, special tokens included"),
    ("pooling", "string", "text: how token features are pooled (`mean` over real tokens, `cls`, `next-token`)"),
    ("tokenizer", "string", "text: the probe's own tokenizer, `<source> (<class>)`"),
    (
        "tokenizer_revision",
        "string",
        "text: the revision the tokenizer was read at: the probe's (tokenizer and weights come from one "
        "folder or Hub commit)",
    ),
    ("task_source", "string", "where the task came from (Hub dataset id, path, ...)"),
    ("task_revision", "string", "the resolved commit of a Hub dataset"),
    ("task_split", "string", "the dataset split"),
    ("task_config", "string", "the dataset configuration"),
    ("num_classes", "int64", "classes in the task"),
    ("samples", "int64", "examples the Fisher was computed on"),
    ("dim", "int64", "embedding dimension (number of probe filters)"),
    ("norm", "float64", "L1 norm of the embedding's data part, values - trivial (task complexity, paper Fig. 2)"),
    ("created", "string", "when the embedding was computed (UTC)"),
    ("sha256", "string", "sha256 of the file"),
    ("size", "int64", "file size in bytes"),
    ("content_sha256", "string", "digest of the tensors and metadata (pushes skip unchanged ones)"),
    ("library_version", "string", "hf_task2vec version that computed it"),
)
INDEX_COLUMNS: tuple[str, ...] = tuple(name for name, _, _ in INDEX_SPEC)
_HEX40 = re.compile(r"[0-9a-f]{40}")
# how the metadata keys every embedding records for the comparability rule (`hf_task2vec.compat`) are named
# in the index
META_TO_COLUMN = {
    "probe": "probe",
    "probe_revision": "probe_revision",
    "method": "estimator",
    "image_size": "image_size",
}


# --------------------------------------------------------------------------------- naming
def sanitize_name(name: str) -> str:
    """A file-system and Hub safe version of a probe or task name (``[A-Za-z0-9._-]``, no leading dot).

    >>> sanitize_name("offline:animal-mnist[cat,dog]")
    'offline_animal-mnist_cat_dog'
    """
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name).strip())
    text = re.sub(r"_+", "_", text).strip("_").lstrip(".")
    return text[:200] or "unnamed"


def embedding_key(embedding: TaskEmbedding) -> str:
    """The default key of an embedding in a store: ``"<probe>/<task>"`` (both sanitised)."""
    return f"{sanitize_name(embedding.probe or 'probe')}/{sanitize_name(embedding.name or 'task')}"


def _normalize_key(key: str, embedding: TaskEmbedding | None = None) -> str:
    text = str(key).strip().replace("\\", "/")
    if text.startswith(EMBEDDINGS_DIR + "/"):
        text = text[len(EMBEDDINGS_DIR) + 1 :]
    if text.endswith(".safetensors"):
        text = text[: -len(".safetensors")]
    parts = [p for p in text.split("/") if p]
    if len(parts) == 1 and embedding is not None:
        parts = [embedding.probe or "probe", parts[0]]
    if len(parts) != 2:
        raise HubError(f"bad embedding key {key!r}: use '<probe>/<task>' (e.g. 'embedded/my-task') or '<task>'")
    return "/".join(sanitize_name(p) for p in parts)


def _key_path(key: str) -> str:
    return f"{EMBEDDINGS_DIR}/{key}.safetensors"


def content_digest(embedding: TaskEmbedding) -> str:
    """A sha256 of what an embedding holds (tensors, layers, metadata), independent of how its
    safetensors header happens to be ordered: equal digests mean the same embedding."""
    h = hashlib.sha256()
    h.update(embedding.values.tobytes())
    h.update(embedding.trivial.tobytes())
    h.update(json.dumps([[sl.name, sl.start, sl.stop] for sl in embedding.layers]).encode())
    h.update(json.dumps(embedding.meta, sort_keys=True).encode())
    return h.hexdigest()


def canonical_bytes(embedding: TaskEmbedding) -> bytes:
    """``embedding.to_bytes()`` with its safetensors JSON header written with sorted keys, so that
    the same embedding always serialises to the same bytes (safetensors itself orders metadata
    arbitrarily). The tensor bytes and offsets are unchanged; any safetensors reader loads it."""
    data = embedding.to_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # safetensors pads the header to a multiple of 8 bytes
    return len(text).to_bytes(8, "little") + text + data[8 + n :]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


# --------------------------------------------------------------------------------- index
def _int_or_none(text: str | None) -> int | None:
    try:
        return int(str(text))
    except (TypeError, ValueError):
        return None


#: The columns that describe a task's inputs, filled from the embedding's metadata by `input_columns`
#: (an index written before they existed lacks them: a push fills them from the stored files).
INPUT_COLUMNS: tuple[str, ...] = ("modality", "max_length", "pooling", "tokenizer", "tokenizer_revision")
#: What text embeddings must share, besides the `META_TO_COLUMN` keys, for `EmbeddingStore.nearest`
#: to compare them: the text keys of the comparability rule (`hf_task2vec.compat`: truncation and pooling).
TEXT_COMPARED: tuple[str, ...] = TEXT_INPUT_KEYS


def comparable_meta(row: dict[str, Any]) -> dict[str, str]:
    """The metadata of the comparability rule (`hf_task2vec.compat`) that an index row records: the
    `META_TO_COLUMN` keys (a missing value is ``""``, as in the files) and the `TEXT_COMPARED` ones
    where recorded. A rule key the index has no column for (the robust prior: ``prior_examples``,
    ``beta``, the head's form) or leaves empty (rows of an index written before the input columns
    existed) is ``""``, i.e. unknown: `EmbeddingStore.nearest` lets the stored file decide it."""
    meta = {}
    for key, column in META_TO_COLUMN.items():
        value = row.get(column)
        meta[key] = "" if value is None else str(value)
    for column in TEXT_COMPARED:
        value = row.get(column)
        if value is not None and value != "":
            meta[column] = str(value)
    # every other rule key is unknown here ("": not compared), whatever an embedding FILE missing it stands for
    # (`RuleKey.read`'s legacy value, e.g. the linear head): the stored file decides it
    for rule in RULE:
        meta.setdefault(rule.name, "")
    return meta


def _text_settings(meta: dict[str, str]) -> dict[str, str]:
    """The ``text_settings`` entry a text probe records (`TextProbe.settings`, JSON); ``{}`` if none."""
    try:
        found = json.loads(meta.get("text_settings") or "{}")
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def input_columns(meta: dict[str, str]) -> dict[str, Any]:
    """The `INPUT_COLUMNS` of an embedding, read from its metadata (no second schema): the task's
    ``modality``, and for text the probe's recorded ``max_length``, ``pooling`` and ``text_settings``
    (tokenizer class and source). An embedding without a recorded modality that has an
    ``image_size`` was made on images; otherwise the modality is left empty."""
    settings = _text_settings(meta)
    modality = meta.get("modality") or settings.get("modality", "")
    if not modality and meta.get("image_size"):
        modality = "image"
    if modality != "text":
        return {"modality": modality, "max_length": None, "pooling": "", "tokenizer": "", "tokenizer_revision": ""}
    cls, source = settings.get("tokenizer", ""), settings.get("tokenizer_source", "")
    tokenizer = f"{source} ({cls})" if source and cls else source or cls
    return {
        "modality": "text",
        "max_length": _int_or_none(meta.get("max_length") or settings.get("max_length")),
        "pooling": meta.get("pooling") or settings.get("pooling", ""),
        "tokenizer": tokenizer,
        "tokenizer_revision": meta.get("probe_revision", "") if tokenizer else "",
    }


def _index_row(key: str, data: bytes, emb: TaskEmbedding, digest: str) -> dict[str, Any]:
    meta = emb.meta
    return {
        "key": key,
        "path": _key_path(key),
        "task": emb.name,
        "probe": emb.probe,
        "probe_revision": meta.get("probe_revision", ""),
        "estimator": emb.method,
        "image_size": meta.get("image_size", ""),
        **input_columns(meta),
        "task_source": meta.get("task_source", ""),
        "task_revision": meta.get("task_revision", ""),
        "task_split": meta.get("task_split", ""),
        "task_config": meta.get("task_config", ""),
        "num_classes": _int_or_none(meta.get("num_classes")),
        "samples": _int_or_none(meta.get("num_samples")),
        "dim": emb.dim,
        "norm": emb.data_norm,
        "created": meta.get("created", ""),
        "sha256": _sha256(data),
        "size": len(data),
        "content_sha256": digest,
        "library_version": meta.get("library_version", ""),
    }


def _index_schema():
    import pyarrow as pa

    types = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64()}
    return pa.schema([(name, types[t]) for name, t, _ in INDEX_SPEC])


def _index_to_bytes(rows: list[dict[str, Any]]) -> bytes:
    """The index as parquet bytes; the same rows always give the same bytes (sorted by key)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = sorted(rows, key=lambda r: r["key"])
    table = pa.Table.from_pydict({c: [r.get(c) for r in rows] for c in INDEX_COLUMNS}, schema=_index_schema())
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="snappy")
    return sink.getvalue()


def _empty_index() -> pd.DataFrame:
    return _table_to_frame(_index_schema().empty_table())


def _table_to_frame(table) -> pd.DataFrame:
    import pandas as pd
    import pyarrow as pa

    frame = table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    for name, typ, _ in INDEX_SPEC:  # older or hand-made indexes: add missing columns
        if name not in frame.columns:
            frame[name] = pd.Series([pd.NA] * len(frame), dtype="Int64" if typ == "int64" else object)
    return frame[list(INDEX_COLUMNS)].sort_values("key", kind="stable").reset_index(drop=True)


class CorruptIndexError(HubError):
    """A store's ``index.parquet`` cannot be read; `EmbeddingStore.rebuild_index` (CLI ``hf-task2vec
    index --repo STORE --rebuild``) rewrites it from the stored embedding files, and a push does so too."""


def _index_from_bytes(data: bytes, source: str) -> pd.DataFrame:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as exc:
        raise CorruptIndexError(
            f"{source}: {INDEX_PATH} is not a readable parquet file ({exc}); rebuild it from the stored embedding "
            "files with `hf-task2vec index --repo STORE --rebuild` (EmbeddingStore.rebuild_index(); a push rebuilds "
            "it too)"
        ) from exc
    if "key" not in table.column_names or "path" not in table.column_names:
        raise HubError(f"{source}: {INDEX_PATH} has no key/path columns; it was not written by hf_task2vec")
    return _table_to_frame(table)


def _frame_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Index rows as plain dicts (missing values as ``None``, numpy scalars as Python numbers)."""
    import pandas as pd

    rows = []
    for record in frame.to_dict("records"):
        row = {}
        for k, v in record.items():
            if v is None or (not isinstance(v, str) and pd.isna(v)):
                row[k] = None
            else:
                row[k] = v.item() if isinstance(v, np.generic) else v
        rows.append(row)
    return rows
