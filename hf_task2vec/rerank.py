"""Two-stage expert selection: a shortlist from one probe embedding, re-ranked by forward passes.

Stage 1 (`ExpertIndex.select` with its Task2Vec / Model2Vec metric) costs one probe embedding of the
new task, whatever the number of experts. Stage 2 loads only the ``m`` shortlisted experts, runs
each of them forward on the task's examples and ranks them by a transferability score from
`hf_task2vec.transferability` (LEEP, LogME, NCE, SFDA, N-LEEP, k-NN, H-score): ``m`` forward passes
instead of the ``N`` an all-experts peer needs.

Experts must say how to build them, in their info under ``"weights"`` (see `expert_weights`):

* ``{"load_probe": "hf-hub:timm/resnet18.a1_in1k"}`` -- anything `load_probe` accepts: a registered
  offline probe, a timm name, a Hub model id, a local file with ``"arch"``; ``"source_head": true``
  keeps the ImageNet classifier of a registered offline probe (needed by LEEP / NCE);
* ``{"checkpoint": "experts/birds.safetensors", "sha256": "...", "base": "embedded"}`` -- a state dict
  of the ``base`` probe's backbone, optionally with the expert's source classifier as
  ``head.weight`` / ``head.bias``; the file's sha256 is checked before it is read;
* ``{"expert_repo": "benchmarks/zoo/lite0-animals-pets"}`` (or a Hub model id, with ``"revision"``) -- an
  expert repo of `hf_task2vec.experts` (base + PEFT adapter + head + card), built with its ``load_expert``;
  `ExpertIndex.from_expert_repos` records it.

Experts added with `ExpertIndex.add_hub_models` (info ``source: "hub"``) are built from their model
id with `load_probe` when no ``weights`` are recorded. An expert that cannot be built (missing file,
wrong hash, unknown model, no source classifier for a metric that needs one) is skipped with an
`ExpertSkippedWarning`; the selection goes on with the others.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import ProbeError, TaskError
from .matches import ExpertMatch, ExpertSearch
from .transferability import _NEEDS_FEATURES, TRANSFERABILITY_METRICS, score_expert

if TYPE_CHECKING:
    from .embedding import TaskEmbedding
    from .probes import Probe
    from .tasks import Task

__all__ = [
    "DEFAULT_SHORTLIST",
    "ExpertSkippedWarning",
    "LoadedExpert",
    "RerankedMatch",
    "Selection",
    "SelectionCost",
    "expert_weights",
    "load_expert",
    "two_stage_select",
]

logger = logging.getLogger(__name__)

WEIGHTS_KEY = "weights"
DEFAULT_SHORTLIST = 4
_HEAD_KEYS = (("head.weight", "head.bias"), ("_fc.weight", "_fc.bias"), ("classifier.weight", "classifier.bias"),
              ("classifier.1.weight", "classifier.1.bias"), ("fc.weight", "fc.bias"))


class ExpertSkippedWarning(UserWarning):
    """An expert of the shortlist could not be built or scored and was left out of the re-ranking."""


def _metric_key(name: str) -> str:
    key = name.strip().lower().replace("-", "_")
    key = {"n_leep": "nleep", "knn_accuracy": "knn", "k_nn": "knn"}.get(key, key)
    if key not in TRANSFERABILITY_METRICS:
        raise ValueError(f"unknown rerank score {name!r}; choose one of {sorted(TRANSFERABILITY_METRICS)}")
    return key


def expert_weights(
    *,
    load_probe: str | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    sha256: str | None = None,
    base: str = "embedded",
    arch: str | None = None,
    source_head: bool = False,
    image_size: int | None = None,
) -> dict[str, Any]:
    """The ``weights`` entry of an expert's info: how `load_expert` builds the network.

    Give exactly one of ``load_probe`` (anything `load_probe` accepts: a Hub model id, a timm name,
    a registered offline probe, a local file with ``arch``) or ``checkpoint`` (a local state dict of
    the ``base`` probe's backbone, with the source classifier as ``head.weight``/``head.bias`` if it
    has one) with its ``sha256`` (hex; computed from the file when omitted and the file exists).

    ``source_head`` keeps the ImageNet classifier of a registered offline probe (for LEEP / NCE);
    ``image_size`` is the side the expert reads images at (default: the index's image size).
    """
    if (load_probe is None) == (checkpoint is None):
        raise ValueError("give exactly one of load_probe=... (a model id or name) or checkpoint=... (a local file)")
    out: dict[str, Any] = {}
    if load_probe is not None:
        out["load_probe"] = str(load_probe)
        if arch is not None:
            out["arch"] = arch
        if source_head:
            out["source_head"] = True
    else:
        path = Path(checkpoint)  # type: ignore[arg-type]
        if sha256 is None:
            if not path.is_file():
                raise ValueError(f"checkpoint {str(path)!r} does not exist: pass sha256=... to record it anyway")
            from .probes import file_sha256

            sha256 = file_sha256(path)
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256.lower()):
            raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")
        out.update(checkpoint=str(checkpoint), sha256=sha256.lower(), base=base)
    if image_size is not None:
        out["image_size"] = int(image_size)
    return out


@dataclass
class LoadedExpert:
    """An expert network ready for forward passes.

    Attributes:
        model_id: the expert's id in the index.
        probe: its feature extractor (and preprocessing).
        head_weight, head_bias: its source classifier ``[Z, C]`` / ``[Z]``, or ``None``.
        origin: where the weights came from (``load_probe:<spec>`` or ``checkpoint:<path>@sha256``).
    """

    model_id: str
    probe: Probe
    head_weight: torch.Tensor | None
    head_bias: torch.Tensor | None
    origin: str


def _registered_head(spec: str) -> tuple[torch.Tensor, torch.Tensor]:
    from .probes import _package_file, _registry_lookup

    cfg = _registry_lookup(spec)
    if cfg is None:
        raise ProbeError(f"source_head is only known for the registered offline probes, not {spec!r}")
    state = torch.load(_package_file(cfg), map_location="cpu", weights_only=True)
    for wk, bk in _HEAD_KEYS:
        if wk in state and bk in state:
            return state[wk].float(), state[bk].float()
    raise ProbeError(f"the weights of probe {spec!r} hold no classifier to use as its source head")


def load_expert(
    model_id: str,
    info: Mapping[str, Any],
    *,
    image_size: int | None = None,
    root: str | os.PathLike[str] | None = None,
) -> LoadedExpert:
    """Build an expert from its index info (see the module docstring for the ``weights`` entry).

    Args:
        model_id: the expert's id (used for Hub experts without a ``weights`` entry).
        info: the expert's info in the index.
        image_size: the side images are resized to, unless the weights entry or the info say otherwise.
        root: folder that relative checkpoint paths are resolved against (default: the working directory).

    Raises:
        ProbeError: no weights recorded, a missing or altered checkpoint, or a network that cannot be built.
    """
    from safetensors.torch import load_file

    from .probes import file_sha256, load_probe

    weights = info.get(WEIGHTS_KEY)
    if weights is None:
        if info.get("source") == "hub":
            weights = {"load_probe": model_id}
        else:
            raise ProbeError(
                f"expert {model_id!r} records no weights: add them to its info, e.g. "
                "index.set_info(model_id, weights=expert_weights(load_probe=...)) or checkpoint=..., sha256=..."
            )
    if not isinstance(weights, Mapping):
        raise ProbeError(f"expert {model_id!r}: info['weights'] must be a mapping, got {type(weights).__name__}")
    size = weights.get("image_size") or info.get("image_size") or image_size
    size = int(size) if size else None
    if "expert_repo" in weights:  # a base + PEFT adapter + head repo (hf_task2vec.experts)
        from .experts import load_expert as load_expert_repo

        expert = load_expert_repo(
            str(weights["expert_repo"]), revision=weights.get("revision"), root=root, image_size=size
        )
        return LoadedExpert(model_id, expert.probe, expert.head_weight, expert.head_bias, expert.origin)
    if "load_probe" in weights:
        spec = str(weights["load_probe"])
        try:
            probe = load_probe(spec, image_size=size, arch=weights.get("arch"))
        except ProbeError:
            raise
        except Exception as exc:  # network / timm / transformers errors: the expert is unloadable
            raise ProbeError(f"expert {model_id!r}: load_probe({spec!r}) failed: {exc}") from exc
        head = _registered_head(spec) if weights.get("source_head") else (None, None)
        return LoadedExpert(model_id, probe, head[0], head[1], f"load_probe:{spec}")
    if "checkpoint" not in weights:
        raise ProbeError(
            f"expert {model_id!r}: info['weights'] needs 'expert_repo', 'load_probe' or 'checkpoint', "
            f"got {dict(weights)}"
        )
    path = Path(str(weights["checkpoint"]))
    if not path.is_absolute() and root is not None:
        path = Path(root) / path
    if not path.is_file():
        raise ProbeError(f"expert {model_id!r}: checkpoint {str(path)!r} not found")
    expected = str(weights.get("sha256", "")).lower()
    actual = file_sha256(path)
    if not expected:
        raise ProbeError(f"expert {model_id!r}: checkpoint {str(path)!r} has no recorded sha256; record it")
    if actual != expected:
        raise ProbeError(
            f"expert {model_id!r}: checkpoint {str(path)!r} has sha256 {actual[:12]}..., the index records "
            f"{expected[:12]}...: the file changed since it was indexed"
        )
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    hw, hb = state.pop("head.weight", None), state.pop("head.bias", None)
    base = str(weights.get("base", "embedded"))
    probe = load_probe(base, pretrained=False, image_size=size)  # the architecture; the checkpoint holds the weights
    try:
        probe.backbone.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ProbeError(f"expert {model_id!r}: checkpoint {str(path)!r} does not fit probe {base!r}: {exc}") from exc
    probe.backbone.eval()
    return LoadedExpert(model_id, probe, hw, hb, f"checkpoint:{path}@sha256:{actual[:16]}")


@torch.no_grad()
def expert_outputs(
    expert: LoadedExpert,
    task: Task,
    indices: np.ndarray,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray | None]:
    """Features ``[n, C]`` and source-label softmax ``[n, Z]`` (``None`` without a source head) of
    an expert on the task's examples ``indices`` (one forward pass over them)."""
    probe = expert.probe.to(device).eval()
    # images: the probe's image transform; texts: its tokenizer (a text probe's transform); tensors: as they are
    transform = probe.transform() if task.is_image or task.is_text else None
    feats = []
    for start in range(0, len(indices), batch_size):
        x = task.get_inputs(indices[start : start + batch_size], transform)
        x = x.to(device, probe.dtype) if isinstance(x, torch.Tensor) else {k: v.to(device) for k, v in x.items()}
        feats.append(probe.features(x).float().cpu())
    f = torch.cat(feats)
    if expert.head_weight is None:
        return f.double().numpy(), None
    logits = f @ expert.head_weight.float().T + expert.head_bias.float()
    return f.double().numpy(), torch.softmax(logits.double(), 1).numpy()


@dataclass(frozen=True, repr=False)
class RerankedMatch(ExpertMatch):
    """An expert of a two-stage selection: ``score`` / ``metric`` are its stage-1 distance (lower is
    better), ``rerank_score`` its stage-2 transferability score under ``rerank`` (higher is better;
    NaN when it could not be scored), ``stage1_rank`` its rank in the shortlist; the list is ordered
    by ``rerank_score``."""

    rerank: str = ""
    rerank_score: float = math.nan
    stage1_rank: int = 0

    def __repr__(self) -> str:
        return (
            f"RerankedMatch(rank={self.rank}, model_id={self.model_id!r}, {self.rerank}={self.rerank_score:.6g}, "
            f"stage1_rank={self.stage1_rank}, {self.metric}={self.score:.6f})"
        )


@dataclass
class SelectionCost:
    """What a two-stage selection cost: expert forward passes (one per shortlisted expert actually
    run, each over ``examples`` examples) and wall-clock seconds per stage."""

    forward_passes: int = 0
    examples: int = 0
    experts_in_index: int = 0
    embed_s: float = 0.0
    search_s: float = 0.0
    load_s: float = 0.0
    forward_s: float = 0.0
    score_s: float = 0.0

    @property
    def total_s(self) -> float:
        return self.embed_s + self.search_s + self.load_s + self.forward_s + self.score_s

    @property
    def forward_fraction(self) -> float:
        """Forward passes used / forward passes of a peer that runs every expert."""
        return self.forward_passes / self.experts_in_index if self.experts_in_index else 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "forward_passes": self.forward_passes,
            "examples": self.examples,
            "experts_in_index": self.experts_in_index,
            "forward_fraction": self.forward_fraction,
            "embed_s": self.embed_s,
            "search_s": self.search_s,
            "load_s": self.load_s,
            "forward_s": self.forward_s,
            "score_s": self.score_s,
            "total_s": self.total_s,
        }


