"""Text probes: a frozen `transformers` encoder (or causal LM) whose pooled features feed the head.

Reached through the one entry `hf_task2vec.load_probe`::

    load_probe("embedded-text")                       # offline all-MiniLM-L6-v2 (sha256-checked)
    load_probe("path/to/bert-folder")                  # any transformers encoder folder (config.json + tokenizer)
    load_probe("sentence-transformers/all-MiniLM-L6-v2")  # a Hub id (needs the Hub)
    load_probe("path/to/gpt2-folder")                  # a causal LM (GPT-2 family): next-token Fisher

**Filters** are the output rows of every ``nn.Linear`` of the encoder: per transformer block the
query/key/value and attention-output projections and the two feed-forward layers. For MiniLM-L6
(6 blocks, hidden 384, feed-forward 1536) that is ``6 * (3*384 + 384 + 1536 + 384) = 20,736``
filters. Left out, like BatchNorm and the head for images: the token/position embedding tables (a
row per vocabulary entry: its Fisher is non-zero only for the tokens that occur, so it measures the
vocabulary of the data, p(x), rather than the task, and would add 30,522 mostly-zero entries),
LayerNorm (normalisation, not filters) and the unused BERT pooler (its output is not read).
GPT-2's ``Conv1D`` layers are converted to the equivalent ``nn.Linear`` (transposed weights; same
outputs) so that the exact per-sample Fisher hooks apply.

**Inputs** are mappings of tensors (``input_ids``, ``attention_mask``, optionally
``token_type_ids``; causal LMs add ``loss_mask``) made by `TextProbe.tokenize` with the probe's own
tokenizer: truncation to ``max_length`` and dynamic padding to the longest text of each batch.
**Pooling** (``"mean"``: mean over the real tokens, padding masked out; ``"cls"``: the first token)
is part of the probe's recorded `settings`. Padding changes nothing: the attention mask keeps real
tokens from attending to padded ones, and pooling ignores them, so padded positions get an output
gradient of exactly zero and add nothing to the per-sample Fisher.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from .errors import ProbeError
from .probes import Probe, ProbeLoader, register_probe_loader

logger = logging.getLogger(__name__)

Pooling = Literal["mean", "cls"]
POOLINGS: tuple[str, ...] = ("mean", "cls")
DEFAULT_MAX_LENGTH = 128


class TextEncoderBackbone(nn.Module):
    """A transformers encoder: a mapping of token tensors -> pooled features ``[B, H]``."""

    def __init__(self, model: nn.Module, pooling: Pooling = "mean") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ProbeError(f"unknown pooling {pooling!r}; use one of {POOLINGS}")
        self.model = model
        self.pooling = pooling
        self.num_features = int(model.config.hidden_size)

    def hidden_states(self, x: Mapping[str, torch.Tensor]) -> torch.Tensor:
        kwargs = {k: x[k] for k in ("token_type_ids",) if k in x}
        return self.model(input_ids=x["input_ids"], attention_mask=self._additive_mask(x), **kwargs).last_hidden_state

    def _additive_mask(self, x: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The padding mask as the 4-D additive bias ``[B, 1, 1, T]`` (0 for real tokens, the dtype's
        minimum for padding) that the attention adds to its scores. Passed ready-made, transformers
        uses it as is: no data-dependent mask shortcuts, so `torch.func.vmap` runs through it too."""
        dtype = next(self.model.parameters()).dtype
        keep = x["attention_mask"].to(dtype)[:, None, None, :]
        return (1.0 - keep) * torch.finfo(dtype).min

    def forward(self, x: Mapping[str, torch.Tensor]) -> torch.Tensor:
        h = self.hidden_states(x)
        if self.pooling == "cls":
            return h[:, 0]
        m = x["attention_mask"].to(h.dtype).unsqueeze(-1)
        return (h * m).sum(1) / m.sum(1).clamp_min(1.0)


