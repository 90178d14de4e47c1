"""The Hub side of hf_task2vec: `EmbeddingStore` (Hub repo and local folder), `embed("user/ds")`
with revisions and streaming, and the push/pull/nearest/index commands.

Everything runs the real ``huggingface_hub`` and ``datasets`` clients against the local fake Hub
(tests/hub_server.py, fixture ``hub_server``); nothing in the clients is patched. The data set
tests upload real Animal-MNIST images and embed them with the real offline probe.
"""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pandas as pd
import pytest
import yaml
from datasets import ClassLabel, Dataset, Features, Image, load_dataset
from huggingface_hub import HfApi
from PIL import Image as PILImage

import hf_task2vec as t2v
from hf_task2vec import gateway as hub_module
from hf_task2vec.cli import main
from hf_task2vec.distance import distance
from hf_task2vec.embedding import TaskEmbedding
from hf_task2vec.errors import IncompatibleEmbeddingsError, TaskError
from hf_task2vec.hub import INDEX_COLUMNS, EmbeddingNotFoundError, EmbeddingStore, HubError
from hf_task2vec.hub import backend as hub_backend
from hf_task2vec.sampling import take_balanced, water_fill
from tests.hub_server import READ_TOKEN

ANIMALS = ["bird", "cat", "dog"]


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch):
    """Keep the store's retry backoff short (the number of attempts is unchanged)."""
    monkeypatch.setattr(hub_module, "RETRY_WAIT", 0.01)


