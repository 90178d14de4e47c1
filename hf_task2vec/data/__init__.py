"""Real image-classification datasets that load without the Hugging Face Hub or any network.

Each dataset comes back as a ``datasets.Dataset`` following the Hub convention: an ``image`` column
(``datasets.Image()``, decoded to 8-bit grey PIL images, mode ``"L"``) and a ``label`` column
(``datasets.ClassLabel`` with human-readable names)::

    from hf_task2vec.data import load_offline, available_offline
    ds = load_offline("fashion-mnist", "test")     # 10,000 28x28 images
    ds.features["label"].names[ds[0]["label"]]      # 'Ankle boot'

Sources (see :data:`OFFLINE_DATASETS`):

* ``"fashion-mnist"``: the Debian package ``dataset-fashion-mnist`` (idx files), official train/test splits.
* ``"animal-mnist"``: the PyPI package ``animal-mnist==0.4`` (installed ``--no-deps``; its pickles are read
  directly, the module is never imported because it imports tensorflow).
* ``"digits"``: scikit-learn's ``load_digits`` (8x8, values 0..16 scaled to 0..255).

The last two have no official test split: ``"train"``/``"test"`` are a deterministic stratified 80/20 split
(see :func:`stratified_split`) and ``"all"`` is every example in source order. Note that Animal-MNIST's source
order is sorted by class: shuffle before taking a head.

Real *text* datasets (``text`` + ClassLabel ``label`` columns; see ``hf_task2vec.data._text`` and
:data:`TEXT_DATASETS`) load through the same :func:`load_offline`: ``"fortunes"`` (Debian fortune
cookies by topic), ``"spamassassin"`` (ham vs spam, subject + body only), ``"spamassassin-lists"``
(ham by mailing list) and ``"wordnet"`` (WordNet 3.0 glosses by lexicographer class, with the
hypernym taxonomy in the ``synset``/``hypernyms`` columns)::

    ds = load_offline("fortunes")                   # train split, 'text' and 'label'

Built datasets are cached as Arrow files under ``$HF_TASK2VEC_CACHE/offline`` (default
``~/.cache/hf_task2vec/offline``), keyed by the source files' path, size and mtime, and memory-mapped on the
next load. Source folders can be overridden with ``$HF_TASK2VEC_FASHION_MNIST_DIR`` and
``$HF_TASK2VEC_ANIMAL_MNIST_DIR``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import datasets
import numpy as np

from hf_task2vec.data import _sources, _text
from hf_task2vec.data._build import (
    build_dataset,
    cache_root,
    encode_png_grey,
    image_label_features,
    load_cached,
    save_atomically,
    stratified_split,
)
from hf_task2vec.data._sources import (
    ANIMAL_MNIST_ENV,
    FASHION_MNIST_ENV,
    LocatedSource,
    OfflineDatasetFormatError,
    OfflineDatasetNotFoundError,
    parse_idx,
)
from hf_task2vec.data._text import TEXT_DATASETS, TextDatasetConfig, wordnet_class_ancestors

__all__ = [
    "ANIMAL_MNIST_ENV",
    "FASHION_MNIST_ENV",
    "OFFLINE_DATASETS",
    "OfflineDatasetConfig",
    "OfflineDatasetFormatError",
    "OfflineDatasetNotFoundError",
    "TEXT_DATASETS",
    "TextDatasetConfig",
    "available_offline",
    "encode_png_grey",
    "load_offline",
    "load_offline_arrays",
    "parse_idx",
    "stratified_split",
    "wordnet_class_ancestors",
]

logger = logging.getLogger(__name__)

#: Bump when the built Arrow layout or the split rule changes: old cache entries are then ignored.
_CACHE_FORMAT = 1
#: Fraction of each class that goes to the "test" split of datasets without an official one.
TEST_FRACTION = 0.2


@dataclass(frozen=True)
class OfflineDatasetConfig:
    """What one offline dataset is, where it comes from and how to install it."""

    name: str
    pretty_name: str
    description: str
    license: str
    homepage: str
    citation: str
    install_hint: str
    label_names: tuple[str, ...]
    image_shape: tuple[int, int]
    #: split name -> number of examples; the first split is the default-style "train".
    num_examples: Mapping[str, int] = field(hash=False)
    #: True when train/test are an official split, False when they are our stratified 80/20 split.
    official_splits: bool = True

    @property
    def splits(self) -> tuple[str, ...]:
        """The valid ``split`` arguments of :func:`load_offline` for this dataset."""
        return tuple(self.num_examples)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.label_names)


OFFLINE_DATASETS: Mapping[str, OfflineDatasetConfig] = MappingProxyType(
    {
        "fashion-mnist": OfflineDatasetConfig(
            name="fashion-mnist",
            pretty_name="Fashion-MNIST",
            description=(
                "Fashion-MNIST: 70,000 28x28 greyscale images of Zalando article photos in 10 classes, "
                "official train (60,000) and test (10,000) splits."
            ),
            license="MIT",
            homepage="https://github.com/zalandoresearch/fashion-mnist",
            citation=(
                "@article{xiao2017fashion, title={Fashion-MNIST: a Novel Image Dataset for Benchmarking "
                "Machine Learning Algorithms}, author={Xiao, Han and Rasul, Kashif and Vollgraf, Roland}, "
                "journal={arXiv preprint arXiv:1708.07747}, year={2017}}"
            ),
            install_hint=_sources.FASHION_MNIST_INSTALL,
            label_names=(
                "T-shirt/top",
                "Trouser",
                "Pullover",
                "Dress",
                "Coat",
                "Sandal",
                "Shirt",
                "Sneaker",
                "Bag",
                "Ankle boot",
            ),  # fmt: skip
            image_shape=(28, 28),
            num_examples=MappingProxyType({"train": 60_000, "test": 10_000}),
        ),
        "animal-mnist": OfflineDatasetConfig(
            name="animal-mnist",
            pretty_name="Animal-MNIST",
            description=(
                "Animal-MNIST (PyPI package animal-mnist 0.4): 10,000 28x28 greyscale animal silhouettes "
                "(white on black), 1,000 per class. No official test split: train/test are a deterministic "
                "stratified 80/20 split, 'all' is the source order (sorted by class)."
            ),
            license="MIT",
            homepage="",
            citation="Sina Mohammadi, Animal-MNIST: animal silhouette extension to MNIST (animal-mnist 0.4).",
            install_hint=_sources.ANIMAL_MNIST_INSTALL,
            label_names=(
                "bear",
                "bird",
                "cat",
                "cow",
                "dog",
                "elephant",
                "giraffe",
                "horse",
                "sheep",
                "zebra",
            ),  # fmt: skip
            image_shape=(28, 28),
            num_examples=MappingProxyType({"train": 8_000, "test": 2_000, "all": 10_000}),
            official_splits=False,
        ),
        "digits": OfflineDatasetConfig(
            name="digits",
            pretty_name="Optical Recognition of Handwritten Digits (scikit-learn digits)",
            description=(
                "scikit-learn load_digits: 1,797 8x8 handwritten digits (UCI optical recognition test set), "
                "pixel counts 0..16 scaled to 0..255. No official test split: train/test are a "
                "deterministic stratified 80/20 split, 'all' is the source order."
            ),
            license="CC BY 4.0",
            homepage="https://archive.ics.uci.edu/dataset/80/optical+recognition+of+handwritten+digits",
            citation=(
                "@misc{alpaydin1998optical, title={Optical Recognition of Handwritten Digits}, "
                "author={Alpaydin, E. and Kaynak, C.}, year={1998}, howpublished={UCI Machine Learning "
                "Repository}, doi={10.24432/C50P49}}"
            ),
            install_hint=_sources.DIGITS_INSTALL,
            label_names=tuple(str(d) for d in range(10)),
            image_shape=(8, 8),
            num_examples=MappingProxyType({"train": 1_438, "test": 359, "all": 1_797}),
            official_splits=False,
        ),
    }
)


@dataclass(frozen=True)
class _Source:
    locate: Callable[[str], LocatedSource]
    read: Callable[[str], tuple[np.ndarray, np.ndarray]]
    #: splits whose files must all be present for :func:`available_offline`.
    probe_splits: tuple[str, ...]


def _read_with_stratified_split(
    name: str, read_all: Callable[[], tuple[np.ndarray, np.ndarray]]
) -> Callable[[str], tuple[np.ndarray, np.ndarray]]:
    def read(split: str) -> tuple[np.ndarray, np.ndarray]:
        images, labels = read_all()
        if split == "all":
            return images, labels
        train, test = stratified_split(labels, TEST_FRACTION, seed=_split_seed(name))
        idx = train if split == "train" else test
        return np.ascontiguousarray(images[idx]), labels[idx]

    return read


def _split_seed(name: str) -> int:
    return zlib.crc32(name.encode())


_SOURCES: dict[str, _Source] = {
    "fashion-mnist": _Source(
        locate=_sources.locate_fashion_mnist, read=_sources.read_fashion_mnist, probe_splits=("train", "test")
    ),
    "animal-mnist": _Source(
        locate=lambda split: _sources.locate_animal_mnist(),
        read=_read_with_stratified_split("animal-mnist", _sources.read_animal_mnist),
        probe_splits=("all",),
    ),
    "digits": _Source(
        locate=lambda split: _sources.locate_digits(),
        read=_read_with_stratified_split("digits", _sources.read_digits),
        probe_splits=("all",),
    ),
}


def _config(name: str, split: str) -> OfflineDatasetConfig:
    if name not in OFFLINE_DATASETS:
        known = [*OFFLINE_DATASETS, *TEXT_DATASETS]
        raise ValueError(f"Unknown offline dataset {name!r}; available names: {', '.join(known)}")
    config = OFFLINE_DATASETS[name]
    if split not in config.num_examples:
        raise ValueError(
            f"Unknown split {split!r} for offline dataset {name!r}; valid splits: {', '.join(config.splits)}"
        )
    return config


def available_offline() -> list[str]:
    """Names of the offline datasets whose source files are installed on this machine (cheap: no reading).

    Every known name, installed or not, is a key of :data:`OFFLINE_DATASETS`.
    """
    names = []
    for name, source in _SOURCES.items():
        try:
            for split in source.probe_splits:
                source.locate(split)
        except OfflineDatasetNotFoundError as exc:
            logger.debug("Offline dataset %s unavailable: %s", name, exc)
            continue
        names.append(name)
    for name, text_source in _text.TEXT_SOURCES.items():
        try:
            text_source.locate()
        except OfflineDatasetNotFoundError as exc:
            logger.debug("Offline dataset %s unavailable: %s", name, exc)
            continue
        names.append(name)
    return names


def load_offline_arrays(name: str, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """The raw ``(images, labels)`` of an offline dataset split: uint8 ``(N, H, W)`` and int64 ``(N,)``.

    Same names, splits and errors as :func:`load_offline`; nothing is cached.
    """
    _config(name, split)
    return _SOURCES[name].read(split)


def load_offline(name: str, split: str = "train", *, cache: bool = True) -> datasets.Dataset:
    """Load a real image-classification dataset without network access.

    Args:
        name: one of ``OFFLINE_DATASETS`` (``"fashion-mnist"``, ``"animal-mnist"``, ``"digits"``).
        split: ``"train"`` or ``"test"`` (and ``"all"`` for the datasets without an official split).
        cache: reuse (and write) the built Arrow dataset under :func:`cache_root`. With ``False`` the
            dataset is rebuilt in memory.

    Returns:
        A ``datasets.Dataset`` with columns ``image`` (``datasets.Image()``, 8-bit grey PIL images) and
        ``label`` (``datasets.ClassLabel`` with the human label names). ``ds.info.dataset_name`` is the
        name, ``ds.info.config_name`` and ``ds.split`` the split, ``ds.info.description`` names the source
        files.

    Raises:
        ValueError: unknown name or split (the message lists the valid ones).
        OfflineDatasetNotFoundError: (a ``FileNotFoundError``) the source is not installed; the message
            and ``.install_command`` give the command that installs it.
        OfflineDatasetFormatError: (a ``ValueError``) the source files are damaged.
    """
    if name in TEXT_DATASETS:
        return _load_text_offline(name, split, cache=cache)
    config = _config(name, split)
    source = _SOURCES[name]
    located = source.locate(split)  # raises before any cache lookup: a cache never hides a missing source
    key_material = json.dumps([_CACHE_FORMAT, name, split, TEST_FRACTION, located.fingerprint], default=str)
    key = hashlib.sha256(key_material.encode()).hexdigest()[:16]
    cache_path = cache_root() / name / f"{split}-{key}"

    if cache:
        started = time.perf_counter()
        cached = load_cached(cache_path)
        if cached is not None:
            logger.debug(
                "Loaded %s/%s from cache %s in %.3fs", name, split, cache_path, time.perf_counter() - started
            )
            return cached

    started = time.perf_counter()
    images, labels = source.read(split)
    expected = config.num_examples[split]
    if images.shape[0] != expected or images.shape[1:] != config.image_shape:
        raise OfflineDatasetFormatError(
            f"{config.pretty_name} {split}: expected {expected} images of {config.image_shape}, "
            f"got {images.shape} from {located.description}"
        )
    info = datasets.DatasetInfo(
        description=f"{config.description} Split {split!r}, {expected} examples, read offline from "
        f"{located.description} by hf_task2vec.data.load_offline.",
        citation=config.citation,
        homepage=config.homepage,
        license=config.license,
        features=image_label_features(config.label_names),
        dataset_name=name,
        config_name=split,
    )
    ds = build_dataset(
        images, labels, info=info, split=split, fingerprint=f"hf_task2vec-offline-{name}-{split}-{key}"
    )
    logger.info(
        "Built %s/%s (%d images) from %s in %.2fs",
        name,
        split,
        len(ds),
        located.description,
        time.perf_counter() - started,
    )
    if cache and save_atomically(ds, cache_path):
        reloaded = load_cached(cache_path)
        if reloaded is not None:
            return reloaded
    return ds


def _load_text_offline(name: str, split: str, *, cache: bool) -> datasets.Dataset:
    """`load_offline` for the text datasets: ``text`` + ``label`` (+ provenance columns)."""
    config = TEXT_DATASETS[name]
    if split not in config.splits:
        raise ValueError(
            f"Unknown split {split!r} for offline dataset {name!r}; valid splits: {', '.join(config.splits)}"
        )
    source = _text.TEXT_SOURCES[name]
    located = source.locate()
    key_material = json.dumps(
        [_CACHE_FORMAT, "text", _text.TEXT_CACHE_FORMAT, name, split, TEST_FRACTION, located.fingerprint], default=str
    )
    key = hashlib.sha256(key_material.encode()).hexdigest()[:16]
    cache_path = cache_root() / name / f"{split}-{key}"
    if cache:
        cached = load_cached(cache_path)
        if cached is not None:
            return cached
    started = time.perf_counter()
    records = source.read()
    if split == "all":
        indices = np.arange(len(records.texts))
    else:
        train, test = stratified_split(records.labels, TEST_FRACTION, seed=_split_seed(name))
        indices = train if split == "train" else test
    info = datasets.DatasetInfo(
        description=f"{config.description} Split {split!r}, {indices.size} examples, read offline from "
        f"{located.description} by hf_task2vec.data.load_offline.",
        citation=config.citation,
        homepage=config.homepage,
        license=config.license,
        features=_text.text_label_features(records.label_names, config.extra_features),
        dataset_name=name,
        config_name=split,
    )
    ds = _text.build_text_dataset(records, indices, info=info, split=split)
    logger.info("Built %s/%s (%d texts) from %s in %.2fs", name, split, len(ds), located.description,
                time.perf_counter() - started)
    if cache and save_atomically(ds, cache_path):
        reloaded = load_cached(cache_path)
        if reloaded is not None:
            return reloaded
    return ds
