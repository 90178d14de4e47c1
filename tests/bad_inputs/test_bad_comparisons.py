"""One comparability rule (issue 23, item 1): `distance`, `select`, `nearest`, Model2Vec and the store
index refuse or skip embeddings made differently with the same one line, naming the option that fixes it.

Real embeddings where the rule is about what an embedder records: the paper's variational estimator on
a tiny MLP probe (its prior depends on ``--max-samples``), and real text on the real offline MiniLM
probe against the committed text expert index (embedded at max_length 64). Hand-made tiny embeddings
for the store and the message checks.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

from hf_task2vec import ExpertIndex, Task2Vec, TaskEmbedding, distance, distance_matrix, load_task
from hf_task2vec.cli import main
from hf_task2vec.compat import incompatibilities
from hf_task2vec.errors import IncompatibleEmbeddingsError
from hf_task2vec.hub import EmbeddingStore
from hf_task2vec.hub.index import INPUT_COLUMNS
from hf_task2vec.model2vec import Model2Vec
from tests.bad_inputs.common import REPO, assert_says, error_line, run_main, tiny_embedding
from tests.test_fisher import _blob_task, _mlp_probe


def _details(message: str) -> str:
    """The reasons of a "cannot compare A with B: REASONS" line (what must not depend on the command)."""
    assert message.startswith("cannot compare ") or "error: cannot compare " in message, message
    return message.split("cannot compare ", 1)[1].split(": ", 1)[1]


def _variational(max_samples: int, *, seed: int = 0, n: int = 90, head: str = "prototype"):
    return Task2Vec(_mlp_probe(), method="variational", max_samples=max_samples, seed=seed, progress=False,
                    device="cpu", head=head).embed(_blob_task(n=n, seed=seed))


@pytest.fixture(scope="module")
def prior_index() -> tuple[ExpertIndex, list[TaskEmbedding]]:
    """Two experts embedded by the paper's estimator with --max-samples 500 (prior_examples 500)."""
    experts = [_variational(500, seed=s) for s in (1, 2)]
    index = ExpertIndex()
    for i, e in enumerate(experts):
        index.add(f"user/expert-{i}", e)
    return index, experts


def test_select_refuses_a_query_on_another_prior(prior_index, tmp_path, capsys):
    index, experts = prior_index
    query = _variational(32)  # --max-samples 32: prior_examples 32, another trivial embedding
    assert query.meta["method"] == "variational" and not np.allclose(query.trivial, experts[0].trivial)
    with pytest.raises(IncompatibleEmbeddingsError) as from_select:
        index.select(query, k=2)
    line = str(from_select.value)
    assert line == (
        "cannot compare the query (task 'blobs') with expert 'user/expert-0': prior_examples 32 vs 500 (the "
        "robust-Fisher prior: embed both with the same --max-samples, in Python prior_examples=)"
    )
    with pytest.raises(IncompatibleEmbeddingsError) as from_distance:
        distance(query, experts[0])
    assert _details(str(from_distance.value)) == _details(line)  # the same reasons, word for word
    with pytest.raises(IncompatibleEmbeddingsError):
        index.distances(query)  # the scores behind select, too
    with pytest.raises(IncompatibleEmbeddingsError):
        index.select(query, k=1, exact=False)  # the two-stage search checks first as well

    # the command line: `select` and `distance` end with the same one line
    index.save(tmp_path / "idx")
    query.save(tmp_path / "q.safetensors")
    experts[0].save(tmp_path / "e.safetensors")
    rc, err = run_main(["select", str(tmp_path / "q.safetensors"), "--experts", str(tmp_path / "idx")], capsys)
    assert rc == 2
    select_line = error_line(err)
    assert select_line == f"hf-task2vec select: error: {line}"
    rc, err = run_main(["distance", str(tmp_path / "q.safetensors"), str(tmp_path / "e.safetensors")], capsys)
    assert rc == 2
    assert _details(error_line(err)) == _details(select_line)
    # a query embedded like the experts is ranked
    assert [m.model_id for m in index.select(_variational(500, seed=3), k=2)] != []


