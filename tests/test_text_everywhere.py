"""Text tasks everywhere else (issue 12, item 6): the Hub store's index and card, batch runs,
`diversity(max_length=...)` and the domain embedding, on real weights and real text.

The text probe is the real offline all-MiniLM-L6-v2 (``embedded-text``), the texts are real
fortunes (``offline:fortunes``), the image embedding is made on real Animal-MNIST images with the
real offline image probe; the Hub is the local fake Hub of tests/hub_server.py with the real
``huggingface_hub`` client. Everything is kept small (a few dozen texts, a short ``max_length``).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from huggingface_hub import HfApi

import hf_task2vec as t2v
from hf_task2vec import gateway
from hf_task2vec.batch import BatchConfigError, load_batch_config, run_batch
from hf_task2vec.embedding import TaskEmbedding
from hf_task2vec.errors import IncompatibleEmbeddingsError
from hf_task2vec.hub import INDEX_COLUMNS, EmbeddingStore
from hf_task2vec.hub.index import INPUT_COLUMNS

MAX_LENGTH = 16


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch):
    monkeypatch.setattr(gateway, "RETRY_WAIT", 0.01)


@pytest.fixture(scope="module")
def text_probe():
    from hf_task2vec.probes import load_probe

    return load_probe("embedded-text", max_length=MAX_LENGTH)


@pytest.fixture(scope="module")
def text_emb(text_probe) -> TaskEmbedding:
    """A real text embedding: 24 fortunes (computers vs science), MiniLM, max_length 16."""
    task = t2v.load_task("offline:fortunes", classes=["computers", "science"])
    embedder = t2v.Task2Vec(
        text_probe, method="montecarlo", max_samples=24, batch_size=12, progress=False, device="cpu"
    )
    return embedder.embed(task)


@pytest.fixture(scope="module")
def image_emb() -> TaskEmbedding:
    """A real image embedding: 16 Animal-MNIST images (cat vs dog), the offline probe at 32 px."""
    return t2v.embed(
        "offline:animal-mnist",
        classes=["cat", "dog"],
        method="montecarlo",
        max_samples=16,
        image_size=32,
        batch_size=16,
        progress=False,
        device="cpu",
    )


def _two_class(classes: list[str], per_class: int, *, cut: int = 300):
    """``per_class`` real fortunes of each of ``classes`` (cut at ``cut`` characters), labels 0/1."""
    import datasets

    from hf_task2vec.data import load_offline

    ds = load_offline("fortunes", "train")
    names = ds.features["label"].names
    labels = np.asarray(ds["label"])
    rows = [int(i) for c in classes for i in np.flatnonzero(labels == names.index(c))[:per_class]]
    texts = [ds[i]["text"][:cut] for i in rows]
    feat = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=classes)})
    return datasets.Dataset.from_dict(
        {"text": texts, "label": [classes.index(names[ds[i]["label"]]) for i in rows]}, features=feat
    )


# -- the Hub store: index columns and card ------------------------------------------------------
def _row(index: pd.DataFrame, key: str) -> dict:
    return index.set_index("key").loc[key].to_dict()


def test_hub_index_and_card_record_modality_and_tokenizer_settings(hub_server, text_emb, image_emb, tmp_path):
    assert text_emb.meta["modality"] == "text" and text_emb.meta["max_length"] == str(MAX_LENGTH)
    store = EmbeddingStore("user/mixed")
    store.push([text_emb, image_emb])

    index = store.index()
    assert tuple(index.columns) == INDEX_COLUMNS
    text_key, image_key = "embedded-text/offline_fortunes_computers_science", "embedded/offline_animal-mnist_cat_dog"
    text_row, image_row = _row(index, text_key), _row(index, image_key)
    # read from the embedding's own provenance (Task2Vec.provenance: max_length, pooling, text_settings)
    settings = json.loads(text_emb.meta["text_settings"])
    assert text_row["modality"] == "text" and text_row["max_length"] == MAX_LENGTH and text_row["pooling"] == "mean"
    assert text_row["tokenizer"] == f"{settings['tokenizer_source']} ({settings['tokenizer']})"
    assert text_row["tokenizer"] == "embedded-text (BertTokenizer)"
    assert text_row["tokenizer_revision"] == text_emb.meta["probe_revision"] != ""
    assert text_row["image_size"] == ""
    assert image_row["modality"] == "image" and image_row["image_size"] == "32"
    assert pd.isna(image_row["max_length"]) and image_row["pooling"] == "" and image_row["tokenizer"] == ""

    # the parquet file itself, read without hf_task2vec
    raw = pd.read_parquet(
        HfApi().hf_hub_download("user/mixed", "index.parquet", repo_type="dataset", cache_dir=tmp_path / "c")
    )
    assert set(INPUT_COLUMNS) <= set(raw.columns)
    assert list(raw["modality"]) == ["text", "image"] and raw["max_length"].iloc[0] == MAX_LENGTH

    card = hub_server.get_file("user/mixed", "README.md", "dataset").decode()
    yaml.safe_load(card.split("---\n")[1])  # the YAML header still parses
    assert "for text, also with the same tokenizer settings (`max_length`, `pooling`)" in card
    assert "- **Text** (1):" in card and "- **Images** (1):" in card
    assert (
        f"tokenizer `embedded-text (BertTokenizer)` at `{text_emb.meta['probe_revision']}`, max_length 16, "
        "pooling `mean`" in card
    )
    assert "| `modality` |" in card and "| `tokenizer_revision` |" in card  # the index columns are documented
    assert f"| `{text_key}` |" in card and "| text 16 tok mean |" in card and "| image 32px |" in card
    assert 'probe="embedded-text", max_length=16)' in card  # how to embed a comparable text query
    assert "image_size=32)" in card

    # nearest: a text query meets the text embedding only; other tokenizer settings are refused
    near = store.nearest(text_emb, k=5)
    assert list(near["key"]) == [text_key]
    other = TaskEmbedding(text_emb.values, text_emb.trivial, text_emb.layers, {**text_emb.meta, "max_length": "32"})
    with pytest.raises(IncompatibleEmbeddingsError, match="max_length 32"):
        store.nearest(other)


def test_an_index_without_the_input_columns_loads_and_a_push_fills_them(hub_server, text_emb, image_emb):
    store = EmbeddingStore("user/old")
    store.push([text_emb, image_emb])
    # the index an older hf_task2vec wrote: no input columns
    api = HfApi()
    old = pd.read_parquet(io.BytesIO(hub_server.get_file("user/old", "index.parquet", "dataset")))
    old = old.drop(columns=list(INPUT_COLUMNS))
    buffer = io.BytesIO()
    old.to_parquet(buffer, index=False)
    api.upload_file(
        path_or_fileobj=buffer.getvalue(), path_in_repo="index.parquet", repo_id="user/old", repo_type="dataset"
    )

    reopened = EmbeddingStore("user/old")
    index = reopened.index()
    assert tuple(index.columns) == INDEX_COLUMNS and index["modality"].isna().all()
    assert reopened.pull("embedded-text/offline_fortunes_computers_science").meta["max_length"] == "16"

    # pushing the same embeddings again uploads no embedding, but rewrites the index with the columns filled
    result = reopened.push([text_emb])
    assert result.uploaded == ["index.parquet"]  # (the card was written from the full rows already)
    index = EmbeddingStore("user/old").index()
    rows = {r["key"]: r for r in index.to_dict("records")}
    text_row = rows["embedded-text/offline_fortunes_computers_science"]
    image_row = rows["embedded/offline_animal-mnist_cat_dog"]
    assert (text_row["modality"], text_row["max_length"], text_row["pooling"]) == ("text", 16, "mean")
    assert text_row["tokenizer"] == "embedded-text (BertTokenizer)"
    assert image_row["modality"] == "image"
    card = hub_server.get_file("user/old", "README.md", "dataset").decode()
    assert "| text 16 tok mean |" in card
    assert not reopened.push([text_emb]).changed  # filled once: nothing left to do


# -- batch runs --------------------------------------------------------------------------------
def _text_config(store: Path) -> dict:
    return {
        "store": str(store),
        "probe": "embedded-text",
        "method": "montecarlo",
        "shard": "tasks",
        "options": {"max_samples": 12, "max_length": MAX_LENGTH, "batch_size": 12, "seed": 0},
        "tasks": [
            {
                "source": "offline:fortunes",
                "groups": {"comp-sci": ["computers", "science"], "food-law": ["food", "law"]},
            }
        ],
    }


def test_batch_run_on_text_tasks_writes_the_store(tmp_path):
    config = tmp_path / "text.yaml"
    config.write_text(yaml.safe_dump(_text_config(tmp_path / "store")))
    report = run_batch(config, progress=False, cpu=True)
    assert report.ok, report.failed
    assert sorted(report.embedded) == ["comp-sci", "food-law"]

    store = EmbeddingStore(tmp_path / "store")
    index = store.index()
    assert list(index["key"]) == ["embedded-text/comp-sci", "embedded-text/food-law"]
    assert set(index["modality"]) == {"text"} and set(index["max_length"]) == {MAX_LENGTH}
    emb = store.pull("embedded-text/comp-sci")
    assert emb.meta["max_length"] == "16" and json.loads(emb.meta["label_names"]) == ["computers", "science"]
    assert emb.dim == 6 * (3 * 384 + 384 + 1536 + 384) and emb.meta["num_samples"] == "12"
    # a rerun resumes: the same settings are done; another max_length is refused, not silently mixed
    again = run_batch(config, progress=False, cpu=True)
    assert sorted(again.skipped) == ["comp-sci", "food-law"] and not again.embedded
    other = _text_config(tmp_path / "store")
    other["options"]["max_length"] = 24
    changed = run_batch(other, progress=False, cpu=True, dry_run=True)
    assert set(changed.failed) == {"comp-sci", "food-law"} and "max_length" in changed.failed["comp-sci"]


@pytest.mark.parametrize("bad", [1, "16", 2.5, True])
def test_batch_config_max_length_is_checked(tmp_path, bad):
    config = _text_config(tmp_path / "store")
    config["options"]["max_length"] = bad
    with pytest.raises(BatchConfigError, match="max_length"):
        load_batch_config(config)


def test_batch_config_max_length_needs_a_text_probe(tmp_path):
    config = _text_config(tmp_path / "store")
    config["probe"] = "embedded"
    with pytest.raises(BatchConfigError, match="max_length applies to text probes"):
        run_batch(config, progress=False, cpu=True, dry_run=True)


# -- diversity(max_length=...) -----------------------------------------------------------------
def test_diversity_max_length_is_used_and_leaves_the_probe_alone(text_probe):
    ds = _two_class(["computers", "science"], 8)
    result = t2v.diversity(
        ds, text_probe, batch_size=8, num_batches=2, max_length=8, method="exact", progress=False, device="cpu"
    )
    assert text_probe.max_length == MAX_LENGTH  # the caller's probe is unchanged
    assert result.options["max_length"] == "8"
    for e in result.embeddings:  # the batches were truncated at 8 tokens
        assert e.meta["max_length"] == "8" and json.loads(e.meta["text_settings"])["max_length"] == "8"
    default = t2v.diversity(ds, text_probe, batch_size=8, num_batches=2, method="exact", progress=False, device="cpu")
    assert default.options["max_length"] == str(MAX_LENGTH)
    assert {e.meta["max_length"] for e in default.embeddings} == {str(MAX_LENGTH)}
    with pytest.raises(ValueError, match="max_length"):
        t2v.diversity(ds, text_probe, batch_size=8, num_batches=2, max_length=1, progress=False, device="cpu")


def test_next_token_diversity_keeps_the_probe_and_records_max_length(tiny_gpt2):
    head = tiny_gpt2.head
    weight = head.weight.detach().clone()
    texts = _two_class(["computers", "science"], 8)["text"]
    result = t2v.diversity(
        texts, tiny_gpt2, batch_size=8, num_batches=2, head_steps=3, max_length=12, progress=False, device="cpu"
    )
    assert tiny_gpt2.head is head and torch_equal(tiny_gpt2.head.weight, weight)  # per-batch heads were copies
    assert tiny_gpt2.max_length == 24 and result.options["max_length"] == "12"
    for e in result.embeddings:  # the same text provenance keys as Task2Vec's
        assert (e.meta["modality"], e.meta["max_length"], e.meta["pooling"]) == ("text", "12", "next-token")
        assert json.loads(e.meta["text_settings"])["max_length"] == "12"


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a.detach().cpu(), b.detach().cpu()))


# -- domain embedding ----------------------------------------------------------------------------
def test_domain_embedding_of_text_ignores_padding(text_probe):
    """Five short real fortunes and one long text: embedded one text per batch (no padding at all)
    or all in one batch (the short ones padded to the long one's length) give the same domain
    embedding: padding tokens are masked out of the mean activations."""
    import datasets

    short = _two_class(["computers", "science"], 3, cut=20)
    texts = short["text"][:5] + [" ".join(["computers"] * 100)]
    labels = short["label"][:5] + [1]
    ds = datasets.Dataset.from_dict({"text": texts, "label": labels}, features=short.features)
    task = t2v.load_task(ds)
    lengths = text_probe.tokenize(texts, max_length=32)["attention_mask"].sum(1)
    assert int(lengths.max()) == 32 and int(lengths.min()) < 12  # in one batch, most tokens are padding
    common = dict(max_length=32, progress=False, device="cpu")
    alone = t2v.domain_embedding(task, text_probe, batch_size=1, **common)
    together = t2v.domain_embedding(task, text_probe, batch_size=6, **common)
    assert alone.dim == together.dim == text_probe.dim
    np.testing.assert_allclose(together.values, alone.values, atol=1e-5, rtol=0)
    assert alone.meta["modality"] == "text" and alone.meta["max_length"] == "32"
    assert text_probe.max_length == MAX_LENGTH  # max_length truncated with a copy of the probe
    assert alone.meta["method"] == "domain" and alone.meta["pooling"] == "mean"
