#!/usr/bin/env python
"""Model-selection benchmark: the paper's Table 2 (and Table 1) on real offline data.

Experts: the embedded ImageNet probe (EfficientNet-Lite0) fine-tuned on source tasks cut from
Animal-MNIST, Fashion-MNIST and digits (label subsets and groupings, *train* splits), plus the
untouched ImageNet network as the "generic" expert. Targets: held-out sub-tasks (random class
subsets of the *test* splits) with few training examples. Ground truth: the test error of a linear
classifier (logistic regression) on each expert's frozen features, for every target and expert.

Selection methods compared (Table 2): chance, always generic, Task2Vec symmetric and asymmetric
(one probe embedding of the target, `hf_task2vec.ExpertIndex`), Model2Vec (leave-one-task-out),
and the peer transferability metrics LogME, LEEP, NCE, H-score (a forward pass of every expert on
the target's training data, `hf_task2vec.transferability`). Table 1: the probe used for the
embeddings (EfficientNet-Lite0 ImageNet, MobileNetV2 ImageNet, random init).

Everything expensive is cached under ``benchmarks/cache/model_selection`` (gitignored): the
fine-tuned experts (safetensors), their features on the target pools, the embeddings and the
ground-truth errors, so a rerun only recomputes the tables.

    python benchmarks/model_selection.py             # full run (<= 60 min on 2 CPU cores)
    python benchmarks/model_selection.py --quick     # CI smoke run (<= 5 min), exits 1 if its checks fail
    python benchmarks/model_selection.py --quick --results-dir /tmp/ms   # do not touch committed results

Results: ``<results-dir>/model_selection.md`` and ``.json`` and a copy of the expert index in
``<results-dir>/expert_index/`` (``ExpertIndex.load`` it; the Space uses it as its offline default).

A second meta-task, across architectures (``--meta-task architectures``): the four offline ImageNet networks
(EfficientNet-Lite0/1/2, MobileNetV2), each fine-tuned on a few source tasks and each also untouched, plus the
random-init Lite0; same targets, splits, seeds and ground truth. Written to
``<results-dir>/model_selection_architectures.{md,json}`` (no Table 1, expert index or search speed):

    python benchmarks/model_selection.py --meta-task architectures [--seeds 1] [--arch-sources animals-all,...]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import hashlib
import importlib.util
import json
import logging
import os
import platform
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import hf_task2vec as t2v  # noqa: E402
from hf_task2vec.data import load_offline  # noqa: E402
from hf_task2vec.distance import distance as t2v_distance  # noqa: E402
from hf_task2vec.model2vec import Model2Vec  # noqa: E402
from hf_task2vec.probes import file_sha256  # noqa: E402
from hf_task2vec.rerank import expert_weights, two_stage_select  # noqa: E402
from hf_task2vec.selection import ExpertIndex  # noqa: E402
from hf_task2vec.transferability import h_score, knn_accuracy, leep, logme, nce, nleep, sfda  # noqa: E402

log = logging.getLogger("model_selection")

DATASETS = {"animal": "animal-mnist", "fashion": "fashion-mnist", "digits": "digits"}


# -- configuration ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SourceSpec:
    """A source task: a dataset and its label groups (group name -> original class names)."""

    name: str
    dataset: str  # key of DATASETS
    groups: tuple[tuple[str, tuple[str, ...]], ...]

    @property
    def label_names(self) -> list[str]:
        return [g for g, _ in self.groups]

    @property
    def classes(self) -> list[str]:
        return [c for _, cs in self.groups for c in cs]


def _subset(name: str, dataset: str, classes: list[str]) -> SourceSpec:
    return SourceSpec(name, dataset, tuple((c, (c,)) for c in classes))


def _grouping(name: str, dataset: str, groups: dict[str, list[str]]) -> SourceSpec:
    return SourceSpec(name, dataset, tuple((g, tuple(cs)) for g, cs in groups.items()))


ANIMALS = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]
FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
DIGITS = [str(i) for i in range(10)]

ALL_SOURCES: dict[str, SourceSpec] = {
    s.name: s
    for s in [
        _subset("animals-all", "animal", ANIMALS),
        _subset("animals-hoofed", "animal", ["cow", "giraffe", "horse", "sheep", "zebra"]),
        _subset("animals-other", "animal", ["bear", "bird", "cat", "dog", "elephant"]),
        _grouping(
            "animals-habitat",
            "animal",
            {
                "pets": ["cat", "dog", "bird"],
                "farm": ["cow", "horse", "sheep"],
                "wild": ["bear", "elephant", "giraffe", "zebra"],
            },
        ),
        _subset("fashion-all", "fashion", FASHION),
        _subset("fashion-tops", "fashion", ["T-shirt/top", "Pullover", "Dress", "Coat", "Shirt"]),
        _subset("fashion-shoes-bags", "fashion", ["Trouser", "Sandal", "Sneaker", "Bag", "Ankle boot"]),
        _grouping(
            "fashion-kind",
            "fashion",
            {
                "upper-body": ["T-shirt/top", "Pullover", "Coat", "Shirt"],
                "legs-dress": ["Trouser", "Dress"],
                "footwear": ["Sandal", "Sneaker", "Ankle boot"],
                "bag": ["Bag"],
            },
        ),
        _subset("digits-all", "digits", DIGITS),
        _subset("digits-0-4", "digits", DIGITS[:5]),
        _subset("digits-5-9", "digits", DIGITS[5:]),
        _grouping("digits-parity", "digits", {"even": DIGITS[0::2], "odd": DIGITS[1::2]}),
    ]
}
QUICK_SOURCES = ["animals-hoofed", "animals-other", "fashion-tops", "fashion-shoes-bags", "digits-0-4", "digits-5-9"]
GENERIC = "generic-imagenet"
MODEL_PREFIX = "task2vec-bench/efficientnet-lite0-"


@dataclass(frozen=True)
class Config:
    quick: bool
    sources: tuple[str, ...]
    image_size: int = 32
    recipe: str = "lp-ft, frozen batch-norm, logistic ground truth v2"  # part of every cache key
    finetune_steps: int = 100
    finetune_batch: int = 32
    finetune_lr: float = 3e-4
    train_per_class: int = 500  # source training pool per class (animal / fashion; digits: all)
    test_pool_per_class: int = 300  # target pool per class (animal test has 200, digits ~36)
    targets_per_dataset: int = 10
    per_class_train: tuple[int, ...] = (10, 20, 50, 100)
    max_test_per_class: int = 150
    expert_embed_samples: int = 500
    seeds: tuple[int, ...] = (0, 1, 2)
    table1_probes: tuple[str, ...] = ("embedded", "embedded-mobilenetv2", "embedded-random-init")
    table1_seeds: tuple[int, ...] = (0, 1, 2)
    model2vec_steps: int = 50
    h_score_timing_experts: int = 13  # experts whose library H-score calls are timed (and checked)
    alpha: float = 0.15
    speed_experts: int = 10_000
    speed_dim: int = 21_008

    def key(self, *fields_: str) -> str:
        """A short hash of the named fields (cache keys)."""
        d = dataclasses.asdict(self)
        text = json.dumps({f: d[f] for f in sorted({"recipe", *fields_})}, sort_keys=True, default=list)
        return hashlib.sha256(text.encode()).hexdigest()[:10]


FULL = Config(quick=False, sources=tuple(ALL_SOURCES))
QUICK = Config(
    quick=True,
    sources=tuple(QUICK_SOURCES),
    finetune_steps=30,
    train_per_class=200,
    test_pool_per_class=100,
    targets_per_dataset=3,
    per_class_train=(10, 25, 50),
    max_test_per_class=80,
    expert_embed_samples=150,
    seeds=(0,),
    table1_probes=("embedded",),
    table1_seeds=(),
    model2vec_steps=50,
    h_score_timing_experts=2,
    speed_experts=2_000,
)


# the architectures meta-task: every offline ImageNet network, fine-tuned on a few source tasks, plus its untouched
# ImageNet network, plus the random-init Lite0 (`architecture_experts`)
ARCH_PROBES = ("embedded", "embedded-lite1", "embedded-lite2", "embedded-mobilenetv2")
RANDOM_PROBE = "embedded-random-init"
ARCH_SHORT = {
    "embedded": "lite0",
    "embedded-lite1": "lite1",
    "embedded-lite2": "lite2",
    "embedded-mobilenetv2": "mobilenetv2",
    RANDOM_PROBE: "lite0-random-init",
}
ARCH_TIMM = {
    "embedded": "tf_efficientnet_lite0",
    "embedded-lite1": "tf_efficientnet_lite1",
    "embedded-lite2": "tf_efficientnet_lite2",
    "embedded-mobilenetv2": "mobilenetv2_100",
    RANDOM_PROBE: "tf_efficientnet_lite0",
}
ARCH_SOURCES = ("animals-all", "fashion-all", "digits-all")
ARCH_QUICK_SOURCES = ("animals-hoofed", "fashion-tops")
RANDOM_INIT = "random-init"


def architecture_config(cfg: Config) -> Config:
    """The architectures meta-task's configuration: the same recipe, targets, splits and seeds as ``cfg`` (so the
    Lite0 experts, features and target embeddings of the main run are reused from its cache), fewer source tasks,
    no Table 1."""
    sources = ARCH_QUICK_SOURCES if cfg.quick else ARCH_SOURCES
    return dataclasses.replace(cfg, sources=sources, table1_probes=(), table1_seeds=())


# -- data ---------------------------------------------------------------------------------------------
@dataclass
class Pool:
    """Preprocessed images of one dataset split: x01 [N, 1, S, S] in [0, 1] (grey), labels [N] (dataset ids)."""

    x01: torch.Tensor
    labels: np.ndarray
    names: list[str]


def _pixel_transform(image_size: int):
    """The probe's eval transform without its normalisation (all offline probes share resize/crop)."""
    from torchvision import transforms as T

    probe = t2v.load_probe("embedded", image_size=image_size)
    composed = probe.transform()
    steps = list(composed.transforms)
    if type(steps[-1]).__name__ != "Normalize":
        raise RuntimeError(f"unexpected probe transform {composed}")
    return T.Compose(steps[:-1])


def load_pool(dataset: str, split: str, per_class: int | None, image_size: int, seed: int = 0) -> Pool:
    ds = load_offline(DATASETS[dataset], split)
    names = list(ds.features["label"].names)
    labels = np.asarray(ds["label"], dtype=np.int64)
    rng = np.random.default_rng(seed)
    idx = []
    for c in range(len(names)):
        members = np.nonzero(labels == c)[0]
        if per_class is not None and members.size > per_class:
            members = np.sort(rng.choice(members, per_class, replace=False))
        idx.append(members)
    chosen = np.sort(np.concatenate(idx))
    transform = _pixel_transform(image_size)
    images = ds.select(chosen.tolist())["image"]
    x = torch.stack([transform(t2v.tasks.to_rgb(img))[:1] for img in images])
    return Pool(x, labels[chosen], names)


