"""Experts that ship as repos (hf_task2vec.experts): base + PEFT LoRA adapter + head + card.

Real weights and real data: the zoo in benchmarks/zoo (built by benchmarks/build_zoo.py from the offline
bases and datasets, committed to git), loaded from its folders and from a Hub model repo on the local Hub
server (tests/hub_server.py). Each bad repo (unknown base, base of another revision, adapter of another
base, altered file, no card) gets one `ExpertError` line naming the expert and the fix.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import hf_task2vec as t2v
from hf_task2vec.errors import ExpertError
from hf_task2vec.experts import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_FILE,
    CARD_FILE,
    EMBEDDING_FILE,
    HEAD_FILE,
    expert_entry,
    load_base,
    load_expert,
    read_card,
    replace_task_embedding,
)
from hf_task2vec.rerank import ExpertSkippedWarning
from hf_task2vec.sampling import balanced_sample

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "benchmarks" / "zoo"
IMAGE_EXPERT = ZOO / "lite0-animals-all"
OTHER_BASE_EXPERT = ZOO / "lite1-animals-all"
TEXT_EXPERT = ZOO / "l6-fortunes-computers-science"
L3_EXPERT = ZOO / "l3-fortunes-computers-science"


def _card_section(folder: Path) -> dict:
    return read_card(folder)["hf_task2vec"]


def _test_error(expert, task: t2v.Task, n_per_class: int, seed: int = 123) -> float:
    idx = balanced_sample(task.labels, n_per_class * task.num_classes, seed)
    transform = expert.probe.transform()  # images: resize + normalise; texts: the tokenizer
    logits = torch.cat([expert.logits(task.get_inputs(idx[i : i + 128], transform)) for i in range(0, len(idx), 128)])
    # the head's classes are the card's label names; the task's are the same names (maybe in another order)
    to_task = torch.as_tensor([task.label_names.index(n) for n in expert.label_names])
    pred = to_task[logits.argmax(1)].numpy()
    return float(np.mean(pred != task.labels[idx]))


def _copy(src: Path, tmp_path: Path, name: str | None = None) -> Path:
    return Path(shutil.copytree(src, tmp_path / (name or src.name)))


def _edit_card(folder: Path, old: str, new: str) -> None:
    card = folder / CARD_FILE
    text = card.read_text()
    assert old in text
    card.write_text(text.replace(old, new, 1))


# -- real experts ---------------------------------------------------------------------------------------
def test_image_expert_from_the_zoo_classifies_its_source_task():
    expert = load_expert(IMAGE_EXPERT)
    sec = _card_section(IMAGE_EXPERT)
    assert expert.model_id == sec["model_id"] and expert.label_names == sec["source_classes"]
    assert expert.commit is None and expert.origin.startswith("folder:")
    assert expert.head_weight.shape == (10, expert.probe.num_features)
    task = t2v.load_task("offline:animal-mnist", split="test", classes=sec["source_classes"])
    err = _test_error(expert, task, n_per_class=30)
    # 300 test images (others than the card's 1,000 where the sample differs): binomial sd ~0.02
    assert err <= sec["source_test_error"] + 0.08, (err, sec["source_test_error"])
    assert err < 0.5  # chance is 0.9

    # the merged adapter changes the base network's features (the adapter is not a no-op)
    base = load_base("embedded", image_size=32)
    x = task.get_inputs(np.arange(8), base.transform())
    with torch.no_grad():
        diff = (expert.probe.features(x) - base.features(x)).abs().max().item()
    assert diff > 1e-3


def test_text_experts_of_both_text_bases_classify_their_source_task():
    for folder in (TEXT_EXPERT, L3_EXPERT):
        expert = load_expert(folder)
        sec = _card_section(folder)
        assert type(expert.probe).__name__ == "TextProbe"
        task = t2v.load_task("offline:fortunes", split="test", classes=sec["source_classes"])
        err = _test_error(expert, task, n_per_class=40)
        assert err <= sec["source_test_error"] + 0.12, (folder.name, err, sec["source_test_error"])
        assert err < 0.35, folder.name  # two classes: chance is 0.5


def test_card_names_base_data_and_embedding_as_a_peft_user_expects():
    meta = read_card(IMAGE_EXPERT)
    assert meta["library_name"] == "peft" and meta["base_model"] == "timm/tf_efficientnet_lite0.in1k"
    assert meta["datasets"] == ["offline:animal-mnist"]
    adapter_cfg = json.loads((IMAGE_EXPERT / ADAPTER_CONFIG_FILE).read_text())
    assert adapter_cfg["peft_type"] == "LORA" and adapter_cfg["base_model_name_or_path"] == meta["base_model"]
    sec = meta["hf_task2vec"]
    emb = t2v.TaskEmbedding.load(IMAGE_EXPERT / EMBEDDING_FILE)
    assert sec["task_embedding"]["probe"] == emb.meta["probe"] == "embedded"
    assert sec["task_embedding"]["estimator"] == emb.method
    assert sec["training"]["seed"] > 0 and sec["training"]["seconds"] > 0
    for name in (ADAPTER_CONFIG_FILE, ADAPTER_FILE, HEAD_FILE, EMBEDDING_FILE):
        assert name in sec["files_sha256"]


def test_index_from_the_cards_records_how_to_load_each_expert_and_reranks_without_skipping():
    folders = [IMAGE_EXPERT, OTHER_BASE_EXPERT]
    index = t2v.ExpertIndex.from_expert_repos(folders, relative_to=ROOT)
    ids = [_card_section(f)["model_id"] for f in folders]
    assert index.model_ids == ids
    info = index.info(ids[0])
    assert info["weights"] == {"expert_repo": "benchmarks/zoo/lite0-animals-all"}
    assert info["base"] == "embedded" and info["error"] == _card_section(IMAGE_EXPERT)["source_test_error"]
    model_id, emb, _ = expert_entry(IMAGE_EXPERT)
    np.testing.assert_array_equal(index.embedding(model_id).values, emb.values)

    query = t2v.load_task("offline:animal-mnist", split="test", classes=["cat", "dog", "bird"])
    query = query.subset(balanced_sample(query.labels, 60, 0))
    query_emb = index.embedder(max_samples=60, progress=False).embed(query)
    # an index built from the cards ranks like one built from the embeddings themselves
    by_hand = t2v.ExpertIndex()
    for folder in folders:
        by_hand.add(_card_section(folder)["model_id"], t2v.TaskEmbedding.load(folder / EMBEDDING_FILE))
    for metric in ("asymmetric", "symmetric"):
        mine, theirs = index.select(query_emb, metric=metric), by_hand.select(query_emb, metric=metric)
        assert [(m.model_id, m.score) for m in mine] == [(m.model_id, m.score) for m in theirs]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExpertSkippedWarning)  # every expert of the index loads
        picked = index.select(query_emb, k=2, rerank="logme", examples=query, shortlist=2)
    assert sorted(m.model_id for m in picked) == sorted(ids)
    assert all(np.isfinite(m.rerank_score) for m in picked)


# -- the Hub ---------------------------------------------------------------------------------------------
def test_expert_from_a_hub_model_repo_equals_the_folder(hub_server, tmp_path):
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo("user/lite0-animals-all", repo_type="model")
    api.upload_folder(folder_path=str(IMAGE_EXPERT), repo_id="user/lite0-animals-all", repo_type="model")
    head = hub_server.head_sha("user/lite0-animals-all", "model")
    expert = load_expert("user/lite0-animals-all", cache_dir=tmp_path / "cache")
    assert expert.commit == head and expert.origin == f"hub:user/lite0-animals-all@{head}"
    local = load_expert(IMAGE_EXPERT)
    task = t2v.load_task("offline:animal-mnist", split="test", classes=local.label_names)
    x = task.get_inputs(balanced_sample(task.labels, 20, 0), local.probe.transform())
    torch.testing.assert_close(expert.logits(x), local.logits(x))

    index = t2v.ExpertIndex.from_expert_repos(["user/lite0-animals-all"], cache_dir=tmp_path / "cache")
    assert index.info(index.model_ids[0])["weights"] == {"expert_repo": "user/lite0-animals-all", "revision": head}

    with pytest.raises(t2v.errors.HubError, match="user/missing"):
        load_expert("user/missing", cache_dir=tmp_path / "cache")


# -- bad repos: one line each -------------------------------------------------------------------------------
def test_unknown_base_is_named_with_the_fix(tmp_path):
    folder = _copy(IMAGE_EXPERT, tmp_path)
    _edit_card(folder, "base: embedded\n", "base: embedded-resnet9000\n")
    with pytest.raises(ExpertError, match="needs base 'embedded-resnet9000'.*upgrade hf_task2vec") as info:
        load_expert(folder)
    assert info.value.reason == "missing_base" and "\n" not in str(info.value)


def test_base_of_another_revision_is_refused(tmp_path):
    folder = _copy(IMAGE_EXPERT, tmp_path)
    revision = _card_section(folder)["base_revision"]
    _edit_card(folder, f"base_revision: {revision}", "base_revision: sha256:0000000000000000")
    with pytest.raises(ExpertError, match="revision sha256:0000000000000000.*installed base is revision") as info:
        load_expert(folder)
    assert info.value.reason == "base_revision"
    assert load_expert(folder, check_base_revision=False).label_names  # an explicit opt-out still loads


def test_adapter_of_another_base_is_refused(tmp_path):
    """The Lite1 expert's adapter and head dropped into a Lite0 expert (hashes updated, as a careless
    copy would): the LoRA matrices do not fit Lite0's layers."""
    folder = _copy(IMAGE_EXPERT, tmp_path)
    sec = _card_section(OTHER_BASE_EXPERT)["files_sha256"]
    mine = _card_section(folder)["files_sha256"]
    for name in (ADAPTER_FILE, ADAPTER_CONFIG_FILE):
        shutil.copy(OTHER_BASE_EXPERT / name, folder / name)
        _edit_card(folder, mine[name], sec[name])
    no_layer = "adapter tensor .*blocks.*has no layer in base 'embedded'.*made for another base"
    with pytest.raises(ExpertError, match=no_layer) as info:
        load_expert(folder)
    assert info.value.reason == "adapter_shape"

    # an adapter whose matrices have another shape (rank 8 where the config says 4)
    from safetensors.torch import load_file, save_file

    from hf_task2vec.probes import file_sha256

    folder = _copy(IMAGE_EXPERT, tmp_path, "wide")
    state = load_file(str(folder / ADAPTER_FILE))
    key = next(k for k in sorted(state) if k.endswith("lora_A.weight"))
    state[key] = torch.cat([state[key], state[key]])
    old = file_sha256(folder / ADAPTER_FILE)
    save_file(state, str(folder / ADAPTER_FILE))
    _edit_card(folder, old, file_sha256(folder / ADAPTER_FILE))
    with pytest.raises(ExpertError, match=r"adapter tensor .*lora_A.weight has shape \(8, .* needs \(4, ") as info:
        load_expert(folder)
    assert info.value.reason == "adapter_shape"


