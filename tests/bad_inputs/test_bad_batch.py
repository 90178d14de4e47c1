"""Batch runs: a config with values of the wrong type is refused (exit 2, one line, nothing
written); a bad output store is refused before any embedding; workers die with their launcher; two
runs on one store embed each task once and leave a complete index; a stale lock does not block."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.bad_inputs.common import REPO, assert_says, error_line, run_cli, run_main, snapshot

GOOD_TASK = {"source": "offline:digits", "split": "all", "classes": ["0", "1"], "name": "d01"}


def write_config(path: Path, **cfg) -> Path:
    base = {"probe": "embedded", "method": "montecarlo", "options": {"max_samples": 16, "image_size": 32},
            "tasks": [GOOD_TASK]}
    base.update(cfg)
    path.write_text(yaml.safe_dump(base))
    return path


BAD_CONFIGS = {
    "max_samples-string": ({"options": {"max_samples": "many"}}, ["max_samples", "'many'", "integer"]),
    "max_samples-zero": ({"options": {"max_samples": 0}}, ["max_samples", "at least 1"]),
    "image_size-float": ({"options": {"image_size": 32.5}}, ["image_size", "32.5", "integer"]),
    "tasks-string": ({"tasks": "offline:digits"}, ["tasks", "list"]),
    "timeout-string": ({"timeout_minutes": "soon"}, ["timeout_minutes", "'soon'", "number"]),
    "classes-int": ({"tasks": [{"source": "offline:digits", "classes": 3}]}, ["classes", "list"]),
    "split-list": ({"tasks": [{"source": "offline:digits", "split": ["a"]}]}, ["split", "string"]),
    "precision-fp16": ({"options": {"precision": "fp16"}}, ["precision", "'fp16'", "fp32"]),
    "options-list": ({"options": ["max_samples", 3]}, ["options", "mapping"]),
    "seed-negative": ({"options": {"seed": -1}}, ["seed", "at least 0"]),
    "alpha-in-options": ({"options": {"alpha": 0.1}}, ["unknown options", "alpha"]),
    # issue 23 item 5: upper bounds in the YAML too
    "n_samples-huge": ({"options": {"n_samples": 10**12}}, ["n_samples", "at most 1000", "backward pass"]),
    "image_size-huge": ({"options": {"image_size": 100000}}, ["image_size", "at most 1024", "GB"]),
    "max_length-over-positions": ({"probe": "embedded-text", "options": {"max_length": 100000, "max_samples": 8},
                                   "tasks": [{"source": "offline:fortunes", "classes": ["computers", "science"]}]},
                                  ["max_length", "at most 512", "positions"]),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS), ids=list(BAD_CONFIGS))
def test_bad_config_values(case, tmp_path, capsys):
    cfg, needles = BAD_CONFIGS[case]
    path = write_config(tmp_path / "c.yaml", **cfg)
    before = snapshot(tmp_path)
    rc, err = run_main(["batch", str(path), "--out", str(tmp_path / "store")], capsys)
    assert rc == 2
    line = error_line(err)
    assert_says(line, "c.yaml", *needles)
    assert snapshot(tmp_path) == before


def test_missing_config(tmp_path, capsys):
    rc, err = run_main(["batch", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "store")], capsys)
    assert rc == 2
    assert_says(error_line(err), "nope.yaml", "does not exist")
    assert snapshot(tmp_path) == {}


def test_store_on_a_read_only_file_system_is_refused_up_front(tmp_path, capsys):
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a read-only tmpfs")
    mnt = tmp_path / "ro"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mnt)], capture_output=True)
    if res.returncode:
        pytest.skip(f"cannot mount a tmpfs: {res.stderr.decode().strip()}")
    try:
        path = write_config(tmp_path / "c.yaml")
        rc, err = run_main(["batch", str(path), "--out", str(mnt / "store"), "--no-progress"], capsys)
        assert rc == 2  # a store failing after the work would end with 1 (the task listed as failed)
        assert_says(error_line(err), "store", "read-only")
        assert snapshot(mnt) == {}
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


# -- several processes --------------------------------------------------------------------------
def launch_cmd(*args: str, nproc: int = 2) -> list[str]:
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", str(nproc), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
        *args,
    ]  # fmt: skip


def _children(pid: int) -> list[int]:
    try:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    except FileNotFoundError:
        pytest.skip("needs ps")
    kids = [int(x) for x in out.split()]
    return kids + [g for k in kids for g in _children(k)]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def indexed(store: Path) -> list[str]:
    if not (store / "index.parquet").is_file():
        return []
    return sorted(r["key"] for r in pq.read_table(store / "index.parquet").to_pylist())


def _groups(n: int) -> dict[str, list[str]]:
    pairs = [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (1, 7), (3, 8), (0, 9)][:n]
    return {f"d{a}{b}": [str(a), str(b)] for a, b in pairs}


PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], start_new_session=True)
print(child.pid, flush=True)
time.sleep(120)
"""
CHILD = """
import time
from hf_task2vec.lifeline import die_with_launcher
assert die_with_launcher(force=True)
print("ready", flush=True)
time.sleep(120)
"""


