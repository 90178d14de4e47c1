"""Two-stage expert selection: a Task2Vec shortlist re-ranked by forward passes of the shortlisted experts.

The experts are small timm networks (random init, seeded) saved as real checkpoints; their source heads are
fitted on a source task, so the re-ranking scores are computed from genuine forward passes.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from hf_task2vec import ExpertIndex, Task, TaskEmbedding, load_probe
from hf_task2vec.head import fit_linear_head
from hf_task2vec.probes import file_sha256
from hf_task2vec.rerank import (
    ExpertSkippedWarning,
    RerankedMatch,
    Selection,
    expert_weights,
    load_expert,
    two_stage_select,
)
from hf_task2vec.transferability import leep

META = {"probe": "embedded", "probe_revision": "sha256:abc", "method": "montecarlo", "image_size": "32"}
ARCH = "test_resnet"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _emb(values, name="t") -> TaskEmbedding:
    values = np.asarray(values, np.float32)
    return TaskEmbedding(values, np.full_like(values, 1e-6), [], {**META, "task": name})


def _images(rng: np.random.Generator, labels: np.ndarray) -> torch.Tensor:
    """Two classes that differ in brightness: class 1 is brighter by 1.5 (noise std 1)."""
    x = rng.normal(size=(labels.size, 3, 32, 32)) + 1.5 * labels[:, None, None, None]
    return torch.from_numpy(x.astype(np.float32))


def _save_expert(path, seed: int, source: tuple[torch.Tensor, np.ndarray] | None) -> str:
    """A seeded random test_resnet backbone and its source head: fitted on ``source`` (an informative
    classifier) or all zeros (the expert predicts a uniform distribution over its source classes)."""
    torch.manual_seed(seed)
    probe = load_probe(ARCH, pretrained=False)
    state = {k: v.contiguous() for k, v in probe.backbone.state_dict().items()}
    if source is None:
        w, b = torch.zeros(2, probe.num_features), torch.zeros(2)
    else:
        x, y = source
        with torch.no_grad():
            feats = probe.features(x)
        w, b, _ = fit_linear_head(feats, torch.as_tensor(y), 2, l2=1e-2, max_iter=200)
    state.update({"head.weight": w.contiguous(), "head.bias": b.contiguous()})
    save_file(state, str(path))
    return file_sha256(path)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """An index where Task2Vec's top-1 ("near-but-useless") is the wrong expert: its source task embedding
    equals the query's, but its source classifier carries no information about the target classes."""
    root = tmp_path_factory.mktemp("experts")
    rng = np.random.default_rng(0)
    y_src = np.arange(80) % 2
    source = (_images(rng, y_src), y_src)
    y_tgt = np.arange(48) % 2
    target = Task.from_tensors(_images(rng, y_tgt), y_tgt, name="bright-vs-dark")

    good_sha = _save_expert(root / "good.safetensors", 1, source)
    useless_sha = _save_expert(root / "useless.safetensors", 2, None)
    d = 64
    query = _emb(np.linspace(1.0, 2.0, d), "query")
    index = ExpertIndex()
    weights_good = expert_weights(checkpoint="good.safetensors", sha256=good_sha, base=ARCH)
    weights_useless = expert_weights(checkpoint="useless.safetensors", sha256=useless_sha, base=ARCH)
    index.add("user/near-but-useless", _emb(np.linspace(1.0, 2.0, d), "near"), weights=weights_useless)
    index.add("user/good", _emb(np.linspace(1.0, 2.0, d) * np.linspace(1.0, 3.0, d), "far"), weights=weights_good)
    index.add("user/far-away", _emb(np.linspace(5.0, 0.1, d), "other"), weights=weights_good)
    return index, query, target, root


def test_rerank_fixes_a_wrong_task2vec_top1(seeded) -> None:
    index, query, target, root = seeded
    stage1 = index.select(query, k=3)
    assert stage1[0].model_id == "user/near-but-useless"  # Task2Vec alone picks the useless expert
    assert stage1[1].model_id == "user/good"

    result = index.select(query, k=2, rerank="leep", shortlist=2, examples=target, root=root)
    assert isinstance(result, Selection) and result.reranked and not result.skipped
    assert [m.model_id for m in result] == ["user/good", "user/near-but-useless"]
    best = result[0]
    assert isinstance(best, RerankedMatch) and best.rank == 1 and best.stage1_rank == 2 and best.rerank == "leep"
    # stage-1 scores are kept: the distances of the plain Task2Vec search
    assert best.score == pytest.approx(stage1[1].score) and result[1].score == pytest.approx(stage1[0].score)
    # the useless expert predicts a uniform source distribution: LEEP = mean log P(y) = log(1/2) exactly
    assert result[1].rerank_score == pytest.approx(math.log(0.5), abs=1e-9)
    assert best.rerank_score > math.log(0.5) + 0.05
    # the stage-2 score is LEEP of the expert's own forward pass over the examples
    expert = load_expert("user/good", index.info("user/good"), root=root)
    with torch.no_grad():
        logits = expert.probe.features(target.inputs) @ expert.head_weight.T + expert.head_bias
    assert best.rerank_score == pytest.approx(leep(torch.softmax(logits.double(), 1).numpy(), target.labels), abs=1e-6)
    # cost: only the shortlisted experts ran, over every example
    assert result.cost.forward_passes == 2 and result.cost.examples == len(target)
    assert result.cost.forward_fraction == pytest.approx(2 / 3)
    assert result.cost.total_s > 0 and result.cost.forward_s > 0
    assert result.shortlist[0].model_id == "user/near-but-useless" and len(result.shortlist) == 2
    summary = result.summary()
    assert summary["matches"][0]["model_id"] == "user/good" and summary["cost"]["forward_passes"] == 2
    # a shortlist of one cannot fix it: re-ranking only reorders what stage 1 kept
    one = two_stage_select(index, query, rerank="leep", k=1, shortlist=1, examples=target, root=root)
    assert [m.model_id for m in one] == ["user/near-but-useless"] and one.cost.forward_passes == 1


