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
        ("beta", float("inf"), ["beta", "finite"]),
        ("device", "bogus", ["device", "'bogus'", "cpu"]),
        ("seed", -3, ["seed", "got -3"]),
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
