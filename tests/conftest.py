import importlib.util
import sys
from pathlib import Path

import pytest

from tests.hub_server import hub_server  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_gpt2():
    """A tiny GPT-2-architecture causal LM trained on the offline text by benchmarks/train_tiny_gpt2.py
    (cached folder; no GPT-2 weights ship offline), loaded as a next-token probe."""
    spec = importlib.util.spec_from_file_location("train_tiny_gpt2", ROOT / "benchmarks" / "train_tiny_gpt2.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_tiny_gpt2"] = module
    spec.loader.exec_module(module)
    folder = module.cached(steps=60, n_embd=32, n_layer=2, n_head=2, context=32, batch_size=16)
    from hf_task2vec.probes import load_probe

    return load_probe(str(folder), max_length=24)
