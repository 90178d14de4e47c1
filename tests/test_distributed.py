"""Tests of hf_task2vec.distributed: sharded Fisher and batch embedding, with real multi-process
``accelerate launch`` runs on the CPU (gloo), the real offline probe and real offline datasets.

The launch line is the one that really starts two CPU processes (``--cpu`` would start one); every
multi-process test checks that two processes ran.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

import hf_task2vec as t2v
from hf_task2vec.batch import BatchConfigError, _plan, load_batch_config, run_batch
from hf_task2vec.cli import main as cli_main
from hf_task2vec.distributed import DistributedTask2Vec, rank_seed, shard_indices
from hf_task2vec.fisher import fisher_diagonal

REPO = Path(__file__).resolve().parents[1]
SMALL = {"max_samples": 32, "image_size": 32}


def launch_cmd(*args: str, nproc: int = 2) -> list[str]:
    """`accelerate launch` with ``nproc`` real CPU processes (gloo)."""
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", str(nproc), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
        *args,
    ]  # fmt: skip


def run_launch(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(launch_cmd(*args), cwd=REPO, capture_output=True, text=True, timeout=timeout)


def stored(store: Path) -> dict[str, bytes]:
    """The embedding files in the store, by task name."""
    return {p.stem: p.read_bytes() for p in sorted((store / "embeddings" / "embedded").glob("*.safetensors"))}


def indexed(store: Path) -> list[str]:
    """The task names the store's index lists (what a push committed)."""
    if not (store / "index.parquet").is_file():
        return []
    return [r["key"].split("/", 1)[1] for r in pq.read_table(store / "index.parquet").to_pylist()]


def temp_files(store: Path) -> list[Path]:
    return [p for p in store.rglob("*") if p.is_file() and p.name.endswith((".tmp", ".bak"))]


def write_config(path: Path, tasks: list, **extra) -> Path:
    cfg = {"probe": "embedded", "method": "montecarlo", "options": dict(SMALL), "tasks": tasks, **extra}
    path.write_text(yaml.safe_dump(cfg))
    return path


# -- pure logic ------------------------------------------------------------------------------
def test_shard_indices_partition_the_sample():
    idx = np.array([5, 9, 11, 20, 21, 30, 31])
    shards = [shard_indices(idx, r, 3) for r in range(3)]
    assert [s.tolist() for s in shards] == [[5, 20, 31], [9, 21], [11, 30]]
    assert sorted(np.concatenate(shards).tolist()) == idx.tolist()
    with pytest.raises(ValueError):
        shard_indices(idx, 3, 3)


def test_rank_seed_keeps_the_main_seed_and_differs_elsewhere():
    assert rank_seed(7, 0) == 7
    assert len({rank_seed(7, r) for r in range(8)}) == 8
    assert rank_seed(7, 1) == rank_seed(7, 1)


def test_plan_round_robin_then_samples():
    assert _plan(7, 2, "auto") == (6, 1)
    assert _plan(1, 4, "auto") == (0, 1)
    assert _plan(8, 4, "auto") == (8, 0)
    assert _plan(7, 2, "tasks") == (7, 0)
    assert _plan(7, 2, "samples") == (0, 7)
    assert _plan(7, 1, "samples") == (7, 0)


