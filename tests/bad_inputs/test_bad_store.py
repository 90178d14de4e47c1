"""A local store has one writer at a time: a lock file naming its owner (pid, host) with a lease.
A live lock makes a second writer wait, then refuse clearly; a stale one (dead owner, or a lease
run out) is recovered; concurrent writers never lose an index row."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pandas as pd
import pytest

import hf_task2vec as t2v
from hf_task2vec.errors import StoreLockedError
from tests.bad_inputs.common import REPO, assert_says, snapshot, tiny_embedding

LOCK = ".hf_task2vec.lock"


def _lock(store, pid: int, host: str | None = None, lease_left: float = 300.0) -> None:
    store.mkdir(parents=True, exist_ok=True)
    now = time.time()
    (store / LOCK).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "created": now,
                                          "expires": now + lease_left, "purpose": "test"}))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_live_lock_makes_a_second_writer_refuse(tmp_path):
    store = tmp_path / "store"
    t2v.EmbeddingStore(store).push([tiny_embedding("a", 0)])
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _lock(store, holder.pid)
        before = snapshot(store)
        start = time.monotonic()
        with pytest.raises(StoreLockedError) as err:
            t2v.EmbeddingStore(store, lock_timeout=1.0).push([tiny_embedding("b", 1)])
        assert time.monotonic() - start >= 0.9  # it waited for the lock before giving up
        assert_says(str(err.value), str(store), f"pid {holder.pid}", socket.gethostname(), "wait", LOCK)
        assert snapshot(store) == before
    finally:
        holder.kill()
        holder.wait()


def test_lock_of_a_dead_process_is_recovered(tmp_path, caplog):
    store = tmp_path / "store"
    _lock(store, _dead_pid())
    t2v.EmbeddingStore(store, lock_timeout=5.0).push([tiny_embedding("a", 0)])
    assert t2v.EmbeddingStore(store).keys() == ["tiny/a"]
    assert not (store / LOCK).exists()
    assert "stale" in caplog.text.lower()


def test_lock_with_an_expired_lease_from_another_host_is_recovered(tmp_path):
    store = tmp_path / "store"
    _lock(store, 1, host="some-other-host", lease_left=-5.0)
    t2v.EmbeddingStore(store, lock_timeout=5.0).push([tiny_embedding("a", 0)])
    assert t2v.EmbeddingStore(store).keys() == ["tiny/a"]
    assert not (store / LOCK).exists()


def test_unreadable_lock_file_is_explained(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    (store / LOCK).write_text("{not json")
    with pytest.raises(StoreLockedError) as err:
        t2v.EmbeddingStore(store, lock_timeout=0.5).push([tiny_embedding("a", 0)])
    assert_says(str(err.value), LOCK, "delete")


WRITER = """
import sys
import numpy as np
import hf_task2vec as t2v
store = t2v.EmbeddingStore(sys.argv[1])
for i in range(int(sys.argv[3])):
    rng = np.random.default_rng(i)
    emb = t2v.TaskEmbedding(rng.gamma(2.0, 1e-3, 16), np.full(16, 1e-4), [("a", 0, 16)],
                            {"task": f"{sys.argv[2]}{i}", "probe": "tiny", "method": "montecarlo"})
    store.push([emb])
"""


def test_two_concurrent_writers_lose_no_index_row(tmp_path):
    store = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(store), name, "6"], env=env,
                              stderr=subprocess.PIPE, text=True) for name in ("x", "y")]
    errs = [p.communicate(timeout=240)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    keys = sorted(t2v.EmbeddingStore(store).keys())
    assert keys == sorted(f"tiny/{n}{i}" for n in "xy" for i in range(6))
    frame = pd.read_parquet(store / "index.parquet")
    assert sorted(frame["key"]) == keys
    assert not (store / LOCK).exists()
    assert [p for p in store.rglob("*") if p.name.endswith((".tmp", ".bak"))] == []


def test_corrupt_index_advice_works(tmp_path, capsys):
    """Issue 23 item 6: a corrupt index.parquet used to say "push again to rewrite it", and the push failed
    with the same message. Now the message names `index --rebuild`, which works, and a push rebuilds it too."""
    from tests.bad_inputs.common import error_line, run_main

    store = tmp_path / "store"
    files = [tiny_embedding(name, i).save(tmp_path / f"{name}.safetensors") for i, name in enumerate("abc")]
    assert run_main(["push", str(files[0]), str(files[1]), "--repo", str(store)], capsys)[0] == 0
    (store / "index.parquet").write_bytes(b"not parquet at all")
    rc, err = run_main(["index", "--repo", str(store)], capsys)
    assert rc == 2
    line = error_line(err)
    assert_says(line, "index.parquet", "not a readable parquet", "hf-task2vec index --repo", "--rebuild")
    assert "push again" not in line
    rc, _ = run_main(["index", "--repo", str(store), "--rebuild"], capsys)
    assert rc == 0
    assert t2v.EmbeddingStore(store).keys() == ["tiny/a", "tiny/b"]
    (store / "index.parquet").write_bytes(b"broken again")
    rc, err = run_main(["push", str(files[2]), "--repo", str(store)], capsys)  # a push rebuilds it as well
    assert rc == 0, err
    assert t2v.EmbeddingStore(store).keys() == ["tiny/a", "tiny/b", "tiny/c"]
