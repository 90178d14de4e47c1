"""Experts that ship as Hub model repos: a base network + a PEFT (LoRA) adapter + a classifier head + a card.

An expert repo (a folder, or a Hub model repo with the same files) is what a PEFT user expects, plus two files:

* ``adapter_config.json`` + ``adapter_model.safetensors``: written by ``peft`` itself
  (``PeftModel.save_pretrained``): LoRA on the base network's feature extractor (the timm model with its
  classifier removed, or the transformers ``BertModel`` of a text base);
* ``head.safetensors``: the source classifier, ``weight [K, C]`` and ``bias [K]`` over the base's pooled
  features (label names in its metadata);
* ``task_embedding.safetensors``: the Task2Vec embedding of the task the expert was trained on (a
  `TaskEmbedding`; its metadata names the probe and the estimator), what an `ExpertIndex` searches;
* ``README.md``: a model card whose YAML front matter has ``base_model``, ``library_name: peft``,
  ``datasets``, and an ``hf_task2vec`` section: the base (an offline probe name of this library and the
  revision of its weights), the source task and classes, the source test error, the training seed and cost,
  how the task embedding was made, and the sha256 of the other files.

`load_expert` builds base + adapter + head from a local folder or the Hub (``snapshot_download`` through
`hf_task2vec.gateway`); the adapter is merged into the base, so the result is a plain `Probe` (features) with
a head (logits). A missing base, a base of another revision and an adapter of another shape each raise an
`ExpertError` with one line that names the expert, what is wrong and the fix. `expert_entry` reads what an
`ExpertIndex` records of an expert from its card (no network is run: the embedding is in the repo), with a
``weights`` entry ``{"expert_repo": ...}`` that the two-stage re-ranking loads with `load_expert`;
`ExpertIndex.from_expert_repos` builds an index of many.

    expert = load_expert("benchmarks/zoo/lite0-animals-hoofed")      # or "user/lite0-animals-hoofed"
    logits = expert.logits(inputs)
    index = ExpertIndex.from_expert_repos(sorted(Path("benchmarks/zoo").glob("*-*")))
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .errors import ExpertError, ProbeError
from .probes import file_sha256

if TYPE_CHECKING:  # pragma: no cover
    from .embedding import TaskEmbedding
    from .probes import Probe

logger = logging.getLogger(__name__)

__all__ = [
    "BASES",
    "CARD_FILE",
    "ADAPTER_CONFIG_FILE",
    "ADAPTER_FILE",
    "HEAD_FILE",
    "EMBEDDING_FILE",
    "Expert",
    "ExpertBase",
    "expert_entry",
    "load_base",
    "load_expert",
    "local_expert_folder",
    "peft_target",
    "read_card",
    "register_base",
    "resolve_expert",
    "write_expert",
]

FORMAT = "hf_task2vec.expert"
FORMAT_VERSION = "1"
CARD_FILE = "README.md"
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_FILE = "adapter_model.safetensors"
HEAD_FILE = "head.safetensors"
EMBEDDING_FILE = "task_embedding.safetensors"
HASHED_FILES = (ADAPTER_CONFIG_FILE, ADAPTER_FILE, HEAD_FILE, EMBEDDING_FILE)
_SOURCE_ROOT = Path(__file__).resolve().parents[1]  # a source checkout: relative zoo paths resolve here too
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


# -- bases -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExpertBase:
    """A base network experts are adapters of.

    Attributes:
        name: the name cards use (``hf_task2vec.base``), e.g. ``"embedded-lite1"``.
        modality: ``"image"`` or ``"text"``.
        base_model: the upstream Hub id of the same weights (the card's ``base_model``).
        description: a few words for messages and cards.
        build: ``build(image_size=..., max_length=...)`` -> a pretrained `Probe` (raises `ProbeError` when
            the weights are not installed).
        lora_targets: the default LoRA ``target_modules`` (a regex or a list of names) of the zoo.
    """

    name: str
    modality: str
    base_model: str
    description: str
    build: Callable[..., Probe]
    lora_targets: str | tuple[str, ...] = ()


def _registered(name: str) -> Callable[..., Probe]:
    def build(*, image_size: int | None = None, max_length: int | None = None) -> Probe:
        from .probes import load_probe

        options: dict[str, Any] = {"max_length": max_length} if max_length else {}
        return load_probe(name, image_size=image_size, **options)

    return build


def _minilm_l3(*, image_size: int | None = None, max_length: int | None = None) -> Probe:
    from .onnx_text import load_minilm_l3_probe

    return load_minilm_l3_probe(max_length=max_length or 128)


# pointwise convolutions of the last two stages and the final 1x1 conv: small adapters, where the
# features that change between tasks are (the depthwise convolutions are left alone)
_TIMM_LATE = r"(blocks\.(5|6)\.\d+\.(conv_pw|conv_pwl)|conv_head)"
_TEXT_QV = ("query", "value")

BASES: dict[str, ExpertBase] = {
    "embedded": ExpertBase("embedded", "image", "timm/tf_efficientnet_lite0.in1k",
                           "EfficientNet-Lite0, ImageNet-1k", _registered("embedded"), _TIMM_LATE),
    "embedded-lite1": ExpertBase("embedded-lite1", "image", "timm/tf_efficientnet_lite1.in1k",
                                 "EfficientNet-Lite1, ImageNet-1k", _registered("embedded-lite1"), _TIMM_LATE),
    "embedded-lite2": ExpertBase("embedded-lite2", "image", "timm/tf_efficientnet_lite2.in1k",
                                 "EfficientNet-Lite2, ImageNet-1k", _registered("embedded-lite2"), _TIMM_LATE),
    "embedded-mobilenetv2": ExpertBase("embedded-mobilenetv2", "image", "torchvision/mobilenet_v2.imagenet1k_v1",
                                       "MobileNetV2 (torchvision weights), ImageNet-1k",
                                       _registered("embedded-mobilenetv2"), _TIMM_LATE),
    "embedded-text": ExpertBase("embedded-text", "text", "sentence-transformers/all-MiniLM-L6-v2",
                                "all-MiniLM-L6-v2 text encoder", _registered("embedded-text"), _TEXT_QV),
    "minilm-l3-onnx": ExpertBase("minilm-l3-onnx", "text", "sentence-transformers/paraphrase-MiniLM-L3-v2",
                                 "paraphrase-MiniLM-L3-v2 text encoder (from its ONNX export)", _minilm_l3, _TEXT_QV),
}


def register_base(base: ExpertBase, *, replace: bool = False) -> None:
    """Make a base network known to `load_expert` (e.g. a tiny one in tests)."""
    if base.name in BASES and not replace:
        raise ValueError(f"base {base.name!r} is already registered; pass replace=True")
    BASES[base.name] = base


def load_base(name: str, *, image_size: int | None = None, max_length: int | None = None) -> Probe:
    """The pretrained base network ``name`` as a `Probe` (`ExpertError` ``missing_base`` if unknown or
    not installed)."""
    base = BASES.get(name)
    if base is None:
        raise ExpertError(f"unknown base {name!r}: known bases are {sorted(BASES)}", reason="missing_base")
    try:
        return base.build(image_size=image_size, max_length=max_length)
    except ProbeError as exc:
        raise ExpertError(f"base {name!r} ({base.description}) cannot be loaded here: {exc}",
                          reason="missing_base") from exc


def peft_target(probe: Probe) -> nn.Module:
    """The module a PEFT adapter wraps: the timm feature extractor of an image probe, the transformers
    model of a text probe (so adapter keys read as a PEFT user of that model expects)."""
    inner = getattr(probe.backbone, "model", None)
    return inner if getattr(probe, "modality", "image") == "text" and isinstance(inner, nn.Module) else probe.backbone


# -- the card --------------------------------------------------------------------------------------------
def read_card(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The YAML front matter of ``folder/README.md`` (`ExpertError` if it is missing or unreadable)."""
    import yaml

    path = Path(folder) / CARD_FILE
    if not path.is_file():
        raise ExpertError(f"{str(Path(folder))!r} is not an expert repo: it has no {CARD_FILE} (model card)")
    text = path.read_text(encoding="utf-8")
    end = text.find("\n---", 4)
    if not text.startswith("---") or end < 0:
        raise ExpertError(f"{str(path)!r} has no YAML front matter ('---' ... '---'): not an expert card")
    try:
        meta = yaml.safe_load(text[3:end]) or {}
    except yaml.YAMLError as exc:
        raise ExpertError(f"{str(path)!r}: the YAML front matter is unreadable ({exc})") from exc
    if not isinstance(meta, dict):
        raise ExpertError(f"{str(path)!r}: the YAML front matter is not a mapping")
    return meta


def _section(meta: Mapping[str, Any], where: str) -> dict[str, Any]:
    sec = meta.get("hf_task2vec")
    if not isinstance(sec, dict) or sec.get("format") != FORMAT:
        raise ExpertError(f"{where}: its card has no 'hf_task2vec' section of format {FORMAT!r}: not an "
                          "hf_task2vec expert (write it with hf_task2vec.experts.write_expert)")
    return sec


def _verify_files(folder: Path, sec: Mapping[str, Any], where: str, names: Sequence[str] = HASHED_FILES) -> None:
    recorded = sec.get("files_sha256") or {}
    for name in names:
        path = folder / name
        if not path.is_file():
            raise ExpertError(f"{where} is incomplete: {name} is missing; download or rebuild the expert")
        want = recorded.get(name)
        if want and file_sha256(path) != want:
            raise ExpertError(f"{where}: {name} differs from the sha256 its card records ({want[:12]}...): the file "
                              "was altered or truncated; download or rebuild the expert", reason="corrupt")


def _yaml_block(meta: Mapping[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(dict(meta), sort_keys=False, allow_unicode=True, width=120)


def expert_card(meta: Mapping[str, Any]) -> str:
    """The ``README.md`` of an expert repo: the YAML front matter ``meta`` and a short description."""
    sec = meta["hf_task2vec"]
    name = sec.get("model_id") or sec.get("task", "expert")
    classes = ", ".join(str(c) for c in sec.get("source_classes", []))
    emb = sec.get("task_embedding", {})
    train = sec.get("training", {})
    err = sec.get("source_test_error")
    lines = [
        "---",
        _yaml_block(meta).rstrip(),
        "---",
        f"# {name}",
        "",
        f"A LoRA adapter (PEFT) and a linear head on **{meta.get('base_model')}** (hf_task2vec base "
        f"`{sec.get('base')}`, revision `{sec.get('base_revision')}`), trained on the source task "
        f"`{sec.get('task')}` of `{sec.get('dataset')}` (split `{sec.get('split', 'train')}`): {classes}.",
        "",
        f"- source test error: {err:.4f} on {sec.get('test_examples')} test examples" if isinstance(err, float)
        else f"- source test error: {err}",
        f"- training: {train.get('steps')} steps of batch {train.get('batch_size')} (seed {train.get('seed')}), "
        f"{train.get('seconds')} s on {train.get('threads')} CPU thread(s)",
        f"- task embedding (`{EMBEDDING_FILE}`): Task2Vec with probe `{emb.get('probe')}`, estimator "
        f"`{emb.get('estimator')}`, {emb.get('max_samples')} samples, seed {emb.get('seed')}",
        "",
        "```python",
        "from hf_task2vec.experts import load_expert",
        f'expert = load_expert("{name}")   # or the local folder',
        "logits = expert.logits(inputs)      # inputs made with expert.probe.transform()",
        "```",
        "",
    ]
    return "\n".join(lines)


# -- the loaded expert -----------------------------------------------------------------------------------
@dataclass
class Expert:
    """An expert network: base + merged adapter (`probe`, features) and its source classifier (head).

    Attributes:
        model_id: the expert's id (the card's ``model_id``, the Hub repo id, or the folder name).
        folder: where its files are (a Hub snapshot for a Hub repo).
        meta: the card's YAML front matter; ``meta["hf_task2vec"]`` is the hf_task2vec section.
        probe: the adapted network as a `Probe` (``probe.features(x)``, ``probe.transform()``).
        head_weight, head_bias: the source classifier ``[K, C]`` / ``[K]``.
        label_names: the source classes, in head order.
        commit: the Hub commit it was downloaded at (``None`` for a local folder).
    """

    model_id: str
    folder: Path
    meta: dict[str, Any]
    probe: Probe
    head_weight: torch.Tensor
    head_bias: torch.Tensor
    label_names: list[str]
    commit: str | None = None
    origin: str = field(default="")

    @property
    def card(self) -> dict[str, Any]:
        """The ``hf_task2vec`` section of the card."""
        return dict(self.meta.get("hf_task2vec", {}))

    @torch.no_grad()
    def logits(self, inputs: Any) -> torch.Tensor:
        """Source-task logits ``[B, K]`` of a batch made with ``probe.transform()``."""
        feats = self.probe.features(inputs).float()
        return feats @ self.head_weight.float().T + self.head_bias.float()

    def task_embedding(self) -> TaskEmbedding:
        """The Task2Vec embedding of the expert's training task (from the repo)."""
        from .embedding import TaskEmbedding

        return TaskEmbedding.load(self.folder / EMBEDDING_FILE)


def local_expert_folder(
    repo_or_folder: str | os.PathLike[str], *, root: str | os.PathLike[str] | None = None
) -> Path | None:
    """The existing local folder ``repo_or_folder`` names (absolute, or relative to ``root``, the working
    directory or the source checkout of hf_task2vec, tried in that order), else ``None``."""
    path = Path(os.fspath(repo_or_folder)).expanduser()
    candidates = [path] if path.is_absolute() else [
        *([Path(root) / path] if root is not None else []), Path.cwd() / path, _SOURCE_ROOT / path]
    return next((c.resolve() for c in candidates if c.is_dir()), None)


def resolve_expert(
    repo_or_folder: str | os.PathLike[str],
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    root: str | os.PathLike[str] | None = None,
) -> tuple[Path, str | None]:
    """The local folder of an expert and its Hub commit (``None`` for a folder).

    A path that exists as a folder (absolute, or relative to ``root``, the working directory or the source
    checkout of hf_task2vec) is used as it is; anything else must be a Hub model id (``user/name``) and is
    downloaded with ``huggingface_hub.snapshot_download`` (``HF_ENDPOINT``, ``HF_TOKEN``, ``HF_HUB_OFFLINE``
    apply; failures raise `HubError`).
    """
    spec = os.fspath(repo_or_folder)
    local = local_expert_folder(spec, root=root)
    if local is not None:
        return local, None
    if not _REPO_ID.fullmatch(spec) or spec.startswith((".", "~")) or Path(spec).is_file():
        raise ExpertError(f"expert {spec!r} is neither an existing folder nor a Hub model id ('user/name'): check "
                          "the path (relative paths are tried against the working directory and the checkout)")
    from huggingface_hub import constants, snapshot_download

    from .gateway import HubTarget, hub_call

    target = HubTarget(f"Hub model repo {spec!r}", endpoint=constants.ENDPOINT, revision=revision, token=token)
    folder = hub_call(
        "download the expert",
        lambda: snapshot_download(spec, repo_type="model", revision=revision, token=token,
                                  cache_dir=os.fspath(cache_dir) if cache_dir is not None else None),
        target,
    )
    commit = Path(folder).name
    return Path(folder), commit if re.fullmatch(r"[0-9a-f]{40}", commit) else revision


def _load_head(folder: Path, where: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    from safetensors import safe_open

    path = folder / HEAD_FILE
    try:
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
            weight, bias = fh.get_tensor("weight"), fh.get_tensor("bias")
    except Exception as exc:
        raise ExpertError(f"{where}: {HEAD_FILE} is not a head (safetensors with 'weight' and 'bias'): {exc}") from exc
    names = json.loads(meta.get("label_names", "[]"))
    if weight.ndim != 2 or bias.shape != (weight.shape[0],):
        raise ExpertError(f"{where}: {HEAD_FILE} has weight {tuple(weight.shape)} and bias {tuple(bias.shape)}, "
                          "expected [K, C] and [K]", reason="adapter_shape")
    return weight.float(), bias.float(), [str(n) for n in names]


def _apply_adapter(probe: Probe, folder: Path, where: str, base: str) -> str:
    """Inject the LoRA adapter of ``folder`` into ``probe`` and merge it; returns the adapter file's sha256."""
    from peft import PeftConfig, PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    try:
        config = PeftConfig.from_pretrained(str(folder))
    except Exception as exc:
        raise ExpertError(f"{where}: {ADAPTER_CONFIG_FILE} is not a PEFT adapter config ({exc})") from exc
    state = load_file(str(folder / ADAPTER_FILE))
    target = peft_target(probe)
    try:
        model = PeftModel(target, config)
    except ValueError as exc:  # peft: target modules not found in the base
        raise ExpertError(f"{where}: the adapter's target modules {config.target_modules!r} do not exist in base "
                          f"{base!r} ({str(exc).splitlines()[0]}): the adapter was made for another base",
                          reason="adapter_shape") from exc
    # no embedding layers to save: without this peft looks the base's config.json up on the Hub (a network call)
    expected = get_peft_model_state_dict(model, save_embedding_layers=False)
    for key, value in state.items():
        if key not in expected:
            raise ExpertError(f"{where}: adapter tensor {key} has no layer in base {base!r}: the adapter was made "
                              "for another base", reason="adapter_shape")
        if tuple(expected[key].shape) != tuple(value.shape):
            raise ExpertError(f"{where}: adapter tensor {key} has shape {tuple(value.shape)}, base {base!r} needs "
                              f"{tuple(expected[key].shape)}: the adapter was made for another base",
                              reason="adapter_shape")
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ExpertError(f"{where}: the adapter lacks {len(missing)} tensor(s) of base {base!r} (e.g. {missing[0]}): "
                          "it was made for another base or truncated", reason="adapter_shape")
    set_peft_model_state_dict(model, state)
    merged = model.merge_and_unload()
    if target is probe.backbone:
        probe.backbone = merged
    else:
        probe.backbone.model = merged
    return file_sha256(folder / ADAPTER_FILE)


def load_expert(
    repo_or_folder: str | os.PathLike[str],
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    root: str | os.PathLike[str] | None = None,
    image_size: int | None = None,
    max_length: int | None = None,
    check_base_revision: bool = True,
) -> Expert:
    """Build an expert (base + PEFT adapter, merged, + head) from a local folder or a Hub model repo.

    Args:
        repo_or_folder: an expert folder (see `resolve_expert` for relative paths) or a Hub model id.
        revision, token, cache_dir: for a Hub repo (``snapshot_download``).
        root: a folder relative paths are tried against first.
        image_size, max_length: read inputs at this size / token length instead of the card's.
        check_base_revision: refuse a base whose weights differ from the ones the card records.

    Raises:
        ExpertError: not an expert repo, an unknown or uninstalled base (``missing_base``), a base of another
            revision (``base_revision``), an adapter or head that does not fit the base (``adapter_shape``), a
            file that differs from its recorded hash (``corrupt``).
        HubError: the Hub repo cannot be downloaded.
    """
    folder, commit = resolve_expert(repo_or_folder, revision=revision, token=token, cache_dir=cache_dir, root=root)
    spec = os.fspath(repo_or_folder)
    where = f"expert {spec!r}"
    meta = read_card(folder)
    sec = _section(meta, where)
    _verify_files(folder, sec, where, (ADAPTER_CONFIG_FILE, ADAPTER_FILE, HEAD_FILE))
    base_name = str(sec.get("base", ""))
    if base_name not in BASES:
        raise ExpertError(f"{where} needs base {base_name!r}, which this hf_task2vec does not know (known: "
                          f"{sorted(BASES)}): upgrade hf_task2vec or register the base", reason="missing_base")
    size = image_size or sec.get("image_size")
    length = max_length or sec.get("max_length")
    try:
        probe = BASES[base_name].build(
            image_size=int(size) if size else None, max_length=int(length) if length else None
        )
    except ProbeError as exc:
        raise ExpertError(f"{where} needs base {base_name!r} ({BASES[base_name].description}), which cannot be "
                          f"loaded here: {exc}", reason="missing_base") from exc
    want = str(sec.get("base_revision", ""))
    if check_base_revision and want and probe.revision != want:
        raise ExpertError(f"{where} was trained on base {base_name!r} revision {want}, the installed base is revision "
                          f"{probe.revision}: install the weights it was trained on or retrain the expert",
                          reason="base_revision")
    adapter_sha = _apply_adapter(probe, folder, where, base_name)
    weight, bias, names = _load_head(folder, where)
    width = probe.num_features
    if weight.shape[1] != width:
        raise ExpertError(f"{where}: its head reads {weight.shape[1]} features, base {base_name!r} gives {width}: the "
                          "head was made for another base", reason="adapter_shape")
    names = names or [str(c) for c in sec.get("label_names", [])]
    if len(names) != weight.shape[0]:
        raise ExpertError(f"{where}: its head has {weight.shape[0]} outputs for {len(names)} label names")
    model_id = str(sec.get("model_id") or (spec if commit is not None else folder.name))
    probe.name = model_id
    probe._revision = f"expert:{adapter_sha[:16]}"
    probe.eval()
    origin = f"hub:{spec}@{commit}" if commit is not None else f"folder:{folder}"
    logger.info("loaded expert %s (base %s, %d classes) from %s", model_id, base_name, len(names), origin)
    return Expert(model_id, folder, meta, probe, weight, bias, names, commit, origin)


# -- writing an expert -----------------------------------------------------------------------------------
def _embedding_section(emb: TaskEmbedding) -> dict[str, Any]:
    """The card's ``task_embedding`` entry: how the shipped embedding was made."""
    meta = emb.meta

    def number(key: str) -> int | None:
        return int(meta[key]) if meta.get(key, "").isdigit() else None

    return {
        "file": EMBEDDING_FILE, "probe": meta.get("probe", ""), "probe_revision": meta.get("probe_revision", ""),
        "estimator": meta.get("method", ""), "head_l2": meta.get("head_l2", ""), "max_samples": number("max_samples"),
        "image_size": number("image_size"), "max_length": number("max_length"), "seed": number("seed"),
        "dim": emb.dim,
    }


def replace_task_embedding(folder: str | os.PathLike[str], task_embedding: TaskEmbedding | bytes) -> bool:
    """Ship a new embedding of an expert's training task (made again with a newer estimator) in the
    local expert repo ``folder``: the file, its card entry and its sha256 are replaced; the adapter and
    the head are not touched. Both files are written beside the old ones and renamed into place.

    Returns:
        ``False`` when the folder already ships this embedding (same values and metadata; nothing is written).
    """
    from .embedding import TaskEmbedding

    where = Path(folder)
    meta = read_card(where)
    sec = _section(meta, str(where))
    _verify_files(where, sec, str(where))
    data = task_embedding if isinstance(task_embedding, bytes) else task_embedding.to_bytes()
    emb = TaskEmbedding.from_bytes(data, source="the task embedding")
    # compared by content: safetensors does not write its metadata in a fixed order
    old = TaskEmbedding.load(where / EMBEDDING_FILE)
    if old.meta == emb.meta and np.array_equal(old.values, emb.values) and np.array_equal(old.trivial, emb.trivial):
        return False
    sec["task_embedding"] = _embedding_section(emb)
    emb_tmp = where / f".{EMBEDDING_FILE}.tmp-{os.getpid()}"
    card_tmp = where / f".{CARD_FILE}.tmp-{os.getpid()}"
    try:
        emb_tmp.write_bytes(data)
        sec["files_sha256"] = {**sec["files_sha256"], EMBEDDING_FILE: file_sha256(emb_tmp)}
        card_tmp.write_text(expert_card({**meta, "hf_task2vec": sec}), encoding="utf-8")
        os.replace(emb_tmp, where / EMBEDDING_FILE)
        os.replace(card_tmp, where / CARD_FILE)
    finally:
        for tmp in (emb_tmp, card_tmp):
            tmp.unlink(missing_ok=True)
    return True


def write_expert(
    folder: str | os.PathLike[str],
    *,
    base: str,
    peft_model: Any,
    probe: Probe,
    head_weight: torch.Tensor,
    head_bias: torch.Tensor,
    label_names: Sequence[str],
    task_embedding: TaskEmbedding | bytes,
    task: Mapping[str, Any],
    training: Mapping[str, Any],
    model_id: str | None = None,
    extra_meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write an expert repo to ``folder`` (atomically: a temporary sibling folder, then a rename).

    Args:
        base: the base's name in `BASES`.
        peft_model: the ``peft.PeftModel`` holding the trained adapter (saved with ``save_pretrained``).
        probe: the base probe (its ``revision``, ``image_size`` / ``max_length`` go into the card).
        head_weight, head_bias, label_names: the source classifier and its classes.
        task_embedding: the Task2Vec embedding of the training task (or its serialised bytes).
        task: ``task`` (name), ``dataset``, ``split``, ``source_classes``, ``source_test_error``,
            ``test_examples``, ``train_examples``... (copied into the card's ``hf_task2vec`` section).
        training: ``seed``, ``steps``, ``batch_size``, ``lr``, ``seconds``, ``threads``... (the card's ``training``).
        model_id: the expert's id (default: the folder name).
        extra_meta: more top-level YAML keys (``license``, ``tags``...).
    """
    from safetensors.torch import save_file

    from ._version import __version__
    from .embedding import TaskEmbedding

    if base not in BASES:
        raise ExpertError(f"unknown base {base!r}: known bases are {sorted(BASES)}", reason="missing_base")
    info = BASES[base]
    out = Path(folder)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        peft_model.save_pretrained(str(tmp))
        cfg_path = tmp / ADAPTER_CONFIG_FILE
        cfg = json.loads(cfg_path.read_text())
        cfg["base_model_name_or_path"] = info.base_model
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        names = [str(n) for n in label_names]
        head = {"weight": head_weight.detach().float().contiguous(), "bias": head_bias.detach().float().contiguous()}
        save_file(head, str(tmp / HEAD_FILE), metadata={"label_names": json.dumps(names), "format": FORMAT + ".head"})
        data = task_embedding if isinstance(task_embedding, bytes) else task_embedding.to_bytes()
        emb = TaskEmbedding.from_bytes(data, source="the task embedding")
        (tmp / EMBEDDING_FILE).write_bytes(data)
        import peft

        sec: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_id": model_id or out.name,
            "base": base,
            "base_revision": probe.revision,
            "modality": info.modality,
        }
        if info.modality == "image":
            sec["image_size"] = probe.input_resolution
        else:
            sec["max_length"] = int(getattr(probe, "max_length", 128))
        sec.update({k: v for k, v in task.items()})
        sec["label_names"] = names
        sec["training"] = {**dict(training), "peft": str(peft.__version__), "torch": str(torch.__version__),
                           "hf_task2vec": __version__}
        sec["task_embedding"] = _embedding_section(emb)
        sec["files_sha256"] = {name: file_sha256(tmp / name) for name in HASHED_FILES}
        meta: dict[str, Any] = {
            "base_model": info.base_model,
            "library_name": "peft",
            "pipeline_tag": "image-classification" if info.modality == "image" else "text-classification",
            "datasets": [str(task.get("dataset", ""))],
            "tags": ["hf_task2vec", "task2vec-expert", "lora", info.modality],
            **dict(extra_meta or {}),
            "hf_task2vec": sec,
        }
        (tmp / CARD_FILE).write_text(expert_card(meta), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


# -- index entries from the cards -------------------------------------------------------------------
def expert_entry(
    repo: str | os.PathLike[str],
    *,
    relative_to: str | os.PathLike[str] | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[str, TaskEmbedding, dict[str, Any]]:
    """What an `ExpertIndex` records of an expert repo (a folder or a Hub model id), read from its card and the
    task embedding it ships (no network is run): ``(model_id, task_embedding, info)``.

    ``info`` holds the card's facts (``task``, ``dataset``, ``classes``, ``source_classes``, ``error`` = the
    source test error, ``base``, ``base_model``, ``architecture``, ``modality``, training cost) and
    ``weights = {"expert_repo": ...}`` (the Hub id and its commit, or the folder, relative to ``relative_to`` when
    given), which two-stage re-ranking loads with `load_expert`. `ExpertIndex.from_expert_repos` calls it.
    """
    from .embedding import TaskEmbedding

    spec = os.fspath(repo)
    folder, commit = resolve_expert(spec, revision=revision, token=token, cache_dir=cache_dir)
    where = f"expert {spec!r}"
    meta = read_card(folder)
    sec = _section(meta, where)
    _verify_files(folder, sec, where, (EMBEDDING_FILE,))
    emb = TaskEmbedding.load(folder / EMBEDDING_FILE)
    model_id = str(sec.get("model_id") or (spec if commit is not None else folder.name))
    if commit is not None:
        location = spec
    elif relative_to is not None:
        location = os.path.relpath(folder, Path(relative_to).resolve())
    else:
        location = str(folder)
    weights: dict[str, Any] = {"expert_repo": location}
    if commit is not None:
        weights["revision"] = commit
    base = BASES.get(str(sec.get("base")))
    training = sec.get("training") or {}
    info: dict[str, Any] = {
        "source": "expert-repo",
        "task": sec.get("task", ""),
        "dataset": sec.get("dataset", ""),
        "classes": list(sec.get("label_names", [])),
        "source_classes": list(sec.get("source_classes", sec.get("label_names", []))),
        "error": sec.get("source_test_error"),
        "base": sec.get("base"),
        "base_model": meta.get("base_model"),
        "architecture": base.description if base else sec.get("base"),
        "modality": sec.get("modality"),
        "kind": "lora",
        "training_seconds": training.get("seconds"),
        "weights": weights,
    }
    if sec.get("image_size"):
        info["image_size"] = int(sec["image_size"])
    if sec.get("max_length"):
        info["max_length"] = int(sec["max_length"])
    return model_id, emb, {k: v for k, v in info.items() if v is not None}