def test_unloadable_experts_are_skipped_with_a_warning(seeded, tmp_path) -> None:
    index, query, target, root = seeded
    idx = ExpertIndex()
    for mid in index.model_ids:
        idx.add(mid, index.embedding(mid), **index.info(mid))
    near = index.embedding("user/near-but-useless")
    # nearest of all (a copy of the query's embedding) but its checkpoint is gone
    idx.add("user/deleted", near, weights=expert_weights(checkpoint="gone.safetensors", sha256="0" * 64, base=ARCH))
    # its file changed after indexing (the recorded sha256 no longer matches)
    tampered = root / "tampered.safetensors"
    tampered.write_bytes((root / "good.safetensors").read_bytes() + b"\0")
    idx.add("user/tampered", near, weights=expert_weights(checkpoint=tampered, sha256="1" * 64, base=ARCH))
    idx.add("user/no-weights", near)  # records nothing to build it from
    with pytest.warns(ExpertSkippedWarning) as record:
        result = idx.select(query, k=3, rerank="leep", shortlist=5, examples=target, root=root)
    assert set(result.skipped) == {"user/deleted", "user/tampered", "user/no-weights"}
    assert "not found" in result.skipped["user/deleted"]
    assert "sha256" in result.skipped["user/tampered"]
    assert "records no weights" in result.skipped["user/no-weights"]
    assert {str(w.message).split("'")[1] for w in record} == set(result.skipped)
    assert [m.model_id for m in result] == ["user/good", "user/near-but-useless"]
    assert result.cost.forward_passes == 2


def test_rerank_with_a_feature_score_and_errors(seeded, tmp_path) -> None:
    import timm

    index, query, target, root = seeded
    # a feature-only score needs no source head; experts built through load_probe have none, so LEEP skips them
    torch.manual_seed(3)
    save_file(timm.create_model(ARCH, pretrained=False).state_dict(), str(tmp_path / "plain.safetensors"))
    idx = ExpertIndex()
    weights = expert_weights(load_probe=str(tmp_path / "plain.safetensors"), arch=ARCH)
    idx.add("timm/no-head", index.embedding("user/good"), weights=weights)
    with pytest.warns(ExpertSkippedWarning, match="source classifier"):
        res = two_stage_select(idx, query, rerank="leep", examples=target)
    assert not res.reranked and [m.model_id for m in res] == ["timm/no-head"] and math.isnan(res[0].rerank_score)
    res = two_stage_select(idx, query, rerank="logme", examples=target)
    assert res.reranked and np.isfinite(res[0].rerank_score) and res.cost.forward_passes == 1
    res = two_stage_select(index, query, rerank="knn", k=3, shortlist=3, examples=target, root=root)
    assert res.reranked and 0.5 <= res[0].rerank_score <= 1.0 and res.cost.forward_passes == 3
    with pytest.raises(ValueError, match="choose one of"):
        two_stage_select(index, query, rerank="task2vec", examples=target)
    with pytest.raises(ValueError, match="examples"):
        two_stage_select(index, query, rerank="leep")
    with pytest.raises(ValueError, match="exactly one"):
        expert_weights()
    with pytest.raises(ValueError, match="need rerank"):
        index.select(query, shortlist=2)


