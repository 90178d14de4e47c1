"""The paper-reproduction benchmark (`benchmarks/reproduce_paper.py --quick`) on real weights and data.

The quick run embeds real Animal-MNIST / Fashion-MNIST / digits tasks with the offline ImageNet
probe and checks the paper's findings loosely, so that a regression in the science (a wrong
Fisher, a broken distance, a head that no longer fits) fails CI.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hf_task2vec.task2vec import DEFAULT_METHOD

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "reproduce_paper.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("reproduce_paper", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["reproduce_paper"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("paper")
    figs = out / "figures"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out-dir", str(out), "--fig-dir", str(figs)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    return proc, out, figs


@pytest.mark.slow
def test_quick_run_reproduces_the_papers_findings(quick_run):
    proc, out, figs = quick_run
    assert proc.returncode == 0, f"reproduce_paper.py --quick failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    r = json.loads((out / "paper_quick.json").read_text())

    # 1. the exact Fisher of a two-layer sigmoid net is the closed form; montecarlo error ~ n^-1/2
    a = r["analytic"]
    assert a["exact_rel_err_float64"] < 1e-5
    assert a["exact_rel_err_embedding_float32"] < 1e-5
    assert -0.75 < a["montecarlo"]["loglog_slope"] < -0.25
    errs = a["montecarlo"]["rel_err_mean"]
    assert errs[-1] < errs[0] / 3  # 64x more label draws: error well down (1/sqrt(64) = 1/8)
    # the relative estimator (the default): scaled back by fisher_scale * lambda^2, the closed form up to shrinkage
    assert a["relative"]["spearman_vs_closed_form"] > 0.9 and a["relative"]["rel_err_unscaled"] < 0.1

    # 2. toy tasks: nearest neighbours under d_sym have a closer complexity k than random pairs
    poly = r["toy"]["probes"]["poly3"]["montecarlo"]
    assert poly["nn_mean_abs_dk"] < poly["random_mean_abs_dk"]
    assert len(r["toy"]["k"]) == r["toy"]["tasks"] and min(r["toy"]["k"]) >= 3 and max(r["toy"]["k"]) <= 16

    # 3. taxonomy: the nearest tasks under d_sym are taxonomically closer than random ones
    tax = r["taxonomy"]
    curve = tax["methods"]["montecarlo"]["curve"]
    assert all(c < tax["random_mean_dtax"] for c in curve[:3])
    assert tax["optimum_curve"][0] <= curve[0]  # the optimum is a lower bound (sanity of the curve)
    assert len(curve) == tax["tasks"] - 1

    # 4. difficulty: embedding norm grows with the test error of a linear probe classifier
    assert r["difficulty"]["methods"]["montecarlo"]["norm_vs_error_spearman"] > 0
    errors = r["difficulty"]["test_error"]
    assert len(errors) == r["difficulty"]["tasks"] and all(0 <= e <= 1 for e in errors.values())

    # 5. same images, different labels: the domain embedding cannot tell them apart, the task embedding can
    sep = r["domains"]["separation"]
    assert sep["domain"]["same_domain_pairs_at_zero"] == sep["domain"]["same_domain_pairs"]
    assert sep["montecarlo"]["within_over_between"] > sep["domain"]["within_over_between"] + 0.05
    assert sep["montecarlo"]["same_domain_pairs_at_zero"] == 0

    # every estimator ran everywhere, the library default first; every check the script made (on the
    # default) passed
    assert r["config"]["methods"][0] == DEFAULT_METHOD
    for key in ("taxonomy", "difficulty", "domains"):
        assert "montecarlo_vs_variational" in r[key]["agreement"]
        assert f"{DEFAULT_METHOD}_vs_montecarlo" in r[key]["agreement"]
        assert DEFAULT_METHOD in r[key].get("methods", r[key].get("separation"))
    assert r["checks"] and all(ok for _, ok, _ in r["checks"])

    # the report and the figures
    report = (out / "paper_quick.md").read_text()
    assert "| experiment | the paper's claim | what we measured | verdict |" in report
    assert report.count("\n| ") >= 6
    for name in ("analytic_fim", "toy_tsne", "toy_norm_vs_k", "taxonomy_curve", "norm_vs_error", "task_vs_domain",
                 "heatmap_domains", "heatmap_taxonomy"):  # fmt: skip
        png = figs / f"paper_quick_{name}.png"
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
        assert f"paper_quick_{name}.png" in report


def test_failed_check_makes_the_script_exit_nonzero(tmp_path, monkeypatch):
    """A failing science check turns into exit status 1 (the analytic experiment alone: a few seconds)."""
    module = _load_script()
    real_checks = module.checks
    monkeypatch.setattr(module, "checks", lambda r: [*real_checks(r), ("deliberately failing", False, "x")])
    code = module.main(["--quick", "--only", "analytic", "--workers", "1", "--out-dir", str(tmp_path),
                        "--fig-dir", str(tmp_path)])  # fmt: skip
    assert code == 1
    r = json.loads((tmp_path / "paper_quick.json").read_text())
    assert ["deliberately failing", False, "x"] in r["checks"]
    # and the real checks of that experiment pass on their own
    assert all(ok for name, ok, _ in r["checks"] if name != "deliberately failing")


def test_checks_catch_a_broken_taxonomy_and_difficulty():
    """The checks (on the library default estimator) fail on results that contradict the paper (no
    embeddings needed)."""
    module = _load_script()
    d = DEFAULT_METHOD
    bad = {
        "taxonomy": {"random_mean_dtax": 1.0, "methods": {d: {"curve": [0.5, 1.2, 1.3]}}},
        "difficulty": {"methods": {d: {"norm_vs_error_spearman": -0.2}}},
        "domains": {"separation": {d: {"within_over_between": 0.0}, "domain": {"within_over_between": 0.0}}},
    }
    results = {name: ok for name, ok, _ in module.checks(bad)}
    assert results and not any(results.values())
    good = {
        "taxonomy": {"random_mean_dtax": 1.0, "methods": {d: {"curve": [0.2, 0.5, 0.9]}}},
        "difficulty": {"methods": {d: {"norm_vs_error_spearman": 0.4}}},
        "domains": {"separation": {d: {"within_over_between": 0.7}, "domain": {"within_over_between": 0.0}}},
    }
    assert all(ok for _, ok, _ in module.checks(good))


def test_taxonomy_tree_distance_and_knn_curve():
    """The class distance follows the biological tree; the k-nearest curve is computed by hand here."""
    module = _load_script()
    d = module.tree_distance
    assert d("cat", "cat") == 0
    assert d("cow", "sheep") == 1 and d("horse", "zebra") == 1  # same family
    assert d("cat", "dog") == 2 and d("cow", "giraffe") == 2  # same order
    assert d("cat", "cow") == 3 and d("elephant", "horse") == 3  # same class
    assert d("bird", "cat") == 4 and d("bird", "elephant") == 4  # Aves vs Mammalia
    import numpy as np

    dist = np.array([[0, 1, 3], [1, 0, 2], [3, 2, 0]], dtype=float)
    target = np.array([[0, 5, 7], [5, 0, 1], [7, 1, 0]], dtype=float)
    # task 0: nearest 1 (5) then 2 (7); task 1: nearest 0 (5) then 2 (1); task 2: nearest 1 (1) then 0 (7)
    expected = [np.mean([5, 5, 1]), np.mean([(5 + 7) / 2, (5 + 1) / 2, (1 + 7) / 2])]
    assert np.allclose(module.knn_curve(dist, target), expected)


def test_dendrogram_purity_by_hand():
    """Purity 1 for a tree that separates the labels; 5/9 computed by hand for interleaved labels."""
    import numpy as np
    from scipy.cluster.hierarchy import linkage

    module = _load_script()
    z = linkage(np.array([[0.0], [0.1], [0.25], [5.0], [5.1], [5.25]]), "average")  # ((0,1),2), ((3,4),5)
    assert module.dendrogram_purity(z, list("aaabbb")) == 1.0
    # a at 0, 2, 4; b at 1, 3, 5: pairs (0,2) and (3,5) meet in a 3-leaf subtree (2/3 pure), the other
    # four same-label pairs only at the root (1/2): (2 * 2/3 + 4 * 1/2) / 6 = 5/9
    assert np.isclose(module.dendrogram_purity(z, list("ababab")), 5 / 9)
    test = module.purity_test(z, list("aaabbb"), seed=0, permutations=99)
    assert test["purity"] == 1.0 and test["random_purity_mean"] < 0.8 and test["p_value"] < 0.2


def test_plot_helpers_draw_what_they_are_given(tmp_path):
    """The new plots.py helpers: t-SNE keeps near points near, maps carry one marker per task,
    scatter and curve data land on the axes unchanged, and bad input is refused clearly."""
    import numpy as np

    from hf_task2vec import plots

    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [30.0, 0.0], [0.0, 30.0]])
    pts = np.concatenate([c + rng.normal(size=(6, 2)) for c in centres])
    dist = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
    coords = plots.tsne_coordinates(dist, seed=0)
    assert coords.shape == (18, 2)
    # every point's nearest neighbour in the map belongs to its own cluster
    d2 = np.linalg.norm(coords[:, None] - coords[None], axis=-1) + np.eye(18) * 1e9
    assert (d2.argmin(1) // 6 == np.arange(18) // 6).all()

    pictures = [np.full((8, 8, 3), i / 18) for i in range(18)]
    fig = plots.task_map(coords, tmp_path / "map.png", groups=[f"g{i // 6}" for i in range(18)], images=pictures,
                         labels=[str(i) for i in range(18)])  # fmt: skip
    ax = fig.axes[0]
    assert len([a for a in ax.artists if type(a).__name__ == "AnnotationBbox"]) == 18
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["g0", "g1", "g2"]
    assert (tmp_path / "map.png").read_bytes()[:4] == b"\x89PNG"

    fig = plots.norm_vs_error([1.0, 2.0, 3.0, 4.0], [0.1, 0.3, 0.2, 0.4])
    assert "Spearman rho = 0.80" in fig.axes[0].get_title()  # 1 - 6 * 2 / (4 * 15)
    offsets = fig.axes[0].collections[0].get_offsets()
    assert np.allclose(offsets, [[1, 0.1], [2, 0.3], [3, 0.2], [4, 0.4]])

    fig = plots.line_plot([1, 2, 4], {"a": [3.0, 2.0, 1.0], "b": [1.0, 1.0, 1.0]}, bands={"a": ([2, 1, 0], [4, 3, 2])},
                          logx=True)  # fmt: skip
    lines = {line.get_label(): line.get_ydata().tolist() for line in fig.axes[0].get_lines()}
    assert lines == {"a": [3.0, 2.0, 1.0], "b": [1.0, 1.0, 1.0]}
    assert fig.axes[0].get_xscale() == "log"

    with pytest.raises(ValueError, match="labels has 2 entries for 18 points"):
        plots.task_map(coords, labels=["a", "b"])
    with pytest.raises(ValueError, match="either groups"):
        plots.task_map(coords, groups=["g"] * 18, values=list(range(18)))
    with pytest.raises(ValueError, match="series 'a' has 2 points for 3 x values"):
        plots.line_plot([1, 2, 3], {"a": [1, 2]})
    with pytest.raises(ValueError, match="at least 3 items"):
        plots.tsne_coordinates(np.zeros((2, 2)))
    plots._pyplot().close("all")
