"""Tests of hf_task2vec.data: real offline datasets as Hub-style ``datasets.Dataset`` objects.

Pixel and label checks compare against the raw source files, parsed here independently of the package.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import pickle
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

import hf_task2vec.data as data_mod
from hf_task2vec.data import (
    OFFLINE_DATASETS,
    OfflineDatasetFormatError,
    OfflineDatasetNotFoundError,
    _sources,
    available_offline,
    encode_png_grey,
    load_offline,
    parse_idx,
    stratified_split,
)

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
ANIMAL_NAMES = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory):
    """Every test caches under a private folder, never in the user's ~/.cache."""
    old = os.environ.get("HF_TASK2VEC_CACHE")
    os.environ["HF_TASK2VEC_CACHE"] = str(tmp_path_factory.mktemp("t2v_cache"))
    yield
    if old is None:
        os.environ.pop("HF_TASK2VEC_CACHE", None)
    else:
        os.environ["HF_TASK2VEC_CACHE"] = old


@pytest.fixture(autouse=True)
def _no_source_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_TASK2VEC_FASHION_MNIST_DIR", raising=False)
    monkeypatch.delenv("HF_TASK2VEC_ANIMAL_MNIST_DIR", raising=False)


# ------------------------------------------------------------------------------ independent raw readers
def _raw_fashion(prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse the idx files by hand: images uint8 at offset 16, labels at offset 8."""
    img = gzip.open(FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz").read()
    lab = gzip.open(FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz").read()
    magic, n, rows, cols = struct.unpack(">IIII", img[:16])
    assert (magic, rows, cols) == (2051, 28, 28)
    magic_l, n_l = struct.unpack(">II", lab[:8])
    assert magic_l == 2049 and n_l == n
    return np.frombuffer(img, np.uint8, offset=16).reshape(n, 28, 28), np.frombuffer(lab, np.uint8, offset=8)


def _raw_animal() -> tuple[np.ndarray, np.ndarray]:
    import importlib.util

    spec = importlib.util.find_spec("animal_mnist")
    assert spec is not None, "install with: pip install --no-deps animal-mnist==0.4"
    folder = Path(next(iter(spec.submodule_search_locations))) / "data" / "Animal_MNIST"
    with gzip.open(folder / "animal_data_version_3.gz") as fh:
        x = pickle.load(fh)
    with gzip.open(folder / "animal_label_version_3.gz") as fh:
        y = pickle.load(fh)
    return x, y


def _pixels(ds: datasets.Dataset, index: int) -> np.ndarray:
    img = ds[index]["image"]
    assert isinstance(img, Image.Image) and img.mode == "L"
    return np.asarray(img)


def _label_array(ds: datasets.Dataset) -> np.ndarray:
    return ds.data.column("label").to_numpy()


# ------------------------------------------------------------------------------ registry
def test_registry_and_available() -> None:
    assert set(OFFLINE_DATASETS) == {"fashion-mnist", "animal-mnist", "digits"}
    assert OFFLINE_DATASETS["fashion-mnist"].splits == ("train", "test")
    assert OFFLINE_DATASETS["animal-mnist"].splits == ("train", "test", "all")
    assert OFFLINE_DATASETS["digits"].splits == ("train", "test", "all")
    assert list(OFFLINE_DATASETS["fashion-mnist"].label_names) == FASHION_NAMES
    assert list(OFFLINE_DATASETS["animal-mnist"].label_names) == ANIMAL_NAMES
    assert list(OFFLINE_DATASETS["digits"].label_names) == [str(d) for d in range(10)]
    for cfg in OFFLINE_DATASETS.values():
        assert cfg.num_classes == 10 and cfg.license and cfg.install_hint and cfg.description
    assert OFFLINE_DATASETS["fashion-mnist"].install_hint == "apt-get install dataset-fashion-mnist"
    # This project's machines install all three sources (Makefile); fail loudly if one is missing.
    images = ["fashion-mnist", "animal-mnist", "digits"]
    assert available_offline()[:3] == images  # then the text datasets (tests/test_text.py checks them)
    assert set(available_offline()[3:]) == {"fortunes", "spamassassin", "spamassassin-lists", "wordnet"}


# ------------------------------------------------------------------------------ fashion-mnist
def test_fashion_mnist_train_matches_raw_files() -> None:
    raw_x, raw_y = _raw_fashion("train")
    ds = load_offline("fashion-mnist", "train")
    assert len(ds) == 60_000 and ds.column_names == ["image", "label"]
    assert isinstance(ds.features["image"], datasets.Image)
    assert isinstance(ds.features["label"], datasets.ClassLabel)
    assert ds.features["label"].names == FASHION_NAMES
    # first label = the raw byte at offset 8 of the label file (Fashion-MNIST's first item is an ankle boot)
    first = gzip.open(FASHION_DIR / "train-labels-idx1-ubyte.gz").read()[8]
    assert ds[0]["label"] == first == 9
    assert ds.features["label"].int2str(ds[0]["label"]) == "Ankle boot"
    np.testing.assert_array_equal(_label_array(ds), raw_y)
    assert Counter(_label_array(ds).tolist()) == dict.fromkeys(range(10), 6000)
    for i in (0, 1, 12345, 59_999):
        np.testing.assert_array_equal(_pixels(ds, i), raw_x[i])
    assert ds[0]["image"].size == (28, 28)
    assert ds.info.dataset_name == "fashion-mnist" and ds.info.config_name == "train"
    assert str(ds.split) == "train"
    assert "train-images-idx3-ubyte.gz" in ds.info.description and ds.info.license == "MIT"


def test_fashion_mnist_test_split() -> None:
    raw_x, raw_y = _raw_fashion("t10k")
    ds = load_offline("fashion-mnist", "test")
    assert len(ds) == 10_000
    np.testing.assert_array_equal(_label_array(ds), raw_y)
    for i in (0, 4242, 9_999):
        np.testing.assert_array_equal(_pixels(ds, i), raw_x[i])
    batch = ds.with_format("numpy")[:4]["image"]
    assert batch.shape == (4, 28, 28) and batch.dtype == np.uint8
    np.testing.assert_array_equal(batch, raw_x[:4])


def test_cache_is_reused_and_memory_mapped() -> None:
    a = load_offline("fashion-mnist", "test")
    b = load_offline("fashion-mnist", "test")
    root = Path(os.environ["HF_TASK2VEC_CACHE"]) / "offline" / "fashion-mnist"
    assert a.cache_files and Path(a.cache_files[0]["filename"]).is_relative_to(root)
    assert a.cache_files == b.cache_files and a._fingerprint == b._fingerprint
    assert not list(root.glob(".*.tmp"))  # no temporary folder left behind
    fresh = load_offline("fashion-mnist", "test", cache=False)
    assert fresh.cache_files == []
    assert fresh.data.column("image").to_pylist() == a.data.column("image").to_pylist()


def test_damaged_cache_entry_is_rebuilt(caplog: pytest.LogCaptureFixture) -> None:
    ds = load_offline("digits", "test")
    entry = Path(ds.cache_files[0]["filename"]).parent
    (entry / "state.json").write_text("{ not json")
    with caplog.at_level(logging.WARNING, logger="hf_task2vec"):
        again = load_offline("digits", "test")
    assert "unreadable cache entry" in caplog.text
    assert len(again) == 359 and (entry / "state.json").read_text().startswith("{\n")


def test_fashion_dir_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (tmp_path / name).symlink_to(FASHION_DIR / name)
    monkeypatch.setenv("HF_TASK2VEC_FASHION_MNIST_DIR", str(tmp_path))
    ds = load_offline("fashion-mnist", "test", cache=False)
    assert len(ds) == 10_000 and str(tmp_path) in ds.info.description
    # the train files are not there: the override is honoured, not silently bypassed
    with pytest.raises(OfflineDatasetNotFoundError, match="train-images-idx3-ubyte.gz"):
        load_offline("fashion-mnist", "train")
    assert "fashion-mnist" not in available_offline()


# ------------------------------------------------------------------------------ animal-mnist
def test_animal_mnist_all_matches_raw_pickles() -> None:
    raw_x, raw_y = _raw_animal()
    assert raw_x.shape == (10_000, 28, 28) and raw_x.dtype == np.uint8 and raw_y.dtype == np.int64
    ds = load_offline("animal-mnist", "all")
    assert len(ds) == 10_000
    assert ds.features["label"].names == ANIMAL_NAMES
    labels = _label_array(ds)
    np.testing.assert_array_equal(labels, raw_y)
    assert Counter(labels.tolist()) == dict.fromkeys(range(10), 1000)
    # source order is sorted by class, in alphabetical order
    np.testing.assert_array_equal(labels, np.repeat(np.arange(10), 1000))
    for i in (0, 999, 5000, 9_999):
        np.testing.assert_array_equal(_pixels(ds, i), raw_x[i])
    # label order sanity: giraffe silhouettes are by far the thinnest (checked by eye on a montage)
    fill = [(raw_x[raw_y == k] > 127).mean() for k in range(10)]
    assert ANIMAL_NAMES[int(np.argmin(fill))] == "giraffe"


def test_animal_mnist_split_is_stratified_disjoint_and_covering() -> None:
    raw_x, raw_y = _raw_animal()
    train = load_offline("animal-mnist", "train")
    test = load_offline("animal-mnist", "test")
    assert (len(train), len(test)) == (8000, 2000)
    assert Counter(_label_array(train).tolist()) == dict.fromkeys(range(10), 800)
    assert Counter(_label_array(test).tolist()) == dict.fromkeys(range(10), 200)
    tr_idx, te_idx = stratified_split(raw_y, 0.2, seed=data_mod._split_seed("animal-mnist"))
    assert not set(tr_idx.tolist()) & set(te_idx.tolist())
    assert sorted(tr_idx.tolist() + te_idx.tolist()) == list(range(10_000))
    # the split datasets hold exactly those source images, in source order
    np.testing.assert_array_equal(train.with_format("numpy")[:]["image"], raw_x[tr_idx])
    np.testing.assert_array_equal(test.with_format("numpy")[:]["image"], raw_x[te_idx])
    np.testing.assert_array_equal(_label_array(test), raw_y[te_idx])
    # pinned: changing the split rule would silently change every published result
    assert hashlib.sha256(te_idx.astype("<i8").tobytes()).hexdigest()[:16] == "4282191b5b368ddb"


def test_animal_mnist_never_imports_the_package() -> None:
    code = (
        "import sys\n"
        "from hf_task2vec.data import load_offline\n"
        "ds = load_offline('animal-mnist', 'test', cache=False)\n"
        "assert len(ds) == 2000\n"
        "bad = [m for m in ('animal_mnist', 'tensorflow', 'keras') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_animal_pickle_with_foreign_global_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    for name in _sources.ANIMAL_MNIST_FILES:
        with gzip.open(tmp_path / name, "wb") as fh:
            pickle.dump(Evil(), fh)
    monkeypatch.setenv("HF_TASK2VEC_ANIMAL_MNIST_DIR", str(tmp_path))
    with pytest.raises(OfflineDatasetFormatError, match="refusing to load global"):
        load_offline("animal-mnist", "all", cache=False)


# ------------------------------------------------------------------------------ digits
def test_digits_scaled_pixels_and_split() -> None:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    expected = np.floor(bunch.images * 255.0 / 16.0 + 0.5).astype(np.uint8)
    full = load_offline("digits", "all")
    assert len(full) == 1797 and full.features["label"].names == [str(d) for d in range(10)]
    np.testing.assert_array_equal(_label_array(full), bunch.target)
    pixels = full.with_format("numpy")[:]["image"]
    assert pixels.shape == (1797, 8, 8) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels, expected)
    assert pixels.max() == 255 and pixels.min() == 0
    np.testing.assert_array_equal(pixels[bunch.images == 16], 255)

    train, test = load_offline("digits", "train"), load_offline("digits", "test")
    assert (len(train), len(test)) == (1438, 359)
    counts = np.bincount(bunch.target, minlength=10)
    test_counts = np.bincount(_label_array(test), minlength=10)
    np.testing.assert_array_equal(test_counts, np.floor(counts * 0.2 + 0.5).astype(int))
    np.testing.assert_array_equal(np.bincount(_label_array(train), minlength=10), counts - test_counts)
    tr_idx, te_idx = stratified_split(bunch.target, 0.2, seed=data_mod._split_seed("digits"))
    np.testing.assert_array_equal(train.with_format("numpy")[:]["image"], expected[tr_idx])
    np.testing.assert_array_equal(test.with_format("numpy")[:]["image"], expected[te_idx])
    assert hashlib.sha256(te_idx.astype("<i8").tobytes()).hexdigest()[:16] == "fff00df5cf3b8dfb"


# ------------------------------------------------------------------------------ split + PNG helpers
def test_stratified_split_properties() -> None:
    labels = np.array([0] * 7 + [1] * 3 + [2] * 10 + [3] * 1)
    tr, te = stratified_split(labels, 0.2, seed=5)
    assert np.all(np.diff(tr) > 0) and np.all(np.diff(te) > 0)
    assert sorted(np.concatenate([tr, te]).tolist()) == list(range(len(labels)))
    assert np.bincount(labels[te], minlength=4).tolist() == [1, 1, 2, 0]  # floor(n*0.2 + 0.5)
    tr2, te2 = stratified_split(labels, 0.2, seed=5)
    assert np.array_equal(tr, tr2) and np.array_equal(te, te2)
    seeds_differ = any(not np.array_equal(te, stratified_split(labels, 0.2, seed=s)[1]) for s in range(6, 12))
    assert seeds_differ
    with pytest.raises(ValueError, match="test_fraction"):
        stratified_split(labels, 1.0)


def test_png_encoder_round_trips() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 5, 7), dtype=np.uint8)
    for png, arr in zip(encode_png_grey(images), images, strict=True):
        img = Image.open(io.BytesIO(png))
        assert img.format == "PNG" and img.mode == "L" and img.size == (7, 5)
        np.testing.assert_array_equal(np.asarray(img), arr)
    with pytest.raises(ValueError, match="uint8"):
        encode_png_grey(images.astype(np.float32))


def test_parse_idx() -> None:
    body = bytes(range(6))
    arr = parse_idx(b"\x00\x00\x08\x03" + struct.pack(">III", 1, 2, 3) + body, expected_ndim=3)
    assert arr.shape == (1, 2, 3) and arr.tolist() == [[[0, 1, 2], [3, 4, 5]]]
    with pytest.raises(OfflineDatasetFormatError, match="holds 19 bytes"):
        parse_idx(b"\x00\x00\x08\x03" + struct.pack(">III", 1, 2, 3) + body[:3], expected_ndim=3)
    with pytest.raises(OfflineDatasetFormatError, match="magic"):
        parse_idx(b"\x1f\x8b\x08\x03" + body, expected_ndim=3)
    with pytest.raises(OfflineDatasetFormatError, match="dimensions"):
        parse_idx(b"\x00\x00\x08\x01" + struct.pack(">I", 6) + body, expected_ndim=3)


# ------------------------------------------------------------------------------ errors
def test_unknown_name_and_split() -> None:
    with pytest.raises(ValueError, match="fashion-mnist, animal-mnist, digits") as exc:
        load_offline("mnist")
    assert "'mnist'" in str(exc.value)
    with pytest.raises(ValueError, match=r"valid splits: train, test$"):
        load_offline("fashion-mnist", "all")
    with pytest.raises(ValueError, match=r"valid splits: train, test, all"):
        load_offline("digits", "validation")


def test_missing_fashion_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    load_offline("fashion-mnist", "test")  # a cache entry exists: it must not hide the missing source
    monkeypatch.setenv("HF_TASK2VEC_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as exc:
        load_offline("fashion-mnist", "test")
    assert isinstance(exc.value, OfflineDatasetNotFoundError)
    assert exc.value.install_command == "apt-get install dataset-fashion-mnist"
    assert str(tmp_path) in str(exc.value) and "t10k-images-idx3-ubyte.gz" in str(exc.value)
    assert "fashion-mnist" not in available_offline()


def test_wrong_size_fashion_source_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    imgs = np.zeros((3, 28, 28), np.uint8)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(struct.pack(">IIII", 2051, 3, 28, 28) + imgs.tobytes())
    )
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(struct.pack(">II", 2049, 3) + b"\1\2\3"))
    monkeypatch.setenv("HF_TASK2VEC_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(OfflineDatasetFormatError, match="expected 10000 images"):
        load_offline("fashion-mnist", "test")


def test_missing_animal_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TASK2VEC_ANIMAL_MNIST_DIR", str(tmp_path))
    with pytest.raises(OfflineDatasetNotFoundError, match=r"pip install --no-deps animal-mnist==0\.4"):
        load_offline("animal-mnist", "train")
    assert "animal-mnist" not in available_offline()
    monkeypatch.delenv("HF_TASK2VEC_ANIMAL_MNIST_DIR")
    real_find_spec = _sources.importlib.util.find_spec
    monkeypatch.setattr(
        _sources.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "animal_mnist" else real_find_spec(name, *a),
    )
    with pytest.raises(FileNotFoundError, match=r"module animal_mnist not found.*--no-deps animal-mnist==0\.4"):
        load_offline("animal-mnist", "all")


def test_missing_scikit_learn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # makes `from sklearn.datasets import` fail
    with pytest.raises(OfflineDatasetNotFoundError, match="pip install scikit-learn"):
        load_offline("digits", "all", cache=False)
    real_find_spec = _sources.importlib.util.find_spec
    monkeypatch.setattr(
        _sources.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "sklearn" else real_find_spec(name, *a),
    )
    with pytest.raises(FileNotFoundError, match="scikit-learn is not installed.*pip install scikit-learn"):
        load_offline("digits", "train")
    assert "digits" not in available_offline()