def test_an_index_saved_without_per_expert_metadata_still_checks_the_prior(prior_index, tmp_path):
    """Older indexes may lack the experts' metadata: the keys they do not record are unknown (not
    compared), the four settings every index records still are, and the trivial embeddings decide the prior.
    The head's form is known: every embedding written before it was recorded had the linear head."""
    index, experts = prior_index
    old = ExpertIndex()
    for i, e in enumerate(experts):
        old.add(f"user/expert-{i}", e)
    old._emb_meta = [{} for _ in old._emb_meta]  # what an index without embedding_meta loads as
    old.save(tmp_path / "old")
    loaded = ExpertIndex.load(tmp_path / "old")
    with pytest.raises(IncompatibleEmbeddingsError) as excinfo:
        loaded.select(_variational(32), k=1)
    assert_says(str(excinfo.value), "prior_examples 32 vs not recorded", "trivial embeddings", "--max-samples")
    other = tiny_embedding("q", dim=experts[0].dim, probe="mlp", method="variational")
    with pytest.raises(IncompatibleEmbeddingsError, match="probe_revision 'r1' vs"):
        loaded.select(other)
    with pytest.raises(IncompatibleEmbeddingsError, match="head 'prototype' vs 'linear'"):
        loaded.select(_variational(500, seed=3), k=2)
    assert len(loaded.select(_variational(500, seed=3, head="linear"), k=2)) == 2


def test_model2vec_refuses_tasks_on_another_prior(prior_index):
    _, experts = prior_index
    tasks = [_variational(32, seed=s) for s in (4, 5)]
    with pytest.raises(IncompatibleEmbeddingsError, match="prior_examples 32 vs 500"):
        Model2Vec(steps=2).fit(experts, tasks, np.array([[0.1, 0.2], [0.3, 0.1]]))


@pytest.fixture(scope="module")
def text_index() -> ExpertIndex:
    """The committed text expert index: real MiniLM embeddings of real texts at max_length 64."""
    index = ExpertIndex.load(REPO / "benchmarks" / "results" / "text_expert_index")
    assert index.embedding_options["max_length"] == "64"
    return index


def test_select_refuses_a_text_query_with_another_max_length(text_index, tmp_path, capsys):
    task = load_task("offline:fortunes", classes=["computers", "science"])
    query = text_index.embedder(max_length=32, max_samples=8, progress=False, device="cpu", batch_size=8).embed(task)
    assert query.meta["max_length"] == "32"
    with pytest.raises(IncompatibleEmbeddingsError) as excinfo:
        text_index.select(query)
    line = str(excinfo.value)
    assert "max_length 32 vs 64 (embed both with the same --max-length)" in line
    expert = text_index.model_ids[0]
    assert line.startswith(f"cannot compare the query (task {query.name!r}) with expert {expert!r}: ")
    with pytest.raises(IncompatibleEmbeddingsError) as from_distance:
        distance(query, text_index.embedding(expert))
    assert _details(str(from_distance.value)) == _details(line)

    query.save(tmp_path / "q.safetensors")
    rc, err = run_main(["select", str(tmp_path / "q.safetensors"), "--experts",
                        str(REPO / "benchmarks" / "results" / "text_expert_index")], capsys)
    assert rc == 2 and error_line(err) == f"hf-task2vec select: error: {line}"


# -- the store: nearest skips what it cannot compare --------------------------------------------------
def _prior(n: int) -> dict[str, str]:
    return {"method": "variational", "method_options": json.dumps({"prior_examples": str(n), "beta": "1.0"})}


def _robust(task: str, seed: int, n: int, **meta: str) -> TaskEmbedding:
    e = tiny_embedding(task, seed, **_prior(n), **meta)
    return TaskEmbedding(e.values + 1.0 / n, np.full(e.dim, 1.0 / n), e.layers, e.meta)  # trivial: beta / 2N-like


def test_nearest_skips_incomparable_entries_and_says_so(tmp_path, caplog, capsys):
    store = EmbeddingStore(str(tmp_path / "store"))
    comparable = [_robust(f"ok{i}", i, 500) for i in range(3)]
    other_prior = _robust("prior32", 7, 32)  # the index cannot tell: its file decides
    other_probe = _robust("probe", 8, 500, probe="other")  # the index decides
    store.push([*comparable, other_prior, other_probe])
    query = _robust("query", 9, 500)

    with caplog.at_level(logging.WARNING, logger="hf_task2vec.hub.store"):
        found = store.nearest(query, k=10)
    assert sorted(found["key"]) == [f"tiny/ok{i}" for i in range(3)]
    skipped = found.attrs["skipped"]
    assert sorted(skipped) == ["other/probe", "tiny/prior32"]
    assert skipped["tiny/prior32"] == (
        "cannot compare the query 'query' with stored 'tiny/prior32': prior_examples 500 vs 32 (the robust-Fisher "
        "prior: embed both with the same --max-samples, in Python prior_examples=)"
    )
    assert_says(skipped["other/probe"], "probe 'tiny' vs 'other'", "--probe")
    warned = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(warned) == 2 and all(any(line in w for w in warned) for line in skipped.values())  # one line each
    with pytest.raises(IncompatibleEmbeddingsError) as excinfo:
        distance(query, other_prior)
    assert _details(str(excinfo.value)) == _details(skipped["tiny/prior32"])  # nearest == distance

    # the command: the comparable ones are listed, the others skipped with a warning each
    query.save(tmp_path / "q.safetensors")
    capsys.readouterr()
    rc = main(["nearest", str(tmp_path / "q.safetensors"), "--repo", str(tmp_path / "store")])
    out = capsys.readouterr().out
    assert rc == 0 and "tiny/ok0" in out and "tiny/prior32" not in out and "skipped 2 stored embedding(s)" in out

    # nothing comparable left: an error naming the reasons and the options that fix them
    with pytest.raises(IncompatibleEmbeddingsError) as excinfo:
        store.nearest(_robust("q", 10, 64, image_size="64"))
    assert_says(str(excinfo.value), "none of the 5 embeddings", "image_size 64 vs 32", "--image-size")


