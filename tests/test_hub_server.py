"""The fake Hub in tests/hub_server.py, driven by the real huggingface_hub and datasets clients."""

from __future__ import annotations

import hashlib
import os
import re

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, Features, Image, load_dataset
from huggingface_hub import HfApi, HfFileSystem, hf_hub_download, snapshot_download
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from PIL import Image as PILImage

from tests.hub_server import OTHER_TOKEN, READ_TOKEN, SERVER, TOKEN, USER

SHA = re.compile(r"[0-9a-f]{40}")


def _bytes(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def test_environment_points_at_the_server(hub_server):
    assert hf_constants.ENDPOINT == hub_server.url == os.environ["HF_ENDPOINT"]
    assert hf_constants.HF_HUB_DISABLE_XET and not hf_constants.HF_HUB_OFFLINE
    assert hub_server is SERVER and os.environ["HF_TOKEN"] == TOKEN
    assert HfApi().whoami()["name"] == USER


def test_create_repo_and_repo_info(hub_server):
    url = HfApi().create_repo("user/ds", repo_type="dataset")
    assert url == f"{hub_server.url}/datasets/user/ds" and url.repo_id == "user/ds"
    info = HfApi().dataset_info("user/ds")
    assert info.id == "user/ds" and SHA.fullmatch(info.sha) and info.private is False
    assert [s.rfilename for s in info.siblings] == [".gitattributes"]

    HfApi().create_repo("user/ds", repo_type="dataset", exist_ok=True)
    with pytest.raises(HfHubHTTPError) as excinfo:
        HfApi().create_repo("user/ds", repo_type="dataset")
    assert excinfo.value.response.status_code == 409
    # A model repo of the same name is a different repo.
    HfApi().create_repo("user/ds")
    assert HfApi().model_info("user/ds").id == "user/ds"


def test_upload_file_and_download_byte_exact(hub_server, tmp_path):
    api = HfApi()
    api.create_repo("user/model")
    weights, config = _bytes(300_000), b'{"hidden": 8}\n'
    api.upload_file(path_or_fileobj=weights, path_in_repo="weights/model.bin", repo_id="user/model")
    info = api.upload_file(path_or_fileobj=config, path_in_repo="config.json", repo_id="user/model")
    assert info.oid == hub_server.head_sha("user/model")

    # *.bin goes through LFS (batch + PUT), small text files are inline in the commit.
    assert hub_server.repo("user/model").head.files["weights/model.bin"].lfs
    assert not hub_server.repo("user/model").head.files["config.json"].lfs
    assert len(hub_server.calls("PUT", r"^/_lfs/")) == 1

    path = hf_hub_download("user/model", "weights/model.bin", cache_dir=tmp_path)
    assert open(path, "rb").read() == weights
    path = hf_hub_download("user/model", "config.json", cache_dir=tmp_path, revision=info.oid)
    assert open(path, "rb").read() == config
    head = hub_server.calls("HEAD", r"/resolve/")[0]
    assert head.status == 200


def test_upload_folder_snapshot_download_and_listing(hub_server, tmp_path):
    src = tmp_path / "src"
    (src / "data" / "nested").mkdir(parents=True)
    files = {
        "README.md": b"# hello\n",
        "data/a.txt": b"a" * 10,
        "data/nested/b.parquet": _bytes(5000, seed=1),
        "data/nested/c.json": b"{}",
    }
    for name, content in files.items():
        (src / name).write_bytes(content)
    api = HfApi()
    api.create_repo("user/folder", repo_type="dataset")
    api.upload_folder(folder_path=src, repo_id="user/folder", repo_type="dataset")

    assert sorted(api.list_repo_files("user/folder", repo_type="dataset")) == sorted([".gitattributes", *files])
    tree = list(api.list_repo_tree("user/folder", "data", repo_type="dataset"))
    assert [(type(e).__name__, e.path) for e in tree] == [("RepoFolder", "data/nested"), ("RepoFile", "data/a.txt")]
    nested = {e.path: e for e in api.list_repo_tree("user/folder", "data/nested", repo_type="dataset", expand=True)}
    parquet = nested["data/nested/b.parquet"]
    assert parquet.lfs.sha256 == hashlib.sha256(files["data/nested/b.parquet"]).hexdigest()
    assert parquet.size == 5000 and parquet.last_commit.oid == hub_server.head_sha("user/folder", "dataset")
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree("user/folder", "missing", repo_type="dataset"))
    infos = api.get_paths_info("user/folder", ["data/a.txt", "data/nested", "nope"], repo_type="dataset")
    assert [(type(i).__name__, i.path) for i in infos] == [("RepoFile", "data/a.txt"), ("RepoFolder", "data/nested")]

    local = snapshot_download("user/folder", repo_type="dataset", cache_dir=tmp_path / "cache")
    for name, content in files.items():
        assert open(os.path.join(local, name), "rb").read() == content

    # Pushing the same folder again makes no commit (the preupload oids match).
    commits_before = len(hub_server.repo("user/folder", "dataset").commits)
    n_commit_calls = len(hub_server.calls("POST", r"/commit/"))
    api.upload_folder(folder_path=src, repo_id="user/folder", repo_type="dataset")
    assert len(hub_server.calls("POST", r"/commit/")) == n_commit_calls
    assert len(hub_server.repo("user/folder", "dataset").commits) == commits_before