def normalise(x01: torch.Tensor, probe: t2v.Probe) -> torch.Tensor:
    mean = torch.tensor(probe.data_config["mean"], dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(probe.data_config["std"], dtype=torch.float32).view(1, 3, 1, 1)
    return (x01.expand(-1, 3, -1, -1) - mean) / std


def source_examples(spec: SourceSpec, pool: Pool) -> tuple[np.ndarray, np.ndarray]:
    """Indices into the pool and group labels of a source task."""
    idx, y = [], []
    for g, (_, classes) in enumerate(spec.groups):
        for c in classes:
            members = np.nonzero(pool.labels == pool.names.index(c))[0]
            idx.append(members)
            y.append(np.full(members.size, g))
    order = np.argsort(np.concatenate(idx), kind="stable")
    return np.concatenate(idx)[order], np.concatenate(y)[order]


# -- experts ------------------------------------------------------------------------------------------
@dataclass
class Expert:
    name: str
    model_id: str
    backbone: nn.Module
    head_weight: torch.Tensor  # [K_source, C]
    head_bias: torch.Tensor
    label_names: list[str]
    dataset: str
    classes: list[str]
    source_error: float | None
    info: dict = field(default_factory=dict)
    from_cache: bool = False
    task: str = ""  # the source task whose Task2Vec embedding stands for the expert (ALL_SOURCES key or GENERIC)
    probe: str = "embedded"  # the network it was built from (a `load_bench_probe` name): its own normalisation
    stem: str = ""  # cache file stem of its weights and features

    def __post_init__(self) -> None:
        self.task = self.task or self.name
        self.stem = self.stem or cache_stem(self.task, self.probe)


def cache_stem(source: str, probe: str) -> str:
    """File stem of an expert's cached weights / features: the source task for the embedded Lite0 probe (the
    main benchmark's paths, unchanged), ``<source>-<probe>`` for any other network."""
    return source if probe == "embedded" else f"{source}-{probe}"


def _imagenet_head(probe: str = "embedded") -> tuple[torch.Tensor, torch.Tensor]:
    """The ImageNet classifier of a registered offline checkpoint (the probe drops it): ``_fc`` in the
    EfficientNet-Lite checkpoints, the last two tensors (``classifier.1``) in torchvision's MobileNetV2."""
    from hf_task2vec.probes import PROBE_REGISTRY

    cfg = PROBE_REGISTRY[probe]
    spec = importlib.util.find_spec(cfg.weights_package)
    path = Path(list(spec.submodule_search_locations)[0]) / cfg.weights_file
    state = torch.load(path, map_location="cpu", weights_only=True)
    if "_fc.weight" in state:
        return state["_fc.weight"].float(), state["_fc.bias"].float()
    w, b = list(state.values())[-2:]
    if w.ndim != 2 or b.shape != w.shape[:1]:
        raise RuntimeError(f"{probe}: the checkpoint's last two tensors are not a linear classifier")
    return w.float(), b.float()


@torch.no_grad()
def _error(backbone: nn.Module, w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: np.ndarray) -> float:
    backbone.eval()
    pred = torch.cat([(backbone(x[i : i + 256]) @ w.T + b).argmax(1) for i in range(0, len(x), 256)])
    return float((pred.numpy() != y).mean())


def train_expert(
    spec: SourceSpec, cfg: Config, train: Pool, test: Pool, cache: Path, probe_name: str = "embedded"
) -> Expert:
    """Fine-tune the ``probe_name`` network (default: the embedded Lite0) on a source task (cached)."""
    from safetensors.torch import load_file, save_file

    key = cfg.key("image_size", "finetune_steps", "finetune_batch", "finetune_lr", "train_per_class")
    from_cache = False
    path = cache / "experts" / f"{cache_stem(spec.name, probe_name)}-{key}.safetensors"
    probe = t2v.load_probe(probe_name, image_size=cfg.image_size)
    backbone = probe.backbone
    idx, y = source_examples(spec, train)
    t_idx, t_y = source_examples(spec, test)
    x_test = normalise(test.x01[t_idx], probe)
    k = len(spec.groups)
    if path.is_file():
        from safetensors import safe_open

        state = load_file(str(path))
        w, b = state.pop("head.weight"), state.pop("head.bias")
        backbone.load_state_dict(state)
        with safe_open(str(path), "pt") as fh:
            err = float(fh.metadata()["source_test_error"])
        log.info("expert %-20s loaded from cache (source test error %.3f)", cache_stem(spec.name, probe_name), err)
        from_cache = True
    else:
        start = time.perf_counter()
        from hf_task2vec.head import fit_linear_head

        torch.manual_seed(zlib.crc32(spec.name.encode()))
        x_all = normalise(train.x01[idx], probe)
        y_all = torch.as_tensor(y)
        # LP-FT: fit the head on the frozen ImageNet features first (a random head's gradients would wreck
        # the features), then fine-tune everything with batch-norm statistics frozen (eval mode)
        backbone.eval()
        with torch.no_grad():
            feats = torch.cat([backbone(x_all[i : i + 256]) for i in range(0, len(x_all), 256)])
        w0, b0, _ = fit_linear_head(feats, y_all, k, l2=1e-2, max_iter=200)
        head = nn.Linear(probe.num_features, k)
        with torch.no_grad():
            head.weight.copy_(w0)
            head.bias.copy_(b0)
        params = list(backbone.parameters()) + list(head.parameters())
        opt = torch.optim.Adam(params, lr=cfg.finetune_lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.finetune_steps)
        rng = np.random.default_rng(zlib.crc32(spec.name.encode()))
        for _ in range(cfg.finetune_steps):
            batch = torch.as_tensor(rng.choice(len(idx), cfg.finetune_batch, replace=False))
            loss = F.cross_entropy(head(backbone(x_all[batch])), y_all[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        backbone.eval()
        w, b = head.weight.detach().clone(), head.bias.detach().clone()
        err = _error(backbone, w, b, x_test, t_y)
        state = {k_: v.detach().contiguous() for k_, v in backbone.state_dict().items()}
        state.update({"head.weight": w, "head.bias": b})
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file(state, str(tmp), metadata={"source": spec.name, "source_test_error": repr(err)})
        os.replace(tmp, path)
        log.info(
            "expert %-20s fine-tuned %d steps in %.0f s, source test error %.3f",
            cache_stem(spec.name, probe_name),
            cfg.finetune_steps,
            time.perf_counter() - start,
            err,
        )
    backbone.eval()
    return Expert(
        spec.name,
        MODEL_PREFIX + spec.name,
        backbone,
        w,
        b,
        spec.label_names,
        spec.dataset,
        spec.classes,
        err,
        {
            "groups": {g: list(cs) for g, cs in spec.groups},
            "weights_cache": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path),
        },
        from_cache,
        probe=probe_name,
    )


def generic_expert(cfg: Config, probe_name: str = "embedded") -> Expert:
    """The untouched ImageNet network ``probe_name`` with its ImageNet classifier as source head."""
    probe = t2v.load_probe(probe_name, image_size=cfg.image_size)
    w, b = _imagenet_head(probe_name)
    return Expert(
        GENERIC,
        MODEL_PREFIX + GENERIC,
        probe.backbone.eval(),
        w,
        b,
        [f"imagenet-{i}" for i in range(w.shape[0])],
        "imagenet",
        [],
        None,
        {
            "note": "the untouched ImageNet probe; its training task (ImageNet) is represented by the union of all "
            "source classes, since ImageNet is not available offline"
        },
        probe=probe_name,
    )


def _arch_named(e: Expert, probe: str) -> Expert:
    """Name an expert of the architectures meta-task by its network: ``lite1/animals-all``."""
    e.name = f"{ARCH_SHORT[probe]}/{e.task}"
    e.model_id = f"task2vec-bench/{ARCH_SHORT[probe]}-{e.task}"
    e.info["architecture"] = ARCH_TIMM[probe]
    return e


def random_init_expert(cfg: Config) -> Expert:
    """The randomly initialised EfficientNet-Lite0 (seed 0, as Table 1's random probe) as an expert: its features
    are those of the untrained network. It has no source task and no trained classifier: its "source head" is a
    random 1000-way linear layer (nn.Linear's initialisation, seed 0), which is what LEEP / NCE see."""
    probe = load_bench_probe(RANDOM_PROBE, cfg)
    gen = torch.Generator().manual_seed(0)
    bound = 1.0 / np.sqrt(probe.num_features)
    w = (torch.rand(1000, probe.num_features, generator=gen) * 2 - 1) * bound
    b = (torch.rand(1000, generator=gen) * 2 - 1) * bound
    e = Expert(
        f"{ARCH_SHORT[RANDOM_PROBE]}",
        f"task2vec-bench/{ARCH_SHORT[RANDOM_PROBE]}",
        probe.backbone.eval(),
        w,
        b,
        [f"random-{i}" for i in range(1000)],
        "none",
        [],
        None,
        {
            "architecture": ARCH_TIMM[RANDOM_PROBE],
            "note": "the random-init Lite0 (no training): no source task; Task2Vec represents it, like the generic "
            "experts, by the union of all source classes; its source head is a random 1000-way linear layer",
        },
        task=GENERIC,
        probe=RANDOM_PROBE,
        stem=f"{RANDOM_INIT}-lite0",
    )
    return e


def architecture_experts(cfg: Config, train_pools: dict[str, Pool], test_pools: dict[str, Pool], cache: Path):
    """Experts of the architectures meta-task, in this order: for each network of ARCH_PROBES its fine-tuned experts
    (``cfg.sources``, the main recipe) then its untouched ImageNet network; last the random-init Lite0. Lite0's
    experts are the main benchmark's (same cache files)."""
    experts = []
    for probe in ARCH_PROBES:
        for s in cfg.sources:
            spec = ALL_SOURCES[s]
            e = train_expert(spec, cfg, train_pools[spec.dataset], test_pools[spec.dataset], cache, probe_name=probe)
            experts.append(_arch_named(e, probe))
        experts.append(_arch_named(generic_expert(cfg, probe), probe))
    experts.append(random_init_expert(cfg))
    return experts


@torch.no_grad()
def expert_outputs(expert: Expert, pools: dict[str, Pool], cfg: Config, cache: Path) -> dict[str, dict]:
    """Features [N, C] and source-label probabilities [N, K] of an expert on every target pool (cached)."""
    from safetensors.torch import load_file, save_file

    key = cfg.key(
        "image_size", "finetune_steps", "finetune_batch", "finetune_lr", "train_per_class", "test_pool_per_class"
    )
    path = cache / "features" / f"{expert.stem}-{key}.safetensors"
    if path.is_file():
        flat = load_file(str(path))
    else:
        probe = load_bench_probe(expert.probe, cfg)  # the expert's own normalisation (MobileNetV2: ImageNet mean/std)
        flat = {}
        for ds, pool in pools.items():
            x = normalise(pool.x01, probe)
            feats = torch.cat([expert.backbone(x[i : i + 256]) for i in range(0, len(x), 256)])
            flat[f"{ds}.features"] = feats.contiguous()
            flat[f"{ds}.probs"] = torch.softmax(feats @ expert.head_weight.T + expert.head_bias, 1).contiguous()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file(flat, str(tmp))
        os.replace(tmp, path)
    return {ds: {"features": flat[f"{ds}.features"].numpy(), "probs": flat[f"{ds}.probs"].numpy()} for ds in pools}


@torch.no_grad()
def forward_seconds_per_image(expert: Expert, cfg: Config, n: int = 256) -> float:
    x = torch.randn(n, 3, cfg.image_size, cfg.image_size)
    expert.backbone(x[:32])
    start = time.perf_counter()
    for i in range(0, n, 64):
        feats = expert.backbone(x[i : i + 64])
        torch.softmax(feats @ expert.head_weight.T + expert.head_bias, 1)
    return (time.perf_counter() - start) / n


# -- targets ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TargetSpec:
    name: str
    dataset: str
    classes: tuple[str, ...]
    per_class_train: int


def make_targets(cfg: Config, pools: dict[str, Pool]) -> list[TargetSpec]:
    rng = np.random.default_rng(1234)
    out: list[TargetSpec] = []
    for ds, pool in pools.items():
        seen: set[tuple[str, ...]] = set()
        counts = np.bincount(pool.labels, minlength=len(pool.names))
        while sum(t.dataset == ds for t in out) < cfg.targets_per_dataset:
            k = int(rng.integers(2, 6))
            classes = tuple(pool.names[i] for i in sorted(rng.choice(len(pool.names), k, replace=False)))
            if classes in seen:
                continue
            seen.add(classes)
            available = int(min(counts[pool.names.index(c)] for c in classes))
            per_class = int(rng.choice(cfg.per_class_train))
            per_class = min(per_class, available - 16)  # keep >= 16 test examples per class
            short = "/".join(c.replace("T-shirt/top", "T-shirt") for c in classes)
            out.append(TargetSpec(f"{ds}:{short} n={per_class * k}", ds, classes, per_class))
    return out


def split_target(t: TargetSpec, pool: Pool, cfg: Config, seed: int, index: int):
    rng = np.random.default_rng(10_000 * seed + index)
    tr, te, ytr, yte = [], [], [], []
    for k, c in enumerate(t.classes):
        members = rng.permutation(np.nonzero(pool.labels == pool.names.index(c))[0])
        tr.append(members[: t.per_class_train])
        te.append(members[t.per_class_train :][: cfg.max_test_per_class])
        ytr.append(np.full(len(tr[-1]), k))
        yte.append(np.full(len(te[-1]), k))
    return np.concatenate(tr), np.concatenate(ytr), np.concatenate(te), np.concatenate(yte)


def row_space(f: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """``f`` (and ``others``) in an orthonormal basis ``V`` of the row space of ``f`` (``[N, r]``, ``r <= N``).

    Used where it changes nothing but the cost (N is 20-500, D = 1280): an L2-regularised linear
    classifier's weights lie in the span of its training rows (representer theorem), and the H-score's
    between-class covariance lies in the span of the centred rows, so both give the same numbers on
    ``f V`` as on ``f`` (checked at run time for the H-score)."""
    _, sv, vt = np.linalg.svd(f, full_matrices=False)
    basis = vt[: int((sv > sv[0] * 1e-9).sum())].T
    return [x @ basis for x in (f, *others)]


def linear_probe_error(f_tr: np.ndarray, y_tr: np.ndarray, f_te: np.ndarray, y_te: np.ndarray) -> float:
    """Ground truth: test error of a linear classifier on standardised frozen features: class-balanced
    logistic regression with L2 weight ``1/N`` (sklearn's C=1), full-batch L-BFGS (`hf_task2vec.head`)."""
    from hf_task2vec.head import fit_linear_head

    mu, sd = f_tr.mean(0), f_tr.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    z_tr, z_te = row_space((f_tr - mu) / sd, (f_te - mu) / sd)
    k = int(y_tr.max()) + 1
    w, b, _ = fit_linear_head(torch.from_numpy(z_tr), torch.from_numpy(y_tr), k, l2=1.0 / len(y_tr), max_iter=300)
    pred = (torch.from_numpy(z_te) @ w.T + b).argmax(1).numpy()
    return float((pred != y_te).mean())


# -- embeddings ---------------------------------------------------------------------------------------
def load_bench_probe(name: str, cfg: Config) -> t2v.Probe:
    if name.endswith("-random-init"):
        torch.manual_seed(0)  # the same random network in every run
        return t2v.load_probe(name[: -len("-random-init")], pretrained=False, image_size=cfg.image_size)
    return t2v.load_probe(name, image_size=cfg.image_size)


def embed_cached(
    embedder: t2v.Task2Vec, x01: torch.Tensor, y: np.ndarray, label_names: list[str], name: str, source: str, path: Path
) -> tuple[t2v.TaskEmbedding, float]:
    """Embed a task given as preprocessed pixels (cached; the measured seconds are kept in the metadata)."""
    if path.is_file():
        emb = t2v.TaskEmbedding.load(path)
        return emb, float(emb.meta.get("bench_seconds", "nan"))
    task = t2v.Task.from_tensors(normalise(x01, embedder.probe), y, name=name, label_names=label_names)
    start = time.perf_counter()
    emb = embedder.embed(task)
    seconds = time.perf_counter() - start
    emb.meta.update(task_source=source, bench_seconds=f"{seconds:.4f}")
    emb.save(path)
    return emb, seconds


# -- scoring ------------------------------------------------------------------------------------------
def h_score_shrinkage_fast(features: np.ndarray, labels: np.ndarray) -> float:
    """`h_score(features, labels, shrinkage=True)` computed in the ``N``-dim row space (exact, ~100x faster
    for ``N << D``; the run checks it against the library call on the first target).

    With ``cov(f) = V diag(l) V^T``, the Ledoit-Wolf matrix ``(1 - a) cov(f) + a mu I`` has eigenvalues
    ``(1 - a) l_i + a mu`` on ``span(V)`` and the class-mean covariance lies in ``span(V)``, so the trace
    is ``(1 - a) sum_i (V^T cov_g V)_ii / ((1 - a) l_i + a mu)``; ``a`` and ``mu`` only need
    ``tr cov(f)``, ``||cov(f)||_F^2 = sum l^2`` and the row norms."""
    n, d = features.shape
    x = features - features.mean(0)
    _, sv, vt = np.linalg.svd(x, full_matrices=False)
    lam = sv**2 / n
    trace, fro2 = lam.sum(), (lam**2).sum()
    mu = trace / d
    delta2 = fro2 - 2.0 * mu * trace + mu**2 * d
    sq = (x**2).sum(1)
    b2 = ((sq**2).sum() - n * fro2) / n**2
    a = 0.0 if delta2 <= 0 else min(max(b2, 0.0), delta2) / delta2
    z = x @ vt.T
    _, y = np.unique(labels, return_inverse=True)
    counts = np.bincount(y).astype(np.float64)
    means = np.stack([z[y == c].mean(0) for c in range(counts.size)])  # z is centred: class-mean deviations
    diag = ((means**2) * (counts / n)[:, None]).sum(0)
    denom = (1.0 - a) * lam + a * mu
    keep = denom > denom.max() * 1e-12 if a == 0 else np.ones_like(denom, dtype=bool)
    return float((1.0 - a) * np.sum(diag[keep] / denom[keep]))


def peer_score(metric: str, features: np.ndarray, probs: np.ndarray, labels: np.ndarray) -> float:
    """One peer transferability score (higher = better) of an expert on a target's training data."""
    if metric == "logme":
        return logme(features, labels)
    if metric == "leep":
        return leep(probs, labels)
    if metric == "nce":
        return nce(probs.argmax(1), labels)
    if metric == "h_score":  # on the centred row space: the same value, ~100x cheaper for N << D
        centred = features - features.mean(0)
        return h_score(row_space(centred)[0], labels)
    if metric == "h_score_shrinkage":
        return h_score_shrinkage_fast(features, labels)
    if metric == "sfda":
        return sfda(features, labels)
    if metric == "nleep":
        return nleep(features, labels)
    if metric == "knn":
        return knn_accuracy(features, labels)
    raise ValueError(metric)


def summarise(errors: np.ndarray, chosen: np.ndarray | None, scores: np.ndarray | None) -> dict[str, float]:
    """Selection quality on one seed: errors [T, J]; chosen [T] expert indices; scores [T, J] higher = better."""
    from scipy.stats import weightedtau

    opt = errors.min(1)
    if chosen is None:  # chance: the expectation over a uniformly random expert
        sel = errors.mean(1)
        hit = float(np.mean((errors == opt[:, None]).mean(1)))
    else:
        sel = errors[np.arange(len(errors)), chosen]
        hit = float(np.mean(sel == opt))
    out = {
        "mean_error": float(sel.mean()),
        "relative_increase": float(sel.mean() / opt.mean() - 1.0),
        "regret": float(np.mean(sel - opt)),
        "top1": hit,
    }
    if scores is not None:
        taus = []
        for t in range(len(errors)):
            if np.ptp(errors[t]) == 0:
                continue  # every expert is equally good: no ranking to recover
            taus.append(weightedtau(scores[t], -errors[t]).statistic)
        out["kendall_tau"] = float(np.mean(taus)) if taus else float("nan")
    return out


PEERS = ("logme", "leep", "nce", "h_score", "h_score_shrinkage", "sfda", "nleep", "knn")
METHODS = [
    ("optimal", "Optimal (oracle)"),
    ("chance", "Chance (random expert)"),
    ("generic", "Always generic (ImageNet)"),
    ("t2v_sym", "Task2Vec symmetric"),
    ("t2v_asym", "Task2Vec asymmetric (alpha=0.15)"),
    ("model2vec", "Model2Vec (leave-one-task-out)"),
    ("logme", "LogME"),
    ("leep", "LEEP"),
    ("nce", "NCE"),
    ("h_score", "H-score"),
    ("h_score_shrinkage", "H-score (Ledoit-Wolf shrinkage)"),
    ("sfda", "SFDA"),
    ("nleep", "N-LEEP"),
    ("knn", "k-NN accuracy (k=5, cosine)"),
]
PEER_LABELS = dict(METHODS)
# the two-stage selector: a shortlist of m experts from one probe embedding (Task2Vec asymmetric, or Model2Vec),
# re-ranked by a peer score computed on the shortlisted experts only (m forward passes instead of N)
SHORTLISTERS = {"": "Task2Vec asymmetric", "m2v_": "Model2Vec"}


def two_stage(distances: np.ndarray, scores: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Choice and ranking of the two-stage selector for every target.

    ``distances`` [T, J] (stage 1, lower = better) shortlists the ``m`` nearest experts; ``scores`` [T, J]
    (stage 2, higher = better) orders the shortlist. Returns the chosen expert [T] and a ranking score [T, J]
    (higher = better): the shortlist by its stage-2 score above every other expert, those by stage-1 distance."""
    t, j = distances.shape
    order = np.argsort(distances, axis=1, kind="stable")
    rank_score = np.zeros((t, j))
    chosen = np.zeros(t, dtype=np.int64)
    for i in range(t):
        short = order[i, :m]
        ranked = short[np.argsort(-scores[i, short], kind="stable")]
        chosen[i] = ranked[0]
        rank_score[i, ranked] = 2 * j - np.arange(m)  # the shortlist, best first
        rank_score[i, order[i, m:]] = j - np.arange(j - m)  # the rest in Task2Vec order
    return chosen, rank_score


# -- the run ------------------------------------------------------------------------------------------
def run(cfg: Config, results_dir: Path, cache_root: Path, index_dir: Path, meta_task: str = "lite0") -> int:
    """The benchmark. ``meta_task="lite0"``: Table 2 (and Table 1) with Lite0 experts, the expert index, the library
    check and search speed; ``"architectures"``: the cross-architecture meta-task (`architecture_experts`), its
    own report ``model_selection_architectures.{md,json}``."""
    arch_mode = meta_task == "architectures"
    if meta_task not in ("lite0", "architectures"):
        raise ValueError(f"unknown meta-task {meta_task!r}")
    t_start = time.perf_counter()
    cache = cache_root / ("quick" if cfg.quick else "full")
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - since
        return time.perf_counter()

    # data
    t0 = time.perf_counter()
    train_pools = {ds: load_pool(ds, "train", cfg.train_per_class, cfg.image_size) for ds in DATASETS}
    test_pools = {ds: load_pool(ds, "test", cfg.test_pool_per_class, cfg.image_size) for ds in DATASETS}
    t0 = lap("data", t0)
    log.info(
        "pools: train %s, test %s",
        {k: len(v.labels) for k, v in train_pools.items()},
        {k: len(v.labels) for k, v in test_pools.items()},
    )

    # experts
    if arch_mode:
        experts = architecture_experts(cfg, train_pools, test_pools, cache)
    else:
        experts = [
            train_expert(
                ALL_SOURCES[s], cfg, train_pools[ALL_SOURCES[s].dataset], test_pools[ALL_SOURCES[s].dataset], cache
            )
            for s in cfg.sources
        ]
        experts.append(generic_expert(cfg))
    names = [e.name for e in experts]
    J = len(experts)
    generic_j = next(j for j, e in enumerate(experts) if e.task == GENERIC and e.probe == "embedded")
    t0 = lap("experts", t0)
    outputs = [expert_outputs(e, test_pools, cfg, cache) for e in experts]
    fwd_per_image = np.array([forward_seconds_per_image(e, cfg) for e in experts])
    t0 = lap("expert features", t0)
    targets = make_targets(cfg, test_pools)
    T = len(targets)
    log.info("%d experts, %d targets, seeds %s", J, T, list(cfg.seeds))

    # source-task embeddings for every probe (the generic expert: the union of all source classes)
    probes = {name: load_bench_probe(name, cfg) for name in dict.fromkeys(("embedded", *cfg.table1_probes))}
    task2vec_method = t2v.Task2Vec(progress=False).method  # the library's default estimator: part of the cache key
    emb_key = cfg.key("image_size", "train_per_class", "expert_embed_samples") + f"-{task2vec_method}"
    log.info("Task2Vec estimator: %s (the library default)", task2vec_method)
    source_embs: dict[str, list[t2v.TaskEmbedding]] = {}
    source_seconds: dict[str, list[float]] = {}
    for pname, probe in probes.items():
        embedder = t2v.Task2Vec(
            probe, max_samples=cfg.expert_embed_samples, seed=0, progress=False, image_size=cfg.image_size
        )
        embs, secs = [], []
        for e in experts:
            if e.task == GENERIC:
                xs, ys, labels = [], [], []
                for ds, pool in train_pools.items():
                    xs.append(pool.x01)
                    ys.append(pool.labels + len(labels))
                    labels += [f"{ds}:{n}" for n in pool.names]
                x01, y, source = torch.cat(xs), np.concatenate(ys), "offline:animal-mnist+fashion-mnist+digits"
            else:
                spec = ALL_SOURCES[e.task]
                idx, y = source_examples(spec, train_pools[spec.dataset])
                x01, labels = train_pools[spec.dataset].x01[idx], spec.label_names
                source = f"offline:{DATASETS[spec.dataset]}"
            emb, s = embed_cached(
                embedder,
                x01,
                y,
                labels,
                e.task,
                source,
                cache / "embeddings" / emb_key / pname / f"source-{e.task}.safetensors",
            )
            embs.append(emb)
            secs.append(s)
        source_embs[pname], source_seconds[pname] = embs, secs
    t0 = lap("source embeddings", t0)

    # per seed: ground truth, Task2Vec, Model2Vec, peers
    per_seed: list[dict] = []
    table1_runs: dict[str, list[dict]] = {p: [] for p in cfg.table1_probes}
    seed0_target_embs: list[t2v.TaskEmbedding] = []
    seed0_errors = None
    per_target_rows: list[dict] = []
    full_rerank_ok: list[bool] = []
    arch_seed_data: list[dict] = []
    costs = {
        "task2vec_embed_s": [],
        "task2vec_select_s": [],
        "peer_forward_s": [],
        "peer_metric_s": {},
        "rerank_s": {},
    }
    gt_key = cfg.key(
        "image_size",
        "finetune_steps",
        "finetune_batch",
        "finetune_lr",
        "train_per_class",
        "test_pool_per_class",
        "targets_per_dataset",
        "per_class_train",
        "max_test_per_class",
    )
    for seed in cfg.seeds:
        splits = [split_target(t, test_pools[t.dataset], cfg, seed, i) for i, t in enumerate(targets)]
        # ground truth
        experts_key = hashlib.sha256("-".join(names).encode()).hexdigest()[:8]
        err_path = cache / "errors" / f"{gt_key}-{experts_key}" / f"seed{seed}.json"
        if err_path.is_file():
            errors = np.array(json.loads(err_path.read_text())["errors"])
        else:
            errors = np.zeros((T, J))
            # the architectures meta-task: the Lite0 experts' columns of the main run's ground truth (same features)
            known = known_error_columns(err_path.parent.parent, gt_key, seed, experts, targets) if arch_mode else {}
            for j, column in known.items():
                errors[:, j] = column
            for i, (t, (tr, ytr, te, yte)) in enumerate(zip(targets, splits, strict=True)):
                for j in range(J):
                    if j in known:
                        continue
                    f = outputs[j][t.dataset]["features"]
                    errors[i, j] = linear_probe_error(f[tr], ytr, f[te], yte)
            err_path.parent.mkdir(parents=True, exist_ok=True)
            err_path.write_text(
                json.dumps({"experts": names, "targets": [t.name for t in targets], "errors": errors.tolist()})
            )
        t0 = lap("ground truth", t0)

        # Task2Vec (and Table 1) target embeddings
        target_embs: dict[str, list[t2v.TaskEmbedding]] = {}
        for pname in dict.fromkeys(("embedded", *(cfg.table1_probes if seed in cfg.table1_seeds else ()))):
            embedder = t2v.Task2Vec(
                probes[pname], max_samples=10_000, seed=seed, progress=False, image_size=cfg.image_size
            )
            embs = []
            for i, (t, (tr, ytr, _, _)) in enumerate(zip(targets, splits, strict=True)):
                emb, s = embed_cached(
                    embedder,
                    test_pools[t.dataset].x01[tr],
                    ytr,
                    list(t.classes),
                    t.name,
                    f"offline:{DATASETS[t.dataset]}",
                    cache / "embeddings" / emb_key / pname / f"seed{seed}" / f"target{i}-{gt_key}.safetensors",
                )
                embs.append(emb)
                if pname == "embedded" and seed == cfg.seeds[0]:
                    costs["task2vec_embed_s"].append(s)
            target_embs[pname] = embs
        t0 = lap("target embeddings", t0)

        def task2vec_scores(pname: str, target_embs=target_embs, timed=seed == cfg.seeds[0]) -> dict:
            index = ExpertIndex(alpha=cfg.alpha)
            for e, emb in zip(experts, source_embs[pname], strict=True):
                index.add(e.model_id, emb)
            out = {}
            for metric in ("asymmetric", "symmetric"):
                rows = []
                for emb in target_embs[pname]:
                    start = time.perf_counter()
                    rows.append(index.distances(emb, metric))
                    if pname == "embedded" and metric == "asymmetric" and timed:
                        costs["task2vec_select_s"].append(time.perf_counter() - start)
                out[metric] = np.stack(rows)
            return out

        d = task2vec_scores("embedded")
        results: dict[str, dict] = {}
        results["optimal"] = summarise(errors, errors.argmin(1), None)
        results["chance"] = summarise(errors, None, None)
        results["generic"] = summarise(errors, np.full(T, generic_j), None)
        results["t2v_sym"] = summarise(errors, d["symmetric"].argmin(1), -d["symmetric"])
        results["t2v_asym"] = summarise(errors, d["asymmetric"].argmin(1), -d["asymmetric"])
        for pname in cfg.table1_probes if seed in cfg.table1_seeds else ():
            dd = d if pname == "embedded" else task2vec_scores(pname)
            table1_runs[pname].append(
                {
                    "asymmetric": summarise(errors, dd["asymmetric"].argmin(1), -dd["asymmetric"]),
                    "symmetric": summarise(errors, dd["symmetric"].argmin(1), -dd["symmetric"]),
                }
            )
        t0 = lap("task2vec selection", t0)

        # Model2Vec, leave one task out
        f_src = np.stack([e.values for e in source_embs["embedded"]]).astype(np.float64)
        f_tgt = np.stack([e.values for e in target_embs["embedded"]]).astype(np.float64)
        trivial = source_embs["embedded"][0].trivial[None].astype(np.float64)
        start = time.perf_counter()
        loo = Model2Vec.leave_one_task_out(
            f_src, f_tgt, errors, expert_trivial=trivial, alpha=cfg.alpha, steps=cfg.model2vec_steps
        )
        m2v_fit_s = (time.perf_counter() - start) / T
        results["model2vec"] = summarise(errors, loo.selected, -loo.distances)
        t0 = lap("model2vec", t0)

        # peers: score every expert on the target's training data
        peer_scores = {m: np.zeros((T, J)) for m in PEERS}
        peer_times = {m: np.zeros((T, J)) for m in PEERS}  # seconds of each metric call
        metric_seconds = {m: 0.0 for m in peer_scores}
        for i, (t, (tr, ytr, _, _)) in enumerate(zip(targets, splits, strict=True)):
            for j in range(J):
                f = outputs[j][t.dataset]["features"][tr].astype(np.float64)
                p = outputs[j][t.dataset]["probs"][tr].astype(np.float64)
                for m in peer_scores:
                    start = time.perf_counter()
                    peer_scores[m][i, j] = peer_score(m, f, p, ytr)
                    peer_times[m][i, j] = time.perf_counter() - start
                    metric_seconds[m] += peer_times[m][i, j]
            if seed == cfg.seeds[0]:
                costs["peer_forward_s"].append(float(len(tr) * fwd_per_image.sum()))
            if seed == cfg.seeds[0] and i == 0:  # the library's H-score calls: their real cost, and the same values
                n_timed = min(J, cfg.h_score_timing_experts)
                feats = [outputs[j][t.dataset]["features"][tr].astype(np.float64) for j in range(n_timed)]
                for m, kwargs in (("h_score", {}), ("h_score_shrinkage", {"shrinkage": True})):
                    start = time.perf_counter()
                    plain = [h_score(f_, ytr, **kwargs) for f_ in feats]
                    costs[f"{m}_library_s"] = (time.perf_counter() - start) * J / n_timed
                    np.testing.assert_allclose(peer_scores[m][0, :n_timed], plain, rtol=1e-4, err_msg=m)
        n_train = np.array([len(sp[0]) for sp in splits], dtype=np.float64)
        for m, s in peer_scores.items():
            results[m] = summarise(errors, s.argmax(1), s)
            results[m].update(forward_passes=float(J), forward_fraction=1.0)
            if seed == cfg.seeds[0]:
                costs["peer_metric_s"][m] = metric_seconds[m] / T
        t0 = lap("peers", t0)

        # two-stage: shortlist m experts by one probe embedding, re-rank them by a peer score
        stage1 = {"": d["asymmetric"], "m2v_": loo.distances}
        for prefix, dist in stage1.items():
            order = np.argsort(dist, axis=1, kind="stable")
            for m in range(1, J + 1):
                short = order[:, :m]
                # the shortlisted experts' forward passes over each target's training set (measured per image)
                fwd_s = float(np.mean(fwd_per_image[short].sum(1) * n_train))
                for metric in PEERS:
                    chosen, ranking = two_stage(dist, peer_scores[metric], m)
                    if m == J:
                        best = peer_scores[metric].max(1)
                        full_rerank_ok.append(bool(np.all(peer_scores[metric][np.arange(T), chosen] == best)))
                    row = summarise(errors, chosen, ranking)
                    metric_s = float(np.mean(np.take_along_axis(peer_times[metric], short, 1).sum(1)))
                    row.update(forward_passes=float(m), forward_fraction=m / J, _forward_s=fwd_s, _metric_s=metric_s)
                    results[f"rerank_{prefix}{metric}_m{m}"] = row
        if seed == cfg.seeds[0]:  # report what the library calls cost, not our shortcuts
            for m in ("h_score", "h_score_shrinkage"):
                costs["peer_metric_s"][m] = costs[f"{m}_library_s"]
            for k, v in results.items():
                if isinstance(v, dict) and "_forward_s" in v:
                    costs["rerank_s"][k] = {"forward": v.pop("_forward_s"), "metric": v.pop("_metric_s")}
        else:
            for v in results.values():
                if isinstance(v, dict):
                    v.pop("_forward_s", None)
                    v.pop("_metric_s", None)
        t0 = lap("two-stage", t0)

        if arch_mode:  # experts of one source task tie under Task2Vec: its expected pick under a random tie-break
            results["t2v_asym_tiebreak"] = tiebreak_summary(errors, d["asymmetric"])
            arch_seed_data.append(
                {"errors": errors, "asym": d["asymmetric"], "sym": d["symmetric"], "m2v": loo, "peers": peer_scores}
            )
        results["_m2v_fit_s_per_task"] = m2v_fit_s
        per_seed.append(results)
        if seed == cfg.seeds[0]:
            seed0_target_embs, seed0_errors = target_embs["embedded"], errors
            seed0 = {"splits": splits, "asym": d["asymmetric"], "peer_scores": peer_scores}
            for i, t in enumerate(targets):
                per_target_rows.append(
                    {
                        "target": t.name,
                        "n_train": int(len(splits[i][0])),
                        "n_test": int(len(splits[i][2])),
                        "optimal": names[int(errors[i].argmin())],
                        "optimal_error": float(errors[i].min()),
                        "generic_error": float(errors[i, generic_j]),
                        "t2v_asym": names[int(d["asymmetric"][i].argmin())],
                        "t2v_asym_error": float(errors[i, d["asymmetric"][i].argmin()]),
                        "model2vec": names[int(loo.selected[i])],
                        "logme": names[int(peer_scores["logme"][i].argmax())],
                        "errors": {n: float(v) for n, v in zip(names, errors[i], strict=True)},
                    }
                )
        log.info(
            "seed %d: optimal %.4f, chance %.4f, generic %.4f, asym %.4f, sym %.4f, model2vec %.4f, logme %.4f",
            seed,
            *(
                results[k]["mean_error"]
                for k in ("optimal", "chance", "generic", "t2v_asym", "t2v_sym", "model2vec", "logme")
            ),
        )

    if arch_mode:
        return finish_architectures(
            cfg, experts, targets, per_seed, arch_seed_data, per_target_rows, costs, full_rerank_ok,
            fwd_per_image, source_seconds, timings, t_start, task2vec_method, results_dir,
        )  # fmt: skip

    # the expert index (embedded probe) with Model2Vec fitted on every target of the first seed
    index = ExpertIndex(alpha=cfg.alpha)
    for e, emb in zip(experts, source_embs["embedded"], strict=True):
        info = {
            "task": e.name,
            "classes": e.label_names if e.name != GENERIC else ["ImageNet-1k (1000 classes)"],
            "dataset": f"offline:{DATASETS[e.dataset]}" if e.dataset in DATASETS else "imagenet-1k",
            "source_classes": e.classes,
            "kind": "generic" if e.name == GENERIC else "fine-tuned",
            "architecture": "tf_efficientnet_lite0",
            "image_size": cfg.image_size,
        }
        if e.source_error is not None:
            info["error"] = e.source_error
        if e.name != GENERIC:
            info["finetune_steps"] = cfg.finetune_steps
        info.update(e.info)
        info["mean_target_error"] = float(seed0_errors[:, names.index(e.name)].mean())
        # how to build the expert for the two-stage re-ranking (the fine-tuned weights live in the benchmark cache)
        if e.name == GENERIC:
            info["weights"] = expert_weights(load_probe="embedded", source_head=True, image_size=cfg.image_size)
        else:
            ckpt = ROOT / e.info["weights_cache"]
            info["weights"] = expert_weights(
                checkpoint=e.info["weights_cache"], sha256=file_sha256(ckpt), base="embedded", image_size=cfg.image_size
            )
        index.add(e.model_id, emb, **info)
    index.fit_model2vec(seed0_target_embs, seed0_errors, steps=cfg.model2vec_steps)
    index.save(index_dir)
    reloaded = ExpertIndex.load(index_dir)
    t0 = lap("expert index", t0)

    library_check = check_library_rerank(reloaded, experts, targets, test_pools, seed0_target_embs, seed0, cfg)
    t0 = lap("library two-stage check", t0)

    speed = search_speed(cfg)
    t0 = lap("search speed", t0)

    # checks (loose; the quick run exits non-zero when one fails)
    asym = np.array([r["t2v_asym"]["mean_error"] for r in per_seed])
    chance = np.array([r["chance"]["mean_error"] for r in per_seed])
    finite = all(np.isfinite(r[k]["mean_error"]) for r in per_seed for k, _ in METHODS)
    probe_q = seed0_target_embs[0]
    checks = {
        "Task2Vec asymmetric beats chance (mean selected error, every seed)": bool(np.all(asym < chance)),
        "all selection errors are finite": bool(finite),
        "saved expert index reloads and ranks like the in-memory one": bool(
            reloaded.model_ids == index.model_ids
            and [m.model_id for m in reloaded.select(probe_q, k=J)] == [m.model_id for m in index.select(probe_q, k=J)]
        ),
        "the library's two-stage select (real checkpoints, real forward passes) makes the benchmark's choices": bool(
            library_check["agree"]
        ),
    }
    # the two-stage curve: cost per target, and the issue's target (m <= N/3 matches the best all-experts peer)
    table2, rerank_target = table2_with_costs(per_seed, costs, J)
    checks["re-ranking a shortlist of all N experts picks an expert with the best peer score"] = bool(
        all(full_rerank_ok)
    )
    total = time.perf_counter() - t_start
    report = {
        "config": {**dataclasses.asdict(cfg), "task2vec_method": task2vec_method},
        "machine": machine_info(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "runtime_s": total,
        "from_scratch": not any(e.from_cache for e in experts),
        "timings_s": timings,
        "experts": [
            {
                "name": e.name,
                "model_id": e.model_id,
                "dataset": e.dataset,
                "classes": e.label_names if e.name != GENERIC else [],
                "source_error": e.source_error,
            }
            for e in experts
        ],
        "targets": [dataclasses.asdict(t) for t in targets],
        "per_seed": per_seed,
        "table2": table2,
        "rerank_target": rerank_target,
        "library_rerank_check": library_check,
        "table1": {p: aggregate(runs) for p, runs in table1_runs.items() if runs},
        "table1_embed_seconds": {p: float(np.mean(s)) for p, s in source_seconds.items()},
        "costs": {
            "task2vec_embed_s_per_target": float(np.mean(costs["task2vec_embed_s"])),
            "task2vec_select_s_per_target": float(np.mean(costs["task2vec_select_s"])),
            "peer_forward_s_per_target": float(np.mean(costs["peer_forward_s"])),
            "peer_metric_s_per_target": costs["peer_metric_s"],
            "model2vec_fit_s_per_fold": float(np.mean([r["_m2v_fit_s_per_task"] for r in per_seed])),
            "forward_s_per_image": dict(zip(names, fwd_per_image.tolist(), strict=True)),
        },
        "search_speed": speed,
        "per_target_seed0": per_target_rows,
        "checks": checks,
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "model_selection.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    (results_dir / "model_selection.md").write_text(render_markdown(report, index_dir))
    log.info(
        "wrote %s and %s (%.0f s)", results_dir / "model_selection.md", results_dir / "model_selection.json", total
    )
    for name, ok in checks.items():
        print(f"[{'PASS' if ok else 'FAIL'}] {name}")
    return 0 if all(checks.values()) else 1


def table2_with_costs(per_seed: list[dict], costs: dict, J: int) -> tuple[dict, dict]:
    """Table 2 (mean ± std over seeds) with seconds per target, and the issue's two-stage target
    (m <= N/3 forward passes matches or beats the best all-experts peer's relative error increase)."""
    table2 = aggregate(per_seed)
    t2v_s = float(np.mean(costs["task2vec_embed_s"]) + np.mean(costs["task2vec_select_s"]))
    peer_fwd_s = float(np.mean(costs["peer_forward_s"]))
    for key, row in table2.items():
        if key in PEERS:
            row["seconds_per_target"] = [peer_fwd_s + costs["peer_metric_s"][key], 0.0]
        elif key in ("t2v_sym", "t2v_asym", "model2vec", "t2v_asym_tiebreak"):
            row.update(forward_passes=[0.0, 0.0], forward_fraction=[0.0, 0.0], seconds_per_target=[t2v_s, 0.0])
        elif key.startswith("rerank_"):
            c = costs["rerank_s"][key]
            row["seconds_per_target"] = [t2v_s + c["forward"] + c["metric"], 0.0]
    best_peer = min(PEERS, key=lambda k: table2[k]["relative_increase"][0])
    budget = max(1, J // 3)
    cheap = {k: v for k, v in table2.items() if k.startswith("rerank_") and v["forward_passes"][0] <= budget}
    best_cheap = min(cheap, key=lambda k: cheap[k]["relative_increase"][0])
    default_key = f"rerank_leep_m{min(4, J)}"
    rerank_target = {
        "budget_forward_passes": budget,
        "best_all_experts_peer": best_peer,
        "best_all_experts_peer_relative_increase": table2[best_peer]["relative_increase"][0],
        "best_two_stage_within_budget": best_cheap,
        "best_two_stage_relative_increase": table2[best_cheap]["relative_increase"][0],
        "default": default_key,
        "default_relative_increase": table2[default_key]["relative_increase"][0],
        "met": bool(table2[best_cheap]["relative_increase"][0] <= table2[best_peer]["relative_increase"][0] + 1e-12),
    }
    log.info("two-stage target: %s", rerank_target)
    return table2, rerank_target


def check_library_rerank(
    index: ExpertIndex,
    experts: list[Expert],
    targets: list[TargetSpec],
    pools: dict[str, Pool],
    target_embs: list[t2v.TaskEmbedding],
    seed0: dict,
    cfg: Config,
) -> dict:
    """Run the library's two-stage selection (`ExpertIndex.select(..., rerank=...)`: loads the shortlisted
    experts from their checkpoints, runs them forward, scores them) on the first targets of the first seed, and
    compare with the benchmark's computation from cached features: same choice, same scores."""
    probe = t2v.load_probe("embedded", image_size=cfg.image_size)
    m = min(4, len(experts))
    names = [e.model_id for e in experts]
    rows, agree = [], True
    for i in range(min(2, len(targets))):
        t = targets[i]
        tr, ytr, _, _ = seed0["splits"][i]
        task = t2v.Task.from_tensors(normalise(pools[t.dataset].x01[tr], probe), ytr, name=t.name)
        for metric in ("leep", "logme"):
            start = time.perf_counter()
            sel = two_stage_select(
                index, target_embs[i], rerank=metric, k=m, shortlist=m, examples=task, max_examples=None, root=ROOT
            )
            seconds = time.perf_counter() - start
            chosen, _ = two_stage(seed0["asym"][i : i + 1], seed0["peer_scores"][metric][i : i + 1], m)
            expected = {names[j]: float(seed0["peer_scores"][metric][i, j]) for j in np.argsort(seed0["asym"][i])[:m]}
            got = {x.model_id: x.rerank_score for x in sel}
            ok = (
                not sel.skipped
                and sel[0].model_id == names[int(chosen[0])]
                and set(got) == set(expected)
                and all(abs(got[k] - expected[k]) <= 1e-3 * max(1.0, abs(expected[k])) for k in got)
            )
            agree &= bool(ok)
            rows.append(
                {
                    "target": t.name,
                    "rerank": metric,
                    "shortlist": m,
                    "library_top1": sel[0].model_id,
                    "benchmark_top1": names[int(chosen[0])],
                    "max_score_difference": max(abs(got[k] - expected.get(k, np.nan)) for k in got),
                    "skipped": dict(sel.skipped),
                    "seconds": seconds,
                    "cost": sel.cost.as_dict(),
                    "agree": bool(ok),
                }
            )
    return {"agree": bool(agree), "rows": rows}


# -- the architectures meta-task ----------------------------------------------------------------------
def known_error_columns(
    errors_dir: Path, gt_key: str, seed: int, experts: list[Expert], targets: list[TargetSpec]
) -> dict[int, np.ndarray]:
    """Ground-truth columns already measured by an earlier run for the same targets and seed (``errors_dir``:
    ``<cache>/errors``): the main benchmark's Lite0 experts are named by their cache stem there, and their
    features are the same files, so their errors are the same numbers."""
    wanted = {e.stem: j for j, e in enumerate(experts) if e.probe == "embedded"}
    names = [t.name for t in targets]
    out: dict[int, np.ndarray] = {}
    for path in sorted(errors_dir.glob(f"{gt_key}-*/seed{seed}.json")):
        data = json.loads(path.read_text())
        if data.get("targets") != names:
            continue
        for k, name in enumerate(data["experts"]):
            if name in wanted and wanted[name] not in out:
                out[wanted[name]] = np.array([row[k] for row in data["errors"]])
    if out:
        log.info("ground truth seed %d: %d expert column(s) reused from earlier runs", seed, len(out))
    return out


def tiebreak_summary(errors: np.ndarray, distances: np.ndarray) -> dict[str, float]:
    """A distance-based selector's expected quality when its ties (experts at the same smallest distance: here the
    experts of one source task, which Task2Vec cannot tell apart) are broken uniformly at random."""
    opt = errors.min(1)
    tied = np.isclose(distances, distances.min(1, keepdims=True), rtol=1e-9, atol=0.0)
    sel = (errors * tied).sum(1) / tied.sum(1)
    hit = ((errors == opt[:, None]) & tied).sum(1) / tied.sum(1)
    return {
        "mean_error": float(sel.mean()),
        "relative_increase": float(sel.mean() / opt.mean() - 1.0),
        "regret": float(np.mean(sel - opt)),
        "top1": float(hit.mean()),
        "tied_experts": float(tied.sum(1).mean()),
    }


def architecture_choices(sd: dict, J: int, generic_j: int) -> dict[str, np.ndarray | None]:
    """The expert each selector picks on every target of one seed (``None``: chance, an expectation)."""
    errors, peers, loo = sd["errors"], sd["peers"], sd["m2v"]
    T = len(errors)
    out: dict[str, np.ndarray | None] = {
        "optimal": errors.argmin(1),
        "chance": None,
        "generic": np.full(T, generic_j),
        "t2v_sym": sd["sym"].argmin(1),
        "t2v_asym": sd["asym"].argmin(1),
        "model2vec": np.asarray(loo.selected),
    }
    for m in PEERS:
        out[m] = peers[m].argmax(1)
    for prefix, dist in (("", sd["asym"]), ("m2v_", loo.distances)):
        for m in range(1, J + 1):
            for metric in PEERS:
                out[f"rerank_{prefix}{metric}_m{m}"] = two_stage(dist, peers[metric], m)[0]
    return out


def architecture_summary(experts: list[Expert], seed_data: list[dict], targets: list, generic_j: int) -> dict:
    """Which network the optimal expert has, how good the best expert of each network is, and how often each selector
    picks an expert of the right network (one of the networks of the target's optimal experts)."""
    J = len(experts)
    fam = np.array([ARCH_SHORT[e.probe] for e in experts])
    families = list(dict.fromkeys(fam.tolist()))
    datasets = list(dict.fromkeys(t.dataset for t in targets))
    right: dict[str, list[float]] = {}
    picks: dict[str, list[dict[str, float]]] = {}
    optimal_counts = {ds: {f: 0.0 for f in families} for ds in datasets}
    family_oracle: dict[str, dict[str, list[float]]] = {
        f: {"mean_error": [], "relative_increase": []} for f in families
    }
    for sd in seed_data:
        errors = sd["errors"]
        opt = errors.min(1)
        is_opt = errors == opt[:, None]
        ok = np.stack([np.isin(fam, np.unique(fam[is_opt[t]])) for t in range(len(errors))])  # [T, J]
        for t, target in enumerate(targets):
            for j in np.nonzero(is_opt[t])[0]:
                optimal_counts[target.dataset][fam[j]] += 1.0 / is_opt[t].sum() / len(seed_data)
        for f in families:
            best = errors[:, fam == f].min(1)
            family_oracle[f]["mean_error"].append(float(best.mean()))
            family_oracle[f]["relative_increase"].append(float(best.mean() / opt.mean() - 1.0))
        choices = architecture_choices(sd, J, generic_j)
        tied = np.isclose(sd["asym"], sd["asym"].min(1, keepdims=True), rtol=1e-9, atol=0.0)
        choices["t2v_asym_tiebreak"] = tied  # an expectation over the tied experts
        for key, chosen in choices.items():
            if chosen is None:  # chance: a uniformly random expert
                w = np.full((len(errors), J), 1.0 / J)
            elif chosen.ndim == 2:
                w = chosen / chosen.sum(1, keepdims=True)
            else:
                w = np.zeros((len(errors), J))
                w[np.arange(len(errors)), chosen] = 1.0
            right.setdefault(key, []).append(float((w * ok).sum(1).mean()))
            picks.setdefault(key, []).append({f: float(w[:, fam == f].sum(1).mean()) for f in families})

    def ms(v: list[float]) -> list[float]:
        return [float(np.mean(v)), float(np.std(v)) if len(v) > 1 else 0.0]

    return {
        "families": families,
        "expert_family": dict(zip([e.name for e in experts], fam.tolist(), strict=True)),
        "optimal_family_counts": optimal_counts,
        "family_oracle": {f: {k: ms(v) for k, v in d.items()} for f, d in family_oracle.items()},
        "right_architecture": {k: ms(v) for k, v in right.items()},
        "picks": {k: {f: float(np.mean([p[f] for p in v])) for f in families} for k, v in picks.items()},
    }


def finish_architectures(
    cfg: Config,
    experts: list[Expert],
    targets: list[TargetSpec],
    per_seed: list[dict],
    seed_data: list[dict],
    per_target_rows: list[dict],
    costs: dict,
    full_rerank_ok: list[bool],
    fwd_per_image: np.ndarray,
    source_seconds: dict,
    timings: dict,
    t_start: float,
    task2vec_method: str,
    results_dir: Path,
) -> int:
    """Checks, tables and report of the architectures meta-task (``model_selection_architectures.{md,json}``)."""
    J = len(experts)
    names = [e.name for e in experts]
    generic_j = next(j for j, e in enumerate(experts) if e.task == GENERIC and e.probe == "embedded")
    asym = np.array([r["t2v_asym"]["mean_error"] for r in per_seed])
    chance = np.array([r["chance"]["mean_error"] for r in per_seed])
    finite = all(np.isfinite(r[k]["mean_error"]) for r in per_seed for k, _ in METHODS)
    checks = {
        "Task2Vec asymmetric beats chance (mean selected error, every seed)": bool(np.all(asym < chance)),
        "all selection errors are finite": bool(finite),
        "re-ranking a shortlist of all N experts picks an expert with the best peer score": bool(all(full_rerank_ok)),
    }
    table2, rerank_target = table2_with_costs(per_seed, costs, J)
    summary = architecture_summary(experts, seed_data, targets, generic_j)
    for row in per_target_rows:
        row["optimal_architecture"] = summary["expert_family"][row["optimal"]]
    total = time.perf_counter() - t_start
    report = {
        "meta_task": "architectures",
        "config": {**dataclasses.asdict(cfg), "task2vec_method": task2vec_method},
        "machine": machine_info(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "runtime_s": total,
        "from_scratch": not any(e.from_cache for e in experts),
        "timings_s": timings,
        "experts": [
            {
                "name": e.name,
                "model_id": e.model_id,
                "architecture": summary["expert_family"][e.name],
                "probe": e.probe,
                "task": e.task if e.probe != RANDOM_PROBE else None,
                "dataset": e.dataset,
                "classes": e.label_names if e.task != GENERIC else [],
                "source_error": e.source_error,
                "forward_ms_per_image": 1000 * float(fwd_per_image[j]),
            }
            for j, e in enumerate(experts)
        ],
        "targets": [dataclasses.asdict(t) for t in targets],
        "per_seed": per_seed,
        "table2": table2,
        "rerank_target": rerank_target,
        "architectures": summary,
        "table1_embed_seconds": {p: float(np.mean(s)) for p, s in source_seconds.items()},
        "costs": {
            "task2vec_embed_s_per_target": float(np.mean(costs["task2vec_embed_s"])),
            "task2vec_select_s_per_target": float(np.mean(costs["task2vec_select_s"])),
            "peer_forward_s_per_target": float(np.mean(costs["peer_forward_s"])),
            "peer_metric_s_per_target": costs["peer_metric_s"],
            "model2vec_fit_s_per_fold": float(np.mean([r["_m2v_fit_s_per_task"] for r in per_seed])),
            "forward_s_per_image": dict(zip(names, fwd_per_image.tolist(), strict=True)),
        },
        "per_target_seed0": per_target_rows,
        "checks": checks,
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    out_json = results_dir / "model_selection_architectures.json"
    out_md = results_dir / "model_selection_architectures.md"
    out_json.write_text(json.dumps(report, indent=1, default=float) + "\n")
    out_md.write_text(render_architectures_markdown(report))
    log.info("wrote %s and %s (%.0f s)", out_md, out_json, total)
    for name, ok in checks.items():
        print(f"[{'PASS' if ok else 'FAIL'}] {name}")
    return 0 if all(checks.values()) else 1


def render_architectures_markdown(r: dict) -> str:
    cfg, t2, costs, arch = r["config"], r["table2"], r["costs"], r["architectures"]
    n = len(r["experts"])
    fams = arch["families"]
    tgt = r["rerank_target"]
    fwd = costs["peer_forward_s_per_target"]
    metric_s = costs["peer_metric_s_per_target"]
    t2v_cost = costs["task2vec_embed_s_per_target"] + costs["task2vec_select_s_per_target"]
    budget = tgt["budget_forward_passes"]
    best = tgt["best_all_experts_peer"]
    rows = [(k, label) for k, label in METHODS]
    rows.insert(5, ("t2v_asym_tiebreak", "Task2Vec asymmetric, ties broken at random (expectation)"))
    for metric in dict.fromkeys(("leep", "logme", best)):
        for m in dict.fromkeys((4, budget)):
            rows.append((f"rerank_{metric}_m{m}", f"Two-stage: Task2Vec shortlist m={m}, {PEER_LABELS[metric]}"))
    if tgt["best_two_stage_within_budget"] not in dict(rows):
        k = tgt["best_two_stage_within_budget"]
        rows.append((k, f"Two-stage, best within m <= {budget}: `{k}`"))
    cost = {
        "optimal": f"train & test all {n} experts",
        "chance": "0",
        "generic": "0",
        "t2v_sym": f"{t2v_cost:.2f} s (1 probe embedding)",
        "t2v_asym": f"{t2v_cost:.2f} s (1 probe embedding)",
        "t2v_asym_tiebreak": f"{t2v_cost:.2f} s (1 probe embedding)",
        "model2vec": f"{t2v_cost:.2f} s (+ fit {costs['model2vec_fit_s_per_fold']:.1f} s, once)",
    }
    for m in PEERS:
        cost[m] = f"{fwd + metric_s[m]:.2f} s ({n} forward passes)"
    for k, _ in rows:
        if k.startswith("rerank_"):
            v = t2[k]
            cost[k] = f"{v['seconds_per_target'][0]:.2f} s ({v['forward_passes'][0]:.0f} forward passes)"
    label = {"generic": "Always generic (untouched ImageNet Lite0)"}
    lines = [
        "# Model selection across architectures (a second Table 2 meta-task)",
        "",
        f"Generated by `benchmarks/model_selection.py --meta-task architectures{' --quick' if cfg['quick'] else ''}` "
        f"on {r['created']}; total runtime {r['runtime_s'] / 60:.1f} min "
        + (
            "(from scratch)."
            if r["from_scratch"]
            else "(reusing cached experts, features and embeddings where they exist: the Lite0 experts, their "
            "features and every target embedding are the main benchmark's)."
        )
        + " Times are wall-clock on a CPU shared with other jobs: compare them within this file only.",
        f"Machine: {r['machine']['cpu']}, {r['machine']['cores']} cores, torch {r['machine']['torch']} "
        f"({r['machine']['torch_threads']} thread(s)), Python {r['machine']['python']}.",
        "",
        "## Setup",
        "",
        f"- **Experts** ({n}): each offline ImageNet network (EfficientNet-Lite0, Lite1, Lite2, MobileNetV2; real "
        "ImageNet-1k weights) fine-tuned with the main benchmark's recipe (head fitted on the frozen features, then "
        f"{cfg['finetune_steps']} Adam steps of the whole network, lr {cfg['finetune_lr']:g}, batch "
        f"{cfg['finetune_batch']}, frozen batch-norm statistics, {cfg['image_size']} px, each network with its own "
        "input normalisation: MobileNetV2 ImageNet mean/std, the Lites 0.5/0.5) on the source tasks "
        f"{', '.join(cfg['sources'])}; plus each network untouched (its ImageNet classifier from its checkpoint is "
        "the source head LEEP/NCE use); plus the randomly initialised Lite0 (seed 0; features of the untrained "
        "network, a random 1000-way linear layer as its source head).",
        "",
        "  | expert | network | source task | source test error | forward ms / image |",
        "  |---|---|---|---|---|",
    ]
    for e in r["experts"]:
        err = "n/a" if e["source_error"] is None else f"{e['source_error']:.3f}"
        task = e["task"] if e["task"] and e["task"] != GENERIC else ("ImageNet-1k" if e["task"] else "none")
        lines.append(f"  | {e['name']} | {e['architecture']} | {task} | {err} | {e['forward_ms_per_image']:.2f} |")
    lines += [
        "",
        f"- **Targets, splits, seeds, ground truth**: those of the main benchmark ({len(r['targets'])} targets, "
        f"seeds {cfg['seeds']}): test error of an L2 logistic regression on each expert's frozen features.",
        "- **Task2Vec** embeds every task with the one embedded Lite0 probe: an expert is represented by its source "
        "task's embedding, so its network does not enter Task2Vec at all. The experts of one source task (4 networks) "
        "have the same embedding and **tie**; the untouched networks and the random-init one are all represented by "
        "the union of the source classes (ImageNet is not offline) and tie too. Ties go to the first expert in the "
        "table's order (Lite0); the row *ties broken at random* gives the expectation instead. Model2Vec (learned "
        "offsets per expert, leave-one-task-out) and the two-stage re-ranking (a forward pass of each shortlisted "
        "expert) can separate the tied experts.",
        "- **Right architecture** = the selected expert's network is that of (one of) the target's optimal experts "
        "(the random-init Lite0 counts as its own network).",
        f"- Mean ± standard deviation over {len(cfg['seeds'])} seed(s).",
        "",
        "## Table: selecting an expert across architectures",
        "",
        "| method | mean error (%) | relative error increase (%) | regret (pp) | top-1 (%) | right architecture (%) | "
        "weighted Kendall tau | forward passes | cost per target |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, name in rows:
        v = t2[key]
        tau = _pm(v["kendall_tau"], fmt=".3f") if "kendall_tau" in v else "-"
        passes = f"{v['forward_passes'][0]:.0f}" if "forward_passes" in v else "0"
        ra = arch["right_architecture"].get(key)
        lines.append(
            f"| {label.get(key, name)} | {_pm(v['mean_error'], 100)} | {_pm(v['relative_increase'], 100, '.1f')} | "
            f"{_pm(v['regret'], 100)} | {_pm(v['top1'], 100, '.0f')} | "
            f"{_pm(ra, 100, '.0f') if ra else '-'} | {tau} | {passes} | {cost.get(key, '-')} |"
        )
    lines += [
        "",
        f"**Issue target on this meta-task** (the two-stage selector with m <= N/3 = {budget} forward passes matches "
        f"or beats the best all-experts peer, {PEER_LABELS[best]} at "
        f"{100 * tgt['best_all_experts_peer_relative_increase']:.1f}%): **{'met' if tgt['met'] else 'not met'}**; "
        f"the best two-stage setting within that budget is `{tgt['best_two_stage_within_budget']}` at "
        f"{100 * tgt['best_two_stage_relative_increase']:.1f}%.",
        "",
        "## Per architecture",
        "",
        "Which network the optimal expert has (targets per dataset, averaged over seeds; a tie splits a target):",
        "",
        "| target dataset | " + " | ".join(fams) + " |",
        "|---|" + "---|" * len(fams),
    ]
    for ds, counts in arch["optimal_family_counts"].items():
        lines.append(f"| {ds} | " + " | ".join(f"{counts[f]:.1f}" for f in fams) + " |")
    lines += [
        "",
        "The best expert of one network only (an oracle restricted to that network's experts), against the "
        "cross-architecture optimum:",
        "",
        "| network | mean error (%) | relative error increase (%) |",
        "|---|---|---|",
    ]
    for f in fams:
        v = arch["family_oracle"][f]
        lines.append(f"| {f} | {_pm(v['mean_error'], 100)} | {_pm(v['relative_increase'], 100, '.1f')} |")
    lines += [
        "",
        "Which network each selector picks (share of targets, %), and how often it is the right one:",
        "",
        "| method | " + " | ".join(fams) + " | right architecture (%) |",
        "|---|" + "---|" * len(fams) + "---|",
    ]
    for key, name in rows:
        if key not in arch["picks"]:
            continue
        p = arch["picks"][key]
        ra = arch["right_architecture"][key]
        cells = " | ".join(f"{100 * p[f]:.0f}" for f in fams)
        lines.append(f"| {label.get(key, name)} | {cells} | {_pm(ra, 100, '.0f')} |")
    lines += render_two_stage(r)
    lines += _checks_and_targets(r, "generic Lite0")
    lines += [
        "",
        "Stage timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in r["timings_s"].items()) + ".",
        "",
    ]
    return "\n".join(lines)


def aggregate(runs: list[dict]) -> dict[str, dict[str, list[float]]]:
    """Mean and standard deviation over seeds of every number of every method."""
    out: dict[str, dict[str, list[float]]] = {}
    for method in runs[0]:
        if method.startswith("_"):
            continue
        out[method] = {}
        for k in runs[0][method]:
            vals = np.array([r[method][k] for r in runs], dtype=float)
            out[method][k] = [float(np.nanmean(vals)), float(np.nanstd(vals)) if len(vals) > 1 else 0.0]
    return out


def search_speed(cfg: Config) -> dict[str, float]:
    """Time `ExpertIndex.select` over many experts at the probe's dimension, vs a python loop of
    `hf_task2vec.distance` calls (measured on a sample and scaled)."""
    rng = np.random.default_rng(0)
    n, d = cfg.speed_experts, cfg.speed_dim
    meta = {"probe": "embedded", "probe_revision": "speed", "method": "montecarlo", "image_size": "32"}
    trivial = np.full(d, 1e-6, np.float32)
    index = ExpertIndex()
    block = rng.gamma(0.5, 1e-3, size=(n, d)).astype(np.float32)
    start = time.perf_counter()
    for i in range(n):
        index.add(f"expert-{i}", t2v.TaskEmbedding(block[i], trivial, [], meta))
    add_s = time.perf_counter() - start
    del block
    query = t2v.TaskEmbedding(rng.gamma(0.5, 1e-3, d).astype(np.float32), trivial, [], meta)
    index.select(query, k=5)  # builds the cached stacked arrays
    times = []
    for _ in range(5):
        start = time.perf_counter()
        index.select(query, k=5)
        times.append(time.perf_counter() - start)
    sample = 200
    embs = [index.embedding(f"expert-{i}") for i in range(sample)]
    start = time.perf_counter()
    for e in embs:
        t2v_distance(e, query, kind="asymmetric")
    loop_s = (time.perf_counter() - start) / sample * n
    return {
        "experts": n,
        "dim": d,
        "select_s": float(np.median(times)),
        "add_s_total": add_s,
        "loop_s_estimated": loop_s,
        "speedup_vs_loop": loop_s / float(np.median(times)),
    }


def machine_info() -> dict[str, str]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def _pm(v: list[float], scale: float = 1.0, fmt: str = ".2f", spread: bool = True) -> str:
    mean, std = v[0] * scale, v[1] * scale
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean:{fmt}} ± {std:{fmt}}" if spread else f"{mean:{fmt}}"


def _checks_and_targets(r: dict, generic: str) -> list[str]:
    """The report's checklist and its per-target table of the first seed (``generic``: that column's name)."""
    lines = ["", "## Checks", ""]
    lines += [f"- [{'x' if ok else ' '}] {name}" for name, ok in r["checks"].items()]
    lines += [
        "",
        "## Per-target detail (first seed)",
        "",
        f"| target | n train | optimal expert (error %) | {generic} error % | Task2Vec asym pick (error %) | "
        "Model2Vec pick | LogME pick |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in r["per_target_seed0"]:
        lines.append(
            f"| {row['target']} | {row['n_train']} | {row['optimal']} ({100 * row['optimal_error']:.1f}) | "
            f"{100 * row['generic_error']:.1f} | {row['t2v_asym']} ({100 * row['t2v_asym_error']:.1f}) | "
            f"{row['model2vec']} | {row['logme']} |"
        )
    return lines


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def render_markdown(r: dict, index_dir: Path) -> str:
    cfg, t2, costs = r["config"], r["table2"], r["costs"]
    nseeds = len(cfg["seeds"])
    fwd = costs["peer_forward_s_per_target"]
    metric_s = costs["peer_metric_s_per_target"]
    t2v_cost = costs["task2vec_embed_s_per_target"] + costs["task2vec_select_s_per_target"]
    cost = {
        "optimal": f"train & test all {len(r['experts'])} experts",
        "chance": "0",
        "generic": "0",
        "t2v_sym": f"{t2v_cost:.2f} s (1 probe embedding)",
        "t2v_asym": f"{t2v_cost:.2f} s (1 probe embedding)",
        "model2vec": f"{t2v_cost:.2f} s (+ fit {costs['model2vec_fit_s_per_fold']:.1f} s, once)",
    }
    for m in PEERS:
        cost[m] = f"{fwd + metric_s[m]:.2f} s ({len(r['experts'])} forward passes)"
    lines = [
        "# Model selection benchmark (paper Table 2 / Table 1 analogs)",
        "",
        f"Generated by `benchmarks/model_selection.py{' --quick' if cfg['quick'] else ''}` on "
        f"{r['created']}; total runtime {r['runtime_s'] / 60:.1f} min "
        + (
            "(from scratch: experts fine-tuned in this run)."
            if r["from_scratch"]
            else "(reusing the cached experts, features and embeddings of an earlier run)."
        )
        + " Times are wall-clock on a CPU shared with other jobs: compare them within this file only.",
        f"Machine: {r['machine']['cpu']}, {r['machine']['cores']} cores, torch {r['machine']['torch']} "
        f"({r['machine']['torch_threads']} thread(s)), Python {r['machine']['python']}.",
        "",
        "## Setup",
        "",
        f"- **Experts** ({len(r['experts'])}): the embedded ImageNet EfficientNet-Lite0 probe fine-tuned "
        f"(head fitted on the frozen features first, then {cfg['finetune_steps']} Adam steps of the whole network, "
        f"lr {cfg['finetune_lr']:g} with cosine decay, batch {cfg['finetune_batch']}, batch-norm statistics frozen, "
        f"{cfg['image_size']} px) on source tasks "
        "cut from the *train* splits of Animal-MNIST, Fashion-MNIST and digits (label subsets and label groupings), "
        "plus the untouched ImageNet network as the *generic* expert:",
        "",
        "  | expert | source classes (labels) | source test error |",
        "  |---|---|---|",
    ]
    for e in r["experts"]:
        err = "n/a" if e["source_error"] is None else f"{e['source_error']:.3f}"
        classes = ", ".join(e["classes"]) if e["classes"] else "ImageNet-1k"
        lines.append(f"  | {e['name']} | {classes} | {err} |")
    n_targets = len(r["targets"])
    ntr = [t["per_class_train"] * len(t["classes"]) for t in r["targets"]]
    lines += [
        "",
        f"- **Targets** ({n_targets}): random 2-5 class subsets of the *test* splits (held-out images), "
        f"{min(ntr)}-{max(ntr)} training examples each (10-100 per class; digits fewer), up to "
        f"{cfg['max_test_per_class']} test examples per class.",
        "- **Ground truth**: test error of an L2 logistic regression on each expert's frozen (pooled) features, "
        "for every target and expert. *Optimal* picks the best expert per target with hindsight.",
        f"- **Task2Vec**: one embedding of the target's training set with the embedded probe ({cfg['image_size']} px, "
        f"{cfg.get('task2vec_method', 'montecarlo')} Fisher, the library default), searched in an `ExpertIndex` "
        "holding each expert's source-task embedding "
        f"({cfg['expert_embed_samples']} examples). The generic expert's training task (ImageNet) is not available "
        "offline; it is represented by the union of all source classes (a 30-way task over the three datasets).",
        "- **Model2Vec**: `m_j = F_j + b_j` and gamma fitted on the other targets' measured errors "
        "(leave-one-task-out; "
        f"soft labels a=20, Adam lr 0.05, weight decay 5e-4, {cfg['model2vec_steps']} steps).",
        "- **Peers** (LogME, LEEP, NCE, H-score, and H-score with Ledoit-Wolf shrinkage of Ibrahim et al. 2022): "
        "every expert is run on the "
        "target's training examples; LEEP/NCE use the expert's own source head (ImageNet head for the generic one).",
        f"- Mean ± standard deviation over {nseeds} seed(s) (target train/test draws and embedding seed).",
        "",
        "Relative error increase = mean selected error / mean optimal error - 1 (over targets; the paper's Table 2 "
        "measure). Regret = mean (selected - optimal) error. Top-1 = fraction of targets where the optimal expert is "
        "chosen. Kendall tau = `scipy.stats.weightedtau` of the method's scores against the negative true errors "
        "(per target, averaged; 1 = perfect ranking with emphasis on the top).",
        "",
        "## Table 2: selecting an expert",
        "",
        "| method | mean error (%) | relative error increase (%) | regret (pp) | top-1 (%) | weighted Kendall tau |"
        " cost per target |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, label in METHODS:
        v = t2[key]
        tau = _pm(v["kendall_tau"], fmt=".3f") if "kendall_tau" in v else "-"
        lines.append(
            f"| {label} | {_pm(v['mean_error'], 100)} | {_pm(v['relative_increase'], 100, '.1f')} | "
            f"{_pm(v['regret'], 100)} | {_pm(v['top1'], 100, '.0f')} | {tau} | {cost[key]} |"
        )
    lines += render_two_stage(r)
    if r["table1"]:
        lines += [
            "",
            "## Table 1: choice of probe network",
            "",
            f"Task2Vec selection with embeddings from different probes (seeds {cfg['table1_seeds']}; same experts, "
            "targets and ground truth).",
            "",
            "| probe | asymmetric: relative error increase (%) | asymmetric: top-1 (%) | asymmetric: Kendall tau | "
            "symmetric: relative error increase (%) | embedding time per source task (s) |",
            "|---|---|---|---|---|---|",
        ]
        for p, v in r["table1"].items():
            lines.append(
                f"| {p} | {_pm(v['asymmetric']['relative_increase'], 100, '.1f')} | "
                f"{_pm(v['asymmetric']['top1'], 100, '.0f')} | {_pm(v['asymmetric']['kendall_tau'], fmt='.3f')} | "
                f"{_pm(v['symmetric']['relative_increase'], 100, '.1f')} | {r['table1_embed_seconds'][p]:.2f} |"
            )
    s = r["search_speed"]
    lines += [
        "",
        "## Cost",
        "",
        f"- Task2Vec: embedding a target {costs['task2vec_embed_s_per_target']:.2f} s, searching the index "
        f"{costs['task2vec_select_s_per_target'] * 1000:.1f} ms (mean per target).",
        f"- Peers: forward passes of all {len(r['experts'])} experts over the target's training set "
        f"{fwd:.2f} s per target (per-image forward time measured once per expert, times the training-set size), "
        "plus the metric for all experts: " + ", ".join(f"{m} {v * 1000:.0f} ms" for m, v in metric_s.items()) + ". "
        "The H-score costs are those of the library calls (`h_score` on the 1280-d features, timed on the first "
        "target); the table's H-score values are computed in the features' N-dim row space, which gives the same "
        "numbers (checked against the library on the first target in every run) for a fraction of the time.",
        f"- Search speed: `ExpertIndex.select` over {s['experts']:,} experts x {s['dim']:,} filters answers in "
        f"{s['select_s'] * 1000:.0f} ms (median of 5; cached stacked float32 arrays); a python loop of "
        f"`hf_task2vec.distance` calls would take ~{s['loop_s_estimated']:.1f} s ({s['speedup_vs_loop']:.0f}x slower).",
    ]
    lines += _checks_and_targets(r, "generic")
    lines += [
        "",
        "## Expert index",
        "",
        f"The experts with their source-task embeddings (embedded probe, {cfg['image_size']} px) and Model2Vec offsets "
        f"fitted on all targets of the first seed are saved in `{_rel(index_dir)}`"
        " (`ExpertIndex.load(...)`). Each expert's info holds `task`, `classes`, `dataset`, `error` (its source test "
        "error) and `mean_target_error`. The fine-tuned weights themselves stay in the (gitignored) benchmark cache.",
        "",
        "Stage timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in r["timings_s"].items()) + ".",
        "",
    ]
    return "\n".join(lines)


def render_two_stage(r: dict) -> list[str]:
    """The two-stage selector's cost/quality curve (Markdown lines)."""
    t2, tgt = r["table2"], r["rerank_target"]
    n = len(r["experts"])
    best = tgt["best_all_experts_peer"]
    lines = [
        "",
        "## Two-stage selection: a probe-embedding shortlist re-ranked by a peer score",
        "",
        "`ExpertIndex.select(task, rerank=metric, shortlist=m)`: the Task2Vec asymmetric distance (one probe "
        "embedding) shortlists the m nearest experts; only those m are run forward on the target's training examples "
        "and ranked by the peer score. Forward fraction = m / N of the forward passes an all-experts peer needs. "
        "Seconds per target = probe embedding + search + the shortlisted experts' forward passes + the metric on them.",
        "",
        f"**Target** (m <= N/3 = {tgt['budget_forward_passes']} forward passes matches or beats the best all-experts "
        f"peer, {PEER_LABELS[best]} at {100 * tgt['best_all_experts_peer_relative_increase']:.1f}%): "
        + ("met" if tgt["met"] else "not met")
        + f"; the best two-stage setting within that budget is `{tgt['best_two_stage_within_budget']}` at "
        f"{100 * tgt['best_two_stage_relative_increase']:.1f}%.",
        "",
        "Relative error increase (%) of the two-stage selector, by shortlist size m (rows) and re-ranking score "
        "(columns); Task2Vec shortlist. The last rows are the all-experts peers (every expert run forward) and "
        "Task2Vec alone.",
        "",
        "| m | forward fraction | " + " | ".join(PEER_LABELS[p] for p in PEERS) + " |",
        "|---|---|" + "---|" * len(PEERS),
    ]
    for m in range(1, n + 1):
        cells = [_pm(t2[f"rerank_{p}_m{m}"]["relative_increase"], 100, ".1f") for p in PEERS]
        lines.append(f"| {m} | {m / n:.2f} | " + " | ".join(cells) + " |")
    lines.append(
        "| all experts (peer alone) | 1.00 | "
        + " | ".join(_pm(t2[p]["relative_increase"], 100, ".1f") for p in PEERS)
        + " |"
    )
    t2v_rel = _pm(t2["t2v_asym"]["relative_increase"], 100, ".1f")
    lines.append(f"| Task2Vec alone | 0 | {t2v_rel} |" + " |" * (len(PEERS) - 1))
    lines += [
        "",
        "Same with the Model2Vec (leave-one-task-out) shortlist:",
        "",
        "| m | " + " | ".join(PEER_LABELS[p] for p in PEERS) + " |",
        "|---|" + "---|" * len(PEERS),
    ]
    for m in range(1, n + 1):
        cells = [_pm(t2[f"rerank_m2v_{p}_m{m}"]["relative_increase"], 100, ".1f") for p in PEERS]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    for metric in dict.fromkeys(("leep", best)):
        lines += [
            "",
            f"Full curve for the {PEER_LABELS[metric]} re-ranking (Task2Vec shortlist):",
            "",
            "| m | forward passes | relative error increase (%) | top-1 (%) | weighted Kendall tau "
            "| seconds per target |",
            "|---|---|---|---|---|---|",
        ]
        for m in range(1, n + 1):
            v = t2[f"rerank_{metric}_m{m}"]
            lines.append(
                f"| {m} | {m} | {_pm(v['relative_increase'], 100, '.1f')} | {_pm(v['top1'], 100, '.0f')} | "
                f"{_pm(v['kendall_tau'], fmt='.3f')} | {v['seconds_per_target'][0]:.2f} |"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small CI run (<= 5 min) with loose checks")
    parser.add_argument(
        "--results-dir",
        default=None,
        help="where to write model_selection.md/.json "
        "(default: benchmarks/results; --quick: benchmarks/cache/model_selection/quick-results)",
    )
    parser.add_argument(
        "--index-dir", default=None, help="where to save the expert index (default: <results-dir>/expert_index)"
    )
    parser.add_argument("--cache-dir", default=str(ROOT / "benchmarks" / "cache" / "model_selection"))
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default: 3, quick: 1)")
    parser.add_argument(
        "--meta-task",
        choices=("lite0", "architectures"),
        default="lite0",
        help="lite0: Table 2/1 with EfficientNet-Lite0 experts (default); architectures: experts of four ImageNet "
        "networks plus the random-init Lite0, written to model_selection_architectures.{md,json}",
    )
    parser.add_argument(
        "--arch-sources",
        default=None,
        help="architectures meta-task: comma-separated source tasks to fine-tune every network on "
        f"(default: {','.join(ARCH_SOURCES)}; quick: {','.join(ARCH_QUICK_SOURCES)})",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared 2-core machine a second thread mostly waits)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("hf_task2vec", "datasets", "httpx", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    cfg = QUICK if args.quick else FULL
    if args.meta_task == "architectures":
        cfg = architecture_config(cfg)
        if args.arch_sources:
            sources = tuple(args.arch_sources.split(","))
            unknown = [x for x in sources if x not in ALL_SOURCES]
            if unknown:
                parser.error(f"unknown source task(s) {unknown}; choose from {list(ALL_SOURCES)}")
            cfg = dataclasses.replace(cfg, sources=sources)
    if args.seeds is not None:
        cfg = dataclasses.replace(cfg, seeds=tuple(range(args.seeds)))
    if args.results_dir:
        results_dir = Path(args.results_dir)
    elif args.quick:
        results_dir = Path(args.cache_dir) / "quick-results"
    else:
        results_dir = ROOT / "benchmarks" / "results"
    index_dir = Path(args.index_dir) if args.index_dir else results_dir / "expert_index"
    return run(cfg, results_dir.resolve(), Path(args.cache_dir).resolve(), index_dir.resolve(), args.meta_task)


if __name__ == "__main__":
    sys.exit(main())