class Selection(list):
    """The result of a two-stage `ExpertIndex.select`: a list of `RerankedMatch`, best first, with

    Attributes:
        rerank: the stage-2 score.
        shortlist: the stage-1 matches (Task2Vec / Model2Vec order), every shortlisted expert.
        skipped: ``model_id -> reason`` for shortlisted experts that could not be built or scored.
        reranked: False when no shortlisted expert could be scored (the list then keeps the stage-1 order).
        cost: a `SelectionCost` (forward passes, seconds).
    """

    def __init__(
        self,
        matches: list[RerankedMatch],
        *,
        rerank: str,
        shortlist: list[ExpertMatch],
        skipped: dict[str, str],
        reranked: bool,
        cost: SelectionCost,
    ) -> None:
        super().__init__(matches)
        self.rerank = rerank
        self.shortlist = shortlist
        self.skipped = skipped
        self.reranked = reranked
        self.cost = cost

    def summary(self) -> dict[str, Any]:
        """A JSON-able view (what the CLI prints with ``--json``)."""
        return {
            "rerank": self.rerank,
            "reranked": self.reranked,
            "matches": [
                {
                    "rank": m.rank,
                    "model_id": m.model_id,
                    "rerank_score": None if math.isnan(m.rerank_score) else m.rerank_score,
                    "stage1_rank": m.stage1_rank,
                    "stage1_metric": m.metric,
                    "stage1_score": m.score,
                }
                for m in self
            ],
            "shortlist": [m.model_id for m in self.shortlist],
            "skipped": dict(self.skipped),
            "cost": self.cost.as_dict(),
        }