def test_config_parsing(tmp_path):
    path = write_config(
        tmp_path / "c.yaml",
        [
            "offline:digits",
            {"source": "offline:digits", "split": "all", "classes": ["3", 8]},
            {"source": "offline:animal-mnist", "groups": {"cd": ["cat", "dog"], "hz": ["horse", "zebra"]}},
            {"source": "offline:digits", "split": "test", "name": "mine"},
        ],
        store="out",
        shard="tasks",
    )
    cfg = load_batch_config(path)
    assert [t.name for t in cfg.tasks] == ["digits", "digits-all[3,8]", "cd", "hz", "mine"]
    assert cfg.tasks[1].classes == ("3", 8) and cfg.tasks[1].split == "all"
    assert cfg.tasks[3].classes == ("horse", "zebra") and cfg.tasks[3].source == "offline:animal-mnist"
    assert cfg.options == SMALL and cfg.shard == "tasks" and cfg.store == "out"


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"tasks": []}, "non-empty 'tasks'"),
        ({"tasks": ["offline:digits"], "metod": "exact"}, "unknown keys ['metod']"),
        ({"tasks": ["offline:digits"], "method": "fast"}, "unknown method 'fast'"),
        ({"tasks": ["offline:digits"], "shard": "gpus"}, "unknown shard 'gpus'"),
        ({"tasks": ["offline:digits"], "options": {"max_sample": 3}}, "unknown options ['max_sample']"),
        ({"tasks": [{"split": "all"}]}, "tasks[0] needs 'source'"),
        ({"tasks": [{"source": "x", "classes": []}]}, "classes must be a non-empty list"),
        ({"tasks": [{"source": "x", "groups": {"a": [1, 2]}, "classes": [1, 2]}]}, "either 'groups'"),
        ({"tasks": ["offline:digits", {"source": "y", "name": "digits"}]}, "same name 'digits'"),
    ],
)
def test_config_errors_name_the_problem(cfg, message):
    with pytest.raises(BatchConfigError, match=None) as info:
        load_batch_config(cfg)
    assert message in str(info.value)


def test_one_process_distributed_embedder_is_task2vec():
    """In one process DistributedTask2Vec computes what Task2Vec computes."""
    task = t2v.load_task("offline:digits", split="all", classes=["3", "8"])
    probe = t2v.load_probe("embedded")
    a = t2v.Task2Vec(probe, device="cpu", progress=False, **SMALL).embed(task)
    d = DistributedTask2Vec(probe, device="cpu", progress=False, **SMALL)
    assert d.comm.world == 1
    b = d.embed(task)
    # the same computation (float-level noise only: the Fisher's per-layer kernels are autotuned)
    np.testing.assert_allclose(b.values, a.values, rtol=1e-5, atol=1e-6 * np.abs(a.values).max())
    assert b.meta["fisher_processes"] == "1"


def test_one_process_batch_resume_and_settings_check(tmp_path, capsys):
    """`hf-task2vec batch` in one process: embeds, skips on rerun, refuses a store made differently."""
    store = tmp_path / "store"
    cfg = write_config(
        tmp_path / "c.yaml",
        [{"source": "offline:digits", "split": "all", "groups": {"d01": [0, 1], "d38": ["3", "8"]}}],
        store=str(store),
    )
    assert cli_main(["batch", str(cfg), "--dry-run", "--cpu"]) == 0
    out = capsys.readouterr().out
    assert "d01" in out and "pending" in out and not store.exists()
    assert run_batch(cfg, dry_run=True, cpu=True).plan == [("d01", "process 0"), ("d38", "process 0")]
    assert cli_main(["batch", str(cfg), "--no-progress", "--cpu"]) == 0
    assert "2 embedded, 0 already in the store, 0 failed" in capsys.readouterr().out
    first = stored(store)
    assert sorted(first) == ["d01", "d38"]
    emb = t2v.TaskEmbedding.load(store / "embeddings" / "embedded" / "d38.safetensors")
    assert emb.name == "d38" and emb.meta["label_names"] == '["3", "8"]' and emb.meta["num_samples"] == "32"
    # the same task embedded directly gives the same values (tasks mode = plain Task2Vec)
    direct = t2v.embed("offline:digits", split="all", classes=["3", "8"], method="montecarlo", device="cpu",
                       progress=False, **SMALL)  # the config's method
    np.testing.assert_allclose(emb.values, direct.values, rtol=1e-5, atol=1e-6 * np.abs(direct.values).max())
    index = pq.read_table(store / "index.parquet").to_pylist()
    assert [r["key"] for r in index] == ["embedded/d01", "embedded/d38"]
    assert index[1]["norm"] == pytest.approx(emb.data_norm, rel=1e-6)
    assert index[1]["path"] == "embeddings/embedded/d38.safetensors" and index[1]["samples"] == 32
    assert t2v.EmbeddingStore(store).pull("embedded/d38").values.tobytes() == emb.values.tobytes()

    assert cli_main(["batch", str(cfg), "--no-progress", "--cpu"]) == 0
    assert "0 embedded, 2 already in the store" in capsys.readouterr().out
    assert stored(store) == first
    # different settings must not be mistaken for "done"
    other = write_config(
        tmp_path / "o.yaml",
        [{"source": "offline:digits", "split": "all", "groups": {"d01": [0, 1]}}],
        store=str(store),
        method="exact",
    )
    assert cli_main(["batch", str(other), "--no-progress", "--cpu"]) == 1
    err = capsys.readouterr().err
    assert "FAILED d01" in err and "method: stored 'montecarlo' vs config 'exact'" in err
    assert stored(store) == first