def test_altered_or_missing_files_and_non_experts(tmp_path):
    folder = _copy(IMAGE_EXPERT, tmp_path)
    data = bytearray((folder / ADAPTER_FILE).read_bytes())
    data[-3] ^= 0xFF
    (folder / ADAPTER_FILE).write_bytes(bytes(data))
    with pytest.raises(ExpertError, match="adapter_model.safetensors differs from the sha256") as info:
        load_expert(folder)
    assert info.value.reason == "corrupt"

    folder = _copy(IMAGE_EXPERT, tmp_path, "no-head")
    (folder / HEAD_FILE).unlink()
    with pytest.raises(ExpertError, match="incomplete: head.safetensors is missing"):
        load_expert(folder)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ExpertError, match="not an expert repo: it has no README.md") as info:
        load_expert(empty)
    assert info.value.reason == "not_an_expert"
    with pytest.raises(ExpertError, match="neither an existing folder nor a Hub model id"):
        load_expert(tmp_path / "nowhere" / "x")


def test_a_new_task_embedding_replaces_the_old_one_and_its_hash_only(tmp_path):
    folder = _copy(IMAGE_EXPERT, tmp_path)
    before = {name: (folder / name).read_bytes() for name in (ADAPTER_FILE, ADAPTER_CONFIG_FILE, HEAD_FILE)}
    other = t2v.TaskEmbedding.load(ZOO / "lite0-fashion-all" / EMBEDDING_FILE)  # another task's embedding
    assert replace_task_embedding(folder, other) is True
    shipped = t2v.TaskEmbedding.load(folder / EMBEDDING_FILE).meta["task"]
    assert shipped == other.meta["task"] != t2v.TaskEmbedding.load(IMAGE_EXPERT / EMBEDDING_FILE).meta["task"]
    sec = _card_section(folder)
    assert sec["task_embedding"]["head_l2"] == other.meta.get("head_l2", "")
    assert {name: (folder / name).read_bytes() for name in before} == before
    load_expert(folder)  # the card's hashes agree with the new file
    assert replace_task_embedding(folder, other) is False  # the same bytes: nothing written
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]  # no temporary files left
    (folder / HEAD_FILE).write_bytes(b"altered")
    with pytest.raises(ExpertError, match="differs from the sha256"):
        replace_task_embedding(folder, t2v.TaskEmbedding.load(IMAGE_EXPERT / EMBEDDING_FILE))


