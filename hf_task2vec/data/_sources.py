"""Readers for the raw offline image sources (no Hugging Face Hub, no network).

Each reader returns ``(images, labels)`` with ``images`` a C-contiguous ``uint8`` array of shape
``(N, H, W)`` (8-bit grey) and ``labels`` an ``int64`` array of shape ``(N,)``. Locating a source is
separate from reading it, so that a missing source is reported (and a cache key computed) cheaply.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import importlib.util
import logging
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import Task2VecError

logger = logging.getLogger(__name__)

FASHION_MNIST_ENV = "HF_TASK2VEC_FASHION_MNIST_DIR"
ANIMAL_MNIST_ENV = "HF_TASK2VEC_ANIMAL_MNIST_DIR"
FASHION_MNIST_DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_INSTALL = "apt-get install dataset-fashion-mnist"
ANIMAL_MNIST_INSTALL = "pip install --no-deps animal-mnist==0.4"
DIGITS_INSTALL = "pip install scikit-learn"

FASHION_MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
ANIMAL_MNIST_FILES: tuple[str, str] = ("animal_data_version_3.gz", "animal_label_version_3.gz")


class OfflineDatasetNotFoundError(Task2VecError, FileNotFoundError):
    """The files of an offline dataset are not installed on this machine.

    Attributes:
        dataset: the registry name of the dataset (e.g. ``"fashion-mnist"``).
        install_command: the shell command that installs the missing source.
    """

    def __init__(self, message: str, *, dataset: str, install_command: str) -> None:
        super().__init__(message)
        self.dataset = dataset
        self.install_command = install_command

    def __str__(self) -> str:
        return str(self.args[0])


class OfflineDatasetFormatError(Task2VecError, ValueError):
    """The files of an offline dataset exist but do not hold what they should (truncated, wrong format)."""


@dataclass(frozen=True)
class LocatedSource:
    """Where a source lies and a fingerprint of its files (used as part of the cache key)."""

    description: str
    files: tuple[Path, ...]
    fingerprint: tuple[Any, ...]


def _stat_fingerprint(paths: tuple[Path, ...]) -> tuple[Any, ...]:
    out: list[Any] = []
    for path in paths:
        st = path.stat()
        out.append((str(path.resolve()), st.st_size, st.st_mtime_ns))
    return tuple(out)


# --------------------------------------------------------------------------------------------- fashion
def fashion_mnist_dir() -> Path:
    """The folder holding the Fashion-MNIST idx ``.gz`` files (``$HF_TASK2VEC_FASHION_MNIST_DIR`` first)."""
    override = os.environ.get(FASHION_MNIST_ENV)
    return Path(override) if override else FASHION_MNIST_DEFAULT_DIR


def locate_fashion_mnist(split: str) -> LocatedSource:
    """Find the two idx files of a Fashion-MNIST split, or raise :class:`OfflineDatasetNotFoundError`."""
    folder = fashion_mnist_dir()
    paths = tuple(folder / f for f in FASHION_MNIST_FILES[split])
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise OfflineDatasetNotFoundError(
            f"Fashion-MNIST {split!r} files not found in {folder} (missing: {', '.join(missing)}). "
            f"Install them with `{FASHION_MNIST_INSTALL}` (Debian/Ubuntu, as root), or set "
            f"{FASHION_MNIST_ENV} to a folder holding the idx .gz files.",
            dataset="fashion-mnist",
            install_command=FASHION_MNIST_INSTALL,
        )
    return LocatedSource(
        description=f"idx files {', '.join(str(p) for p in paths)}",
        files=paths,
        fingerprint=_stat_fingerprint(paths),
    )


def parse_idx(raw: bytes, *, expected_ndim: int, source: str = "<bytes>") -> np.ndarray:
    """Parse an (uncompressed) idx file of unsigned bytes into a numpy array.

    The idx format: two zero bytes, a type code (``0x08`` = unsigned byte), the number of dimensions,
    then one big-endian ``uint32`` per dimension, then the data in C order.
    """
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise OfflineDatasetFormatError(f"{source}: not an idx file (bad magic {raw[:4].hex()})")
    type_code, ndim = raw[2], raw[3]
    if type_code != 0x08:
        raise OfflineDatasetFormatError(f"{source}: idx type code {type_code:#04x}, expected 0x08 (uint8)")
    if ndim != expected_ndim:
        raise OfflineDatasetFormatError(f"{source}: idx file has {ndim} dimensions, expected {expected_ndim}")
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    size = int(np.prod(dims, dtype=np.int64))
    if len(raw) != header + size:
        raise OfflineDatasetFormatError(
            f"{source}: idx header announces {dims} ({header + size} bytes) "
            f"but the file holds {len(raw)} bytes"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_fashion_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read a Fashion-MNIST split (``"train"``: 60,000 or ``"test"``: 10,000 images of 28x28)."""
    located = locate_fashion_mnist(split)
    image_path, label_path = located.files
    images = parse_idx(gzip.decompress(image_path.read_bytes()), expected_ndim=3, source=str(image_path))
    labels = parse_idx(gzip.decompress(label_path.read_bytes()), expected_ndim=1, source=str(label_path))
    if images.shape[0] != labels.shape[0]:
        raise OfflineDatasetFormatError(
            f"Fashion-MNIST {split}: {images.shape[0]} images but {labels.shape[0]} labels"
        )
    return np.ascontiguousarray(images), labels.astype(np.int64)


