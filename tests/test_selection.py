"""Model selection: ExpertIndex (search, persistence, Hub experts, CLI) and Model2Vec."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hf_task2vec import ExpertIndex, Model2Vec, TaskEmbedding, load_task
from hf_task2vec.distance import distance, pairwise_distances, pairwise_symmetric_distance, torch_symmetric_distance
from hf_task2vec.errors import EmbeddingFileError, IncompatibleEmbeddingsError, Task2VecError
from hf_task2vec.model2vec import torch_asymmetric_distance
from hf_task2vec.selection import TABLE_FILE, TENSORS_FILE


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tests run many tiny tensor ops: on a busy 2-core machine, thread wake-ups dominate them."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


META = {"probe": "embedded", "probe_revision": "sha256:abc", "method": "montecarlo", "image_size": "32"}


def _emb(values, trivial=1e-6, name="t", **meta) -> TaskEmbedding:
    values = np.asarray(values, np.float32)
    triv = np.full_like(values, trivial) if np.isscalar(trivial) else np.asarray(trivial, np.float32)
    return TaskEmbedding(values, triv, [], {**META, "task": name, **meta})


def _hand_dsym(a, b) -> float:
    """The paper's symmetric distance written out: cosine distance of a/(a+b) and b/(a+b)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    u, v = a / (a + b), b / (a + b)
    return 1.0 - float(u @ v) / np.sqrt(float(u @ u) * float(v @ v))


