"""Turn uint8 image arrays into Hub-style ``datasets.Dataset`` objects, split them, and cache them.

The image column is stored the way the Hub stores images: a struct ``{bytes: PNG, path: null}`` under the
``datasets.Image()`` feature, decoded lazily to 8-bit grey PIL images (mode ``"L"``).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import struct
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
from datasets.table import InMemoryTable

logger = logging.getLogger(__name__)

CACHE_ENV = "HF_TASK2VEC_CACHE"

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def encode_png_grey(images: np.ndarray, compress_level: int = 6) -> list[bytes]:
    """Encode a ``(N, H, W)`` uint8 array as N standard 8-bit greyscale PNG files.

    A direct writer (IHDR colour type 0, bit depth 8, filter 0 on every row, one IDAT, IEND): about
    twice as fast as going through PIL for tiny images, and decoded by PIL as mode ``"L"``.
    """
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected a (N, H, W) uint8 array, got {images.dtype} {images.shape}")
    n, height, width = images.shape
    head = _PNG_SIGNATURE + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    tail = _png_chunk(b"IEND", b"")
    rows = np.zeros((n, height, width + 1), dtype=np.uint8)  # a leading 0 = "no filter" byte per row
    rows[:, :, 1:] = images
    return [head + _png_chunk(b"IDAT", zlib.compress(r.tobytes(), compress_level)) + tail for r in rows]


def image_label_features(label_names: Sequence[str]) -> datasets.Features:
    """The Hub convention for an image classification dataset: ``image`` + ``label`` (ClassLabel)."""
    return datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(label_names))}
    )


def build_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    info: datasets.DatasetInfo,
    split: str,
    fingerprint: str | None = None,
) -> datasets.Dataset:
    """Build an in-memory ``datasets.Dataset`` with PNG-encoded ``image`` and ClassLabel ``label`` columns.

    ``info.features`` must be :func:`image_label_features`.
    """
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
    assert info.features is not None
    pngs = encode_png_grey(images)
    image_column = pa.StructArray.from_arrays(
        [pa.array(pngs, type=pa.binary()), pa.nulls(len(pngs), type=pa.string())], names=["bytes", "path"]
    )
    table = pa.table({"image": image_column, "label": pa.array(labels.astype(np.int64), type=pa.int64())})
    table = table.cast(info.features.arrow_schema)
    return datasets.Dataset(
        InMemoryTable(table), info=info, split=datasets.NamedSplit(split), fingerprint=fingerprint
    )


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on a uint64 array (wrapping arithmetic): a stable, portable hash."""
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def stratified_split(
    labels: np.ndarray, test_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic stratified train/test split of ``range(len(labels))``.

    For each class with ``n`` examples, ``floor(n * test_fraction + 0.5)`` of them go to test: those with
    the smallest splitmix64 hash of ``index + seed``. The hash is plain integer arithmetic, so the split
    is the same on every machine and numpy version. Returns sorted ``(train_indices, test_indices)``.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    labels = np.asarray(labels)
    keys = _splitmix64(np.arange(labels.shape[0], dtype=np.uint64) + np.uint64(seed))
    is_test = np.zeros(labels.shape[0], dtype=bool)
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        n_test = int(math.floor(members.size * test_fraction + 0.5))
        order = members[np.argsort(keys[members], kind="stable")]
        is_test[order[:n_test]] = True
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


# --------------------------------------------------------------------------------------------- cache
def cache_root() -> Path:
    """``$HF_TASK2VEC_CACHE/offline``, else ``$XDG_CACHE_HOME/hf_task2vec/offline`` (``~/.cache`` default)."""
    base = os.environ.get(CACHE_ENV)
    if base:
        return Path(base).expanduser() / "offline"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "hf_task2vec" / "offline"


def load_cached(path: Path) -> datasets.Dataset | None:
    """Load a cached dataset (memory-mapped), or None when absent or unreadable (then it is removed)."""
    if not path.is_dir():
        return None
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:  # a damaged cache entry must never break loading: rebuild it
        logger.warning("Ignoring unreadable cache entry %s (%s); rebuilding it", path, exc)
        shutil.rmtree(path, ignore_errors=True)
        return None
    if not isinstance(ds, datasets.Dataset):
        shutil.rmtree(path, ignore_errors=True)
        return None
    return ds


def save_atomically(ds: datasets.Dataset, path: Path) -> bool:
    """Save ``ds`` to ``path`` via a temporary sibling folder and one rename. False if it could not.

    When another process wins the race, its (identical) entry is kept and ours is discarded.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as exc:
        logger.warning("Cannot create the cache folder %s (%s); not caching", path.parent, exc)
        return False
    progress_was_enabled = not datasets.utils.are_progress_bars_disabled()
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the entry is plain derived data
        if progress_was_enabled:
            datasets.utils.disable_progress_bars()
        ds.save_to_disk(str(tmp))
        os.rename(tmp, path)
        return True
    except OSError as exc:
        if path.is_dir():  # lost a race with another writer: theirs is as good as ours
            logger.debug("Cache entry %s appeared concurrently; keeping it", path)
            return True
        logger.warning("Cannot write the cache entry %s (%s); not caching", path, exc)
        return False
    finally:
        if progress_was_enabled:
            datasets.utils.enable_progress_bars()
        shutil.rmtree(tmp, ignore_errors=True)
