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
@pytest.mark.timeout(1860)
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
        timeout=1800,  # ~5 min on an idle 2-core box; 14 min when the box was shared with a benchmark
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


# -- the architectures meta-task's helpers (fast unit tests; its full run is the committed
# benchmarks/results/model_selection_architectures.*) ---------------------------------------------------
def _bench():
    import importlib.util

    if "model_selection_bench" in sys.modules:
        return sys.modules["model_selection_bench"]
    spec = importlib.util.spec_from_file_location("model_selection_bench", ROOT / "benchmarks" / "model_selection.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["model_selection_bench"] = module  # dataclasses resolve their module's annotations through it
    spec.loader.exec_module(module)
    return module


class _ChannelMeans(__import__("torch").nn.Module):
    def forward(self, x):
        return x.mean((2, 3))


def test_experts_normalise_with_their_own_network_and_keep_lite0_cache_paths(tmp_path):
    import numpy as np
    import torch

    ms = _bench()
    cfg = ms.architecture_config(ms.QUICK)
    assert cfg.sources == ms.ARCH_QUICK_SOURCES and cfg.table1_probes == () and cfg.seeds == ms.QUICK.seeds
    # the cache keys of the architectures meta-task are the main run's: its Lite0 experts are reused
    key_fields = ("image_size", "finetune_steps", "finetune_batch", "finetune_lr", "train_per_class")
    assert ms.architecture_config(ms.FULL).key(*key_fields) == ms.FULL.key(*key_fields)
    assert ms.cache_stem("animals-all", "embedded") == "animals-all"
    assert ms.cache_stem("animals-all", "embedded-mobilenetv2") == "animals-all-embedded-mobilenetv2"

    pools = {"d": ms.Pool(torch.full((2, 1, 32, 32), 0.5), np.zeros(2, dtype=np.int64), ["a"])}
    feats = {}
    for probe in ("embedded", "embedded-mobilenetv2"):
        e = ms.Expert("fashion-all", "m", _ChannelMeans(), torch.zeros(2, 3), torch.zeros(2), ["a", "b"], "d", [],
                      None, probe=probe)  # fmt: skip
        assert e.task == "fashion-all" and e.stem == ms.cache_stem("fashion-all", probe)
        feats[probe] = ms.expert_outputs(e, pools, ms.QUICK, tmp_path)["d"]["features"]
    files = sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "features").iterdir())
    assert files == ["fashion-all", "fashion-all-embedded-mobilenetv2"]
    assert np.allclose(feats["embedded"], 0.0)  # Lite: mean = std = 0.5
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])  # MobileNetV2: ImageNet's
    assert np.allclose(feats["embedded-mobilenetv2"], (0.5 - mean) / std, atol=1e-5)


@pytest.mark.parametrize("probe", ["embedded-lite1", "embedded-mobilenetv2"])
def test_generic_experts_of_other_networks_have_their_imagenet_head(probe):
    """The untouched networks' ImageNet classifiers, read from their checkpoints, name sklearn's palace photo
    (ImageNet class 698) on the probe's features: the source head LEEP / NCE use is the right one."""
    import dataclasses

    import torch
    from PIL import Image
    from sklearn.datasets import load_sample_images

    import hf_task2vec as t2v

    ms = _bench()
    e = ms.generic_expert(dataclasses.replace(ms.QUICK, image_size=None), probe)
    assert e.head_weight.shape == (1000, 1280) and e.task == ms.GENERIC and e.probe == probe
    x = t2v.load_probe(probe).transform()(Image.fromarray(load_sample_images().images[0]))[None]
    with torch.no_grad():
        assert int((e.backbone(x) @ e.head_weight.T + e.head_bias).argmax()) == 698


