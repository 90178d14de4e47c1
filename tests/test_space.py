"""The expert-finder Space without a browser: its glue over the library (`spaces/expert-finder/finder.py`,
`inputs.py`, `ranking.py`) on real offline images and a real expert index, the Hub paths against the local
fake Hub, and the app object. The upload loader's safety tests are the library's (tests/test_uploads.py)."""

from __future__ import annotations

import functools
import io
import json
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

SPACE_DIR = Path(__file__).resolve().parents[1] / "spaces" / "expert-finder"
if str(SPACE_DIR) not in sys.path:
    sys.path.insert(0, str(SPACE_DIR))

import finder  # noqa: E402
from finder import InputError, Limits  # noqa: E402

import hf_task2vec as t2v  # noqa: E402
from hf_task2vec.data import load_offline_arrays  # noqa: E402
from hf_task2vec.selection import ExpertIndex  # noqa: E402

IMAGE_SIZE = 32
MAX_SAMPLES = 64
ANIMALS = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]
QUERY_CLASSES = ["cat", "dog", "horse"]
# The experts: the embedded probe's tasks, cut from three real offline datasets (train splits).
EXPERTS = {
    "test-experts/lite0-animal-quadrupeds": ("animal-mnist", ["cat", "dog", "horse"]),
    "test-experts/lite0-animal-wild": ("animal-mnist", ["bird", "giraffe", "elephant"]),
    "test-experts/lite0-fashion-shoes": ("fashion-mnist", ["Sandal", "Sneaker", "Ankle boot"]),
    "test-experts/lite0-digits": ("digits", ["0", "1", "2"]),
}


@functools.lru_cache(maxsize=1)
def build_expert_index() -> ExpertIndex:
    """A small real expert index (once per test session): real sub-tasks of Animal-MNIST,
    Fashion-MNIST and digits embedded with the real offline EfficientNet-Lite0 probe."""
    embedder = t2v.Task2Vec("embedded", image_size=IMAGE_SIZE, max_samples=MAX_SAMPLES, progress=False)
    index = ExpertIndex()
    for model_id, (dataset, classes) in EXPERTS.items():
        name = f"{dataset}-{'-'.join(c.lower().replace(' ', '') for c in classes)}"
        task = t2v.load_task(f"offline:{dataset}", classes=classes, name=name)
        index.add(model_id, embedder.embed(task), task=name)
    return index


@pytest.fixture(scope="module")
def expert_index() -> ExpertIndex:
    return build_expert_index()


# How the experts of `build_rerank_index` are built for the re-ranking: three real offline ImageNet backbones,
# and one checkpoint under benchmarks/cache/ (where the benchmark's experts live) that is not there.
MISSING_CHECKPOINT = "benchmarks/cache/test-space/no-such-digits-expert.safetensors"
RERANK_WEIGHTS = {
    "test-experts/lite0-animal-quadrupeds": {"load_probe": "embedded"},
    "test-experts/lite0-animal-wild": {"load_probe": "embedded-mobilenetv2"},
    "test-experts/lite0-fashion-shoes": {"load_probe": "embedded-lite1"},
    "test-experts/lite0-digits": {"checkpoint": MISSING_CHECKPOINT, "sha256": "0" * 64},
}


@functools.lru_cache(maxsize=1)
def build_rerank_index() -> ExpertIndex:
    """The experts of `build_expert_index` (same embeddings) with the ``weights`` two-stage selection
    loads them from (`RERANK_WEIGHTS`); the digits expert cannot be loaded."""
    from hf_task2vec.rerank import expert_weights

    base = build_expert_index()
    index = ExpertIndex()
    for mid in base.model_ids:
        index.add(mid, base.embedding(mid), **base.info(mid), weights=expert_weights(**RERANK_WEIGHTS[mid]))
    return index


def readable_factor(values) -> float:
    """The power of 1000 the page multiplies scores by: 1 when the largest reads with three decimals
    (at least 0.05), else the smallest that brings it to 0.05 or more."""
    biggest = max(abs(float(v)) for v in values)
    return 1.0 if biggest >= 0.05 else next(10.0**p for p in range(3, 30, 3) if biggest * 10.0**p >= 0.05)


def unit_of(factor: float) -> str:
    return "" if factor == 1 else f"in units of 1e-{round(np.log10(factor))}"


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@functools.lru_cache(maxsize=4)
def animal_images(classes: tuple[str, ...] = tuple(QUERY_CLASSES), per_class: int = 20) -> list[tuple[str, bytes]]:
    """``(class, png bytes)`` of real Animal-MNIST test images, ``per_class`` of each class."""
    images, labels = load_offline_arrays("animal-mnist", "test")
    out = []
    for c in classes:
        idx = np.nonzero(labels == ANIMALS.index(c))[0][:per_class]
        out += [(c, png_bytes(images[i])) for i in idx]
    return out