def _emb(task: str, seed: int, *, probe: str = "tiny", dim: int = 48, method: str = "montecarlo") -> TaskEmbedding:
    rng = np.random.default_rng(seed)
    values = rng.gamma(2.0, 1e-3, dim).astype(np.float32)
    meta = {
        "task": task,
        "probe": probe,
        "probe_revision": "sha256:0123",
        "method": method,
        "image_size": "32",
        "task_source": f"user/{task}",
        "task_revision": f"{seed:040x}",
        "task_split": "train",
        "num_samples": str(100 + seed),
        "num_classes": "2",
        "created": f"2026-01-0{1 + seed % 9}T00:00:00+00:00",
        "library_version": t2v.__version__,
    }
    return TaskEmbedding(values, np.full(dim, 1e-4), [("a", 0, dim // 2), ("b", dim // 2, dim)], meta)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _commits(hub_server, repo: str) -> list:
    return hub_server.calls("POST", rf"^/api/datasets/{re.escape(repo)}/commit/")


def _repo_bytes(hub_server, repo: str) -> dict[str, bytes]:
    return {p: hub_server.get_file(repo, p, "dataset") for p in hub_server.list_files(repo, "dataset")}


def _folder_bytes(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- real images
@pytest.fixture(scope="module")
def animals() -> Dataset:
    """300 real Animal-MNIST test images (bird, cat, dog: 100 each), shuffled, labels 0..2."""
    from hf_task2vec.data import load_offline_arrays

    images, labels = load_offline_arrays("animal-mnist", "test")
    names = t2v.data.load_offline("animal-mnist", "test").features["label"].names
    rng = np.random.default_rng(0)
    idx = np.concatenate([np.nonzero(labels == names.index(n))[0][:100] for n in ANIMALS])
    idx = rng.permutation(idx)
    new_label = {names.index(n): i for i, n in enumerate(ANIMALS)}
    features = Features({"image": Image(), "label": ClassLabel(names=ANIMALS)})
    return Dataset.from_dict(
        {"image": [PILImage.fromarray(images[i]) for i in idx], "label": [new_label[int(labels[i])] for i in idx]},
        features=features,
    )


def _upload_animals(hub_server, animals: Dataset, repo: str = "user/animals", shards: int = 4) -> str:
    animals.push_to_hub(repo, num_shards=shards, split="train")
    return hub_server.head_sha(repo, "dataset")


# --------------------------------------------------------------------------- the store on the Hub
def test_push_pull_round_trip_is_byte_exact(hub_server, tmp_path):
    a, b = _emb("task-a", 1), _emb("task b:[x,y]", 2)
    files = [a.save(tmp_path / "a.safetensors"), b.save(tmp_path / "b.safetensors")]
    originals = [f.read_bytes() for f in files]

    store = EmbeddingStore("user/t2v")
    result = store.push(files)

    assert len(_commits(hub_server, "user/t2v")) == 1  # the repo was created, then ONE commit
    assert result.commit == hub_server.head_sha("user/t2v", "dataset")
    assert result.keys == ["tiny/task-a", "tiny/task_b_x_y"]
    stored = hub_server.list_files("user/t2v", "dataset")
    assert stored == sorted(
        [
            ".gitattributes",
            "README.md",
            "index.parquet",
            "embeddings/tiny/task-a.safetensors",
            "embeddings/tiny/task_b_x_y.safetensors",
        ]
    )
    assert hub_server.get_file("user/t2v", "embeddings/tiny/task-a.safetensors", "dataset") == originals[0]
    assert not hub_server.repo("user/t2v", "dataset").private

    fresh = EmbeddingStore("user/t2v")
    assert fresh.keys() == ["tiny/task-a", "tiny/task_b_x_y"] and len(fresh) == 2
    assert "tiny/task-a" in fresh and "task-a" in fresh and "tiny/nope" not in fresh
    assert fresh.pull_bytes("tiny/task_b_x_y") == originals[1]
    pulled = fresh.pull("task-a")
    assert pulled.to_bytes() != b"" and np.array_equal(pulled.values, a.values)
    assert np.array_equal(pulled.trivial, a.trivial) and pulled.meta == a.meta and pulled.layers == a.layers
    out = fresh.download("tiny/task-a", tmp_path / "out")
    assert out == tmp_path / "out" / "tiny" / "task-a.safetensors" and out.read_bytes() == originals[0]
    assert [f.read_bytes() for f in files] == originals  # the pushed files were only read

    with pytest.raises(EmbeddingNotFoundError, match=r"no embedding 'tiny/task-c'.*did you mean") as err:
        fresh.pull("tiny/task-c")
    assert isinstance(err.value, KeyError)
    assert hub_server.unhandled == []


def test_index_and_dataset_card(hub_server, tmp_path):
    a, b = _emb("alpha", 3), _emb("beta", 4, method="exact")
    path_a = a.save(tmp_path / "alpha.safetensors")
    store = EmbeddingStore("user/cards", license="cc-by-4.0")
    store.push([path_a, b])

    index = store.index()
    assert tuple(index.columns) == INDEX_COLUMNS
    assert list(index["key"]) == ["tiny/alpha", "tiny/beta"]
    row = index.iloc[0]
    assert row["path"] == "embeddings/tiny/alpha.safetensors"
    assert (row["probe"], row["estimator"], row["task_source"]) == ("tiny", "montecarlo", "user/alpha")
    assert row["task_revision"] == f"{3:040x}" and row["samples"] == 103 and row["dim"] == 48
    assert row["norm"] == pytest.approx(a.data_norm, rel=1e-12)  # the data part (values - trivial)
    assert row["created"] == a.meta["created"]
    assert row["sha256"] == _sha(path_a.read_bytes()) and row["size"] == path_a.stat().st_size
    assert index.iloc[1]["estimator"] == "exact"
    # no recorded modality but an image size: image inputs; the text columns stay empty
    assert row["modality"] == "image" and pd.isna(row["max_length"]) and row["tokenizer"] == ""
    # the parquet file itself, read without hf_task2vec
    raw = pd.read_parquet(
        HfApi().hf_hub_download("user/cards", "index.parquet", repo_type="dataset", cache_dir=tmp_path / "c")
    )
    assert list(raw["key"]) == ["tiny/alpha", "tiny/beta"] and list(raw["samples"]) == [103, 104]

    card = hub_server.get_file("user/cards", "README.md", "dataset").decode()
    header = yaml.safe_load(card.split("---\n")[1])
    assert header["license"] == "cc-by-4.0"
    assert {"task2vec", "embeddings", "safetensors"} <= set(header["tags"])
    assert header["configs"][0]["data_files"][0]["path"] == "index.parquet"
    assert "embeddings/<probe>/<task>.safetensors" in card and "`values`" in card and "`trivial`" in card
    assert 'EmbeddingStore("user/cards")' in card and 'store.pull("tiny/alpha")' in card
    assert "| `tiny/alpha` | alpha | tiny | montecarlo | 103 |" in card and "| image 32px |" in card
    assert "**2** embeddings" in card
    # the Hub parses the card's YAML header (what the Hub page shows)
    card_data = HfApi().dataset_info("user/cards").card_data
    assert card_data.license == "cc-by-4.0" and "task2vec" in card_data.tags
    # the index is the repo's default config: `datasets` loads it as a table
    table = load_dataset("user/cards", split="train", cache_dir=str(tmp_path / "ds"))
    assert table["key"] == ["tiny/alpha", "tiny/beta"] and table["samples"] == [103, 104]


def test_unchanged_push_makes_no_commit(hub_server, tmp_path):
    a, b = _emb("a", 5), _emb("b", 6)
    path_a = a.save(tmp_path / "a.safetensors")
    store = EmbeddingStore("user/idem")
    store.push([path_a, b])
    head = hub_server.head_sha("user/idem", "dataset")
    commits = len(_commits(hub_server, "user/idem"))

    # the same embeddings again: as the file, as fresh objects (the safetensors header of a new
    # serialisation is ordered differently, the content is the same) and loaded back from the file
    for again in ([path_a, b], [TaskEmbedding.load(path_a), _emb("b", 6)]):
        result = store.push(again)
        assert not result.changed and result.commit is None and result.uploaded == []
    assert len(_commits(hub_server, "user/idem")) == commits  # no commit request at all
    assert hub_server.calls("POST", r"/preupload/")  # (it did talk to the Hub before)
    assert hub_server.head_sha("user/idem", "dataset") == head

    # one changed embedding: one commit with that file, the index and the card only
    before = _repo_bytes(hub_server, "user/idem")
    result = store.push([path_a, _emb("b", 7)])
    assert result.uploaded == ["README.md", "embeddings/tiny/b.safetensors", "index.parquet"]
    assert len(_commits(hub_server, "user/idem")) == commits + 1
    after = _repo_bytes(hub_server, "user/idem")
    assert after["embeddings/tiny/a.safetensors"] == before["embeddings/tiny/a.safetensors"]
    assert np.array_equal(store.pull("tiny/b").values, _emb("b", 7).values)


def test_failed_push_loses_nothing_and_a_retry_succeeds(hub_server, tmp_path):
    store = EmbeddingStore("user/atomic")
    store.push(_emb("a", 8))
    before, head = _repo_bytes(hub_server, "user/atomic"), hub_server.head_sha("user/atomic", "dataset")
    new = _emb("b", 9).save(tmp_path / "b.safetensors")
    local = new.read_bytes()
    commits = len(_commits(hub_server, "user/atomic"))

    hub_server.fail_next(r"/commit/", status=500, times=100)
    with pytest.raises(
        HubError, match=r"push: the Hub failed with HTTP 500 for Hub dataset repo 'user/atomic' after 4"
    ):
        store.push([new, _emb("a", 10)])
    assert len(_commits(hub_server, "user/atomic")) == commits + hub_module.RETRIES
    assert hub_server.head_sha("user/atomic", "dataset") == head
    assert _repo_bytes(hub_server, "user/atomic") == before
    assert store.keys() == ["tiny/a"] and np.array_equal(store.pull("a").values, _emb("a", 8).values)
    assert new.read_bytes() == local

    hub_server.faults.clear()
    result = store.push([new, _emb("a", 10)])
    assert result.commit == hub_server.head_sha("user/atomic", "dataset")
    assert store.pull_bytes("tiny/b") == local
    assert np.array_equal(store.pull("tiny/a").values, _emb("a", 10).values)


def test_a_500_on_first_try_is_retried(hub_server):
    store = EmbeddingStore("user/flaky")
    hub_server.create_repo("user/flaky", "dataset")
    hub_server.fail_next(r"^/api/datasets/user/flaky/commit/", status=500)
    result = store.push(_emb("a", 11))
    assert [r.status for r in _commits(hub_server, "user/flaky")] == [500, 200]
    assert result.commit == hub_server.head_sha("user/flaky", "dataset")

    fault = hub_server.fail_next(r"^/api/datasets/user/flaky/revision/", status=503)
    assert EmbeddingStore("user/flaky").keys() == ["tiny/a"]
    assert fault.hits == 1
    assert [r.status for r in hub_server.calls("GET", r"^/api/datasets/user/flaky/revision/")][-2:] == [503, 200]

    hub_server.fail_next(r"^/api/datasets/user/flaky/revision/", status=0)  # a dropped connection
    assert EmbeddingStore("user/flaky").pull("a").name == "a"


def test_private_repo_and_tokens(hub_server, monkeypatch):
    store = EmbeddingStore("user/secret", private=True)
    store.push(_emb("a", 12))
    assert hub_server.repo("user/secret", "dataset").private
    created = hub_server.calls("POST", r"^/api/repos/create$")
    assert len(created) == 1
    assert store.keys() == ["tiny/a"]

    monkeypatch.delenv("HF_TOKEN")
    anonymous = EmbeddingStore("user/secret")
    with pytest.raises(HubError) as err:
        anonymous.keys()
    message = str(err.value)
    assert "'user/secret'" in message and "not found" in message
    assert "you are not logged in" in message and "hf auth login" in message and "HF_TOKEN" in message
    with pytest.raises(HubError, match=r"'user/secret'.*not logged in"):
        anonymous.push(_emb("b", 13))
    assert hub_server.list_files("user/secret", "dataset") == [
        ".gitattributes",
        "README.md",
        "embeddings/tiny/a.safetensors",
        "index.parquet",
    ]

    # a read-only token can read but not push; the token never shows in messages
    read_only = EmbeddingStore("user/secret", token=READ_TOKEN)
    assert read_only.keys() == ["tiny/a"]
    with pytest.raises(HubError, match=r"no permission on Hub dataset repo 'user/secret' \(403\).*write") as err:
        read_only.push(_emb("b", 13))
    assert READ_TOKEN not in str(err.value) and READ_TOKEN not in repr(read_only)
    with pytest.raises(HubError, match=r"401.*token is invalid or expired"):
        EmbeddingStore("user/secret", token="hf_not_a_real_token").keys()


def test_missing_repo_and_bad_ids(hub_server):
    with pytest.raises(HubError, match=r"'user/nope' was not found at http://127\.0\.0\.1:\d+\. Check the repo id"):
        EmbeddingStore("user/nope").pull("tiny/a")
    with pytest.raises(HubError, match="neither a Hub dataset repo id"):
        EmbeddingStore("a/b/c")
    with pytest.raises(HubError, match="nothing to push"):
        EmbeddingStore("user/nope").push([])
    with pytest.raises(HubError, match="two embeddings of this push have the key 'tiny/same'"):
        EmbeddingStore("user/nope").push([_emb("same", 1), _emb("same", 2)])
    assert ("dataset", "user/nope") not in hub_server.repos  # nothing was created by failed pushes
    # a store opened at a commit is read-only
    store = EmbeddingStore("user/pinned")
    store.push(_emb("a", 1))
    pinned = EmbeddingStore("user/pinned", revision=hub_server.head_sha("user/pinned", "dataset"))
    assert pinned.keys() == ["tiny/a"]
    with pytest.raises(HubError, match="read-only"):
        pinned.push(_emb("b", 2))


def test_revision_reads_an_old_state(hub_server):
    store = EmbeddingStore("user/history")
    first = store.push(_emb("a", 1)).commit
    store.push(_emb("b", 2))
    assert store.keys() == ["tiny/a", "tiny/b"]
    assert EmbeddingStore("user/history", revision=first).keys() == ["tiny/a"]


def test_nearest_matches_brute_force(hub_server):
    stored = [_emb(f"t{i}", 20 + i) for i in range(6)]
    other_probe = _emb("elsewhere", 40, probe="other")
    store = EmbeddingStore("user/near")
    store.push([*stored, other_probe])
    query = _emb("query", 99)

    for kind in ("asymmetric", "symmetric", "cosine"):
        got = store.nearest(query, k=4, kind=kind)
        brute = sorted((distance(e, query, kind=kind), f"tiny/{e.name}") for e in stored)[:4]
        assert list(got["key"]) == [key for _, key in brute]
        np.testing.assert_allclose(got["distance"], [d for d, _ in brute], rtol=1e-12, atol=1e-15)
        assert list(got.columns[:2]) == ["key", "distance"] and "task_revision" in got.columns
    # asymmetric: d(source -> target) = d_sym - alpha * d_sym(source, trivial): the stored task is the source
    e = stored[0]
    expected = distance(e, query, "symmetric") - 0.3 * distance(
        e, TaskEmbedding(e.trivial, e.trivial, e.layers, e.meta), "symmetric"
    )
    got = store.nearest(query, k=6, alpha=0.3)
    assert got.set_index("key").loc["tiny/t0", "distance"] == pytest.approx(expected, rel=1e-9)
    with pytest.raises(IncompatibleEmbeddingsError, match="none of the 7 embeddings"):
        store.nearest(_emb("q", 1, probe="unknown"))


# --------------------------------------------------------------------------- local folder
def test_local_folder_store_matches_the_hub_store(hub_server, tmp_path):
    embs = [_emb("x", 31), _emb("y", 32), _emb("z", 33, method="exact")]
    hub_store = EmbeddingStore("user/parity")
    local = EmbeddingStore(tmp_path / "store")
    assert len(local) == 0 and local.keys() == []
    hub_store.push(embs)
    result = local.push(embs)
    assert result.commit is None and result.uploaded == [
        "README.md",
        "embeddings/tiny/x.safetensors",
        "embeddings/tiny/y.safetensors",
        "embeddings/tiny/z.safetensors",
        "index.parquet",
    ]
    on_hub = _repo_bytes(hub_server, "user/parity")
    on_disk = _folder_bytes(tmp_path / "store")
    assert set(on_hub) - {".gitattributes"} == set(on_disk)
    for path in on_disk:
        if path != "README.md":  # the card names its store
            assert on_disk[path] == on_hub[path], path
    pd.testing.assert_frame_equal(local.index(), hub_store.index())
    query = _emb("q", 34)
    pd.testing.assert_frame_equal(local.nearest(query, k=3), hub_store.nearest(query, k=3))
    assert np.array_equal(local.pull("tiny/y").values, hub_store.pull("tiny/y").values)

    # the string forms of a local path
    for form in (str(tmp_path / "store"), f"file://{tmp_path / 'store'}"):
        assert EmbeddingStore(form).keys() == ["tiny/x", "tiny/y", "tiny/z"]
    # unchanged push: nothing rewritten
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "store").rglob("*")}
    assert local.push(embs).uploaded == []
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "store").rglob("*")} == mtimes