def test_tree_pagination_through_link_header(hub_server):
    hub_server.create_repo("user/many", "dataset")
    hub_server.commit("user/many", {f"f{i:02d}.txt": str(i) for i in range(7)}, repo_type="dataset")
    hub_server.tree_page_size = 3
    files = HfApi().list_repo_files("user/many", repo_type="dataset")
    assert sorted(files) == sorted([".gitattributes", *(f"f{i:02d}.txt" for i in range(7))])
    assert len(hub_server.calls("GET", r"/tree/")) == 3


def test_private_repo_needs_the_owners_token(hub_server, tmp_path, monkeypatch):
    HfApi().create_repo("user/secret", repo_type="dataset", private=True)
    HfApi().upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="user/secret", repo_type="dataset")
    assert HfApi().dataset_info("user/secret").private is True

    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(RepositoryNotFoundError) as excinfo:
        HfApi().dataset_info("user/secret")
    assert excinfo.value.response.status_code == 401
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("user/secret", "x.txt", repo_type="dataset", cache_dir=tmp_path)
    with pytest.raises(RepositoryNotFoundError) as excinfo:
        HfApi(token=OTHER_TOKEN).dataset_info("user/secret")
    assert excinfo.value.response.status_code == 404
    path = hf_hub_download("user/secret", "x.txt", repo_type="dataset", cache_dir=tmp_path, token=READ_TOKEN)
    assert open(path, "rb").read() == b"x"
    # Writing needs a write token of the namespace.
    with pytest.raises(HfHubHTTPError) as excinfo:
        HfApi(token=READ_TOKEN).upload_file(
            path_or_fileobj=b"y", path_in_repo="y.txt", repo_id="user/secret", repo_type="dataset"
        )
    assert excinfo.value.response.status_code == 403


def test_invalid_token_is_not_reported_as_missing_repo(hub_server):
    hub_server.create_repo("user/public")
    with pytest.raises(HfHubHTTPError) as excinfo:
        HfApi(token="hf_not_a_valid_token").model_info("user/public")
    assert not isinstance(excinfo.value, RepositoryNotFoundError)
    assert excinfo.value.response.status_code == 401


def test_missing_repo_file_and_revision(hub_server, tmp_path):
    with pytest.raises(RepositoryNotFoundError):
        HfApi().dataset_info("user/nope")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("user/nope", "x.txt", repo_type="dataset", cache_dir=tmp_path)
    assert hub_server.calls("GET", r"^/api/datasets/user/nope$")[0].status == 404
    hub_server.create_repo("user/there", "dataset")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("user/there", "x.txt", repo_type="dataset", cache_dir=tmp_path)
    with pytest.raises(RevisionNotFoundError):
        HfApi().dataset_info("user/there", revision="0" * 40)


def test_gated_repo(hub_server, tmp_path):
    hub_server.create_repo("other/gated", gated=True, author="other")
    hub_server.commit("other/gated", {"w.txt": "w"})
    with pytest.raises(GatedRepoError):
        hf_hub_download("other/gated", "w.txt", cache_dir=tmp_path)
    hub_server.repo("other/gated").gated_users.add(USER)
    assert open(hf_hub_download("other/gated", "w.txt", cache_dir=tmp_path)).read() == "w"


