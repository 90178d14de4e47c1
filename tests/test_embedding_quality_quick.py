"""The embedding-quality benchmark (`benchmarks/embedding_quality.py`, issue 11).

The quick run (slow: real weights, real data, a few minutes) embeds 5 real tasks with every
estimator and fails when the default's SNR is below the quick floor, when label-permuted copies
are not within the resampling noise, when the nearest other task is from the same dataset no more
often than chance, when a label-noise copy is farther than a task of another dataset or when the
dendrogram purity by dataset is below the exact estimator's.
The other tests check the statistics by hand on small distance matrices, the checks on fabricated
results, the permuted and label-noise copies on real data and the cache keys (fast).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "embedding_quality.py"


def _load_script():
    if "embedding_quality" in sys.modules:
        return sys.modules["embedding_quality"]
    spec = importlib.util.spec_from_file_location("embedding_quality", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["embedding_quality"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.timeout(2400)  # ~4 min on 2 free cores; the shared dev machine is much slower
def test_quick_run_default_reaches_the_quick_snr_floor(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out-dir", str(tmp_path), "--cache-dir", str(tmp_path / "cache")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=2350,
    )
    report = tmp_path / "embedding_quality_quick.json"
    assert report.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(report.read_text())
    failed = [c for c in r["checks"] if not c[1]]
    # the exit status follows the checks, and every check passes
    assert proc.returncode == (1 if failed else 0), proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not failed, f"science checks failed: {failed}\n{proc.stdout[-2000:]}"
    module = _load_script()
    res = r["results"]["32x160"]
    assert set(res) == set(module.ESTIMATORS)
    for name, s in res.items():
        assert s["tasks"] == len(module.QUICK_TASKS) and s["seeds"] == 2, name
        assert 0 < s["noise"] < 1 and 0 < s["between"] < 1, name
        assert abs(s["snr"] - s["between"] / s["noise"]) < 1e-9, name
        lo, hi = s["snr_ci95"]
        assert lo <= s["snr"] <= hi, name
        assert s["cost"]["per_training_pass_median"] > 0 and s["cost"]["step_cpu_s_median"] > 0, name
        assert s["head_train_accuracy_mean"] > 0.5, name
        assert s["taxonomy"]["pairs"] == 3, name
        nn = s["nearest_same_dataset"]  # 3 Animal-MNIST tasks, 1 Fashion, 1 digits: chance (3 x 2/4) / 5
        assert nn["n"] == 10 and 0 <= nn["hits"] <= 6 and abs(nn["chance"] - 0.3) < 1e-9, name
        noisy = s["noisy_copy"]  # the first task of each dataset
        assert noisy["copies"] == 3 and noisy["label_noise"] == module.LABEL_NOISE, name
        expected = [module.task_name(*module.QUICK_TASKS[i]) for i in (0, 3, 4)]
        assert [t["task"] for t in noisy["per_task"]] == expected, name
        for t in noisy["per_task"]:  # the min of the other-dataset distances is at most their median
            assert t["d"] > 0 and t["over_min_other_dataset"] >= t["over_median_other_dataset"] > 0, name
        pur = s["dendrogram_purity"]
        assert 0 < pur["purity"] <= 1 and 0 < pur["random_purity_mean"] < 1 and 0 < pur["p_value"] <= 1, name
    # the exact label expectation has no label-draw noise: its permuted copy (same images) is closer
    # to the original than a resample is
    assert res["exact"]["permuted"]["over_noise"] < 1.0
    md = (tmp_path / "embedding_quality_quick.md").read_text()
    assert r["headline"] in md and "default SNR at 32 px, 160 examples:" in r["headline"]
    for name in module.ESTIMATORS:  # one table row per estimator (after the header and its separator)
        assert f"\n| {name} | " in md, name
    # a second run takes every embedding from the cache and gives the same numbers
    proc2 = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--only", "exact", "--out-dir", str(tmp_path / "again"),
         "--cache-dir", str(tmp_path / "cache")],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    r2 = json.loads((tmp_path / "again" / "embedding_quality_quick.json").read_text())
    assert r2["total"]["computed"] == 0 and r2["total"]["cached"] > 0, proc2.stderr[-2000:]
    assert r2["results"]["32x160"]["exact"]["snr"] == res["exact"]["snr"]


def test_snr_statistics_by_hand():
    """Two tasks x two seeds: noise 0.2 (0.1 and 0.3), every cross-task distance 0.8: SNR 4."""
    module = _load_script()
    task_of = np.array([0, 0, 1, 1])
    seed_of = np.array([0, 1, 0, 1])
    d = np.full((4, 4), 0.8)
    np.fill_diagonal(d, 0.0)
    d[0, 1] = d[1, 0] = 0.1
    d[2, 3] = d[3, 2] = 0.3
    s = module.snr_stats(d, task_of, seed_of, ["a", "b"], np.random.default_rng(0), bootstrap=200)
    assert np.isclose(s["noise"], 0.2) and np.isclose(s["between"], 0.8) and np.isclose(s["snr"], 4.0)
    assert s["noise_per_task"] == pytest.approx([0.1, 0.3])
    assert np.isnan(s["snr_same_dataset"])  # no two tasks from one dataset
    assert s["snr_per_seed_pair"] == pytest.approx([4.0]) and np.isnan(s["snr_seed_pair_std"])
    lo, hi = s["snr_ci95"]
    assert lo <= 4.0 <= hi

    # three tasks x three seeds, tasks 0 and 1 from one dataset; seed pair (0, 2) noisier
    t, k = 3, 3
    task_of = np.repeat(np.arange(t), k)
    seed_of = np.tile(np.arange(k), t)
    d = np.zeros((t * k, t * k))
    for a in range(t * k):
        for b in range(t * k):
            if a == b:
                continue
            if task_of[a] != task_of[b]:
                d[a, b] = 0.5 if {task_of[a], task_of[b]} == {0, 1} else 1.0
            else:
                d[a, b] = 0.2 if {seed_of[a], seed_of[b]} == {0, 2} else 0.1
    s = module.snr_stats(d, task_of, seed_of, ["x", "x", "y"], np.random.default_rng(0), bootstrap=200)
    noise = (0.1 + 0.2 + 0.1) / 3
    between = (2 * 0.5 + 4 * 1.0) / 6  # ordered pairs: (0,1), (1,0) at 0.5; four at 1.0
    assert np.isclose(s["noise"], noise) and np.isclose(s["snr"], between / noise)
    assert np.isclose(s["snr_same_dataset"], 0.5 / noise)
    assert s["snr_per_seed_pair"] == pytest.approx([between / 0.1, between / 0.2, between / 0.1])
    assert np.isclose(s["snr_seed_pair_std"], np.std([between / 0.1, between / 0.2, between / 0.1], ddof=1))
    with pytest.raises(ValueError, match="2 tasks and 2 seeds"):
        module.snr_stats(d[:3, :3], task_of[:3], seed_of[:3], ["x"], np.random.default_rng(0))


def test_taxonomy_statistic_follows_the_tree():
    """d_sym that grows with D_tax gives rho 1; reversed, rho -1 (D_tax by hand from the tree)."""
    module = _load_script()
    classes = [("cow", "bear"), ("sheep", "bird"), ("giraffe", "zebra"), ("cow", "dog")]
    # cow-sheep 1 | cow-giraffe 2 | cow-cow 0 | sheep-giraffe 2 | sheep-cow 1 | giraffe-cow 2
    dtax = {(0, 1): 1, (0, 2): 2, (0, 3): 0, (1, 2): 2, (1, 3): 1, (2, 3): 2}
    between = np.zeros((4, 4))
    for (i, j), v in dtax.items():
        between[i, j] = between[j, i] = 0.1 + v + 0.01 * i
    s = module.taxonomy_stats(between, classes)
    assert s["pairs"] == 6 and s["spearman"] > 0.9
    s = module.taxonomy_stats(-between, classes)
    assert s["spearman"] < -0.9


def test_nearest_same_dataset_by_hand():
    """Tasks 0, 1 from dataset x, task 2 from y, two seeds each; chance = (1/2 + 1/2 + 0) / 3."""
    module = _load_script()
    task_of = np.array([0, 0, 1, 1, 2, 2])
    d = np.full((6, 6), 0.5)
    d[0, 2] = d[2, 0] = 0.1  # task 0 seed 0 -> task 1: same dataset
    d[1, 4] = d[4, 1] = 0.2  # task 0 seed 1 -> task 2: another dataset (and task 2 seed 0 -> task 0)
    d[3, 5] = d[5, 3] = 0.3  # task 1 seed 1 -> task 2 (and task 2 seed 1 -> task 1)
    # task 1 seed 0 -> task 0 seed 0 (0.1): same dataset; task 2 can only find another dataset
    s = module.nearest_same_dataset(d, task_of, ["x", "x", "y"])
    assert (s["hits"], s["n"]) == (2, 6) and np.isclose(s["rate"], 2 / 6) and np.isclose(s["chance"], 1 / 3)


def test_noisy_copy_statistics_by_hand():
    """Task 0 (dataset x) at row 0, its copy at row 4; other-dataset rows 2, 3 at 0.4 and 0.8."""
    module = _load_script()
    task_of = np.array([0, 0, 1, 1])
    d = np.zeros((5, 5))
    d[0, 2], d[0, 3], d[0, 4] = 0.4, 0.8, 0.3
    d = d + d.T
    s = module.noisy_copy_stats(d, task_of, ["x", "y"], {0: (0, 4)})
    (t,) = s["per_task"]
    assert t["d"] == 0.3 and np.isclose(t["over_min_other_dataset"], 0.75)
    assert np.isclose(t["over_median_other_dataset"], 0.5) and np.isclose(s["over_min_max"], 0.75)
    assert s["nearer_than_any_other_dataset"] == 1 and s["copies"] == 1
    assert module.noisy_tasks([("a", ("1",)), ("b", ("2",)), ("a", ("3",))]) == [("a", ("1",)), ("b", ("2",))]


def test_dataset_purity_separates_and_mixes():
    """Two datasets far apart in d_sym: purity 1, above its random relabelings; a tree that mixes them: lower."""
    module = _load_script()
    ds = ["x", "x", "x", "y", "y", "y"]
    d = np.where(np.equal.outer(ds, ds), 0.1, 1.0) + 0.01 * np.arange(6)[:, None] * np.arange(6)[None, :]
    np.fill_diagonal(d, 0.0)
    s = module.dataset_purity(d, ds)
    assert s["purity"] == 1.0 and s["random_purity_mean"] < 0.9 and s["p_value"] < 0.2
    mixed = module.dataset_purity(d, ["x", "y", "x", "y", "x", "y"])
    assert mixed["purity"] < 0.8


def _fake_result(quick: bool, snr: float, perm: float, rho: float = 0.5, cost: float = 2.0, nn: int = 9,
                 noisy: float = 0.6, purity: float = 0.9) -> dict:  # fmt: skip
    key = "32x160" if quick else "32x500"
    est = {"snr": snr, "permuted": {"over_noise": perm}, "taxonomy": {"spearman": rho, "pairs": 28},
           "cost": {"per_training_pass_median": cost},
           "nearest_same_dataset": {"hits": nn, "n": 10, "rate": nn / 10, "chance": 0.3},
           "noisy_copy": {"label_noise": 0.25, "copies": 3, "over_min_max": noisy, "over_median_max": noisy / 2},
           "dendrogram_purity": {"purity": purity, "random_purity_mean": 0.4, "p_value": 0.01}}  # fmt: skip
    mc = {"snr": 1.3, "permuted": {"over_noise": 0.9}, "cost": {"per_training_pass_median": 2.0}}
    exact = {"snr": 2.0, "dendrogram_purity": {"purity": 0.8, "random_purity_mean": 0.4, "p_value": 0.01}}
    return {"config": {"quick": quick, "headline": key},
            "results": {key: {"default": est, "montecarlo": mc, "exact": exact}}}  # fmt: skip


def test_checks_fail_on_bad_science_and_pass_on_good():
    module = _load_script()
    good = module.checks(_fake_result(False, snr=5.0, perm=0.5))
    assert len(good) == 7 and all(ok for _, ok, _ in good)
    for bad in (
        _fake_result(False, snr=3.9, perm=0.5),  # below the target
        _fake_result(False, snr=5.0, perm=1.2),  # permuted copies farther than a resample
        _fake_result(False, snr=5.0, perm=0.5, rho=-0.1),  # taxonomy reversed
        _fake_result(False, snr=5.0, perm=0.5, cost=6.5),  # 3.25x the one-draw montecarlo cost
        _fake_result(False, snr=5.0, perm=0.5, nn=6),  # 0.6 < 0.3 + 0.5 x 0.7: not well above chance
        _fake_result(False, snr=5.0, perm=0.5, noisy=1.1),  # a noisy copy farther than a task of another dataset
        _fake_result(False, snr=5.0, perm=0.5, purity=0.7),  # purity below the exact estimator's
    ):
        results = module.checks(bad)
        assert sum(not ok for _, ok, _ in results) == 1, results
    quick = module.checks(_fake_result(True, snr=module.QUICK_SNR_FLOOR - 0.01, perm=0.5))
    assert len(quick) == 5 and [ok for _, ok, _ in quick] == [False, True, True, True, True]
    # --quick: more than chance is enough for the nearest task (4/10 > 0.3)
    assert all(ok for _, ok, _ in module.checks(_fake_result(True, snr=module.QUICK_SNR_FLOOR, perm=1.0, nn=4)))
    for bad in (
        _fake_result(True, snr=3.0, perm=0.5, nn=3),
        _fake_result(True, snr=3.0, perm=0.5, noisy=1.01),
        _fake_result(True, snr=3.0, perm=0.5, purity=0.79),
    ):
        assert sum(not ok for _, ok, _ in module.checks(bad)) == 1


def test_failed_check_makes_main_exit_nonzero(tmp_path, monkeypatch):
    """main() returns 1 when a check fails (the run itself replaced by a fabricated result)."""
    module = _load_script()

    def fake_run(args):
        r = _fake_result(True, snr=1.0, perm=0.5)
        r["checks"] = module.checks(r)
        r["headline"] = "x"
        r["results"] = {}
        r["total"] = {"wall_s": 0.0}
        return r

    monkeypatch.setattr(module, "run", fake_run)
    assert module.main(["--quick", "--out-dir", str(tmp_path)]) == 1
    monkeypatch.setattr(module, "checks", lambda r: [("fine", True, "")])
    monkeypatch.setattr(module, "run", lambda args: {**fake_run(args), "checks": [("fine", True, "")]})
    assert module.main(["--quick", "--out-dir", str(tmp_path)]) == 0


def test_permuted_copy_has_the_same_images_and_rotated_labels():
    """The permuted copy of a resample: same images in the same order, labels k -> (k - 1) mod K,
    names rotated with them; the resample is what Task2Vec(seed, max_samples) would embed."""
    import hf_task2vec as t2v

    module = _load_script()
    emb = module.Embedder(threads=1)
    gp = module.GridPoint(32, 100, ("exact",))
    classes = ("0", "6", "8", "9")
    job = module.make_job("digits", classes, gp, 1, False, "exact", "d")
    perm_job = module.make_job("digits", classes, gp, 1, True, "exact", "d")
    sub, perm = emb.resample(job), emb.resample(perm_job)
    full = emb.task("digits", classes)
    expected = t2v.Task2Vec("embedded", max_samples=100, seed=1).sample(full)
    assert len(sub) == 100 and np.bincount(sub.labels).tolist() == [25, 25, 25, 25]
    assert sub.dataset["image"] == full.dataset.select(expected)["image"]
    assert perm.dataset["image"] == sub.dataset["image"]
    assert (perm.labels == (sub.labels - 1) % 4).all()
    assert perm.label_names == ["6", "8", "9", "0"]
    assert all(perm.label_names[perm.labels[i]] == sub.label_names[sub.labels[i]] for i in range(100))
    assert job.key != perm_job.key


def test_label_noise_copy_has_the_same_images_and_a_quarter_of_labels_flipped():
    """The label-noise copy: the seed's resample, same images in the same order, LABEL_NOISE of the labels moved
    to another class (seeded: the same flips every time); its own cache key, the other keys unchanged."""
    module = _load_script()
    emb = module.Embedder(threads=1)
    gp = module.GridPoint(32, 100, ("exact",))
    classes = ("0", "6", "8", "9")
    job = module.make_job("digits", classes, gp, 1, False, "exact", "d")
    noisy_job = module.make_job("digits", classes, gp, 1, False, "exact", "d", label_noise=module.LABEL_NOISE)
    sub, noisy = emb.resample(job), emb.resample(noisy_job)
    assert noisy.dataset["image"] == sub.dataset["image"] and noisy.label_names == sub.label_names
    changed = noisy.labels != sub.labels
    assert changed.sum() == round(module.LABEL_NOISE * 100) and (noisy.labels < 4).all()
    assert (emb.resample(noisy_job).labels == noisy.labels).all()  # seeded
    assert len({job.key, noisy_job.key, module.make_job("digits", classes, gp, 1, True, "exact", "d").key}) == 3
    assert module.make_job("digits", classes, gp, 1, False, "exact", "d", label_noise=0.0).key == job.key
    with pytest.raises(ValueError, match="not both"):
        module.make_job("digits", classes, gp, 1, True, "exact", "d", label_noise=0.25)


def test_cache_keys_follow_the_effective_settings(monkeypatch):
    """Estimators with the same effective Task2Vec settings share a cache key (computed once); any
    difference in options, grid point, seed or library code gives a new key; unknown keys reach Task2Vec."""

    module = _load_script()
    gp = module.GridPoint(32, 100, module.ALL)
    from hf_task2vec.task2vec import auto_batch_size

    auto = auto_batch_size(gp.px)  # what the default (batch_size=None) resolves to at this size
    monkeypatch.setitem(module.ESTIMATORS, "same-as-default", {"batch_size": auto})
    monkeypatch.setitem(module.ESTIMATORS, "other-batch", {"batch_size": auto + 1})
    monkeypatch.setitem(module.ESTIMATORS, "bogus", {"no_such_option": 1})

    def key(name, gp=gp, seed=0, digest="d"):
        return module.make_job("digits", ("3", "8"), gp, seed, False, name, digest).key

    assert key("same-as-default") == key("default")
    assert key("relative") == key("default")  # the library default is the relative estimator
    assert len({key("default"), key("other-batch"), key("exact"), key("montecarlo")}) == 4
    assert key("default", seed=1) != key("default")
    assert key("default", gp=module.GridPoint(64, 100, module.ALL)) != key("default")
    assert key("default", digest="e") != key("default")
    with pytest.raises(SystemExit, match="estimator 'bogus'.*no_such_option"):
        key("bogus")