class CausalLMBackbone(nn.Module):
    """The transformer body of a causal LM: a mapping of token tensors -> hidden states ``[B, T, H]``."""

    def __init__(self, body: nn.Module, hidden_size: int) -> None:
        super().__init__()
        self.model = body
        self.num_features = int(hidden_size)

    def forward(self, x: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.model(input_ids=x["input_ids"], attention_mask=x["attention_mask"]).last_hidden_state


class TextTransform:
    """A text probe's input transform: a batch of texts (and optional pair texts) -> token tensors.
    ``modality = "text"`` tells tasks (and image tasks) what it reads."""

    modality = "text"

    def __init__(self, probe: TextProbe) -> None:
        self.probe = probe

    def __call__(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        return self.probe.tokenize(texts, pairs)


class TextProbe(Probe):
    """A text probe: `TextEncoderBackbone` (pooled features -> head ``[B, K]``) or, with
    ``causal=True``, `CausalLMBackbone` (hidden states -> the LM head ``[B, T, V]``).

    Args:
        backbone: the encoder or causal body.
        tokenizer: the model's own tokenizer (a `transformers` tokenizer).
        name, revision, prior_fisher: as for `Probe`.
        max_length: truncation length of `tokenize` (tokens, special tokens included).
        source: where the weights came from (folder or Hub id), recorded in `settings`.
        lm_head: for causal LMs, the pretrained output layer (copied into `reset_lm_head`).
    """

    modality = "text"

    def __init__(
        self,
        backbone: TextEncoderBackbone | CausalLMBackbone,
        tokenizer: Any,
        *,
        name: str,
        revision: str | None = None,
        max_length: int = DEFAULT_MAX_LENGTH,
        source: str = "",
        prior_fisher: float = 1e-6,
        lm_head: nn.Linear | None = None,
    ) -> None:
        super().__init__(backbone, name=name, revision=revision, prior_fisher=prior_fisher)
        if max_length < 2:
            raise ProbeError(f"max_length must be >= 2 tokens, got {max_length}")
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.source = source
        self.causal = isinstance(backbone, CausalLMBackbone)
        self._pretrained_lm_head = lm_head
        if self.causal and lm_head is not None:
            self.reset_lm_head()

    @property
    def pooling(self) -> str:
        return "next-token" if self.causal else self.backbone.pooling

    @property
    def settings(self) -> dict[str, str]:
        """How inputs are made and read (recorded in every embedding's provenance)."""
        tok = self.tokenizer
        return {
            "modality": "text",
            "objective": "next-token" if self.causal else "classification",
            "pooling": self.pooling,
            "max_length": str(self.max_length),
            "padding": "dynamic (longest in batch), right",
            "truncation": "longest_first",
            "tokenizer": type(tok).__name__,
            "tokenizer_source": self.source or str(getattr(tok, "name_or_path", "")),
            "vocab_size": str(len(tok)),
            "model_source": self.source,
        }

    @property
    def num_features(self) -> int:
        if self.head is not None:
            return self.head.in_features
        return self.backbone.num_features

    # -- inputs ------------------------------------------------------------------------------
    def tokenize(
        self,
        texts: Sequence[str],
        pairs: Sequence[str] | None = None,
        *,
        max_length: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Tokenise a batch with the probe's tokenizer: truncated to ``max_length`` and padded to the
        longest text of the batch. Text pairs (``pairs``) are encoded as one sequence with the
        tokenizer's separator. Causal LMs also get ``loss_mask`` (1 where the next token is real)."""
        length = int(max_length or self.max_length)
        batch = self.tokenizer(
            list(texts),
            list(pairs) if pairs is not None else None,
            truncation=True,
            max_length=length,
            padding="longest",
            return_tensors="pt",
        )
        out = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        if self.causal:
            out.pop("token_type_ids", None)
            mask = out["attention_mask"]
            loss_mask = torch.zeros_like(mask)
            loss_mask[:, :-1] = mask[:, :-1] * mask[:, 1:]
            out["loss_mask"] = loss_mask
        return out

    def transform(self) -> TextTransform:
        """The preprocessing of text tasks: ``transform(texts, pairs=None)`` -> `tokenize` output."""
        return TextTransform(self)

    # -- computation -------------------------------------------------------------------------
    def features(self, x: Mapping[str, torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        """Pooled features ``[B, H]`` (encoders) or hidden states ``[B, T, H]`` (causal LMs)."""
        return self.backbone(x) if self.causal else self.backbone(x).flatten(1)

    def reset_lm_head(self) -> nn.Linear:
        """Causal LMs: set the head to a trainable copy of the pretrained output layer."""
        if self._pretrained_lm_head is None:
            raise ProbeError(f"probe {self.name!r} has no pretrained LM head")
        src = self._pretrained_lm_head
        head = nn.Linear(src.in_features, src.out_features, bias=True).to(device=self.device, dtype=self.dtype)
        with torch.no_grad():
            head.weight.copy_(src.weight)
            head.bias.copy_(src.bias if src.bias is not None else torch.zeros_like(head.bias))
        self.head = head
        return head

    def __repr__(self) -> str:
        return (
            f"TextProbe(name={self.name!r}, filters={self.dim}, layers={len(self.filters)}, "
            f"pooling={self.pooling!r}, max_length={self.max_length})"
        )


# -- building ------------------------------------------------------------------------------------
def _linearize_conv1d(module: nn.Module) -> int:
    """Replace transformers' ``Conv1D`` (GPT-2's linear with a transposed weight) by ``nn.Linear``."""
    count = 0
    for name, child in list(module.named_children()):
        if type(child).__name__ == "Conv1D" and hasattr(child, "nf"):
            w = child.weight  # [in, out]
            lin = nn.Linear(w.shape[0], w.shape[1], bias=child.bias is not None).to(device=w.device, dtype=w.dtype)
            with torch.no_grad():
                lin.weight.copy_(w.t())
                if child.bias is not None:
                    lin.bias.copy_(child.bias)
            setattr(module, name, lin)
            count += 1
        else:
            count += _linearize_conv1d(child)
    return count


def is_causal_config(config: Any) -> bool:
    archs = list(getattr(config, "architectures", None) or [])
    return any("CausalLM" in a or "LMHead" in a for a in archs) or getattr(config, "model_type", "") in (
        "gpt2",
        "gpt_neo",
        "gpt_neox",
        "gptj",
        "llama",
        "mistral",
        "qwen2",
        "opt",
    )


def is_text_config(config: Any) -> bool:
    """Whether a transformers config describes a text model (not an image classifier)."""
    archs = list(getattr(config, "architectures", None) or [])
    if any("Image" in a or "Vision" in a for a in archs):
        return False
    if hasattr(config, "num_channels") or hasattr(config, "image_size"):
        return False
    return hasattr(config, "vocab_size")


def load_text_probe(
    spec: str | Path,
    *,
    name: str | None = None,
    revision: str | None = None,
    pooling: Pooling = "mean",
    max_length: int = DEFAULT_MAX_LENGTH,
    causal: bool | None = None,
    pretrained: bool = True,
    prior_fisher: float = 1e-6,
    attn_implementation: str = "eager",
) -> TextProbe:
    """Build a `TextProbe` from a transformers folder or Hub id (encoder or causal LM).

    ``causal=None`` decides from the config (GPT-2 family and ``*ForCausalLM`` are causal).
    ``attn_implementation="eager"`` keeps the attention a plain composition of tensor operations,
    so the reference vmap Fisher runs on it too.
    """
    try:
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:  # pragma: no cover - transformers is a core dependency
        raise ProbeError("text probes need transformers: pip install transformers") from exc
    spec_str = str(spec)
    try:
        config = AutoConfig.from_pretrained(spec_str, revision=revision)
        tokenizer = AutoTokenizer.from_pretrained(spec_str, revision=revision)
    except Exception as exc:
        raise ProbeError(
            f"could not load the transformers config/tokenizer of {spec_str!r} ({type(exc).__name__}: {exc}). "
            "Check the id or folder (config.json and tokenizer files), and that the Hub is reachable "
            "(HF_ENDPOINT, HF_HUB_OFFLINE); the offline text probe is 'embedded-text'."
        ) from exc
    is_causal = is_causal_config(config) if causal is None else bool(causal)
    kwargs: dict[str, Any] = {"revision": revision, "attn_implementation": attn_implementation}
    try:
        if is_causal:
            lm = (
                AutoModelForCausalLM.from_pretrained(spec_str, **kwargs)
                if pretrained
                else AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
            )
        else:
            lm = (
                AutoModel.from_pretrained(spec_str, **kwargs)
                if pretrained
                else AutoModel.from_config(config, attn_implementation=attn_implementation)
            )
    except Exception as exc:
        raise ProbeError(f"could not load the transformers model {spec_str!r} ({type(exc).__name__}: {exc})") from exc
    lm.eval()
    commit = getattr(config, "_commit_hash", None)
    label = name or (spec_str if pretrained else f"{spec_str}-random-init")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    tokenizer.padding_side = "right"
    if is_causal:
        body = getattr(lm, lm.base_model_prefix, None)
        out = lm.get_output_embeddings()
        if body is None or out is None:
            raise ProbeError(f"{spec_str!r}: cannot split the causal LM into its body and output layer")
        lm_head = nn.Linear(out.weight.shape[1], out.weight.shape[0], bias=getattr(out, "bias", None) is not None)
        with torch.no_grad():
            lm_head.weight.copy_(out.weight)  # an untied copy: fine-tuning it leaves the embeddings alone
            if lm_head.bias is not None:
                lm_head.bias.copy_(out.bias)
        n = _linearize_conv1d(body)
        logger.debug("%s: %d Conv1D layers converted to nn.Linear", spec_str, n)
        backbone: TextEncoderBackbone | CausalLMBackbone = CausalLMBackbone(body, config.hidden_size)
        probe = TextProbe(
            backbone, tokenizer, name=label, revision=commit, max_length=max_length, source=spec_str,
            prior_fisher=prior_fisher, lm_head=lm_head,
        )
    else:
        if getattr(lm, "pooler", None) is not None:
            lm.pooler = None  # not read by mean/CLS pooling of the last hidden state: no filters there
        _linearize_conv1d(lm)
        probe = TextProbe(
            TextEncoderBackbone(lm, pooling), tokenizer, name=label, revision=commit, max_length=max_length,
            source=spec_str, prior_fisher=prior_fisher,
        )
    return probe.eval()


# `load_probe` (in `hf_task2vec.probes`, which does not import this module) builds text probes with these
register_probe_loader(ProbeLoader("text", load=load_text_probe, claims_config=is_text_config))