def test_space_reranks_the_default_zoo_index_with_every_shortlisted_expert_loaded(tmp_path):
    """What a fresh clone's Space does: the default index (the zoo's cards), an upload of real images,
    re-rank by LogME: every shortlisted expert is loaded (base + adapter + head) and scored, none skipped."""
    import sys

    sys.path.insert(0, str(ROOT / "spaces" / "expert-finder"))
    import finder

    from tests.test_space import class_folder_zip

    index = finder.load_expert_index()
    assert len(index) >= 60 and all("expert_repo" in index.info(m)["weights"] for m in index.model_ids)
    prepared = finder.task_from_upload(class_folder_zip(tmp_path / "a.zip", per_class=12), tmp_path / "w",
                                       finder.Limits())
    result = finder.search(prepared, index, tmp_path / "o", max_samples=36, k=4, rerank="logme", shortlist=4,
                           resamples=1)
    assert result.skipped == {} and "not run" not in result.table["re-rank score"].tolist()
    assert result.table["rank"].tolist() == [1, 2, 3, 4]
    scores = [r.rerank_score for r in result.records]
    assert all(np.isfinite(scores)) and scores == sorted(scores, reverse=True)
    # the shortlist is the Task2Vec top 4 of the whole zoo: animals experts for an animals upload
    assert all(index.info(r.model_id)["dataset"] == "offline:animal-mnist" for r in result.records)
    assert "Best expert" in result.status
