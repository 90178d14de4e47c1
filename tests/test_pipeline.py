"""The input pipeline (hf_task2vec.pipeline): batches in order, identical for any number of workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hf_task2vec as t2v
from hf_task2vec.data import load_offline
from hf_task2vec.errors import OptionError
from hf_task2vec.pipeline import iter_batches


@pytest.fixture(scope="module")
def fashion():
    """A real image task: Fashion-MNIST (28x28 grey photos of clothes), 3 classes."""
    return t2v.load_task(load_offline("fashion-mnist", "train"), name="fashion").subtask([0, 1, 2])


def test_batches_are_identical_and_in_order_for_any_number_of_workers(fashion):
    probe = t2v.load_probe("embedded", image_size=48)
    transform = probe.transform()
    labels = torch.tensor(fashion.labels)
    indices = np.random.default_rng(0).permutation(len(fashion))[:70]  # an unsorted order to keep
    serial = list(iter_batches(fashion, indices, 16, transform, labels))
    assert [len(r) for r, _, _ in serial] == [16, 16, 16, 16, 6]
    np.testing.assert_array_equal(np.concatenate([r for r, _, _ in serial]), indices)
    for workers in (1, 3):
        parallel = list(iter_batches(fashion, indices, 16, transform, labels, num_workers=workers))
        assert len(parallel) == len(serial)
        for (r0, x0, y0), (r1, x1, y1) in zip(serial, parallel, strict=True):
            np.testing.assert_array_equal(r0, r1)
            assert torch.equal(x0, x1) and torch.equal(y0, y1)


def test_embeddings_are_identical_with_0_and_2_workers(fashion):
    options = dict(max_samples=60, image_size=32, batch_size=8, progress=False, device="cpu", seed=3)
    serial = t2v.Task2Vec("embedded", **options).embed(fashion)
    parallel = t2v.Task2Vec("embedded", num_workers=2, **options).embed(fashion)
    np.testing.assert_array_equal(serial.values, parallel.values)
    assert serial.meta["num_samples"] == parallel.meta["num_samples"] == "60"


def test_stopping_early_ends_the_workers_and_bad_worker_counts_are_refused(fashion):
    transform = t2v.load_probe("embedded", image_size=32).transform()
    labels = torch.tensor(fashion.labels)
    stream = iter_batches(fashion, np.arange(200), 10, transform, labels, num_workers=2)
    first = next(stream)
    assert first[1].shape == (10, 3, 32, 32)
    stream.close()  # must not hang or leave workers behind
    with pytest.raises(ValueError, match="num_workers"):
        list(iter_batches(fashion, np.arange(4), 2, transform, labels, num_workers=-1))
    with pytest.raises(OptionError, match="num_workers"):
        t2v.Task2Vec("embedded", num_workers=-2)


def test_the_automatic_batch_size_shrinks_with_the_pixels_and_does_not_change_the_embedding(fashion):
    from hf_task2vec.task2vec import auto_batch_size

    # 32 * (112 / side)^2, capped at 32, at least 1; accelerators and text keep 32
    assert [auto_batch_size(s) for s in (28, 112, 160, 224, 384, 2000)] == [32, 32, 15, 8, 2, 1]
    assert auto_batch_size(224, "cuda") == 32 and auto_batch_size(None) == 32
    auto = t2v.Task2Vec("embedded", image_size=224, device="cpu", progress=False)
    assert auto.batch_size is None and auto.pass_batch_size == 8
    assert [len(y) for _, y in auto.batches(fashion, np.arange(20))] == [8, 8, 4]
    assert t2v.Task2Vec("embedded", batch_size=5, image_size=224, device="cpu").pass_batch_size == 5
    # the Fisher is a sum over examples: the batch size only changes the summation order (and the
    # per-layer kernels, chosen by timing per batch shape), which the head fit amplifies a little:
    # a fresh CI run saw up to 1.8% in single small filters; the whole embedding stays within 0.2%
    options = dict(method="exact", max_samples=24, image_size=160, progress=False, device="cpu")
    a = t2v.Task2Vec("embedded", **options).embed(fashion)
    b = t2v.Task2Vec("embedded", batch_size=24, **options).embed(fashion)
    assert np.abs(a.values - b.values).sum() / np.abs(b.values).sum() < 2e-3
    np.testing.assert_allclose(a.values, b.values, rtol=0.05, atol=1e-9)
    with pytest.raises(OptionError, match="batch_size"):
        t2v.Task2Vec("embedded", batch_size=0)