def test_cli_select_rerank_on_real_weights(tmp_path, capsys) -> None:
    """`hf-task2vec select ... --rerank leep --shortlist 2` on real offline data with the real ImageNet
    EfficientNet-Lite0 (its ImageNet classifier as source head) and an expert whose checkpoint is gone."""
    from hf_task2vec import Task2Vec, load_task
    from hf_task2vec.cli import main

    embedder = Task2Vec("embedded", image_size=32, max_samples=40, progress=False)
    index = ExpertIndex()
    index.add(
        "user/digits-0-4",
        embedder.embed(load_task("offline:digits", classes=["0", "1", "2", "3", "4"])),
        weights=expert_weights(checkpoint="missing/digits.safetensors", sha256="2" * 64),
    )
    index.add(
        "imagenet/efficientnet-lite0",
        embedder.embed(load_task("offline:fashion-mnist", classes=["Sandal", "Sneaker"])),
        weights=expert_weights(load_probe="embedded", source_head=True),
    )
    index.save(tmp_path / "idx")
    args = ["select", "offline:digits", "--classes", "5,6", "--experts", str(tmp_path / "idx"), "-k", "2"]
    with pytest.warns(ExpertSkippedWarning, match="digits-0-4"):
        assert main([*args, "--rerank", "leep", "--shortlist", "2", "--max-examples", "60", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["shortlist"][0] == "user/digits-0-4"  # Task2Vec's first choice, but it cannot be loaded
    assert "not found" in out["skipped"]["user/digits-0-4"]
    assert [m["model_id"] for m in out["matches"]] == ["imagenet/efficientnet-lite0"]
    assert out["matches"][0]["stage1_rank"] == 2 and out["matches"][0]["rerank_score"] <= 0.0
    assert out["cost"]["forward_passes"] == 1 and out["cost"]["examples"] == 60 and out["cost"]["embed_s"] > 0
    with pytest.warns(ExpertSkippedWarning):
        assert main([*args, "--rerank", "logme", "--shortlist", "2", "--max-examples", "60"]) == 0
    text = capsys.readouterr().out
    assert "re-ranked by logme" in text and "1. imagenet/efficientnet-lite0" in text
    assert "skipped user/digits-0-4" in text
    assert main([*args, "--shortlist", "2"]) == 2  # --shortlist without --rerank


def test_hub_experts_record_their_weights_and_rerank_from_the_hub(hub_server, tmp_path) -> None:
    """A timm checkpoint holding the real ImageNet EfficientNet-Lite0 weights is uploaded to the local Hub;
    `add_hub_models` records where its weights come from and the re-ranking loads them from the Hub."""
    from huggingface_hub import HfApi

    from hf_task2vec import load_task
    from hf_task2vec.probes import PROBE_REGISTRY, _map_efficientnet_lite_keys, _package_file
    from hf_task2vec.transferability import logme

    reference = load_probe("embedded", image_size=32)
    state = torch.load(_package_file(PROBE_REGISTRY["embedded"]), map_location="cpu", weights_only=True)
    mapped = _map_efficientnet_lite_keys(state, [1, 2, 2, 3, 3, 4, 1])  # Lite0's blocks per stage
    save_file({k: v.contiguous() for k, v in mapped.items()}, str(tmp_path / "m.st"))
    dc = reference.data_config
    config = {
        "architecture": "tf_efficientnet_lite0",
        "num_classes": 1000,
        "num_features": 1280,
        "pretrained_cfg": {
            "input_size": list(dc["input_size"]),
            "mean": list(dc["mean"]),
            "std": list(dc["std"]),
            "interpolation": dc["interpolation"],
            "crop_pct": dc["crop_pct"],
            "crop_mode": dc.get("crop_mode", "center"),
            "num_classes": 1000,
            "classifier": "classifier",
        },
    }
    repo = "user/effnet-lite0-imagenet"
    api = HfApi()
    api.create_repo(repo)
    card = "---\nlicense: apache-2.0\nlibrary_name: timm\ndatasets:\n- imagenet-1k\n---\n# EfficientNet-Lite0\n"
    api.upload_file(path_or_fileobj=card.encode(), path_in_repo="README.md", repo_id=repo)
    api.upload_file(path_or_fileobj=json.dumps(config).encode(), path_in_repo="config.json", repo_id=repo)
    api.upload_file(path_or_fileobj=str(tmp_path / "m.st"), path_in_repo="model.safetensors", repo_id=repo)

    index = ExpertIndex()
    # ImageNet is not available offline: its embedding is made from another real dataset via the mapping
    index.add_hub_models([repo], mapping={repo: "offline:digits"}, image_size=32, max_samples=40, progress=False)
    info = index.info(repo)
    assert info["weights"] == {"load_probe": f"hf-hub:{repo}", "hub_revision": hub_server.head_sha(repo)}
    assert info["source"] == "hub" and info["library_name"] == "timm"

    task = load_task("offline:animal-mnist", classes=["cat", "dog"])
    result = index.select(task, k=1, rerank="logme", shortlist=1, max_examples=40)
    assert result.reranked and not result.skipped and result.cost.forward_passes == 1 and result.cost.embed_s > 0
    # the expert's features are those of the real ImageNet weights: LogME equals the offline probe's
    from hf_task2vec.sampling import balanced_sample

    idx = balanced_sample(task.labels, 40, 0)
    with torch.no_grad():
        feats = reference.features(task.get_inputs(idx, reference.transform())).double().numpy()
    assert result[0].rerank_score == pytest.approx(logme(feats, task.labels[idx]), abs=1e-6)