def test_500_once_is_retried(hub_server, tmp_path):
    hub_server.create_repo("user/flaky", "dataset")
    hub_server.commit("user/flaky", {"a.txt": "a"}, repo_type="dataset")

    # Paginated listings go through http_backoff, which retries 5xx (after 1 s).
    fault = hub_server.fail_next(r"/tree/", status=500)
    assert "a.txt" in HfApi().list_repo_files("user/flaky", repo_type="dataset")
    assert fault.hits == 1
    assert [r.status for r in hub_server.calls("GET", r"/tree/")] == [500, 200]

    # hf_hub_download: a failed HEAD with nothing cached is retried at once.
    hub_server.fail_next(r"/resolve/", status=503, method="HEAD")
    path = hf_hub_download("user/flaky", "a.txt", repo_type="dataset", cache_dir=tmp_path)
    assert open(path).read() == "a"
    assert [r.status for r in hub_server.calls("HEAD", r"/resolve/")] == [503, 200]

    # A dropped connection counts as a network error: retried as well.
    hub_server.fail_next(r"/tree/", status=0)
    assert "a.txt" in HfApi().list_repo_files("user/flaky", repo_type="dataset")


def test_failed_commit_leaves_the_repo_unchanged(hub_server):
    api = HfApi()
    api.create_repo("user/atomic")
    before = hub_server.head_sha("user/atomic")
    hub_server.fail_next(r"/commit/", status=500)
    with pytest.raises(HfHubHTTPError):
        api.upload_file(path_or_fileobj=_bytes(1000), path_in_repo="m.safetensors", repo_id="user/atomic")
    assert hub_server.head_sha("user/atomic") == before
    assert len(hub_server.calls("PUT", r"^/_lfs/")) == 1  # the LFS object was uploaded before the commit
    api.upload_file(path_or_fileobj=_bytes(1000), path_in_repo="m.safetensors", repo_id="user/atomic")
    assert hub_server.get_file("user/atomic", "m.safetensors") == _bytes(1000)
    assert len(hub_server.calls("PUT", r"^/_lfs/")) == 1  # already in LFS: not uploaded again


def test_hffs_range_reads(hub_server):
    data = _bytes(100_000, seed=3)
    hub_server.create_repo("user/ranges", "dataset")
    hub_server.commit("user/ranges", {"blob.bin": data}, repo_type="dataset")
    fs = HfFileSystem()
    assert fs.info("datasets/user/ranges/blob.bin")["size"] == len(data)
    with fs.open("datasets/user/ranges/blob.bin", "rb", block_size=4096) as f:
        f.seek(50_000)
        assert f.read(1000) == data[50_000:51_000]
    assert any(r.status == 206 for r in hub_server.calls("GET", r"/resolve/"))
    assert fs.cat_file("datasets/user/ranges/blob.bin", start=-10) == data[-10:]


def _image_dataset() -> Dataset:
    rng = np.random.default_rng(0)
    images = [PILImage.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)) for _ in range(9)]
    features = Features({"image": Image(), "label": ClassLabel(names=["cat", "dog", "bird"])})
    return Dataset.from_dict({"image": images, "label": [i % 3 for i in range(9)]}, features=features)


def test_push_to_hub_then_load_dataset(hub_server, tmp_path):
    ds = _image_dataset()
    ds.push_to_hub("user/ds")
    files = hub_server.list_files("user/ds", "dataset")
    assert "README.md" in files and any(f.startswith("data/train-") and f.endswith(".parquet") for f in files)

    loaded = load_dataset("user/ds", split="train", cache_dir=str(tmp_path / "cache"))
    assert loaded.features == ds.features
    assert loaded.features["label"].names == ["cat", "dog", "bird"]
    assert loaded["label"] == ds["label"]
    for got, want in zip(loaded["image"], ds["image"], strict=True):
        assert np.array_equal(np.asarray(got), np.asarray(want))

    streamed = list(load_dataset("user/ds", split="train", streaming=True))
    assert [row["label"] for row in streamed] == ds["label"]
    assert np.array_equal(np.asarray(streamed[4]["image"]), np.asarray(ds[4]["image"]))
    assert hub_server.unhandled == []