def test_tiebreak_and_architecture_summary():
    import numpy as np
    import torch

    ms = _bench()
    errors = np.array([[0.1, 0.3, 0.5], [0.4, 0.2, 0.2]])
    dist = np.array([[0.2, 0.2, 0.9], [0.1, 0.5, 0.5]])  # target 0: experts 0 and 1 tie
    s = ms.tiebreak_summary(errors, dist)
    assert np.isclose(s["mean_error"], (0.2 + 0.4) / 2) and np.isclose(s["top1"], 0.25)
    assert np.isclose(s["tied_experts"], 1.5)

    def expert(name, probe):
        return ms.Expert(name, name, torch.nn.Identity(), torch.zeros(1, 1), torch.zeros(1), [], "d", [], None,
                         probe=probe)  # fmt: skip

    experts = [expert("a", "embedded"), expert("b", "embedded-lite1"), expert("c", "embedded-mobilenetv2")]
    targets = [ms.TargetSpec("t0", "x", ("a",), 1), ms.TargetSpec("t1", "y", ("a",), 1)]

    class Loo:
        selected = np.array([2, 1])
        distances = dist

    peers = {m: -errors for m in ms.PEERS}  # a perfect peer
    from selection.peers import static_scores

    sd = {"errors": errors, "asym": dist, "sym": dist, "m2v": Loo, "peers": peers, "static": static_scores(errors)}
    out = ms.architecture_summary(experts, [sd], targets, generic_j=0)
    assert out["families"] == ["lite0", "lite1", "mobilenetv2"]
    assert out["optimal_family_counts"] == {"x": {"lite0": 1.0, "lite1": 0.0, "mobilenetv2": 0.0},
                                            "y": {"lite0": 0.0, "lite1": 0.5, "mobilenetv2": 0.5}}  # fmt: skip
    assert out["right_architecture"]["logme"][0] == 1.0 and out["right_architecture"]["optimal"][0] == 1.0
    assert np.isclose(out["right_architecture"]["model2vec"][0], 0.5)
    assert np.isclose(out["right_architecture"]["t2v_asym_tiebreak"][0], 0.25)  # t0: 1 of 2 tied, t1: wrong
    assert np.isclose(out["right_architecture"]["chance"][0], (1 / 3 + 2 / 3) / 2)
    assert np.isclose(out["family_oracle"]["lite0"]["relative_increase"][0], (0.1 + 0.4) / (0.1 + 0.2) - 1)
    assert out["picks"]["rerank_leep_m1"] == {"lite0": 1.0, "lite1": 0.0, "mobilenetv2": 0.0}


# -- the static baseline and the zoo meta-task (its full run is the committed
# benchmarks/results/model_selection_zoo.*) --------------------------------------------------------------
def test_static_baseline_picks_the_best_expert_on_the_other_targets():
    import numpy as np

    _bench()
    from selection.peers import static_scores

    errors = np.array([[0.1, 0.5], [0.3, 0.2], [0.4, 0.1]])
    # target 0: the others' means are (0.35, 0.15); target 1: (0.25, 0.30); target 2: (0.20, 0.35)
    scores = static_scores(errors)
    np.testing.assert_allclose(-scores, [[0.35, 0.15], [0.25, 0.30], [0.20, 0.35]], rtol=1e-12)
    assert scores.argmax(1).tolist() == [1, 0, 0]


def test_zoo_meta_task_loads_a_shipped_expert_that_knows_its_source_task():
    """A zoo expert as the benchmark sees it (adapter merged, its own normalisation, its head, its card's task
    embedding) classifies held-out test images of its source classes: wrong normalisation, a lost adapter or a
    head in the wrong order would not."""
    import dataclasses

    import numpy as np
    import torch

    ms = _bench()
    from selection.data import load_bench_probe, load_pool, normalise
    from selection.harness import shipped_embedding
    from selection.meta_tasks.zoo import ZOO, zoo_expert, zoo_folders

    found = zoo_folders(ZOO, ("embedded-mobilenetv2",), ("fashion-tops",))
    assert [(b, t, f.name) for b, t, f in found] == [("embedded-mobilenetv2", "fashion-tops", "mnv2-fashion-tops")]
    e = zoo_expert(found[0][2], ms.QUICK)
    assert (e.name, e.task, e.probe, e.dataset) == ("mobilenetv2/fashion-tops", "fashion-tops",
                                                    "embedded-mobilenetv2", "fashion")  # fmt: skip
    assert e.stem.startswith("zoo-mnv2-fashion-tops-") and e.head_weight.shape == (len(e.label_names), 1280)
    method = "relative"  # the library's default estimator, which built the zoo's embeddings
    assert shipped_embedding(e, ms.QUICK, method).meta["task"] == "fashion-tops-train"
    with pytest.raises(RuntimeError, match="rebuild the zoo's embeddings"):
        shipped_embedding(e, dataclasses.replace(ms.QUICK, image_size=64), method)

    pool = load_pool("fashion", "test", 40, ms.QUICK.image_size)
    keep = np.isin(np.array(pool.names)[pool.labels], e.label_names)
    x = normalise(pool.x01[keep], load_bench_probe(e.probe, ms.QUICK))
    truth = np.array([e.label_names.index(pool.names[c]) for c in pool.labels[keep]])
    with torch.no_grad():
        pred = (e.backbone(x) @ e.head_weight.T + e.head_bias).argmax(1).numpy()
    assert len(truth) == 200 and np.mean(pred == truth) > 0.5  # card: source test error 0.32 on 5 classes (chance 0.8)