def test_a_worker_exits_when_its_parent_is_killed(tmp_path):
    """The lifeline on its own: a child in its own session (as torchrun starts workers) ends within
    a few seconds of a SIGKILL to its parent."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    parent = subprocess.Popen([sys.executable, "-c", PARENT, CHILD], env=env, stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        assert parent.stdout.readline().strip() == "ready"  # the child imported hf_task2vec and watches
        assert _alive(child)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(child):
            time.sleep(0.1)
        assert not _alive(child), "the child outlived its parent by 10 s"
    finally:
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.slow
def test_sigkill_of_the_launcher_group_leaves_no_worker(tmp_path):
    store = tmp_path / "store"
    cfg = write_config(tmp_path / "c.yaml", tasks=[{"source": "offline:digits", "split": "all",
                                                     "groups": _groups(8)}], store=str(store))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    launcher = subprocess.Popen(launch_cmd("-m", "hf_task2vec", "batch", str(cfg), "--no-progress"), cwd=REPO,
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and launcher.poll() is None:
            workers = [p for p in _children(launcher.pid) if _alive(p)]
            if len(workers) >= 2 and (store / ".hf_task2vec.lock").exists():
                break
            time.sleep(0.2)
        assert launcher.poll() is None and len(workers) >= 2, "the batch did not get going"
        os.killpg(launcher.pid, signal.SIGKILL)  # what a scheduler or the OOM killer does to the job
        launcher.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.2)
        survivors = [p for p in workers if _alive(p)]
    finally:
        for p in workers:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert survivors == [], f"workers {survivors} outlived their launcher by 10 s"
    # the killed run's lock is stale: a new run is not blocked by it and completes the store
    proc = subprocess.run(launch_cmd("-m", "hf_task2vec", "batch", str(cfg), "--no-progress"), cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert indexed(store) == sorted(f"embedded/{g}" for g in _groups(8))


@pytest.mark.slow
def test_two_batch_runs_on_one_store(tmp_path):
    """Two launches started together: the second waits for the first's lock, then finds every task
    done. Each task is embedded exactly once and the index is complete."""
    store = tmp_path / "store"
    groups = _groups(4)
    cfg = write_config(tmp_path / "c.yaml", tasks=[{"source": "offline:digits", "split": "all", "groups": groups}],
                       store=str(store))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "hf_task2vec", "batch", str(cfg), "--no-progress"]
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=500) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    summaries = [o[0] for o in outs]
    embedded = [int(s.split(" embedded")[0].rsplit(" ", 1)[-1]) for s in summaries]
    assert sorted(embedded) == [0, len(groups)], summaries
    assert any(f"{len(groups)} already in the store" in s for s in summaries), summaries
    assert indexed(store) == sorted(f"embedded/{g}" for g in groups)
    assert not (store / ".hf_task2vec.lock").exists()


def test_duplicate_top_level_key_is_refused(tmp_path, capsys):
    """Issue 23 item 7: YAML keeps the last of two equal keys silently (here: the first options are lost)."""
    path = tmp_path / "c.yaml"
    path.write_text(
        "probe: embedded\n"
        "options: {max_samples: 16, image_size: 32}\n"
        "tasks: [offline:digits]\n"
        "options: {max_samples: 100000}\n"
    )
    before = snapshot(tmp_path)
    rc, err = run_main(["batch", str(path), "--out", str(tmp_path / "store")], capsys)
    assert rc == 2
    assert_says(error_line(err), "c.yaml", "'options'", "twice", "lines 2 and 4", "keep one")
    assert snapshot(tmp_path) == before


def test_expected_task_failure_prints_no_traceback(tmp_path):
    """Issue 23 item 7: a task that fails for a reason the user can fix (here an unknown class) is one line
    (and a FAILED line at the end), not a traceback; exit status 1."""
    path = write_config(tmp_path / "c.yaml", tasks=[{"source": "offline:digits", "classes": ["0", "zebra"],
                                                      "name": "bad"}])
    proc = run_cli(["batch", str(path), "--out", str(tmp_path / "store"), "--no-progress"], cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert_says(proc.stderr, "FAILED bad", "zebra")


def test_interrupt_says_what_the_completed_rounds_kept(tmp_path, capsys, monkeypatch):
    """Issue 23 item 6: Ctrl-C during `batch` said "nothing was written" although the completed rounds were
    pushed to the store. Now it names what was kept and how to resume."""
    from hf_task2vec.task2vec import Task2Vec

    real = Task2Vec.embed
    calls = []

    def embed_then_interrupt(self, task, *args, **kwargs):
        calls.append(task.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, task, *args, **kwargs)

    monkeypatch.setattr(Task2Vec, "embed", embed_then_interrupt)
    tasks = [GOOD_TASK, {**GOOD_TASK, "classes": ["2", "3"], "name": "d23"}]
    path = write_config(tmp_path / "c.yaml", tasks=tasks)
    store = tmp_path / "store"
    rc, err = run_main(["batch", str(path), "--out", str(store), "--no-progress"], capsys)
    assert rc == 130
    line = [ln for ln in err.splitlines() if "interrupted" in ln][0]
    assert "nothing was written" not in line
    assert_says(line, "1 task(s)", "kept in", "store", "d01", "run the same command again")
    assert sorted(p.name for p in (store / "embeddings").rglob("*.safetensors")) == ["d01.safetensors"]
