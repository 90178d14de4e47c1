"""Real weights and real data: the embedded ImageNet probe on real offline datasets."""

from __future__ import annotations

import numpy as np
import pytest

import hf_task2vec as t2v
from hf_task2vec.data import load_offline

TASKS = {
    "cat-dog": ("animal-mnist", ["cat", "dog"]),
    "horse-zebra": ("animal-mnist", ["horse", "zebra"]),
    "tshirt-shirt": ("fashion-mnist", ["T-shirt/top", "Shirt"]),
    "sneaker-boot": ("fashion-mnist", ["Sneaker", "Ankle boot"]),
    "3-8": ("digits", ["3", "8"]),
    "4-9": ("digits", ["4", "9"]),
}


@pytest.fixture(scope="module")
def real_embeddings():
    embedder = t2v.Task2Vec("embedded", method="exact", max_samples=128, image_size=32, progress=False)
    cache = {}
    out = {}
    for name, (ds, classes) in TASKS.items():
        cache.setdefault(ds, load_offline(ds, "train"))
        out[name] = embedder.embed(t2v.load_task(cache[ds], classes=classes, name=name))
    return out


def test_real_embeddings_are_sane(real_embeddings):
    for name, e in real_embeddings.items():
        assert e.dim == 21_008
        assert np.all(np.isfinite(e.values)) and np.all(e.values >= 0) and e.norm > 0, name
        assert e.meta["probe"] == "embedded" and e.meta["num_samples"] == "128"
        assert e.meta["task_source"].startswith(("animal-mnist", "fashion-mnist", "digits"))
        assert float(e.meta["head_train_accuracy"]) > 0.75


def test_same_dataset_tasks_are_nearer(real_embeddings):
    names = list(TASKS)
    source = [TASKS[n][0] for n in names]
    d = t2v.distance_matrix([real_embeddings[n] for n in names])
    same = [d[i, j] for i in range(6) for j in range(6) if i != j and source[i] == source[j]]
    other = [d[i, j] for i in range(6) for j in range(6) if source[i] != source[j]]
    assert np.mean(same) < np.mean(other)
    # each task's nearest neighbour comes from its own dataset in most cases
    np.fill_diagonal(d, np.inf)
    hits = sum(source[int(np.argmin(d[i]))] == source[i] for i in range(6))
    assert hits >= 4


def test_montecarlo_on_real_data_and_one_liner():
    emb = t2v.embed("offline:digits", "embedded", "montecarlo", classes=["0", "1", "2"], max_samples=60, image_size=32,
                    progress=False)
    assert emb.dim == 21_008 and emb.meta["label_names"] == '["0", "1", "2"]'
    assert emb.meta["method"] == "montecarlo" and emb.meta["num_samples"] == "60"
    assert np.all(np.isfinite(emb.values)) and emb.norm > 0
    # deterministic given a seed
    again = t2v.embed("offline:digits", "embedded", "montecarlo", classes=["0", "1", "2"], max_samples=60,
                      image_size=32, progress=False)
    np.testing.assert_array_equal(emb.values, again.values)


def test_domain_embedding_ignores_labels():
    ds = load_offline("digits", "train")
    # max_samples above the task size: both use every image exactly once, in the same order
    a = t2v.domain_embedding(t2v.load_task(ds, classes=["3", "8"]), image_size=32, max_samples=1000, progress=False)
    b = t2v.domain_embedding(t2v.load_task(ds, classes=["8", "3"]), image_size=32, max_samples=1000, progress=False)
    np.testing.assert_allclose(a.values, b.values, rtol=1e-5)
    assert a.dim == 21_008 and a.meta["method"] == "domain"


def test_mismatched_probe_embeddings_cannot_be_compared():
    ds = load_offline("digits", "train")
    task = t2v.load_task(ds, classes=["0", "1"])
    a = t2v.embed(task, max_samples=40, image_size=32, progress=False)
    b = t2v.embed(
        task, probe=t2v.load_probe("embedded", pretrained=False), max_samples=40, image_size=32, progress=False
    )
    with pytest.raises(t2v.IncompatibleEmbeddingsError, match="probe"):
        t2v.distance(a, b)