# --------------------------------------------------------------------------------------------- animal
def animal_mnist_dir() -> Path | None:
    """The folder holding the Animal-MNIST ``.gz`` pickles, or None when the package is not installed.

    ``$HF_TASK2VEC_ANIMAL_MNIST_DIR`` wins. Otherwise the installed ``animal_mnist`` package is found with
    :func:`importlib.util.find_spec`, which does NOT import it (its import pulls in tensorflow).
    """
    override = os.environ.get(ANIMAL_MNIST_ENV)
    if override:
        return Path(override)
    try:
        spec = importlib.util.find_spec("animal_mnist")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "Animal_MNIST"


def locate_animal_mnist() -> LocatedSource:
    """Find the two Animal-MNIST pickles, or raise :class:`OfflineDatasetNotFoundError`."""
    folder = animal_mnist_dir()
    if folder is None:
        where, missing = "any installed package (module animal_mnist not found)", list(ANIMAL_MNIST_FILES)
        paths: tuple[Path, ...] = ()
    else:
        paths = tuple(folder / f for f in ANIMAL_MNIST_FILES)
        where, missing = str(folder), [p.name for p in paths if not p.is_file()]
    if missing:
        raise OfflineDatasetNotFoundError(
            f"Animal-MNIST files not found in {where} (missing: {', '.join(missing)}). "
            f"Install them with `{ANIMAL_MNIST_INSTALL}` (--no-deps: its metadata requires tensorflow, "
            f"which is not needed), or set {ANIMAL_MNIST_ENV} to a folder holding "
            f"{' and '.join(ANIMAL_MNIST_FILES)}.",
            dataset="animal-mnist",
            install_command=ANIMAL_MNIST_INSTALL,
        )
    return LocatedSource(
        description=f"pickles {', '.join(str(p) for p in paths)} of PyPI package animal-mnist 0.4",
        files=paths,
        fingerprint=_stat_fingerprint(paths),
    )


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds plain numpy arrays and refuses every other global."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a data pickle")
        if name == "_reconstruct":
            try:  # numpy >= 2 (numpy.core is a deprecated alias there)
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # pragma: no cover - numpy 1.x
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        return getattr(np, name)


def _load_numpy_pickle(path: Path) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as fh:
            obj = _NumpyOnlyUnpickler(fh).load()
    except (OSError, EOFError, pickle.UnpicklingError) as exc:
        raise OfflineDatasetFormatError(f"{path}: not a gzip'd pickle of a numpy array ({exc})") from exc
    if not isinstance(obj, np.ndarray):
        raise OfflineDatasetFormatError(f"{path}: holds a {type(obj).__name__}, expected a numpy array")
    return obj


def read_animal_mnist() -> tuple[np.ndarray, np.ndarray]:
    """Read all 10,000 Animal-MNIST silhouettes (uint8, 28x28, white on black) and their labels.

    The labels in the file are int64 class ids 0..9, stored sorted by class (1,000 each) in the
    alphabetical order bear, bird, cat, cow, dog, elephant, giraffe, horse, sheep, zebra.
    """
    data_path, label_path = locate_animal_mnist().files
    images = _load_numpy_pickle(data_path)
    labels = _load_numpy_pickle(label_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise OfflineDatasetFormatError(
            f"{data_path}: expected uint8 images of shape (N, H, W), got {images.dtype} {images.shape}"
        )
    if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise OfflineDatasetFormatError(
            f"{label_path}: expected {images.shape[0]} integer labels, got {labels.dtype} {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise OfflineDatasetFormatError(f"{label_path}: labels outside 0..9")
    return np.ascontiguousarray(images), labels.astype(np.int64)


# --------------------------------------------------------------------------------------------- digits
def locate_digits() -> LocatedSource:
    """Find scikit-learn's bundled ``digits.csv.gz`` (without importing sklearn), or raise."""
    try:
        spec = importlib.util.find_spec("sklearn")
    except (ImportError, ValueError):
        spec = None
    csv = None
    if spec is not None and spec.submodule_search_locations:
        csv = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    if csv is None or not csv.is_file():
        raise _digits_missing("scikit-learn is not installed" if csv is None else f"{csv} is missing")
    try:
        sklearn_version = importlib.metadata.version("scikit-learn")
    except importlib.metadata.PackageNotFoundError:  # only part of the cache key
        sklearn_version = "unknown"
    return LocatedSource(
        description=f"sklearn.datasets.load_digits (scikit-learn {sklearn_version}, {csv})",
        files=(csv,),
        fingerprint=(sklearn_version, *_stat_fingerprint((csv,))),
    )


def _digits_missing(reason: str) -> OfflineDatasetNotFoundError:
    return OfflineDatasetNotFoundError(
        f"The digits dataset needs scikit-learn's bundled copy ({reason}). "
        f"Install it with `{DIGITS_INSTALL}`.",
        dataset="digits",
        install_command=DIGITS_INSTALL,
    )


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """Read sklearn's 1,797 8x8 digits, scaled from 0..16 to uint8 0..255 (``round(v * 255 / 16)``)."""
    locate_digits()
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise _digits_missing(f"cannot import sklearn.datasets: {exc}") from exc
    bunch = load_digits()
    raw = np.asarray(bunch.images)
    if raw.ndim != 3 or raw.min() < 0 or raw.max() > 16 or not np.array_equal(raw, np.round(raw)):
        raise OfflineDatasetFormatError(f"load_digits returned unexpected images: {raw.dtype} {raw.shape}")
    values = raw.astype(np.int64)
    images = ((values * 255 + 8) // 16).astype(np.uint8)  # round half up; 16 -> 255, 0 -> 0
    return np.ascontiguousarray(images), np.asarray(bunch.target, dtype=np.int64)
