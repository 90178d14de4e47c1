"""TaskEmbedding safetensors I/O: round trip, atomic writes, truncated and tampered files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hf_task2vec import EmbeddingFileError, TaskEmbedding


def make(n: int = 10) -> TaskEmbedding:
    rng = np.random.default_rng(0)
    return TaskEmbedding(
        rng.gamma(1.0, size=n),
        np.full(n, 1e-3),
        [("a", 0, 4), ("b", 4, n)],
        {"probe": "embedded", "method": "montecarlo", "task": "cats", "label_names": json.dumps(["a", "b"])},
    )


def test_round_trip_exact(tmp_path):
    e = make()
    path = e.save(tmp_path / "sub" / "e.safetensors")
    back = TaskEmbedding.load(path)
    np.testing.assert_array_equal(back.values, e.values)
    np.testing.assert_array_equal(back.trivial, e.trivial)
    assert back.layers == e.layers
    assert back.meta == e.meta
    assert back.layer("b").shape == (6,)
    assert back.norm == pytest.approx(float(np.abs(e.values.astype(np.float64)).sum()))
    assert [p.name for p in tmp_path.joinpath("sub").iterdir()] == ["e.safetensors"]  # no temp file left


def test_truncated_file(tmp_path):
    path = make().save(tmp_path / "e.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(EmbeddingFileError, match="truncated"):
        TaskEmbedding.load(path)


def test_tampered_values(tmp_path):
    path = make().save(tmp_path / "e.safetensors")
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # flip bits inside the tensor data
    path.write_bytes(bytes(data))
    with pytest.raises(EmbeddingFileError, match="integrity"):
        TaskEmbedding.load(path)


def test_not_an_embedding(tmp_path):
    from safetensors.numpy import save_file

    save_file({"x": np.zeros(3, np.float32)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(EmbeddingFileError, match="not a hf_task2vec embedding"):
        TaskEmbedding.load(tmp_path / "other.safetensors")
    with pytest.raises(EmbeddingFileError, match="does not exist"):
        TaskEmbedding.load(tmp_path / "missing.safetensors")


def test_failed_save_keeps_old_file(tmp_path, monkeypatch):
    path = make().save(tmp_path / "e.safetensors")
    before = path.read_bytes()
    other = make(12)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    import os

    monkeypatch.setattr(os, "fsync", boom)  # fail in the middle of writing the temp file
    with pytest.raises(OSError):
        other.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.safetensors"]


def test_inconsistent_shapes():
    with pytest.raises(ValueError, match="trivial"):
        TaskEmbedding(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="layer slices"):
        TaskEmbedding(np.ones(3), np.ones(3), [("a", 0, 2)])