def write_zip(path: Path, entries: dict[str, bytes], *, compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def class_folder_zip(path: Path, classes=tuple(QUERY_CLASSES), per_class: int = 20, top: str = "animals") -> Path:
    entries = {f"{top}/{c}/{c}_{i:03d}.png": data for i, (c, data) in enumerate(animal_images(classes, per_class))}
    return write_zip(path, entries)


# -- the search on real images ------------------------------------------------------------------------
def test_zip_of_real_images_ranks_experts(tmp_path, expert_index):
    import plotly.graph_objects as go

    zpath = class_folder_zip(tmp_path / "my-animals.zip")
    prepared = finder.task_from_upload(zpath, tmp_path / "work", Limits())
    task = prepared.task
    assert task.label_names == QUERY_CLASSES and len(task) == 60
    assert np.bincount(task.labels).tolist() == [20, 20, 20]
    assert task.name == "my-animals" and task.source == "upload:my-animals.zip"

    steps = []
    result = finder.search(
        prepared,
        expert_index,
        tmp_path / "out",
        max_samples=MAX_SAMPLES,
        k=4,
        on_step=lambda f, t: steps.append((f, t)),
    )
    table = result.table
    assert list(table.columns) == ["score", "rank", "expert", "rank in resamples", "trained on"]
    assert table["rank"].tolist() == [1, 2, 3, 4]
    # the scores are the paper's asymmetric distances, expert task -> new task (brute force here)
    brute = {
        mid: t2v.distance(expert_index.embedding(mid), result.embedding, kind="asymmetric", alpha=0.15)
        for mid in EXPERTS
    }
    expected = sorted(EXPERTS, key=brute.get)
    assert [r.model_id for r in result.records] == expected
    # shown with three decimals on a readable scale (a power of 1000, said in the label and the status)
    factor = readable_factor(brute.values())
    assert result.scale == (factor, unit_of(factor))
    assert 0.05 <= max(abs(v) for v in brute.values()) * factor < 50 or factor == 1
    assert table["score"].tolist() == [f"{brute[m] * factor:.3f}" for m in expected]
    unit = result.scale[1]
    assert result.table_label == finder.TABLE_LABEL + (f"; scores {unit}" if unit else "")
    assert (f"score ({unit}) = asymmetric" if unit else "score = asymmetric") in result.status
    # the expert trained on the same three animals (other images) is the nearest
    assert expected[0] == "test-experts/lite0-animal-quadrupeds"
    assert table["expert"][0] == "test-experts/lite0-animal-quadrupeds"  # not a Hub model: no link
    assert table["trained on"][0].startswith("animal-mnist-cat-dog-horse (cat, dog, horse)")
    # confidence: the shown embedding and two resamples (bootstraps: 60 images < max samples), each
    # scored against every expert; the shown row is the table's
    conf = result.confidence
    assert conf.scores.shape == (3, len(EXPERTS)) and conf.per_class == 20
    pos = [expert_index.model_ids.index(m) for m in expected]
    np.testing.assert_allclose(conf.scores[0, pos], [brute[m] for m in expected], atol=1e-6)
    assert not np.allclose(conf.scores[1], conf.scores[0]), "a resample is another embedding"
    for p, r in zip(pos, result.records, strict=True):
        assert conf.rank_lo[p] <= r.rank <= conf.rank_hi[p]
    assert table["rank in resamples"][0] in {"always #1"} | {f"#1–#{i} (tied)" for i in range(2, 5)}
    # the stability line speaks in the table's unit: the spread of the scores over the resamples, times the scale
    noise = float(np.median(0.5 * (conf.scores.max(0) - conf.scores.min(0))))
    assert f"± {noise * factor:.3f}" in result.status
    assert not conf.too_few  # 20 per class: as advised
    # human progress text, never tqdm's internals
    texts = [t for _, t in steps]
    assert any(t.startswith("Embedding your 60 images") for t in texts)
    assert any("Resampling your images" in t for t in texts) and all("%" not in t for t in texts)
    assert "Best expert: test-experts/lite0-animal-quadrupeds" in result.status and "asymmetric" in result.status
    # the figures: Plotly; the heatmap's first column is the table's scores (the ranking's metric)
    assert isinstance(result.map_figure, go.Figure) and isinstance(result.heatmap_figure, go.Figure)
    np.testing.assert_allclose(result.heatmap_values[:, 0], [brute[m] for m in expected], atol=1e-6)
    drawn = np.asarray(result.heatmap_figure.data[0].z, dtype=float)  # drawn on the table's scale
    np.testing.assert_allclose(drawn[:, 0], [brute[m] * factor for m in expected], atol=1e-6 * factor)
    assert not unit or unit in result.heatmap_figure.layout.title.text
    # the embedding made like the experts', saved as a verified safetensors file
    emb = t2v.TaskEmbedding.load(result.embedding_path)
    np.testing.assert_array_equal(emb.values, result.embedding.values)
    expert_index.embedding(expected[0]).check_compatible(emb)
    assert emb.meta["task"] == "my-animals" and json.loads(emb.meta["label_names"]) == QUERY_CLASSES
    assert emb.meta["num_samples"] == "60"  # all 60 images: fewer than max_samples


def test_symmetric_ranking_uses_its_metric_everywhere(tmp_path, expert_index):
    prepared = finder.task_from_upload(class_folder_zip(tmp_path / "a.zip", per_class=6), tmp_path / "w", Limits())
    result = finder.search(
        prepared, expert_index, tmp_path / "o", max_samples=MAX_SAMPLES, k=3, metric="symmetric", resamples=1
    )
    sym = {m: t2v.distance(expert_index.embedding(m), result.embedding, kind="symmetric") for m in EXPERTS}
    top = sorted(EXPERTS, key=sym.get)[:3]
    assert [r.model_id for r in result.records] == top
    np.testing.assert_allclose(result.heatmap_values[:, 0], [sym[m] for m in top], atol=1e-6)
    # the heatmap's other columns: the distance from each row's expert to the column's expert's task
    np.testing.assert_allclose(
        result.heatmap_values[0, 2],
        t2v.distance(expert_index.embedding(top[0]), expert_index.embedding(top[1]), kind="symmetric"),
        atol=1e-6,
    )
    assert "symmetric Task2Vec distance between" in result.status and "from the expert's" not in result.status
    assert result.confidence.resamples == 1 and result.table["rank in resamples"][0] == "not measured"
    import ranking

    assert any("Too few images" in w and "6 image(s)" in w for w in ranking.warnings(result.confidence))
    z = result.heatmap_figure.data[0].z
    assert np.isnan(z[0][1]) and np.isnan(z[1][2]), "an expert against its own task is left blank"


# -- re-ranking the Task2Vec shortlist ------------------------------------------------------------------
def test_rerank_orders_by_the_score_shows_both_stages_and_lists_the_skipped_expert(tmp_path):
    import app as space_app

    from hf_task2vec import load_probe
    from hf_task2vec.transferability import logme

    index = build_rerank_index()
    prepared = finder.task_from_upload(class_folder_zip(tmp_path / "a.zip", per_class=12), tmp_path / "w", Limits())
    task = prepared.task  # 36 real Animal-MNIST test images (cat, dog, horse)
    result = finder.search(
        prepared, index, tmp_path / "o", max_samples=MAX_SAMPLES, k=4, rerank="logme", shortlist=4, resamples=1
    )
    table = result.table
    assert tuple(table.columns) == finder.RERANK_TABLE_COLUMNS
    assert len(space_app.table_layout(table)["column_widths"]) == len(table.columns)
    # stage 1: the Task2Vec shortlist (every expert), ranks and distances as a plain search shows them
    stage1 = {m.model_id: m for m in index.select(result.embedding, k=4)}
    # stage 2: LogME of each loadable expert's features on the task's images, computed here independently
    labels = task.labels
    expected = {}
    for mid, weights in RERANK_WEIGHTS.items():
        if "load_probe" in weights:
            probe = load_probe(weights["load_probe"], image_size=IMAGE_SIZE)
            feats = probe.features(task.get_inputs(np.arange(len(task)), probe.transform())).detach().double().numpy()
            expected[mid] = logme(feats, labels)
    order = sorted(expected, key=lambda m: -expected[m])
    # the table's order: the re-rank scores' order, then the expert that could not be run, with its Task2Vec rank
    assert [r.model_id for r in result.records] == [*order, "test-experts/lite0-digits"]
    assert table["rank"].tolist() == [1, 2, 3, "–"]
    ran = result.records[:3]
    np.testing.assert_allclose([r.rerank_score for r in ran], [expected[m] for m in order], rtol=1e-6)
    assert table["re-rank score"].tolist() == [f"{expected[m]:.3f}" for m in order] + ["not run"]
    assert table["Task2Vec rank"].tolist() == [stage1[m].rank for m in [*order, "test-experts/lite0-digits"]]
    factor = readable_factor(m.score for m in stage1.values())  # every expert is shortlisted: the page's scale
    assert result.scale == (factor, unit_of(factor))
    shown = [f"{stage1[m].score * factor:.3f}" for m in [*order, "test-experts/lite0-digits"]]
    assert table["distance"].tolist() == shown
    assert not result.scale[1] or f"distances {result.scale[1]}" in result.table_label
    # the expert whose checkpoint is missing is known before the run, listed with the fix, and kept in the table
    hint = "checkpoint not found: run `python benchmarks/model_selection.py` to build it"
    assert result.skipped == {"test-experts/lite0-digits": hint}
    assert finder.cannot_run(index, "logme") == {"test-experts/lite0-digits": hint}
    assert f"Not run: **test-experts/lite0-digits**: {hint}" in result.status
    # the cost: 3 forward passes (the shortlist of 4 less the skipped one) of the 4 an all-experts peer needs
    cost = result.selection.cost
    assert (cost.forward_passes, cost.examples, cost.experts_in_index) == (3, 36, 4)
    assert "3 expert forward passes over 36 images" in result.status and "(75% of the forward passes" in result.status
    assert "by **logme**" in result.status and "Cost: 3 expert forward passes" in result.table_label
    assert "1 could not be run here and keep their Task2Vec rank" in result.table_label
    among = "among the 3 of 4 shortlisted experts that could be run"
    assert f"**Best expert by logme: {order[0]}** {among}" in result.status
    assert "re-rank score = LogME" in result.status and "higher is better" in result.status
    assert [m.model_id for m in result.selection.shortlist] == list(stage1)


def test_rerank_off_keeps_the_task2vec_ranking_and_nothing_loadable_falls_back(tmp_path):
    index = build_rerank_index()
    prepared = finder.task_from_upload(class_folder_zip(tmp_path / "a.zip", per_class=8), tmp_path / "w", Limits())
    kw = dict(max_samples=MAX_SAMPLES, k=3, resamples=1)
    plain = finder.search(prepared, index, tmp_path / "o1", **kw)
    off = finder.search(prepared, index, tmp_path / "o2", rerank="off", shortlist=2, **kw)
    want = [m.model_id for m in index.select(plain.embedding, k=3)]
    factor = readable_factor(m.score for m in index.select(plain.embedding, k=len(index)))
    unit = unit_of(factor)
    label = finder.TABLE_LABEL + (f"; scores {unit}" if unit else "")
    for result in (plain, off):  # the old behaviour: the Task2Vec table, no re-ranking, nothing skipped
        assert tuple(result.table.columns) == finder.TABLE_COLUMNS and result.table_label == label
        assert [r.model_id for r in result.records] == want
        assert result.rerank is None and result.selection is None and result.skipped == {}
        assert "Re-rank" not in result.status and "Skipped" not in result.status
    assert off.table.equals(plain.table)
    # leep needs a source classifier, which none of the loadable experts records: nothing can be re-ranked,
    # so the page says so (before the run too), lists every expert it cannot run and shows the Task2Vec ranking
    assert set(finder.cannot_run(index, "leep")) == set(RERANK_WEIGHTS)
    none = finder.search(prepared, index, tmp_path / "o3", rerank="leep", shortlist=4, **kw)
    assert tuple(none.table.columns) == finder.TABLE_COLUMNS and [r.model_id for r in none.records] == want
    assert none.selection is None and none.rerank == "leep"
    assert "Re-ranking by leep was not possible:** only 0 of the 4 shortlisted experts could be run" in none.status
    assert set(none.skipped) == set(RERANK_WEIGHTS)
    assert none.skipped["test-experts/lite0-animal-wild"].startswith("leep needs the expert's source classifier")
    assert none.skipped["test-experts/lite0-digits"].startswith("checkpoint not found")
    assert none.status.count("- Not run: **") == 4 and "Traceback" not in none.status
    assert "**Best expert: " + want[0] + "** by Task2Vec" in none.status
    assert (f"score ({unit}) = asymmetric" if unit else "score = asymmetric") in none.status


def test_rerank_never_crowns_the_only_loadable_expert(tmp_path):
    """Two of three shortlisted experts cannot be run: the one that can is not called the best expert."""
    index = build_rerank_index()
    prepared = finder.task_from_upload(class_folder_zip(tmp_path / "a.zip", per_class=8), tmp_path / "w", Limits())
    kw = dict(max_samples=MAX_SAMPLES, k=3, resamples=1)
    plain = finder.search(prepared, index, tmp_path / "o1", **kw)
    loadable = [m for m in (r.model_id for r in plain.records) if m != "test-experts/lite0-digits"]
    weights = {m: RERANK_WEIGHTS[m] for m in loadable[:1]}
    from hf_task2vec.rerank import expert_weights

    one = ExpertIndex()
    for mid in index.model_ids:
        w = weights.get(mid, {"checkpoint": f"benchmarks/cache/test-space/missing-{mid.split('/')[-1]}.safetensors",
                              "sha256": "0" * 64})
        one.add(mid, index.embedding(mid), **{k: v for k, v in index.info(mid).items() if k != "weights"},
                weights=expert_weights(**w))
    result = finder.search(prepared, one, tmp_path / "o2", rerank="logme", shortlist=3, **kw)
    assert "only 1 of the 3 shortlisted experts could be run" in result.status
    assert f"**Best expert: {plain.records[0].model_id}** by Task2Vec" in result.status
    assert "Best expert by logme" not in result.status
    # the table is the Task2Vec ranking, as the headline says: no re-rank column crowning the one expert run
    assert tuple(result.table.columns) == finder.TABLE_COLUMNS and len(result.table) == 3
    assert [r.model_id for r in result.records] == [r.model_id for r in plain.records]
    assert result.table["score"].tolist() == plain.table["score"].tolist() and result.selection is None
    assert result.table_label == plain.table_label
    assert result.status.count("- Not run: **") == 2 and loadable[0] not in result.skipped


def test_skip_reasons_and_the_default_index_checkpoints(expert_index):
    from hf_task2vec.rerank import load_expert

    assert finder.rerank_scores()[:3] == ["logme", "leep", "nce"] and "sfda" in finder.rerank_scores()
    assert finder.index_options(expert_index)["reranks"] == ["off", *finder.rerank_scores()]
    reason = finder.skip_reason("expert 'x': checkpoint '/srv/app/models/x.safetensors' not found")
    assert reason == "checkpoint not found on this server"
    assert "sha256 differs" in finder.skip_reason(
        "expert 'x': checkpoint 'a.pt' has sha256 1234..., the index records 5678...: the file changed since it was "
        "indexed"
    )
    assert (
        finder.skip_reason("expert 'x' records no weights: add them ...") == "the index does not record how to load it"
    )
    assert "/srv" not in finder.skip_reason("expert 'x': load_probe('y') failed: no file /srv/app/cache/y.bin")
    # the Space's default index is built from the expert zoo's cards: every expert records its repo folder
    # relative to the repository root, the folder is committed, and the expert loads (base + adapter + head)
    default = finder.load_expert_index(finder.default_index_paths()[-1])
    repos = {m: default.info(m)["weights"]["expert_repo"] for m in default.model_ids}
    assert len(repos) >= 60 and all((finder.expert_root() / r / "adapter_model.safetensors").is_file()
                                    for r in repos.values())
    mid = default.model_ids[0]
    expert = load_expert(mid, default.info(mid), root=finder.expert_root())
    assert expert.head_weight is not None and expert.origin.startswith("folder:")
    assert expert.head_weight.shape[0] == len(default.info(mid)["classes"])


def test_confidence_is_judged_on_ranks_not_on_a_shared_shift():
    import ranking

    base = np.array([0.30, 0.32, 0.40, 0.41])
    shift = np.array([[0.0], [0.1], [-0.08]])  # every score moves together: the order does not change
    conf = ranking.summarize(base + shift, [30, 30])
    assert conf.tied == [0] and conf.label(0) == "always #1" and conf.label(1) == "always #2"
    np.testing.assert_allclose(conf.spread, 0.09)
    # the lead (0.02) is smaller than the scores move (0.09): stable order, but no clear winner by the scores
    assert ranking.warnings(conf) == [] and not conf.clear_winner()
    assert "No clear winner" in ranking.verdict(conf, "x")
    steady = ranking.summarize(np.array([[0.30, 0.40, 0.5], [0.31, 0.41, 0.5], [0.29, 0.40, 0.52]]), [30, 30])
    text = ranking.verdict(steady, "x")
    assert steady.clear_winner() and "first in all 3 resamples" in text and "not that the answer is right" in text
    swapped = np.array([[0.30, 0.32, 0.40, 0.41], [0.33, 0.31, 0.40, 0.41], [0.30, 0.32, 0.42, 0.41]])
    conf = ranking.summarize(swapped, [5, 30])
    assert conf.tied == [0, 1] and conf.label(1) == "#1–#2 (tied)" and conf.label(2) == "#3–#4"
    assert "No clear winner" in ranking.verdict(conf, "x")
    assert any("smallest class has 5 image(s)" in w for w in ranking.warnings(conf))
    equal = np.array([[0.3, 0.3, 0.5]] * 3)  # exactly equal scores are a tie too
    assert ranking.summarize(equal, [30, 30]).tied == [0, 1]
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    idx = ranking.bootstrap_indices(labels, seed=3)
    assert np.bincount(labels[idx]).tolist() == [3, 2, 4] and len(set(idx.tolist())) < len(idx)
    assert ranking.fmt(0.4199) == "0.420" and ranking.fmt(0.39) == "0.390"
    # a spread below the third decimal is not printed as zero
    assert ranking.fmt_spread(0.00038) == "0.0004" and ranking.fmt_spread(0.012) == "0.012"
    assert ranking.fmt_spread(0.0) == "0.000"
    assert ranking.score_scale([4e-8, -1e-8]) == (1e9, "in units of 1e-9") and ranking.score_scale([0.2]) == (1.0, "")


def test_measured_accuracy_is_read_from_the_committed_results(tmp_path):
    import ranking

    results = json.loads((ranking.results_dir() / "model_selection.json").read_text())
    top1 = results["table2"]["t2v_asym"]["top1"][0]
    text = ranking.measured("image")
    assert f"**{top1:.0%}**" in text and "model_selection.json" in text
    assert "not measured against fine-tuning" in ranking.measured("text")
    assert "not measured" in ranking.measured("image", folder=tmp_path)  # no results: said, not invented


def test_class_flag_for_an_expert_trained_on_the_classes(expert_index):
    import ranking

    quad = expert_index.model_ids.index("test-experts/lite0-animal-quadrupeds")
    scores = np.zeros((1, len(expert_index)))
    scores[0] = np.arange(len(expert_index))
    scores[0, quad] = 99.0  # ranks last
    conf = ranking.summarize(scores, [30, 30])
    index = ExpertIndex()
    for mid in expert_index.model_ids:
        info = dict(expert_index.info(mid))
        info["classes"] = EXPERTS[mid][1]
        index.add(mid, expert_index.embedding(mid), **{k: v for k, v in info.items() if k != "classes"},
                  classes=EXPERTS[mid][1])
    flags = ranking.class_flags(["dog", "cat"], index, conf)
    assert len(flags) == 1 and "lite0-animal-quadrupeds" in flags[0] and "#4" in flags[0]


def test_class_flags_say_one_line_per_training_task():
    """Experts trained on one task (the zoo trains each task on four image bases, or two text ones) share its
    task embedding and rank together: one line names them all, said only when the best of them ranks outside
    the top 3; a task of one expert keeps its own line."""
    import ranking

    emb = build_expert_index().embedding("test-experts/lite0-animal-quadrupeds")
    pets = [f"zoo/{base}-animals-pets" for base in ("lite0", "lite1", "lite2", "mnv2")]
    others = {"zoo/lite0-digits": ["0", "1"], "zoo/lite0-fashion": ["Bag", "Coat"],
              "zoo/lite0-animals-other": ["bear", "bird", "cat", "dog"]}
    index = ExpertIndex()
    for mid in pets:
        index.add(mid, emb, task="animals-pets", dataset="offline:animal-mnist", classes=["bird", "cat", "dog"])
    for mid, classes in others.items():
        index.add(mid, emb, task=mid.split("-", 1)[1], classes=classes)

    def flags(ranks: dict[str, int]) -> list[str]:
        scores = np.array([[float(ranks[mid]) for mid in index.model_ids]])
        return ranking.class_flags(["dog", "cat"], index, ranking.summarize(scores, [30, 30]))

    ranks = {"zoo/lite0-digits": 1, "zoo/lite0-fashion": 2, "zoo/lite0-animals-other": 3}
    out = flags({**ranks, **{mid: 4 + i for i, mid in enumerate(pets)}})
    assert len(out) == 1, out  # one line for the four pets experts; animals-other is in the top 3
    assert "The 4 experts trained on animals-pets" in out[0] and "best of them ranks #4" in out[0]
    assert all(mid in out[0] for mid in pets) and "(cat, dog)" in out[0]
    # one of the pets experts in the top 3: no line for that task; the task of one expert ranked #7 has its own
    out = flags({"zoo/lite0-digits": 1, "zoo/lite1-animals-pets": 2, "zoo/lite0-fashion": 3,
                 "zoo/lite0-animals-pets": 4, "zoo/lite2-animals-pets": 5, "zoo/mnv2-animals-pets": 6,
                 "zoo/lite0-animals-other": 7})
    assert out == [
        "**zoo/lite0-animals-other** was trained on all of your classes (cat, dog) but ranks #7: the Task2Vec "
        "distance may be wrong about it; consider it too."
    ]


def test_expert_links(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example")
    assert finder.expert_link("org/vit_b", {"source": "hub"}) == "[org/vit\\_b](https://hub.example/org/vit_b)"
    assert finder.expert_link("task2vec-bench/lite0", {"weights_cache": "x"}) == "task2vec-bench/lite0"
    assert finder.expert_link("resnet18", {"url": "https://x.org/r18"}) == "[resnet18](https://x.org/r18)"
    for bad in ("javascript:alert(1)", "https://x.org/a) [y](https://evil", "file:///etc/passwd"):
        assert finder.expert_link("org/m", {"url": bad}) == "org/m"
    assert finder.expert_link("../x", {"source": "hub"}) == "../x"


def test_classical_mds_recovers_euclidean_points():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(7, 2))
    d = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
    xy, kept = finder.classical_mds(d)
    np.testing.assert_allclose(np.linalg.norm(xy[:, None] - xy[None], axis=-1), d, atol=1e-9)
    assert kept == pytest.approx(1.0)
    pts3 = np.c_[pts, [0, 0, 0, 0, 0, 0, 5.0]]  # one point off the plane: 2-D keeps less
    xy, kept = finder.classical_mds(np.linalg.norm(pts3[:, None] - pts3[None], axis=-1))
    centred = pts3 - pts3.mean(0)
    sv = np.linalg.svd(centred, compute_uv=False) ** 2
    assert kept == pytest.approx(sv[:2].sum() / sv.sum())


@pytest.mark.parametrize("projection", ["mds", "tsne"])
def test_task_map_labels_only_the_top_experts_and_your_task(expert_index, projection):
    from hf_task2vec import plots

    query = expert_index.embedding("test-experts/lite0-digits")
    query.meta["task"] = "query"
    top = ["test-experts/lite0-digits", "test-experts/lite0-animal-wild"]
    fig, data = plots.expert_task_map(query, expert_index, top, projection=projection, labelled=1)
    texts = [t for trace in fig.data if trace.text is not None for t in trace.text]
    assert texts == ["you: query", "#1 digits-0-1-2"]  # one top expert labelled, and yours
    assert fig.data[0].name == "your task", "your star is drawn first: the experts' dots stay visible over it"
    hover = " ".join(h for trace in fig.data for h in trace.hovertext)
    for mid in EXPERTS:  # every expert's full id is on hover
        assert mid in hover
    assert fig.layout.font.size >= 11 and all(t.textfont.size >= 11 for t in fig.data if t.text is not None)
    assert fig.layout.width is None and fig.layout.autosize, "the figure takes the width it is given"
    xr, xy = fig.layout.xaxis.range, data["xy"]
    assert xr[0] < xy[:, 0].min() and xr[1] > xy[:, 0].max(), "room beside the outermost points for their labels"
    assert data["xy"].shape == (1 + len(EXPERTS), 2) and np.isfinite(data["xy"]).all()
    points = plots._map_points(expert_index, top, max_points=3)
    assert [mid for _, mid in points] == [*top, "test-experts/lite0-animal-quadrupeds"]


def test_short_names_label_placement_and_the_heatmap(expert_index):
    from hf_task2vec import plots

    ids = ["bench/efficientnet-lite0-fashion-all", "bench/efficientnet-lite0-digits-0-4", "other/x"]
    assert plots.short_names(ids[:2]) == {ids[0]: "fashion-all", ids[1]: "digits-0-4"}
    assert plots.short_names(ids)[ids[2]] == "x"
    near = np.array([[0.0, 0.0], [0.01, 0.0], [1.0, 1.0]])  # two points on top of each other
    where = plots.place_labels(near)
    assert len(where) == 3 and where[0] != where[1] and set(where) <= {"top center", "bottom center"}
    query = expert_index.embedding("test-experts/lite0-digits")
    one, z = plots.expert_distance_heatmap(query, expert_index, ["test-experts/lite0-digits"], metric="asymmetric")
    assert z.shape == (1, 2) and one.data[0].showscale is False  # k = 1: no colour bar to crowd a single cell
    assert "lower is better" in one.layout.title.text and "can be negative" in one.layout.title.text
    small, _ = plots.expert_distance_heatmap(query, expert_index, expert_index.model_ids[:3], scale=1e6,
                                             unit="in units of 1e-6")
    assert "in units of 1e-6" in small.layout.title.text


def test_heatmap_writes_its_values_only_where_they_fit(expert_index):
    """At a phone's 326 px the cells of four experts are about 15 px wide: their values would be printed over
    each other, so they are left to the hover text (the title says so); at a desktop's 720 px they are
    written, at 11 px or more. Either way the figure takes the width it is given."""
    from hf_task2vec import plots

    query = expert_index.embedding("test-experts/lite0-digits")
    top = expert_index.model_ids
    phone, z = plots.expert_distance_heatmap(query, expert_index, top, width=326)
    desk, _ = plots.expert_distance_heatmap(query, expert_index, top, width=720)
    assert not phone.data[0].texttemplate and "too narrow for their values: tap or hover" in phone.layout.title.text
    assert f"{z[0, 0]:.3f}" in phone.data[0].hovertext[0][0], "the values stay on hover"
    assert desk.data[0].texttemplate == "%{z:.3f}" and desk.data[0].textfont.size >= plots.MIN_TEXT_PX
    assert "tap or hover" not in desk.layout.title.text
    assert phone.layout.xaxis.tickangle == -90 and desk.layout.xaxis.tickangle == 0  # "yours" beside "#1" at 720 px
    assert phone.layout.width is None and desk.layout.width is None and phone.layout.autosize
    unknown, _ = plots.expert_distance_heatmap(query, expert_index, top)  # width not known: written
    assert unknown.data[0].texttemplate == "%{z:.3f}"
    # the estimate: 7 characters need 7 * 0.6 em; the cells narrow as experts are added
    assert plots.heatmap_text_size(720, 5, ["#1 animal-quadrup…"], 7) == plots.FONT_PX
    assert plots.heatmap_text_size(720, 11, ["#10 animal-quadrup…"], 7) is None
    assert plots.heatmap_text_size(326, 5, ["#1 digits"], 6, colorbar=False) == plots.MIN_TEXT_PX  # room left


def test_index_options_come_from_the_index(expert_index):
    from hf_task2vec.task2vec import METHODS

    opts = finder.index_options(expert_index, Limits(max_samples=40))
    assert opts["probe"] == expert_index.settings["probe"] == "embedded"
    assert opts["method"] == expert_index.settings["method"] and opts["method"] in METHODS
    assert opts["image_size"] == str(IMAGE_SIZE) and opts["experts"] == len(EXPERTS)
    assert opts["max_samples"] == 40  # the index used 64; capped by the limit
    assert finder.index_options(expert_index)["max_samples"] == MAX_SAMPLES
    assert opts["metrics"] == ["asymmetric", "symmetric"]  # no Model2Vec offsets in this index
    assert all(opts["help"][k] for k in ("probe", "method", "image_size", "max_samples", "k", "metric"))
    listing = finder.expert_table(expert_index)
    assert listing["expert"].tolist() == list(EXPERTS) and listing["training task"][0] == "animal-mnist-cat-dog-horse"


def test_count_examples_caps_the_slider(tmp_path):
    import pandas as pd

    assert finder.count_examples(class_folder_zip(tmp_path / "a.zip", per_class=7), Limits()) == 21
    imgs = animal_images(("bird", "zebra"), 5)
    pd.DataFrame({"image": [{"bytes": d, "path": None} for _, d in imgs], "label": [c for c, _ in imgs]}).to_parquet(
        tmp_path / "t.parquet"
    )
    assert finder.count_examples(tmp_path / "t.parquet", Limits()) == 10
    assert finder.count_examples(tmp_path / "nothing.zip", Limits()) is None
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    assert finder.count_examples(tmp_path / "junk.zip", Limits()) is None


def test_wrong_probe_or_estimator_is_refused(tmp_path, expert_index):
    from hf_task2vec.task2vec import METHODS

    prepared = finder.task_from_upload(class_folder_zip(tmp_path / "a.zip", per_class=3), tmp_path / "w", Limits())
    used = expert_index.settings["method"]
    other = next(m for m in METHODS if m != used)
    with pytest.raises(InputError, match=f"estimator '{other}' \\(the index uses '{used}'\\)"):
        finder.search(prepared, expert_index, tmp_path / "o", method=other)
    with pytest.raises(InputError, match="probe 'embedded-mobilenetv2'"):
        finder.search(prepared, expert_index, tmp_path / "o", probe="embedded-mobilenetv2")
    with pytest.raises(InputError, match="max examples"):
        finder.search(prepared, expert_index, tmp_path / "o", max_samples=10**9)


def test_examples_are_built_from_offline_data(tmp_path):
    import examples

    built = examples.build_examples(tmp_path / "ex")
    assert [p.name for p, _ in built] == ["footwear.zip", "digits-3-7-8.zip"]
    for path, _ in built:
        assert path.stat().st_size < 200_000
        task = finder.task_from_upload(path, tmp_path / path.stem, Limits()).task
        assert len(task) == 90 and np.bincount(task.labels).tolist() == [30, 30, 30]
    assert examples.build_examples(tmp_path / "ex")[0][0].stat().st_mtime == built[0][0].stat().st_mtime  # reused


def test_scratch_dir_is_removed_even_on_errors(tmp_path):
    zpath = write_zip(tmp_path / "one.zip", {"cats/1.png": animal_images(("cat",), 1)[0][1]})
    with pytest.raises(InputError), finder.scratch_dir() as work:
        kept = work
        finder.task_from_upload(zpath, work, Limits())
    assert not kept.exists()


def test_limits_from_environment():
    limits = Limits.from_env({"T2V_SPACE_MAX_IMAGES": "123", "T2V_SPACE_MAX_RATIO": "9.5"})
    assert limits.max_images == 123 and limits.max_ratio == 9.5 and limits.max_zip_entries == Limits().max_zip_entries
    with pytest.raises(ValueError, match="T2V_SPACE_MAX_IMAGES"):
        Limits.from_env({"T2V_SPACE_MAX_IMAGES": "lots"})


# -- the expert index: local folder and Hub ---------------------------------------------------------------
def test_index_loads_from_folder_and_from_hub_repo(tmp_path, expert_index, hub_server, monkeypatch):
    expert_index.save(tmp_path / "idx")
    loaded = finder.load_expert_index(tmp_path / "idx")
    assert loaded.model_ids == expert_index.model_ids and loaded.settings == expert_index.settings
    expert_index.push_to_hub("user/experts")
    monkeypatch.setenv("T2V_EXPERT_INDEX_REPO", "user/experts")
    from_hub = finder.load_expert_index()
    assert from_hub.model_ids == expert_index.model_ids
    q = expert_index.embedding(expert_index.model_ids[0])
    assert [m.model_id for m in from_hub.select(q, k=4)] == [m.model_id for m in expert_index.select(q, k=4)]
    method = expert_index.settings["method"]  # the estimator the index was built with (the library default)
    assert finder.describe_index(from_hub) == (
        f"4 image experts · probe `embedded` · estimator `{method}` · image size {IMAGE_SIZE}"
    )


def test_push_embedding_to_a_hub_dataset_repo(expert_index, hub_server, monkeypatch):
    from hf_task2vec.hub import EmbeddingStore

    emb = expert_index.embedding("test-experts/lite0-digits")
    with pytest.raises(InputError, match="log in"):
        finder.push_embedding(emb, "user/my-embeddings", False)  # an anonymous visitor of a Space
    with pytest.raises(InputError, match="not a dataset repo id"):
        finder.push_embedding(emb, "../../etc", "x")
    token = os.environ["HF_TOKEN"]
    monkeypatch.delenv("HF_TOKEN")  # the token typed by the user is what is used
    with pytest.raises(InputError, match="user/my-embeddings"):
        finder.push_embedding(emb, "user/my-embeddings", None)  # no credentials at all: the Hub refuses
    msg = finder.push_embedding(emb, "user/my-embeddings", token)
    assert msg.startswith("Pushed embedded/") and "user/my-embeddings" in msg
    pulled = EmbeddingStore("user/my-embeddings", token=token).pull(
        EmbeddingStore("user/my-embeddings", token=token).keys()[0]
    )
    np.testing.assert_array_equal(pulled.values, emb.values)
    assert "nothing to push" in finder.push_embedding(emb, "user/my-embeddings", token)


def test_hub_dataset_input(tmp_path, hub_server):
    import pandas as pd
    from huggingface_hub import HfApi

    imgs = animal_images(("cow", "sheep"), 8)
    df = pd.DataFrame({"image": [{"bytes": d, "path": None} for _, d in imgs], "label": [c for c, _ in imgs]})
    df.to_parquet(tmp_path / "train.parquet")
    api = HfApi()
    api.create_repo("user/farm", repo_type="dataset")
    commit = api.upload_file(
        path_or_fileobj=str(tmp_path / "train.parquet"),
        path_in_repo="data/train-00000.parquet",
        repo_id="user/farm",
        repo_type="dataset",
    )
    prepared = finder.task_from_hub("user/farm", Limits(), split="train", max_samples=10)
    task = prepared.task
    assert task.label_names == ["cow", "sheep"] and np.bincount(task.labels).tolist() == [5, 5]
    assert task.source == "user/farm" and task.revision == commit.oid and task.split == "train"
    with pytest.raises(InputError, match="no dataset 'user/nothing-here'"):
        finder.task_from_hub("user/nothing-here", Limits())
    # a private dataset: readable with the visitor's token, never with no token (token=False), even
    # when the server process itself holds a token (HF_TOKEN, e.g. a Space secret)
    api.create_repo("user/private-farm", repo_type="dataset", private=True)
    api.upload_file(
        path_or_fileobj=str(tmp_path / "train.parquet"),
        path_in_repo="data/train-00000.parquet",
        repo_id="user/private-farm",
        repo_type="dataset",
    )
    assert os.environ.get("HF_TOKEN")
    with pytest.raises(InputError, match="no dataset 'user/private-farm'.*private"):
        finder.task_from_hub("user/private-farm", Limits(), token=False)
    task = finder.task_from_hub("user/private-farm", Limits(), token=os.environ["HF_TOKEN"], max_samples=4).task
    assert np.bincount(task.labels).tolist() == [2, 2]
    for bad in ("../../etc/passwd", "user/a b", ""):
        with pytest.raises(InputError, match="not a Hub dataset id"):
            finder.task_from_hub(bad, Limits())
    with pytest.raises(InputError, match="not a split name"):
        finder.task_from_hub("user/farm", Limits(), split="../train")


# -- the app object ---------------------------------------------------------------------------------
def _app_fn(demo, name: str):
    return next(f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == name)


def test_build_app_queues_requests_one_at_a_time(expert_index, tmp_path):
    import app as space_app
    import gradio as gr

    demo = space_app.build_app(expert_index, limits=Limits(max_samples=512), examples_dir=tmp_path / "ex")
    assert isinstance(demo, gr.Blocks)
    assert demo._queue.default_concurrency_limit == 1 and demo._queue.max_size == 16
    texts = [b.value for b in demo.blocks.values() if isinstance(b, gr.Markdown)]
    assert any("4 image experts · probe `embedded`" in str(t) for t in texts)
    boxes = {b.label for b in demo.blocks.values() if isinstance(b, gr.Textbox)}
    assert {"image or text column", "label column"} <= boxes  # the names the error messages use
    assert [p.name for p, _ in demo.t2v_examples] == ["footwear.zip", "digits-3-7-8.zip"]
    by_id = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    assert by_id["example-0"].value.startswith("Footwear")
    listing = by_id["expert-list"].value
    assert [row[0] for row in listing["data"]] == list(EXPERTS)  # every expert listed on first load
    assert by_id["max-samples"].maximum == 512 and by_id["max-samples"].value == MAX_SAMPLES
    missing = space_app.build_app(index_error="No expert index could be loaded (test).")
    texts = [b.value for b in missing.blocks.values() if isinstance(b, gr.Markdown)]
    assert any("No expert index could be loaded (test)." in str(t) for t in texts)


def test_errors_stay_in_the_status_and_keep_the_last_result(expert_index, tmp_path):
    import app as space_app
    import gradio as gr

    demo = space_app.build_app(expert_index, examples_dir=tmp_path / "ex")
    find = _app_fn(demo, "find")
    good = class_folder_zip(tmp_path / "good.zip", per_class=6)
    args = dict(
        hub_id="",
        hub_split="train",
        hub_config="",
        mode="upload",
        image_col="",
        label_col="",
        max_samples=MAX_SAMPLES,
        k=3,
        metric="asymmetric",
        projection="mds",
        token_text="",
        progress=lambda *a, **k: None,
    )
    out = find(str(good), last_good=None, **args)
    status, last = out[0], out[6]
    assert "Best expert" in status and last == status
    good_entries = {f"{c}/{c}{i}.png": d for i, (c, d) in enumerate(animal_images(("cat", "dog"), 3))}
    evil = write_zip(tmp_path / "evil.zip", {**good_entries, "../../x.png": b"x"})
    out = find(str(evil), last_good=last, **args)
    assert out[0].startswith("### Error: Cannot use this input") and "path traversal" in out[0]
    assert out[0].endswith(last), "the last good result stays below the message"
    assert all(isinstance(o, type(gr.skip())) for o in out[1:]), "no output is wiped or badged"
    on_upload = _app_fn(demo, "on_upload")
    capped = on_upload(str(good))
    assert capped.maximum == 18 and capped.value == 18 and "holds 18 examples" in capped.info


def test_a_search_through_gradio_leaves_tqdm_alone(expert_index, tmp_path, capfd):
    """A search as the page runs it (through Gradio's queue, with its progress tracker): Gradio's
    ``Progress(track_tqdm=True)`` would patch tqdm for the whole process, and a bar made before the page
    (a download while the index loads) then fails when it closes ("'tqdm' object has no attribute
    '_progress'"). The page reports its steps itself and leaves tqdm alone."""
    import socket

    import app as space_app
    import tqdm
    from gradio_client import Client, handle_file

    earlier = tqdm.auto.tqdm(total=1, disable=True)  # made before the page
    demo = space_app.build_app(expert_index, examples_dir=tmp_path / "ex")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **space_app.launch_options())
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        zpath = class_folder_zip(tmp_path / "animals.zip", per_class=6)
        out = client.predict(
            handle_file(str(zpath)), "", "train", "", "", "", MAX_SAMPLES, 3, "asymmetric", "mds", "", "off", 4, 720,
            api_name="/find",
        )
    finally:
        demo.close()
    assert "Best expert" in out[0]
    earlier.close()  # raised AttributeError: 'tqdm' object has no attribute '_progress' when tqdm was patched
    assert not hasattr(tqdm.std.tqdm, "__init__orig__"), "Gradio patched tqdm"
    assert "_progress" not in capfd.readouterr().err


