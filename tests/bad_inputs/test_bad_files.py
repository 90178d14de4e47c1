"""Embedding files: the integrity hash covers the tensors AND the provenance metadata; files of the
previous format (hash over the tensors only) are read only with allow_unverified=True and never
enter a store; writes never leave a partial file, keep an existing file on failure, and get the
umask's permissions."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import subprocess

import numpy as np
import pytest

import hf_task2vec as t2v
from hf_task2vec import EmbeddingFileError, TaskEmbedding
from hf_task2vec.embedding import UNVERIFIED_KEY, unverified_reason
from tests.bad_inputs.common import assert_says, error_line, run_main, snapshot, tiny_embedding


def _edit_header(path, old: str, new: str) -> None:
    """Replace ``old`` by ``new`` (same length) inside the safetensors JSON header."""
    assert len(old) == len(new)
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = data[8 : 8 + n].decode()
    assert header.count(old) == 1, header
    path.write_bytes(data[:8] + header.replace(old, new).encode() + data[8 + n :])


@pytest.mark.parametrize(
    ("old", "new"),
    [('"image_size":"32"', '"image_size":"64"'), ('"method":"montecarlo"', '"method":"exactcarlo"'),
     ('"probe":"tiny"', '"probe":"tinx"'), ('"task":"t"', '"task":"u"')],
    ids=["image_size", "method", "probe", "task"],
)
def test_tampered_metadata_is_refused(tmp_path, old, new):
    path = tiny_embedding("t").save(tmp_path / "e.safetensors")
    _edit_header(path, old, new)
    with pytest.raises(EmbeddingFileError) as err:
        TaskEmbedding.load(path)
    assert_says(str(err.value), "e.safetensors", "integrity", "metadata", "re-create")


def test_tampered_layers_are_refused(tmp_path):
    path = tiny_embedding("t").save(tmp_path / "e.safetensors")
    _edit_header(path, '[\\"a\\", 0, 8]', '[\\"a\\", 0, 7]')
    with pytest.raises(EmbeddingFileError, match="integrity|layer"):
        TaskEmbedding.load(path)


def test_tampered_file_cannot_enter_a_store(tmp_path, capsys):
    good = tiny_embedding("good", 0).save(tmp_path / "good.safetensors")
    bad = tiny_embedding("bad", 1).save(tmp_path / "bad.safetensors")
    store = tmp_path / "store"
    assert run_main(["push", str(good), "--repo", str(store)], capsys)[0] == 0
    _edit_header(bad, '"image_size":"32"', '"image_size":"99"')
    before = snapshot(store)
    rc, err = run_main(["push", str(bad), "--repo", str(store)], capsys)
    assert rc == 2
    assert_says(err, "bad.safetensors", "integrity")
    assert snapshot(store) == before


def _v1_bytes(emb: TaskEmbedding) -> bytes:
    """An embedding as hf_task2vec 0.1.0 wrote it: format version 1, sha256 over the tensors only."""
    from safetensors.numpy import save

    meta = dict(emb.meta)
    h = hashlib.sha256()
    h.update(emb.values.tobytes())
    h.update(emb.trivial.tobytes())
    meta.update(format="hf_task2vec.embedding", format_version="1", sha256=h.hexdigest(),
                layers=json.dumps([[sl.name, sl.start, sl.stop] for sl in emb.layers]))
    return save({"values": emb.values, "trivial": emb.trivial}, metadata=meta)


def test_version_1_files_are_read_only_with_allow_unverified(tmp_path, caplog):
    emb = tiny_embedding("old", 0)
    path = tmp_path / "old.safetensors"
    path.write_bytes(_v1_bytes(emb))
    with pytest.raises(EmbeddingFileError) as err:
        TaskEmbedding.load(path)
    assert_says(str(err.value), "old.safetensors", "format 1", "metadata", "allow-unverified", "hf-task2vec embed")
    with caplog.at_level(logging.WARNING, logger="hf_task2vec"):
        back = TaskEmbedding.load(path, allow_unverified=True)
    np.testing.assert_array_equal(back.values, emb.values)
    assert {k: v for k, v in back.meta.items() if k != UNVERIFIED_KEY} == emb.meta
    assert unverified_reason(back) is not None
    assert_says(caplog.text, "old.safetensors", "not verified")


def _downgraded(tmp_path):
    """Issue 23 item 2: a format-2 file 'downgraded' to format 1 (sha256 over the tensors alone) with its
    probe and label names changed."""
    emb = tiny_embedding("victim", 0)
    forged = TaskEmbedding(emb.values, emb.trivial, emb.layers,
                           {**emb.meta, "probe": "other-probe", "label_names": json.dumps(["x", "y"])})
    path = tmp_path / "forged.safetensors"
    path.write_bytes(_v1_bytes(forged))
    return path


def test_format_1_downgrade_is_refused_and_never_pushed(tmp_path, capsys):
    path = _downgraded(tmp_path)
    with pytest.raises(EmbeddingFileError, match="format 1"):
        TaskEmbedding.load(path)
    store = tmp_path / "store"
    assert run_main(["push", str(tiny_embedding("good", 1).save(tmp_path / "good.safetensors")), "--repo",
                     str(store)], capsys)[0] == 0
    before = snapshot(store)
    rc, err = run_main(["push", str(path), "--repo", str(store)], capsys)  # the file
    assert rc == 2
    assert_says(error_line(err), "forged.safetensors", "not verified", "hf-task2vec embed")
    emb = TaskEmbedding.load(path, allow_unverified=True)
    with pytest.raises(t2v.HubError, match="not verified"):  # the object
        t2v.EmbeddingStore(store).push(emb)
    assert snapshot(store) == before


def test_resaving_an_unverified_embedding_does_not_bless_it(tmp_path, capsys):
    emb = TaskEmbedding.load(_downgraded(tmp_path), allow_unverified=True)
    resaved = emb.save(tmp_path / "resaved.safetensors")
    with pytest.raises(EmbeddingFileError) as err:  # still unverified: the mark is covered by the format-2 hash
        TaskEmbedding.load(resaved)
    assert_says(str(err.value), "resaved.safetensors", "unverified", "allow-unverified")
    again = TaskEmbedding.load(resaved, allow_unverified=True)
    assert unverified_reason(again) is not None and again.probe == "other-probe"
    _edit_header(resaved, '"unverified_metadata"', '"unverified_metadatb"')  # removing the mark breaks the hash
    with pytest.raises(EmbeddingFileError, match="integrity"):
        TaskEmbedding.load(resaved, allow_unverified=True)
    store = tmp_path / "store"
    rc, err = run_main(["push", str(tmp_path / "forged.safetensors"), "--repo", str(store)], capsys)
    assert rc == 2 and not store.exists()


def test_cli_reads_unverified_files_only_with_the_flag(tmp_path, capsys):
    old = tmp_path / "old.safetensors"
    old.write_bytes(_v1_bytes(tiny_embedding("old", 0)))
    other = tiny_embedding("new", 1).save(tmp_path / "new.safetensors")
    rc, err = run_main(["distance", str(old), str(other)], capsys)
    assert rc == 2
    assert_says(error_line(err), "old.safetensors", "format 1", "--allow-unverified")
    rc, _ = run_main(["distance", str(old), str(other), "--allow-unverified"], capsys)
    assert rc == 0


def test_version_1_files_with_edited_tensors_are_refused(tmp_path):
    data = bytearray(_v1_bytes(tiny_embedding("old", 0)))
    data[-2] ^= 0x40
    (tmp_path / "old.safetensors").write_bytes(bytes(data))
    with pytest.raises(EmbeddingFileError, match="integrity"):
        TaskEmbedding.load(tmp_path / "old.safetensors")


def test_future_format_version(tmp_path):
    path = tiny_embedding("t").save(tmp_path / "e.safetensors")
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    version = header["__metadata__"]["format_version"]
    _edit_header(path, f'"format_version":"{version}"', f'"format_version":"{int(version) + 7}"')
    with pytest.raises(EmbeddingFileError) as err:
        TaskEmbedding.load(path)
    assert_says(str(err.value), "format version", "upgrade hf_task2vec")


def test_save_to_a_directory(tmp_path):
    (tmp_path / "d.safetensors").mkdir()
    with pytest.raises(t2v.Task2VecError) as err:
        tiny_embedding().save(tmp_path / "d.safetensors")
    assert isinstance(err.value, OSError)
    assert_says(str(err.value), "d.safetensors", "directory")
    assert snapshot(tmp_path) == {}


def _mount(target, options):
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    target.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True)
    if res.returncode:
        pytest.skip(f"cannot mount a tmpfs: {res.stderr.decode().strip()}")


def test_save_on_a_full_disk_keeps_the_old_file(tmp_path):
    """ENOSPC in the middle of the write: a clear `OutputError`, the old file intact, no temp file."""
    mnt = tmp_path / "full"
    _mount(mnt, "size=48k")
    try:
        path = tiny_embedding("small", dim=16).save(mnt / "e.safetensors")
        before = snapshot(mnt)
        with pytest.raises(t2v.Task2VecError) as err:
            tiny_embedding("big", dim=20_000).save(path)  # ~160 KB
        assert isinstance(err.value, OSError)
        assert_says(str(err.value), "e.safetensors", "space")
        assert snapshot(mnt) == before
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_save_on_a_read_only_file_system(tmp_path):
    mnt = tmp_path / "ro"
    _mount(mnt, "ro,size=1m")
    try:
        with pytest.raises(t2v.Task2VecError) as err:
            tiny_embedding().save(mnt / "e.safetensors")
        assert isinstance(err.value, OSError)
        assert_says(str(err.value), "e.safetensors", "read-only")
        assert snapshot(mnt) == {}
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_store_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        store = t2v.EmbeddingStore(tmp_path / "store")
        store.push([tiny_embedding("a", 0), tiny_embedding("b", 1)])
        direct = tiny_embedding("c", 2).save(tmp_path / "direct.safetensors")
    finally:
        os.umask(old)
    want = 0o666 & ~umask
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "store").rglob("*") if p.is_file()}
    assert modes and all(m == want for m in modes.values()), (oct(want), {k: oct(v) for k, v in modes.items()})
    assert stat.S_IMODE(direct.stat().st_mode) == want