def test_local_folder_failed_write_is_rolled_back(tmp_path, monkeypatch):
    root = tmp_path / "store"
    store = EmbeddingStore(root)
    store.push([_emb("a", 1), _emb("b", 2)])
    before = _folder_bytes(root)

    real_replace, calls = hub_backend._replace, []

    def failing_replace(src, dst):
        calls.append(dst)
        if len(calls) == 3:  # two new embedding files are in place; the index is not
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(hub_backend, "_replace", failing_replace)
    with pytest.raises(HubError, match="No space left on device"):
        store.push([_emb("a", 3), _emb("c", 4)])
    assert _folder_bytes(root) == before  # replaced file restored, new file removed, no temp/backup files
    assert not (root / "embeddings" / "tiny" / "c.safetensors").exists()
    monkeypatch.setattr(hub_backend, "_replace", real_replace)
    store.push([_emb("a", 3), _emb("c", 4)])
    assert store.keys() == ["tiny/a", "tiny/b", "tiny/c"]
    assert np.array_equal(store.pull("a").values, _emb("a", 3).values)


# --------------------------------------------------------------------------- CLI
def test_cli_push_pull_nearest_index(hub_server, tmp_path, capsys):
    files = [_emb(n, 50 + i).save(tmp_path / f"{n}.safetensors") for i, n in enumerate(["red", "green", "blue"])]
    query = _emb("query", 60).save(tmp_path / "query.safetensors")

    assert main(["push", *map(str, files), "--repo", "user/cli-store", "--private"]) == 0
    out = capsys.readouterr().out
    assert "pushed 3 embedding(s) to user/cli-store in commit" in out
    assert hub_server.repo("user/cli-store", "dataset").private
    assert main(["push", str(files[0]), "--repo", "user/cli-store"]) == 0
    assert "is up to date" in capsys.readouterr().out

    assert main(["pull", "--repo", "user/cli-store", "--out", str(tmp_path / "pulled")]) == 0
    printed = capsys.readouterr().out.split()
    assert sorted(printed) == sorted(
        str(tmp_path / "pulled" / "tiny" / f"{n}.safetensors") for n in ["red", "green", "blue"]
    )
    for f in files:
        assert (tmp_path / "pulled" / "tiny" / f.name).read_bytes() == f.read_bytes()
    assert main(["pull", "--repo", "user/cli-store", "--key", "green", "--out", str(tmp_path / "one")]) == 0
    assert [p.name for p in (tmp_path / "one").rglob("*.safetensors")] == ["green.safetensors"]

    assert main(["nearest", str(query), "--repo", "user/cli-store", "-k", "2"]) == 0
    out = capsys.readouterr().out
    brute = sorted((distance(TaskEmbedding.load(f), TaskEmbedding.load(query), "asymmetric"), f.stem) for f in files)
    lines = [line for line in out.splitlines() if line.lstrip().startswith("tiny/")]
    assert [line.split()[0] for line in lines] == [f"tiny/{n}" for _, n in brute[:2]]
    assert float(lines[0].split()[1]) == pytest.approx(brute[0][0], rel=1e-5)

    assert main(["index", "--repo", "user/cli-store"]) == 0
    out = capsys.readouterr().out
    assert all(f"tiny/{n}" in out for n in ["red", "green", "blue"]) and "montecarlo" in out

    assert main(["pull", "--repo", "user/cli-store", "--key", "purple", "--out", str(tmp_path)]) == 2
    assert "no embedding 'purple'" in capsys.readouterr().err
    assert main(["index", "--repo", "user/absent"]) == 2
    assert "'user/absent' was not found" in capsys.readouterr().err
    # the same commands on a local folder
    assert main(["push", *map(str, files), "--repo", str(tmp_path / "folder")]) == 0
    assert main(["nearest", str(query), "--repo", str(tmp_path / "folder"), "-k", "2"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines() if "tiny/" in line][-2:] == [
        f"tiny/{n}" for _, n in brute[:2]
    ]


# --------------------------------------------------------------------------- datasets from the Hub
def test_water_fill():
    assert water_fill([100, 100, 100], 64) == [22, 21, 21]
    assert water_fill([3, 100, 100], 64) == [3, 31, 30]
    assert water_fill([3, 4, 5], 64) == [3, 4, 5]
    assert water_fill([10, 0, 10], 5) == [3, 0, 2]
    assert water_fill([7, 8], None) == [7, 8]


def test_take_balanced_reads_a_class_balanced_prefix(animals):
    labels = np.asarray(animals["label"])
    stream = animals.to_iterable_dataset()
    prefix = take_balanced(stream, "label", 30, progress=False)
    # brute force: the first 10 examples of each class in stream order; reading stops at the last of them
    first = np.sort(np.concatenate([np.nonzero(labels == c)[0][:10] for c in range(3)]))
    assert prefix.rows_read == first[-1] + 1 and not prefix.exhausted
    assert prefix.dataset["label"] == labels[first].tolist()
    assert prefix.dataset.features == animals.features
    for i in (0, 17, 29):
        assert np.array_equal(np.asarray(prefix.dataset[i]["image"]), np.asarray(animals[int(first[i])]["image"]))

    # a short class: the stream ends, the others share its quota
    few_birds = animals.select([i for i in range(len(animals)) if labels[i] != 0 or i < 40])
    n_birds = int((np.asarray(few_birds["label"]) == 0).sum())
    prefix = take_balanced(few_birds.to_iterable_dataset(), "label", 3 * n_birds + 4, progress=False)
    assert prefix.exhausted and prefix.rows_read == len(few_birds)
    assert np.bincount(prefix.dataset["label"]).tolist() == [n_birds, n_birds + 2, n_birds + 2]

    # only some classes, by name
    prefix = take_balanced(stream, "label", 8, classes=["dog", "bird"], progress=False)
    assert sorted(np.bincount(prefix.dataset["label"], minlength=3).tolist()) == [0, 4, 4]
    with pytest.raises(TaskError, match="has no class 'wolf'"):
        take_balanced(stream, "label", 8, classes=["wolf"], progress=False)


def test_load_task_from_the_hub_pins_and_records_the_revision(hub_server, animals):
    first = _upload_animals(hub_server, animals, shards=1)
    hub_server.commit("user/animals", {"NOTES.md": "a later commit"}, repo_type="dataset")
    second = hub_server.head_sha("user/animals", "dataset")
    assert first != second

    task = t2v.load_task("user/animals")
    assert (task.source, task.revision, task.split) == ("user/animals", second, "train")
    assert task.label_names == ANIMALS and task.labels.tolist() == animals["label"]
    pinned = t2v.load_task("user/animals", revision=first, classes=["cat", "dog"])
    assert pinned.revision == first and pinned.num_classes == 2 and len(pinned) == 200

    with pytest.raises(TaskError, match="has no revision 'v9'"):
        t2v.load_task("user/animals", revision="v9")

    # a second configuration of the same repo
    animals.select(range(30)).push_to_hub("user/animals", config_name="small", split="train")
    small = t2v.load_task("user/animals", config="small")
    assert len(small) == 30 and small.config == "small" and small.labels.tolist() == animals["label"][:30]
    assert small.revision == hub_server.head_sha("user/animals", "dataset") and small.meta()["task_config"] == "small"
    assert len(t2v.load_task("user/animals")) == 300


def test_hub_dataset_errors_are_clear(hub_server, animals, monkeypatch):
    with pytest.raises(TaskError, match=r"Hub dataset 'user/no-such-dataset' was not found: check the id"):
        t2v.embed("user/no-such-dataset")
    hub_server.create_repo("user/private-ds", "dataset", private=True)
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(TaskError, match=r"'user/private-ds' was not found.*you are not logged in.*HF_TOKEN"):
        t2v.load_task("user/private-ds")


def test_embed_a_hub_dataset_end_to_end(hub_server, animals, tmp_path):
    """Real images, real weights: embed("user/animals") downloads it through `datasets`, records the
    commit it read, and the embedding goes through a store and back."""
    head = _upload_animals(hub_server, animals)
    emb = t2v.embed("user/animals", image_size=32, max_samples=64, progress=False)
    assert emb.meta["task_source"] == "user/animals" and emb.meta["task_revision"] == head
    assert emb.meta["task_split"] == "train" and json.loads(emb.meta["label_names"]) == ANIMALS
    assert emb.meta["num_samples"] == "64" and emb.meta["num_task_examples"] == "300"
    assert emb.dim == 21_008 and np.all(np.isfinite(emb.values)) and emb.values.max() > emb.trivial.max()

    store = EmbeddingStore("user/zoo")
    store.push(emb)
    row = store.index().iloc[0]
    assert (row["key"], row["task_source"], row["task_revision"]) == ("embedded/animals", "user/animals", head)
    assert row["estimator"] == "relative" and row["samples"] == 64  # the default estimator
    back = store.pull("embedded/animals")
    assert np.array_equal(back.values, emb.values) and back.meta == emb.meta
    nearest = store.nearest(emb, k=1, kind="symmetric")
    assert nearest.iloc[0]["key"] == "embedded/animals" and nearest.iloc[0]["distance"] == pytest.approx(0, abs=1e-12)


def test_streaming_embed_reads_only_what_it_needs(hub_server, animals):
    """embed(..., streaming=True) reads a class-balanced prefix of the stream: the first of four
    parquet shards is enough for 48 examples of 3 classes, the other shards are never fetched."""
    head = _upload_animals(hub_server, animals, repo="user/big-animals", shards=4)
    shards = sorted(f for f in hub_server.list_files("user/big-animals", "dataset") if f.endswith(".parquet"))
    assert len(shards) == 4
    hub_server.log.clear()

    emb = t2v.embed("user/big-animals", streaming=True, image_size=32, max_samples=48, progress=False)

    fetched = {r.path.rsplit("/", 1)[-1] for r in hub_server.calls("GET", r"/resolve/.*\.parquet$")}
    assert fetched == {shards[0].rsplit("/", 1)[-1]}
    assert emb.meta["task_revision"] == head and emb.meta["task_source"] == "user/big-animals"
    assert emb.meta["num_task_examples"] == "48" and emb.meta["num_samples"] == "48"
    # the same 48 examples as the brute-force prefix of the dataset: 16 per class, in stream order
    labels = np.asarray(animals["label"])
    first = np.sort(np.concatenate([np.nonzero(labels == c)[0][:16] for c in range(3)]))
    task = t2v.load_task("user/big-animals", streaming=True, max_examples=48)
    assert task.labels.tolist() == labels[first].tolist() and task.revision == head
    streamed = list(load_dataset("user/big-animals", split="train", streaming=True).take(3))
    assert np.array_equal(np.asarray(task.dataset[0]["image"]), np.asarray(streamed[0]["image"]))


def test_offline_mode_reads_the_cached_store(hub_server, tmp_path):
    """With HF_HUB_OFFLINE=1 (read when huggingface_hub is imported: a fresh process) a store read
    once online is read from the cache; pushing says why it cannot."""
    import os
    import subprocess
    import sys

    store = EmbeddingStore("user/offline-store")
    store.push([_emb("a", 70), _emb("b", 71)])
    for key in ("a", "b"):
        store.pull(key)  # fills the cache (HF_HOME of this test session)
    script = (
        "import numpy as np, hf_task2vec as t2v\n"
        "s = t2v.EmbeddingStore('user/offline-store')\n"
        "print(s.keys(), float(s.pull('a').values.sum()))\n"
        "try:\n    s.push(s.pull('a'), key='tiny/c')\nexcept t2v.HubError as e:\n    print('push:', e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"['tiny/a', 'tiny/b'] {float(_emb('a', 70).values.sum())}"
    assert "cannot push to Hub dataset repo 'user/offline-store' while HF_HUB_OFFLINE is set" in lines[1]