# -- real multi-process runs (gloo) ------------------------------------------------------------
WORKER = textwrap.dedent(
    """
    import sys
    from hf_task2vec.distributed import DistributedTask2Vec

    out = sys.argv[1]
    for method in ["relative", "exact", "montecarlo", "variational"]:
        embedder = DistributedTask2Vec(
            "embedded", method=method, max_samples=48, image_size=32, progress=False, variational_epochs=1
        )
        assert embedder.comm.world == 2, embedder.comm.world
        assert embedder.comm.distributed_type == "MULTI_CPU", embedder.comm.distributed_type
        emb = embedder.embed("offline:animal-mnist", classes=["cat", "dog"], name="cat-dog")
        # every rank holds the same embedding; each saves its own copy
        emb.save(f"{out}/{method}-rank{embedder.comm.rank}.safetensors")
    """
)


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    proc = run_launch(str(script), str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    task = t2v.load_task("offline:animal-mnist", classes=["cat", "dog"], name="cat-dog")
    opts = {"max_samples": 48, "image_size": 32, "device": "cpu", "progress": False, "variational_epochs": 1}
    for method in ["relative", "exact", "variational", "montecarlo"]:
        two = [t2v.TaskEmbedding.load(tmp_path / f"{method}-rank{r}.safetensors") for r in range(2)]
        np.testing.assert_array_equal(two[0].values, two[1].values)  # identical on every rank
        assert two[0].meta["fisher_processes"] == "2" and two[0].meta["num_samples"] == "48"
        one_embedder = t2v.Task2Vec("embedded", method=method, **opts)
        one = one_embedder.embed(task)
        if method != "montecarlo":
            # exact, relative: the same sums (and squared sums) in another order; variational: run on the main
            # process with the same head
            np.testing.assert_allclose(two[0].values, one.values, rtol=1e-5, atol=1e-5 * np.abs(one.values).max())
            np.testing.assert_allclose(two[0].trivial, one.trivial, rtol=1e-5)
            continue
        # montecarlo: each process draws labels for its own shard with its own seed. Recompute that
        # here shard by shard (brute force, one process) and combine the sums by hand.
        idx = one_embedder.sample(task)
        fitted, _ = one_embedder.fit_probe(task, idx)  # the probe with the head embed fitted (embed keeps its own)
        sums, draws = np.zeros(one.dim), 0
        for r in range(2):
            res = fisher_diagonal(
                fitted,
                one_embedder.batches(task, shard_indices(idx, r, 2)),
                method="montecarlo",
                seed=rank_seed(0, r),
            )
            sums += res.values * res.num_draws
            draws += res.num_draws
        assert draws == 48
        np.testing.assert_allclose(two[0].values, sums / draws, rtol=1e-5, atol=1e-5 * np.abs(sums).max() / draws)
        # and that is a different Monte Carlo draw than one process makes (so the shards really differ)
        assert not np.allclose(two[0].values, one.values, rtol=1e-2)


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    for task_dir in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task_dir / "children").read_text().split()
        except OSError:
            continue
        for c in map(int, children):
            out += [c, *_descendants(c)]
    return out