def _skip(skipped: dict[str, str], model_id: str, reason: str) -> None:
    skipped[model_id] = reason
    logger.warning("expert %s skipped: %s", model_id, reason)
    warnings.warn(f"expert {model_id!r} skipped: {reason}", ExpertSkippedWarning, stacklevel=4)


def two_stage_select(
    index: ExpertSearch,
    query: TaskEmbedding | Task,
    *,
    rerank: str,
    k: int | None = 5,
    shortlist: int | None = None,
    metric: str = "asymmetric",
    alpha: float | None = None,
    examples: Task | None = None,
    max_examples: int | None = 1000,
    seed: int = 0,
    root: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
    progress: bool = False,
) -> Selection:
    """Shortlist ``shortlist`` experts by the index's ``metric``, re-rank them by ``rerank`` computed
    from one forward pass of each shortlisted expert over the task's examples; what
    ``ExpertIndex.select(..., rerank=...)`` calls.

    Args:
        index: the expert index (experts must record their ``weights``, see `expert_weights`).
        query: the new task as a `Task` (embedded here with ``index.embedder()``; its examples are
            also the re-ranking data) or as a `TaskEmbedding` (then ``examples`` is required).
        rerank: a score of `hf_task2vec.transferability` (``leep``, ``logme``, ``nce``, ``sfda``,
            ``nleep``, ``knn``, ``h_score``, ``h_score_shrinkage``). ``leep`` and ``nce`` need experts
            with a source classifier.
        k: how many experts to return (at most the number scored; ``None``: all of the shortlist).
        shortlist: stage-1 size ``m`` (default ``max(k, 4)``, at most the index size).
        metric, alpha: the stage-1 distance, as in `ExpertIndex.select`.
        examples: the task whose examples the experts are run on (default: ``query`` if it is a `Task`).
        max_examples: class-balanced subsample of the examples (``None``: all).
        seed: seed of that subsample.
        root: folder that relative checkpoint paths are resolved against.
        device, batch_size: where and in what batches the experts run.
        progress: show a progress bar over the shortlisted experts.

    Returns:
        A `Selection` (a list of `RerankedMatch`, best first) with the shortlist, the skipped experts
        and the cost.
    """
    from .sampling import balanced_sample
    from .tasks import Task

    key = _metric_key(rerank)
    if len(index) == 0:
        raise ValueError("the expert index is empty: add experts before selecting")
    if k is not None and k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    m = shortlist if shortlist is not None else max(k or 1, DEFAULT_SHORTLIST)
    if m < 1:
        raise ValueError(f"shortlist must be >= 1, got {shortlist}")
    m = min(m, len(index))
    cost = SelectionCost(experts_in_index=len(index))
    if isinstance(query, Task):
        examples = query if examples is None else examples
        start = time.perf_counter()
        embedding = index.embedder(progress=False).embed(query)
        cost.embed_s = time.perf_counter() - start
    else:
        embedding = query
    if examples is None:
        raise TaskError(
            "re-ranking runs the shortlisted experts on the task's examples: pass the task itself "
            "(select(task, rerank=...)) or examples=task with the embedding"
        )
    start = time.perf_counter()
    stage1 = index.select(embedding, k=m, metric=metric, alpha=alpha)  # type: ignore[arg-type]
    cost.search_s = time.perf_counter() - start

    indices = balanced_sample(examples.labels, max_examples, seed)
    _, labels = np.unique(examples.labels[indices], return_inverse=True)
    if np.unique(labels).size < 2:
        raise TaskError(f"task {examples.name!r}: re-ranking needs examples of at least two classes")
    cost.examples = int(len(indices))
    settings_size = index.settings.get("image_size") if index.settings else None
    image_size = int(settings_size) if settings_size else None

    skipped: dict[str, str] = {}
    scored: list[tuple[float, ExpertMatch]] = []
    for match in tqdm(stage1, desc=f"re-ranking by {key}", unit="expert", disable=not progress, leave=False):
        start = time.perf_counter()
        try:
            expert = load_expert(match.model_id, match.info, image_size=image_size, root=root)
        except (ProbeError, OSError, RuntimeError, ValueError, KeyError) as exc:
            cost.load_s += time.perf_counter() - start
            _skip(skipped, match.model_id, str(exc))
            continue
        cost.load_s += time.perf_counter() - start
        if key not in _NEEDS_FEATURES and expert.head_weight is None:
            _skip(skipped, match.model_id, f"{key} needs the expert's source classifier and it has none "
                  "(record it in the checkpoint as head.weight/head.bias, or re-rank with a feature score "
                  "such as logme, sfda or knn)")
            continue
        start = time.perf_counter()
        try:
            features, probs = expert_outputs(expert, examples, indices, batch_size=batch_size, device=device)
        except (TaskError, ProbeError, RuntimeError, ValueError) as exc:
            cost.forward_s += time.perf_counter() - start
            _skip(skipped, match.model_id, f"forward pass failed: {exc}")
            continue
        cost.forward_s += time.perf_counter() - start
        cost.forward_passes += 1
        start = time.perf_counter()
        try:
            value = score_expert(key, features=features, source_probs=probs, labels=labels)
        except ValueError as exc:
            cost.score_s += time.perf_counter() - start
            _skip(skipped, match.model_id, f"{key} could not be computed: {exc}")
            continue
        cost.score_s += time.perf_counter() - start
        scored.append((float(value), match))

    reranked = bool(scored)
    if reranked:
        ordered = sorted(scored, key=lambda p: -p[0])  # stable: ties keep the stage-1 order
    else:
        logger.warning("no shortlisted expert could be scored with %s: keeping the stage-1 order", key)
        ordered = [(math.nan, mt) for mt in stage1]
    n = len(ordered) if k is None else min(k, len(ordered))
    matches = [
        RerankedMatch(
            mt.model_id, mt.score, r + 1, mt.metric, dict(mt.info), rerank=key, rerank_score=v, stage1_rank=mt.rank
        )
        for r, (v, mt) in enumerate(ordered[:n])
    ]
    logger.info(
        "two-stage selection: %d of %d experts shortlisted, %d run forward on %d examples (%.2f s), %s top-1 %s",
        m, len(index), cost.forward_passes, cost.examples, cost.total_s, key, matches[0].model_id if matches else "-",
    )
    return Selection(matches, rerank=key, shortlist=list(stage1), skipped=skipped, reranked=reranked, cost=cost)

