"""Bad inputs through the Python API: each raises an exception of the `hf_task2vec.Task2VecError`
hierarchy (also a ``ValueError`` where the value is at fault) whose message names the input and the
fix; nothing is coerced silently and nothing non-finite is returned or saved."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import hf_task2vec as t2v
from hf_task2vec import Task, Task2Vec, Task2VecError, TaskError
from hf_task2vec.errors import OptionError
from tests.bad_inputs.common import assert_says, snapshot, tiny_embedding


def tiny_probe() -> t2v.Probe:
    """A random 2-layer MLP probe over 4 input features (fast; the point here is the checks)."""
    torch.manual_seed(0)
    return t2v.load_probe(nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh()), name="tiny-mlp")


def tensor_task(n: int = 40, classes: int = 2) -> Task:
    g = torch.Generator().manual_seed(0)
    return Task.from_tensors(torch.randn(n, 4, generator=g), torch.arange(n) % classes, name="blobs")


def test_fractional_float_labels():
    with pytest.raises(TaskError) as err:
        Task.from_tensors(torch.zeros(4, 2), torch.tensor([0.0, 1.5, 0.2, 1.0]))
    assert_says(str(err.value), "'tensors'", "not whole numbers", "1.5", "integer")


def test_nan_labels():
    with pytest.raises(TaskError) as err:
        Task.from_tensors(torch.zeros(3, 2), np.array([0.0, np.nan, 1.0]), name="withnan")
    assert_says(str(err.value), "'withnan'", "not finite")


def test_negative_and_2d_labels():
    with pytest.raises(TaskError, match="0..K-1|non-negative"):
        Task.from_tensors(torch.zeros(4, 2), [0, -1, 1, 1])
    with pytest.raises(TaskError, match="one label per input"):
        Task.from_tensors(torch.zeros(4, 2), np.zeros((4, 2), dtype=np.int64))


def test_whole_float_labels_are_fine():
    task = Task.from_tensors(torch.zeros(4, 2), torch.tensor([0.0, 1.0, 1.0, 0.0]))
    assert task.labels.tolist() == [0, 1, 1, 0]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs_are_refused_before_the_fisher(bad):
    task = tensor_task()
    task.inputs[7, 2] = bad
    embedder = Task2Vec(tiny_probe(), max_samples=40, progress=False)
    with pytest.raises(TaskError) as err:
        embedder.embed(task)
    assert_says(str(err.value), "'blobs'", "not finite", "row 7")


@pytest.mark.parametrize(
    ("option", "value", "needles"),
    [
        ("max_samples", 0, ["max_samples", "at least 1", "got 0"]),
        ("n_samples", 0, ["n_samples", "at least 1", "got 0"]),
        ("batch_size", 0, ["batch_size", "at least 1", "got 0"]),
        ("image_size", 1, ["image_size", "at least", "got 1"]),
        ("head_l2", float("nan"), ["head_l2", "finite"]),
        ("head", "mlp", ["head", "linear, prototype", "'mlp'"]),
        ("beta", float("inf"), ["beta", "finite"]),
        ("device", "bogus", ["device", "'bogus'", "cpu"]),
        ("seed", -3, ["seed", "got -3"]),
        # issue 23 item 5: upper bounds with the reason
        ("n_samples", 10**12, ["n_samples", "at most 1000", "backward pass"]),
        ("image_size", 100_000, ["image_size", "at most 1024", "GB"]),
        ("batch_size", 10**9, ["batch_size", "at most 8192", "activations"]),
        ("head_epochs", 10**9, ["head_epochs", "at most"]),
        ("variational_epochs", 10**9, ["variational_epochs", "at most 1000"]),
        ("seed", 2**70, ["seed", "at most", "2^32 - 1"]),
    ],
)
def test_bad_embedder_options(option, value, needles):
    with pytest.raises(Task2VecError) as err:
        Task2Vec(tiny_probe(), **{option: value})
    assert isinstance(err.value, ValueError)
    assert_says(str(err.value), *needles)


def test_device_cuda_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(Task2VecError) as err:
        Task2Vec(tiny_probe(), device="cuda")
    assert_says(str(err.value), "cuda", "no CUDA GPU", "cpu")


def test_one_example_per_class():
    task = Task.from_tensors(torch.randn(2, 4), [0, 1], name="pair")
    with pytest.raises(TaskError) as err:
        Task2Vec(tiny_probe(), progress=False).embed(task)
    assert_says(str(err.value), "'pair'", "1 example", "at least 2")


def test_fewer_samples_than_classes():
    with pytest.raises(TaskError) as err:
        Task2Vec(tiny_probe(), max_samples=2, progress=False).embed(tensor_task(classes=3))
    assert_says(str(err.value), "max_samples", "3 classes")


@pytest.mark.parametrize("alpha", [float("nan"), float("inf")])
def test_distance_alpha_not_finite(alpha):
    a, b = tiny_embedding("a", 0), tiny_embedding("b", 1)
    with pytest.raises(ValueError) as err:
        t2v.distance(a, b, kind="asymmetric", alpha=alpha)
    assert_says(str(err.value), "alpha", "finite")
    with pytest.raises(ValueError):
        t2v.distance_matrix([a, b], kind="asymmetric", alpha=alpha)


def test_non_finite_embedding_is_not_saved(tmp_path):
    emb = tiny_embedding("broken", 0)
    emb.values[3] = np.nan
    with pytest.raises(t2v.EmbeddingFileError) as err:
        emb.save(tmp_path / "e.safetensors")
    assert_says(str(err.value), "'broken'", "not finite")
    assert snapshot(tmp_path) == {}


def test_distance_of_a_non_finite_embedding():
    a, b = tiny_embedding("a", 0), tiny_embedding("b", 1)
    b.values[0] = np.inf
    with pytest.raises(ValueError) as err:
        t2v.distance(a, b)
    assert_says(str(err.value), "'b'", "not finite")


def test_errors_form_one_hierarchy():
    for name in ("TaskError", "ProbeError", "EmbeddingFileError", "IncompatibleEmbeddingsError", "HubError"):
        assert issubclass(getattr(t2v, name), Task2VecError)
    from hf_task2vec import errors

    assert issubclass(errors.OptionError, Task2VecError) and issubclass(errors.OptionError, ValueError)
    assert issubclass(errors.OutputError, Task2VecError) and issubclass(errors.OutputError, OSError)


def test_image_batch_that_cannot_fit_in_memory_is_refused_up_front():
    """Issue 23 item 5: a memory estimate for image_size x batch_size, before anything is loaded."""
    with pytest.raises(OptionError) as err:
        Task2Vec("embedded", image_size=1024, batch_size=8000, device="cpu")
    assert_says(str(err.value), "image_size 1024", "batch_size 8000", "GB", "per image", "lower batch_size")


def test_max_length_beyond_the_probe_positions_is_refused_before_the_fisher():
    """Issue 23 item 5 (API): Task2Vec(max_length=100000) on MiniLM (512 positions) stops at the first batch."""
    task = t2v.load_task("offline:fortunes", classes=["computers", "science"])
    embedder = Task2Vec("embedded-text", max_length=100_000, max_samples=8, progress=False, device="cpu")
    with pytest.raises(OptionError) as err:
        embedder.embed(task)
    assert_says(str(err.value), "max_length", "at most 512", "got 100000", "positions")


def _png(path, seed: int) -> str:
    from PIL import Image

    arr = np.random.default_rng(seed).integers(0, 255, (12, 12, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return str(path)


def test_table_with_an_image_and_a_text_column_is_ambiguous(tmp_path):
    """Issue 23 item 3: such a table silently became a text task (images and image_size ignored)."""
    import pandas as pd

    (tmp_path / "img").mkdir()
    rows = [{"image": _png(tmp_path / "img" / f"{i}.png", i), "text": f"caption number {i}", "label": ["a", "b"][i % 2]}
            for i in range(6)]
    pd.DataFrame(rows).to_csv(tmp_path / "both.csv", index=False)
    with pytest.raises(TaskError) as err:
        t2v.load_task(str(tmp_path / "both.csv"))
    assert_says(str(err.value), "both.csv", "image column ('image')", "text column ('text')", "--input-column")
    assert t2v.load_task(str(tmp_path / "both.csv"), input_column="image").is_image
    assert t2v.load_task(str(tmp_path / "both.csv"), input_column="text").is_text
    # and the other way round: an Image feature next to a text column
    import datasets

    ds = datasets.Dataset.from_dict({"img": [r["image"] for r in rows], "text": [r["text"] for r in rows],
                                     "label": [i % 2 for i in range(6)]}).cast_column("img", datasets.Image())
    with pytest.raises(TaskError, match="--input-column"):
        t2v.load_task(ds)


def _text_csv(path, texts):
    import pandas as pd

    pd.DataFrame({"text": texts, "label": ["x", "y"] * (len(texts) // 2)}).to_csv(path, index=False)
    return str(path)


def test_empty_texts_are_refused_unless_allowed(tmp_path):
    """Issue 23 item 4: 24 of 32 null texts were embedded as "" without a word."""
    texts = [f"a real text {i}" if i % 8 < 2 else None for i in range(32)]
    path = _text_csv(tmp_path / "holes.csv", texts)
    with pytest.raises(TaskError) as err:
        t2v.load_task(path)
    assert_says(str(err.value), "holes.csv", "24 of the 32 texts", "'text'", "empty or missing", "rows 2, 3, 4",
                "drop or fill", "--allow-empty")
    task = t2v.load_task(path, allow_empty=True)
    assert len(task) == 8 and all(t.startswith("a real text") for t in task.dataset["text"])


def test_all_empty_text_column_is_reported_as_empty(tmp_path):
    """Issue 23 item 4: an all-empty column was reported as "float64, not strings; cast it"."""
    path = _text_csv(tmp_path / "none.csv", [None] * 8)
    with pytest.raises(TaskError) as err:
        t2v.load_task(path)
    text = str(err.value)
    assert_says(text, "none.csv", "'text'", "is empty", "all 8", "missing")
    assert "float64" not in text and "cast" not in text