def test_nearest_on_an_old_index_lets_the_files_decide_the_text_settings(tmp_path):
    """A store index written before the text columns existed: unknown there, so the files decide."""
    text = {"modality": "text", "image_size": "", "pooling": "mean"}
    store = EmbeddingStore(str(tmp_path / "store"))
    store.push([tiny_embedding("a", 1, max_length="64", **text), tiny_embedding("b", 2, max_length="32", **text)])
    path = tmp_path / "store" / "index.parquet"
    pd.read_parquet(path).drop(columns=list(INPUT_COLUMNS)).to_parquet(path, index=False)
    assert EmbeddingStore(str(tmp_path / "store")).index()["max_length"].isna().all()
    found = EmbeddingStore(str(tmp_path / "store")).nearest(tiny_embedding("q", 3, max_length="32", **text))
    assert list(found["key"]) == ["tiny/b"]
    assert "max_length 32 vs 64 (embed both with the same --max-length)" in found.attrs["skipped"]["tiny/a"]


# -- the rule itself --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"probe": "other"}, "probe 'other' vs 'tiny' (embed both with the same --probe)"),
        ({"probe_revision": "r2"}, "probe_revision 'r2' vs 'r1'"),
        ({"method": "exact"}, "method 'exact' vs 'montecarlo' (embed both with the same --method)"),
        ({"image_size": "64"}, "image_size 64 vs 32 (embed both with the same --image-size)"),
        ({"max_length": "32"}, "max_length 32 vs 64 (embed both with the same --max-length)"),
        ({"pooling": "cls"}, "pooling 'cls' vs 'mean' (embed both with the same pooling: load_probe(..., pooling="),
    ],
)
def test_distance_select_and_nearest_say_the_same_line(tmp_path, change, says):
    base = {"max_length": "64", "pooling": "mean"}
    expert = tiny_embedding("expert", 1, **base)
    query = tiny_embedding("query", 2, **{**base, **change})
    lines = []
    for call in (
        lambda: distance(query, expert),
        lambda: distance_matrix([query, expert]),
        lambda: _index_of(expert).select(query),
    ):
        with pytest.raises(IncompatibleEmbeddingsError) as excinfo:
            call()
        lines.append(str(excinfo.value))
    store = EmbeddingStore(str(tmp_path / "store"))
    store.push([expert])
    with pytest.raises(IncompatibleEmbeddingsError) as excinfo:
        store.nearest(query)
    assert says in lines[0]
    assert len({_details(line) for line in lines}) == 1, lines
    assert says in str(excinfo.value)


def _index_of(expert: TaskEmbedding) -> ExpertIndex:
    index = ExpertIndex()
    index.add("user/expert", expert)
    return index


def test_a_forged_trivial_tensor_is_named_as_such():
    a = _robust("a", 1, 500)
    forged = TaskEmbedding(a.values, a.trivial * 3, a.layers, {**a.meta, "task": "b"})
    (problem,) = incompatibilities(a.meta, forged.meta, dims=(a.dim, forged.dim), trivials=(a.trivial, forged.trivial))
    assert_says(str(problem), "trivial embedding", "both record prior_examples 500", "re-embed")
    assert "500 vs 500" not in str(problem)


def test_unknown_keys_are_not_compared_but_known_ones_are():
    """A key one side does not record (written before it existed) is unknown; the always-recorded
    keys are compared even when empty (a text embedding has no image size)."""
    old_text = tiny_embedding("old", 1, image_size="")  # no max_length / pooling recorded
    new_text = tiny_embedding("new", 2, image_size="", max_length="32", pooling="mean")
    assert distance(old_text, new_text) >= 0
    with pytest.raises(IncompatibleEmbeddingsError, match="image_size none vs 32"):
        distance(old_text, tiny_embedding("img", 3))
