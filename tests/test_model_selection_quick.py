"""The model-selection benchmark's quick run, end to end in a subprocess (real weights, real data).

It fine-tunes a few experts of the embedded probe on offline source tasks, measures their errors on
held-out target tasks and compares the selection methods; the script exits non-zero when its loose
checks fail (Task2Vec asymmetric must beat a random expert). Results go to a temporary folder so
the committed benchmark results are never rewritten.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_model_selection_benchmark_quick(tmp_path):
    from hf_task2vec import ExpertIndex

    results = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "model_selection.py"),
            "--quick",
            "--results-dir",
            str(results),
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((results / "model_selection.json").read_text())
    assert all(report["checks"].values()) and len(report["checks"]) == 5
    assert "[PASS] Task2Vec asymmetric beats chance" in proc.stdout

    table = report["table2"]
    expected = {"optimal", "chance", "generic", "t2v_sym", "t2v_asym", "model2vec", "logme", "leep", "nce", "h_score"}
    assert expected | {"sfda", "nleep", "knn"} <= set(table)
    # the two-stage curve: m = 1..N for every peer, with its share of the all-experts forward passes
    n = len(report["experts"])
    for m in range(1, n + 1):
        row = table[f"rerank_leep_m{m}"]
        assert row["forward_passes"][0] == m and abs(row["forward_fraction"][0] - m / n) < 1e-12
        assert row["seconds_per_target"][0] > 0
    assert table["rerank_leep_m1"]["mean_error"][0] == table["t2v_asym"]["mean_error"][0]  # m=1: Task2Vec's pick
    assert report["library_rerank_check"]["agree"]
    mean = {k: v["mean_error"][0] for k, v in table.items()}
    assert mean["t2v_asym"] < mean["chance"]
    assert all(mean["optimal"] <= v + 1e-12 for v in mean.values())  # nothing beats the oracle
    assert table["optimal"]["relative_increase"][0] == 0.0 and table["optimal"]["top1"][0] == 1.0
    n_targets, n_experts = len(report["targets"]), len(report["experts"])
    assert n_targets >= 9 and n_experts >= 7
    for row in report["per_target_seed0"]:
        errs = row["errors"]
        assert len(errs) == n_experts and all(0.0 <= e <= 1.0 for e in errs.values())
        assert row["optimal_error"] == min(errs.values())

    index = ExpertIndex.load(results / "expert_index")
    assert len(index) == n_experts and index.has_model2vec
    for row in index.rows():
        assert row["model_id"].startswith("task2vec-bench/") and row["task"] and row["classes"] and row["dataset"]
    assert (results / "model_selection.md").read_text().count("## Table 2") == 1