_OFFLINE_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
import app as space_app, finder
from finder import InputError
index = finder.load_expert_index(sys.argv[2])
demo = space_app.build_app(index, examples_dir=sys.argv[3])
find = next(f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "find")
out = find(None, "user/some-dataset", "train", "", "hub", "", "", 64, 3, "asymmetric", "mds", "", None,
           progress=lambda *a, **k: None)
try:
    finder.push_embedding(index.embedding(index.model_ids[0]), "user/my-embeddings", "a-token")
    pushed = "pushed?!"
except InputError as exc:
    pushed = str(exc)
print(json.dumps({"status": out[0], "push": pushed}))
"""


def test_offline_hub_wording(expert_index, tmp_path):
    """A server that cannot reach the Hub (a port where nothing listens; in a fresh process, since
    the Hub client reads HF_ENDPOINT once at import): the page says so and suggests an upload."""
    import socket
    import subprocess

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    expert_index.save(tmp_path / "idx")
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_TOKEN": "", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-c", _OFFLINE_SCRIPT, str(SPACE_DIR), str(tmp_path / "idx"), str(tmp_path / "ex")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert "the Hub cannot be reached from this server — upload a zip instead" in got["status"]
    assert "try again" not in got["status"]
    assert "the Hub cannot be reached from this server" in got["push"] and "HF_HUB_OFFLINE" not in got["push"]
    assert "Download the .safetensors file" in got["push"]
