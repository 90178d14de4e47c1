"""The experts: ``Expert``, fine-tuning a network on a source task (``train_expert``, cached), the untouched
ImageNet network (``generic_expert``), and an expert's features and source-label probabilities on the target
pools (``expert_outputs``, cached; the cache stems of ``cache_stem`` are part of the cache keys)."""

from __future__ import annotations

import importlib.util
import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import hf_task2vec as t2v

from .config import GENERIC, MODEL_PREFIX, ROOT, Config, SourceSpec, log
from .data import Pool, load_bench_probe, normalise, source_examples


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
    # the source task's Task2Vec embedding when the expert ships one (a zoo card); otherwise the harness embeds the
    # ALL_SOURCES task named by ``task``
    embedding: t2v.TaskEmbedding | None = None

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