@pytest.mark.slow
def test_batch_killed_midway_resumes_each_task_once(tmp_path):
    store = tmp_path / "store"
    groups = {f"d{a}{b}": [a, b] for a, b in [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (1, 7), (3, 8)]}
    cfg = write_config(
        tmp_path / "c.yaml", [{"source": "offline:digits", "split": "all", "groups": groups}], store=str(store)
    )
    launcher = subprocess.Popen(
        launch_cmd("-m", "hf_task2vec", "batch", str(cfg), "--no-progress"),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 150
        while not indexed(store) and launcher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert launcher.poll() is None, "the batch ended before it could be killed"
        # kill the launcher and its worker processes at once, as a crash or a scheduler would
        for pid in [*_descendants(launcher.pid), launcher.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    finally:
        launcher.kill()
        launcher.wait()
    done = indexed(store)
    assert 1 <= len(done) < len(groups), done
    before = {name: data for name, data in stored(store).items() if name in done}
    assert sorted(before) == sorted(done)
    # a writer killed between its temporary file and the rename leaves these behind
    (store / "embeddings" / "embedded" / ".d23.safetensors.x1y2.tmp").write_bytes(b"half")
    (store / ".index.parquet.ab12cd34.bak").write_bytes(b"old")

    proc = run_launch("-m", "hf_task2vec", "batch", str(cfg), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 processes (MULTI_CPU)" in proc.stdout
    n = len(groups)
    assert f"{n - len(before)} embedded, {len(before)} already in the store, 0 failed" in proc.stdout
    after = stored(store)
    assert sorted(after) == sorted(groups)
    assert {k: after[k] for k in before} == before  # the first run's files were kept, not recomputed
    assert temp_files(store) == []
    assert sorted(indexed(store)) == sorted(groups)
    for name in groups:
        emb = t2v.TaskEmbedding.load(store / "embeddings" / "embedded" / f"{name}.safetensors")
        assert emb.name == name and emb.meta["num_samples"] == "32"
    # 7 tasks on 2 processes (shard: auto): whole tasks in rounds, and the odd one sharded
    procs = sorted(
        t2v.TaskEmbedding.load(store / "embeddings" / "embedded" / f"{g}.safetensors").meta["fisher_processes"]
        for g in groups
    )
    assert procs.count("2") == (n - len(before)) % 2 and procs.count("1") == n - procs.count("2")


@pytest.mark.slow
def test_batch_bad_task_is_reported_and_the_rest_finish(tmp_path):
    store = tmp_path / "store"
    cfg = write_config(
        tmp_path / "c.yaml",
        [
            {"source": "offline:animal-mnist", "classes": ["cat", "unicorn"], "name": "bad-class"},
            {"source": "offline:digits", "split": "all", "classes": ["4", "9"], "name": "good"},
            {"source": str(tmp_path / "no-such-folder"), "name": "bad-path"},
        ],
        store=str(store),
    )
    proc = run_launch("-m", "hf_task2vec", "batch", str(cfg), "--no-progress")
    assert proc.returncode != 0
    assert "2 processes (MULTI_CPU)" in proc.stdout
    assert "1 embedded, 0 already in the store, 2 failed" in proc.stdout
    assert "FAILED bad-class: TaskError:" in proc.stderr and "unicorn" in proc.stderr
    assert "FAILED bad-path: TaskError:" in proc.stderr and "does not exist" in proc.stderr
    assert sorted(stored(store)) == ["good"]
    assert temp_files(store) == []


def test_example_config_parses():
    """docs/examples/batch.yaml (the documented example) is a valid config of offline tasks."""
    cfg = load_batch_config(REPO / "docs" / "examples" / "batch.yaml")
    names = [t.name for t in cfg.tasks]
    assert names == ["cat-dog", "horse-zebra", "cow-sheep", "tshirt-shirt", "sneaker-boot", "digits-3-8", "digits-all"]
    assert all(t.source.startswith("offline:") for t in cfg.tasks)
    assert cfg.store == "./task2vec-store" and cfg.options["image_size"] == 32
