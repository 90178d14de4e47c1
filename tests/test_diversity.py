"""The diversity coefficient (Beyond Scale, Miranda, Lee et al. 2023) on real text.

Supervised objective: the real offline MiniLM (``embedded-text``). Next-token objective: a tiny
GPT-2-architecture model trained from scratch on the offline text by
``benchmarks/train_tiny_gpt2.py`` (no GPT-2 weights are available offline).
"""

from __future__ import annotations

import numpy as np
import pytest


def _two_class(name: str, classes: list[str], per_class: int, seed: int = 0):
    """``per_class`` real examples of each of ``classes`` of an offline text dataset, labels 0/1."""
    import datasets

    from hf_task2vec.data import load_offline

    ds = load_offline(name, "train")
    names = ds.features["label"].names
    labels = np.asarray(ds["label"])
    rng = np.random.default_rng(seed)
    rows = []
    for c in classes:
        rows.extend(rng.choice(np.flatnonzero(labels == names.index(c)), per_class, replace=False).tolist())
    rng.shuffle(rows)
    sub = ds.select(rows)
    feat = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["a", "b"])})
    return datasets.Dataset.from_dict(
        {"text": [t[:300] for t in sub["text"]], "label": [classes.index(names[i]) for i in sub["label"]]},
        features=feat,
    )


@pytest.fixture(scope="module")
def minilm():
    from hf_task2vec.probes import load_probe

    return load_probe("embedded-text", max_length=24)


SUP = dict(batch_size=8, num_batches=3, method="exact", progress=False, device="cpu")


@pytest.mark.slow
def test_copies_of_one_batch_have_zero_diversity(minilm):
    import datasets

    import hf_task2vec as t2v

    one = _two_class("fortunes", ["computers", "science"], 4)
    copies = datasets.concatenate_datasets([one, one, one])
    r = t2v.diversity(copies, minilm, shuffle=False, **SUP)  # three batches, each the same 8 texts
    assert r.coefficient < 1e-6 and r.distances.shape == (3, 3)
    real = t2v.diversity(_two_class("fortunes", ["computers", "science"], 12), minilm, **SUP)
    assert real.coefficient > 100 * max(r.coefficient, 1e-9)
    assert real.ci_low <= real.coefficient <= real.ci_high
    assert real.options["objective"] == "supervised" and real.options["distance"] == "cosine"


@pytest.mark.slow
def test_union_and_cross_of_unrelated_datasets_exceed_each(minilm):
    import datasets

    import hf_task2vec as t2v

    a = _two_class("fortunes", ["computers", "science"], 12)
    b = _two_class("spamassassin", ["ham", "spam"], 12)
    union = datasets.concatenate_datasets([a, b])
    opts = {**SUP, "num_batches": 4}
    da, db, du = (t2v.diversity(d, minilm, **opts) for d in (a, b, union))
    # measured here (2 cores, load 18): A 0.250, B 0.294, union 0.393 (CI 0.361-0.426)
    assert du.coefficient > max(da.coefficient, db.coefficient)
    cross = t2v.cross_diversity(a, b, minilm, **opts)
    assert cross.coefficient > max(da.coefficient, db.coefficient)
    assert cross.distances.shape == (4, 4) and cross.to_dict()["num_pairs"] == 16


def test_diversity_argument_errors(minilm):
    import hf_task2vec as t2v
    from hf_task2vec.errors import TaskError

    ds = _two_class("fortunes", ["computers", "science"], 4)
    with pytest.raises(TaskError, match="fewer than batch_size"):
        t2v.diversity(ds, minilm, batch_size=64, num_batches=2, progress=False)
    with pytest.raises(ValueError, match="causal-LM probe"):
        t2v.diversity(ds, minilm, objective="next-token", progress=False)
    with pytest.raises(ValueError, match="num_batches >= 2"):
        t2v.diversity(ds, minilm, batch_size=4, num_batches=1, progress=False)


# -- next-token objective on a tiny GPT-2 trained here ---------------------------------------------
def test_tiny_gpt2_is_a_causal_text_probe(tiny_gpt2):
    assert tiny_gpt2.causal and tiny_gpt2.settings["objective"] == "next-token"
    # GPT-2's Conv1D layers became nn.Linear: per block c_attn (3*32), attn c_proj, mlp c_fc (4*32), c_proj
    assert tiny_gpt2.dim == 2 * (3 * 32 + 32 + 4 * 32 + 32)
    x = tiny_gpt2.tokenize(["a short text", "a somewhat longer text about computers"])
    assert x["loss_mask"].sum() == (x["attention_mask"].sum(1) - 1).sum()


NT = dict(batch_size=8, num_batches=3, head_steps=5, progress=False, device="cpu")


@pytest.mark.slow
def test_next_token_diversity_properties(tiny_gpt2):
    import hf_task2vec as t2v

    fortunes = _two_class("fortunes", ["computers", "science"], 12)["text"]
    copies = fortunes[:8] * 3
    zero = t2v.diversity(copies, tiny_gpt2, shuffle=False, **NT)
    assert zero.options["objective"] == "next-token"
    assert zero.coefficient < 1e-6  # identical batches, same token draws: identical embeddings
    real = t2v.diversity(fortunes, tiny_gpt2, **NT)
    assert real.coefficient > 100 * max(zero.coefficient, 1e-9)
    for e in real.embeddings:  # the LM head was fine-tuned on each batch
        assert float(e.meta["head_loss_after"]) < float(e.meta["head_loss_before"])
        assert e.meta["objective"] == "next-token" and np.isfinite(e.values).all() and e.values.max() > 0


@pytest.mark.slow
def test_cli_diversity_writes_json(tmp_path):
    import json

    from hf_task2vec.cli import main

    out = tmp_path / "div.json"
    rc = main([
        "diversity", "offline:fortunes", "--classes", "computers,science", "--batch-size", "6", "--num-batches", "2",
        "--max-length", "16", "--method", "exact", "--device", "cpu", "--no-progress", "--json", str(out),
    ])
    assert rc == 0
    found = json.loads(out.read_text())
    assert found["objective"] == "supervised" and found["num_pairs"] == 2 and 0 < found["coefficient"] < 1
    assert found["paper_reference_values_gpt2"]["C4"] == 0.2374