# -- distances ---------------------------------------------------------------------------------------
def test_torch_distances_agree_with_distance_module():
    rng = np.random.default_rng(0)
    src = rng.gamma(0.7, 1.0, size=(5, 40))
    tgt = rng.gamma(0.7, 1.0, size=(3, 40))
    src[0, :4] = 0.0
    tgt[1, :4] = 0.0  # filters where both are 0 (0/0 -> 1/2 in both normalised vectors)
    triv = rng.gamma(2.0, 0.1, size=(5, 40))
    for kind in ("symmetric", "asymmetric"):
        ref = pairwise_distances(src, tgt, kind=kind, alpha=0.15, source_trivial=triv)
        s, t, t0 = (torch.from_numpy(x) for x in (src, tgt, triv))
        got = (
            torch_symmetric_distance(s[:, None, :], t[None, :, :])
            if kind == "symmetric"
            else torch_asymmetric_distance(s, t, t0, alpha=0.15)
        )
        np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12, atol=1e-12)
    assert abs(float(torch_symmetric_distance(s[2], t[0])) - _hand_dsym(src[2], tgt[0])) < 1e-12
    # differentiable: analytic gradients match finite differences
    x = torch.from_numpy(src[:2, :6]).requires_grad_(True)
    y = torch.from_numpy(tgt[:2, :6])
    assert torch.autograd.gradcheck(
        lambda a: torch_asymmetric_distance(a, y, torch.from_numpy(triv[:2, :6]), 0.15), (x,)
    )
    # the fused pairwise distance (hand-written backward, used by Model2Vec) against autograd through the
    # element-wise formula, with filters where both inputs are 0
    a = torch.from_numpy(src[:3, :8]).requires_grad_(True)
    b = torch.from_numpy(tgt[:, :8]).requires_grad_(True)
    fused = pairwise_symmetric_distance(a, b)
    plain = torch_symmetric_distance(a[:, None, :], b[None, :, :])
    torch.testing.assert_close(fused, plain, rtol=1e-12, atol=1e-12)
    w = torch.from_numpy(rng.normal(size=(3, 3)))
    for g_fused, g_plain in zip(
        torch.autograd.grad((fused * w).sum(), (a, b)), torch.autograd.grad((plain * w).sum(), (a, b)), strict=True
    ):
        torch.testing.assert_close(g_fused, g_plain, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(pairwise_symmetric_distance, (a, b))


def test_index_distances_match_distance_module_and_a_loop():
    rng = np.random.default_rng(1)
    experts = [_emb(rng.gamma(0.5, 1e-3, 64), name=f"e{i}") for i in range(30)]
    experts[3].values[:5] = 0.0
    query = _emb(rng.gamma(0.5, 1e-3, 64), name="q")
    query.values[:3] = 0.0
    index = ExpertIndex()
    for i, e in enumerate(experts):
        index.add(f"m{i}", e)
    for metric, kind in (("asymmetric", "asymmetric"), ("symmetric", "symmetric")):
        loop = np.array([distance(e, query, kind=kind) for e in experts])
        np.testing.assert_allclose(index.distances(query, metric), loop, atol=1e-6)
        ranked = index.select(query, k=5, metric=metric)
        assert [m.model_id for m in ranked] == [f"m{i}" for i in np.argsort(loop)[:5]]
        assert [m.rank for m in ranked] == [1, 2, 3, 4, 5]
        assert all(ranked[i].score <= ranked[i + 1].score for i in range(4))
        np.testing.assert_allclose([m.score for m in ranked], np.sort(loop)[:5], atol=1e-6)
    assert len(index.select(query, k=None)) == 30


def test_select_over_10k_experts_is_vectorised_and_exact():
    rng = np.random.default_rng(2)
    n, d = 10_000, 48
    values = rng.gamma(0.5, 1e-3, size=(n, d)).astype(np.float32)
    trivial = np.full(d, 1e-6, np.float32)
    index = ExpertIndex()
    for i in range(n):
        index.add(f"expert-{i}", TaskEmbedding(values[i], trivial, [], META))
    query = TaskEmbedding(rng.gamma(0.5, 1e-3, d), trivial, [], META)
    ref = pairwise_distances(values, query.values[None], "asymmetric", 0.15, np.repeat(trivial[None], n, axis=0))[:, 0]
    got = index.distances(query)
    np.testing.assert_allclose(got, ref, atol=1e-6)
    sample = rng.choice(n, 100, replace=False)  # and a plain python loop on a sample
    loop = [distance(TaskEmbedding(values[i], trivial, [], META), query, "asymmetric") for i in sample]
    np.testing.assert_allclose(got[sample], loop, atol=1e-6)
    top = index.select(query, k=10)
    assert [m.model_id for m in top] == [f"expert-{i}" for i in np.argsort(ref, kind="stable")[:10]]
    # the stacked arrays are cached between queries and rebuilt after an edit
    assert index._values() is index._values()
    index.remove(top[0].model_id)
    assert index.select(query, k=1)[0].model_id == top[1].model_id and len(index) == n - 1


def test_asymmetric_alpha_prefers_the_more_complex_expert():
    """Paper Sect. 3: d_asym = d_sym - alpha * complexity brings complex experts closer.

    Hand-built case: 'simple' is nearer the target (symmetric), 'complex' is far from the
    trivial embedding (t0 = 1) and wins under the asymmetric distance with alpha = 0.15."""
    target = _emb([4, 4, 1, 1], trivial=1.0, name="target")
    simple = _emb([1, 1, 3, 3], trivial=1.0, name="simple")
    complex_ = _emb([4, 4, 0.01, 0.01], trivial=1.0, name="complex")
    far = _emb([0.01, 0.01, 5, 5], trivial=1.0, name="far")
    t0 = np.ones(4)
    sym = {e.name: _hand_dsym(e.values, target.values) for e in (simple, complex_, far)}
    asym = {e.name: sym[e.name] - 0.15 * _hand_dsym(e.values, t0) for e in (simple, complex_, far)}
    assert sym["simple"] < sym["complex"] < sym["far"] and asym["complex"] < asym["simple"]  # the construction

    index = ExpertIndex(alpha=0.15)
    for e in (far, simple, complex_):
        index.add(f"user/{e.name}", e)
    by_sym = index.select(target, k=3, metric="symmetric")
    by_asym = index.select(target, k=3, metric="asymmetric")
    assert [m.model_id for m in by_sym] == ["user/simple", "user/complex", "user/far"]
    assert [m.model_id for m in by_asym][:2] == ["user/complex", "user/simple"]
    assert by_asym[0].score == pytest.approx(asym["complex"], abs=1e-6)
    assert by_sym[0].score == pytest.approx(sym["simple"], abs=1e-6)
    # alpha = 0 is the symmetric ranking
    assert [m.model_id for m in index.select(target, k=3, alpha=0.0)] == [m.model_id for m in by_sym]


# -- index bookkeeping, persistence, errors ------------------------------------------------------------
def test_add_remove_info_and_duplicates():
    index = ExpertIndex()
    e = _emb([1.0, 2.0, 3.0], name="birds", label_names=json.dumps(["a", "b"]), task_source="user/birds")
    index.add("user/m", e, error=np.float64(0.25))
    assert index.info("user/m") == {"task": "birds", "dataset": "user/birds", "classes": ["a", "b"], "error": 0.25}
    with pytest.raises(ValueError, match="already in the index"):
        index.add("user/m", e)
    index.add("user/m", e, replace=True, error=0.5)
    assert len(index) == 1 and index.info("user/m")["error"] == 0.5
    with pytest.raises(ValueError, match="negative or non-finite"):
        index.add("bad", _emb([1.0, -1.0, 2.0]))
    with pytest.raises(TypeError, match="JSON"):
        index.add("user/x", e, weird=object())
    with pytest.raises(KeyError, match="no expert 'nope'"):
        index.remove("nope")
    with pytest.raises(ValueError, match="empty"):
        ExpertIndex().select(e)
    with pytest.raises(ValueError, match="no Model2Vec offsets"):
        index.select(e, metric="model2vec")


def test_mismatched_probe_between_index_and_query_is_a_clear_error():
    index = ExpertIndex()
    index.add("user/m", _emb([1.0, 2.0, 3.0]))
    other_probe = _emb([1.0, 2.0, 3.0], probe="embedded-mobilenetv2", probe_revision="sha256:b035")
    with pytest.raises(IncompatibleEmbeddingsError) as excinfo:
        index.select(other_probe)
    msg = str(excinfo.value)
    assert "probe 'embedded-mobilenetv2' vs 'embedded' (embed both with the same --probe)" in msg
    assert msg.startswith("cannot compare the query (task 't') with expert 'user/m': ")
    with pytest.raises(IncompatibleEmbeddingsError, match=r"image_size 64 vs 32 \(.* --image-size\)"):
        index.add("user/n", _emb([1.0, 2.0, 3.0], image_size="64"))
    with pytest.raises(IncompatibleEmbeddingsError, match="dimension"):
        index.select(_emb([1.0, 2.0]))


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    index = ExpertIndex(alpha=0.2)
    for i in range(4):
        index.add(f"user/m{i}", _emb(rng.gamma(1.0, 1.0, 16), name=f"task{i}"), error=0.1 * i, classes=["x", "y"])
    offsets = rng.normal(0, 0.1, 16).astype(np.float32)
    index.add("user/with-offset", _emb(rng.gamma(1.0, 1.0, 16) + 1, name="t5"), offset=offsets)
    index.model2vec_info = {"alpha": 0.2, "gamma": 3.0}
    query = _emb(rng.gamma(1.0, 1.0, 16), name="q")
    index.save(tmp_path / "idx")
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == [TABLE_FILE, TENSORS_FILE]  # no temp files left
    loaded = ExpertIndex.load(tmp_path / "idx")
    assert loaded.model_ids == index.model_ids and loaded.alpha == 0.2 and loaded.settings == index.settings
    assert loaded.rows() == index.rows() and loaded.model2vec_info == index.model2vec_info
    for metric in ("asymmetric", "symmetric", "model2vec"):
        np.testing.assert_array_equal(loaded.distances(query, metric), index.distances(query, metric))
    np.testing.assert_array_equal(loaded.offset("user/with-offset"), offsets)
    assert loaded.offset("user/m0") is None
    e0, l0 = index.embedding("user/m1"), loaded.embedding("user/m1")
    np.testing.assert_array_equal(e0.values, l0.values) and np.testing.assert_array_equal(e0.trivial, l0.trivial)
    assert l0.meta == e0.meta
    # the shared trivial embedding is stored once
    from safetensors.numpy import load_file

    assert load_file(tmp_path / "idx" / TENSORS_FILE)["trivial"].shape == (1, 16)
    # per-expert trivial embeddings (variational) are kept row by row
    index.add("user/own-trivial", _emb(rng.gamma(1.0, 1.0, 16), trivial=rng.gamma(1.0, 0.1, 16)))
    index.save(tmp_path / "idx2")
    again = ExpertIndex.load(tmp_path / "idx2" / TENSORS_FILE)
    np.testing.assert_array_equal(again.distances(query), index.distances(query))
    # a table that does not belong to the tensors is refused
    table = json.loads((tmp_path / "idx" / TABLE_FILE).read_text())
    table["experts"][0]["error"] = 0.99
    (tmp_path / "idx" / TABLE_FILE).write_text(json.dumps(table))
    with pytest.raises(EmbeddingFileError, match="does not belong"):
        ExpertIndex.load(tmp_path / "idx")
    with pytest.raises(EmbeddingFileError, match="not an expert index"):
        ExpertIndex.load(tmp_path / "nowhere")


# -- Model2Vec -----------------------------------------------------------------------------------------
def test_soft_labels_are_softmax_of_scaled_zscores():
    e = np.array([[0.1, 0.2, 0.3], [0.2, 0.2, 0.2], [0.1, np.nan, 0.3]])
    q = Model2Vec.soft_labels(e, a=20.0)
    z = np.array([-1.0, 0.0, 1.0]) * np.sqrt(1.5)  # (e - mean) / std with the population std
    w = np.exp(-20 * z)
    np.testing.assert_allclose(q[0], w / w.sum(), rtol=1e-12)
    np.testing.assert_allclose(q[1], [1 / 3] * 3)
    np.testing.assert_allclose(q[2], [1 / (1 + np.exp(-40)), 0.0, np.exp(-40) / (1 + np.exp(-40))], rtol=1e-9)


def _planted_problem(seed: int = 0):
    """Two clusters of tasks. Plain Task2Vec picks expert 1 for cluster A (its training task lies in
    that cluster) but the measured errors say expert 0 (trained on something that looks unrelated)
    is best there; expert 2 is best on cluster B, where it also lies."""
    rng = np.random.default_rng(seed)
    d = 40
    profile_a, profile_b, profile_0 = (rng.gamma(1.0, 1.0, d) for _ in range(3))
    jitter = lambda p: p * rng.lognormal(0.0, 0.2, d)  # noqa: E731
    experts = np.stack([jitter(profile_0), jitter(profile_a), jitter(profile_b)])
    tasks = np.stack([jitter(profile_a) for _ in range(10)] + [jitter(profile_b) for _ in range(10)])
    errors = np.empty((20, 3))
    errors[:10] = [0.10, 0.30, 0.50]
    errors[10:] = [0.40, 0.50, 0.10]
    errors += rng.normal(0.0, 0.01, errors.shape)
    return experts, tasks, errors, np.full((1, d), 1e-3)


def test_model2vec_recovers_a_planted_best_expert():
    experts, tasks, errors, trivial = _planted_problem()
    plain = pairwise_distances(experts, tasks, "asymmetric", 0.15, np.repeat(trivial, len(experts), axis=0)).T
    assert (plain[:10].argmin(1) == 1).all()  # Task2Vec alone gets cluster A wrong
    model = Model2Vec(steps=150).fit(experts, tasks, errors, expert_trivial=trivial)
    assert model.loss_history_[-1] < 0.5 * model.loss_history_[0]
    assert (model.expert_vectors_ > 0).all()
    np.testing.assert_allclose(model.expert_vectors_, experts + model.offsets_)
    np.testing.assert_array_equal(model.select(tasks), errors.argmin(1))
    # honest evaluation: each task's expert is chosen by a fit that never saw that task
    loo = Model2Vec.leave_one_task_out(experts, tasks, errors, expert_trivial=trivial, steps=150)
    assert (loo.selected == errors.argmin(1)).mean() >= 0.9
    assert loo.relative_error_increase < 0.1
    np.testing.assert_allclose(loo.optimal_error, errors.min(1))


def test_index_fit_model2vec_selects_the_planted_expert_and_saves_offsets(tmp_path):
    experts, tasks, errors, trivial = _planted_problem(seed=1)
    index = ExpertIndex()
    for j, f in enumerate(experts):
        index.add(f"user/expert-{j}", _emb(f, trivial=trivial[0]))
    train = [_emb(t, trivial=trivial[0], name=f"t{i}") for i, t in enumerate(tasks)]
    index.fit_model2vec(train[1:10] + train[11:], np.delete(errors, [0, 10], axis=0), steps=150)
    assert index.has_model2vec and index.model2vec_info["num_tasks"] == 18
    assert index.select(train[0], k=1)[0].model_id == "user/expert-1"  # plain Task2Vec
    assert index.select(train[0], k=1, metric="model2vec")[0].model_id == "user/expert-0"
    assert index.select(train[10], k=1, metric="model2vec")[0].model_id == "user/expert-2"
    index.save(tmp_path)
    assert ExpertIndex.load(tmp_path).select(train[0], k=1, metric="model2vec")[0].model_id == "user/expert-0"


# -- real data: the Hub and the CLI --------------------------------------------------------------------
EMBED = {"image_size": 32, "max_samples": 40, "progress": False}


def _push_image_dataset(name: str, classes: list[str], per_class: int = 20) -> None:
    """A small parquet image dataset of real offline Animal-MNIST images on the fake Hub."""
    from datasets import ClassLabel, Dataset, Features, Image

    from hf_task2vec.data import load_offline

    base = load_offline("animal-mnist", "train")
    names = base.features["label"].names
    labels = np.asarray(base["label"])
    images, ys = [], []
    for k, c in enumerate(classes):
        for i in np.nonzero(labels == names.index(c))[0][:per_class]:
            images.append(base[int(i)]["image"])
            ys.append(k)
    features = Features({"image": Image(), "label": ClassLabel(names=classes)})
    Dataset.from_dict({"image": images, "label": ys}, features=features).push_to_hub(name)


def test_add_hub_models_reads_the_card_and_embeds_its_dataset(hub_server, tmp_path):
    from huggingface_hub import HfApi

    from hf_task2vec import Task2Vec
    from hf_task2vec.cli import main

    _push_image_dataset("user/animals-cat-dog", ["cat", "dog"])
    api = HfApi()
    api.create_repo("user/effnet-cat-dog")
    card = "---\nlicense: apache-2.0\nlibrary_name: timm\ndatasets:\n- user/animals-cat-dog\n---\n# A cat/dog model\n"
    api.upload_file(path_or_fileobj=card.encode(), path_in_repo="README.md", repo_id="user/effnet-cat-dog")
    hub_server.create_repo("user/no-card")
    hub_server.commit("user/no-card", {"config.json": "{}"})

    index = ExpertIndex()
    with pytest.raises(Task2VecError, match="names no training dataset"):
        index.add_hub_models(["user/no-card"], **EMBED)
    added = index.add_hub_models(
        ["user/effnet-cat-dog", "user/no-card"], mapping={"user/no-card": "user/animals-cat-dog"}, **EMBED
    )
    assert added == ["user/effnet-cat-dog", "user/no-card"]
    info = index.info("user/effnet-cat-dog")
    assert info["dataset"] == "user/animals-cat-dog" and info["classes"] == ["cat", "dog"]
    assert info["model_revision"] == hub_server.head_sha("user/effnet-cat-dog") and info["library_name"] == "timm"
    assert info["dataset_revision"] == hub_server.head_sha("user/animals-cat-dog", "dataset")
    direct = Task2Vec("embedded", **EMBED).embed(load_task("user/animals-cat-dog"))
    np.testing.assert_array_equal(index.embedding("user/effnet-cat-dog").values, direct.values)
    assert index.settings["probe"] == "embedded" and index.settings["image_size"] == "32"

    # push / pull the index through a Hub dataset repo
    index.push_to_hub("user/expert-index")
    assert {TENSORS_FILE, TABLE_FILE, "README.md"} <= set(hub_server.list_files("user/expert-index", "dataset"))
    pulled = ExpertIndex.from_hub("user/expert-index", cache_dir=tmp_path / "cache")
    assert pulled.rows() == index.rows()
    np.testing.assert_array_equal(pulled.distances(direct), index.distances(direct))

    # the CLI: experts add / list / remove
    folder = str(tmp_path / "cli-index")
    assert main(["experts", "add", "user/effnet-cat-dog", "--index", folder, "--image-size", "32",
                 "--max-samples", "40"]) == 0  # fmt: skip
    assert ExpertIndex.load(folder).model_ids == ["user/effnet-cat-dog"]
    # the same embedding, up to float32 summation order (kernel choices are timed per process)
    np.testing.assert_allclose(ExpertIndex.load(folder).embedding("user/effnet-cat-dog").values, direct.values,
                               rtol=1e-4)
    assert main(["experts", "add", "user/no-card", "--index", folder]) == 2  # card names no dataset
    assert main(["experts", "add", "user/no-card", "--index", folder, "--dataset",
                 "user/no-card=user/animals-cat-dog"]) == 0  # fmt: skip
    assert main(["experts", "remove", "user/effnet-cat-dog", "--index", folder]) == 0
    assert ExpertIndex.load(folder).model_ids == ["user/no-card"]


def test_cli_select_end_to_end_on_real_offline_tasks(tmp_path, capsys):
    """Three experts trained (per their info) on real offline sub-tasks; the CLI embeds a new
    task with the index's probe settings and ranks them."""
    from hf_task2vec import Task2Vec
    from hf_task2vec.cli import main

    # exact: with the default robust Fisher this cat/dog query lands nearer the footwear expert (also at
    # 200 examples); recorded as an open finding of the embedding-quality issue, not asserted here
    embedder = Task2Vec("embedded", method="exact", **EMBED)
    index = ExpertIndex()
    for model_id, source, classes in [
        ("bench/fashion-footwear", "offline:fashion-mnist", ["Sandal", "Sneaker", "Ankle boot"]),
        ("bench/digits-0-4", "offline:digits", ["0", "1", "2", "3", "4"]),
        ("bench/animals-hoofed", "offline:animal-mnist", ["cow", "horse", "zebra"]),
    ]:
        index.add(model_id, embedder.embed(load_task(source, classes=classes)), error=0.1)
    index.save(tmp_path / "idx")

    code = main(["select", "offline:animal-mnist", "--classes", "cat,dog", "--experts", str(tmp_path / "idx"),
                 "-k", "3", "--json"])  # fmt: skip
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    query = index.embedder(progress=False).embed(load_task("offline:animal-mnist", classes=["cat", "dog"]))
    expected = index.select(query, k=3)
    assert [r["model_id"] for r in out["experts"]] == [m.model_id for m in expected]
    # the same embedder on the same examples: equal up to float32 rounding (scores differed by 3e-7
    # relative on a loaded 2-core box; the per-layer Fisher kernels are chosen by timing)
    np.testing.assert_allclose([r["score"] for r in out["experts"]], [m.score for m in expected], rtol=1e-5)
    assert out["experts"][0]["model_id"] == "bench/animals-hoofed"  # same domain
    assert out["experts"][0]["classes"] == ["cow", "horse", "zebra"]

    assert main(["select", "offline:digits", "--classes", "5,6", "--experts", str(tmp_path / "idx"), "-k", "1"]) == 0
    text = capsys.readouterr().out
    assert "1. bench/digits-0-4" in text and "lower is better" in text
    assert main(["experts", "list", "--index", str(tmp_path / "idx")]) == 0
    assert "3 experts, probe embedded" in capsys.readouterr().out
    # a query embedded with another image size is refused with the fix in the message
    other = Task2Vec("embedded", image_size=48, max_samples=20, progress=False).embed(
        load_task("offline:digits", classes=["5", "6"])
    )
    other.save(tmp_path / "q.safetensors")
    assert main(["select", str(tmp_path / "q.safetensors"), "--experts", str(tmp_path / "idx")]) == 2
    assert "image_size 48 vs 32 (embed both with the same --image-size)" in capsys.readouterr().err
