"""The Fisher streams its batches: a single-use iterator works (hooks and the vmap fallback), and no
batch is kept alive after it has been used (memory flat in the number of examples)."""

from __future__ import annotations

import gc
import logging
import weakref

import numpy as np
import torch

from hf_task2vec import Probe
from hf_task2vec.fisher import fisher_diagonal
from tests.test_fisher import WeirdConv, tiny_probe


def _stream(x: torch.Tensor, size: int, alive: list):
    """A generator (consumable once) that records, each time it yields batch ``b``, how many of the
    batches ``0..b-2`` are still alive: a pass that keeps the batches (a list for a replay) makes that
    count grow with ``b``; a streaming pass keeps it bounded (the first batch may stay referenced by
    the hook-support check)."""
    refs: list[weakref.ref] = []
    for b, start in enumerate(range(0, x.shape[0], size)):
        gc.collect()
        if b >= 2:
            alive.append(sum(r() is not None for r in refs[: b - 1]))
        batch = x[start : start + size].clone()  # a fresh tensor per batch, as a decoder makes
        refs.append(weakref.ref(batch))
        yield batch, None


def test_single_use_stream_with_hooks_matches_a_list_and_frees_each_batch():
    torch.manual_seed(0)
    x = torch.randn(24, 3, 8, 8, dtype=torch.float64)
    probe = tiny_probe()
    ref = fisher_diagonal(probe, [(x[i : i + 4], None) for i in range(0, 24, 4)], method="exact").values
    alive: list[bool] = []
    stream = _stream(x, 4, alive)
    got = fisher_diagonal(probe, stream, method="exact").values
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    assert len(alive) == 4 and max(alive) <= 1, f"earlier batches alive at each step: {alive}"
    assert next(stream, "done") == "done"  # the generator was consumed, once


def test_single_use_stream_with_the_vmap_fallback(caplog):
    torch.manual_seed(1)
    x = torch.randn(12, 3, 8, 8, dtype=torch.float64)  # 4 batches of 3
    base = tiny_probe()
    base.backbone.dw = WeirdConv(6, 6, 3, padding=1, groups=6).double()  # no hook support: fallback
    probe = Probe(base.backbone, base.head, name="tiny-weird")
    ref = fisher_diagonal(probe, [(x, None)], method="exact", strategy="functional").values
    alive: list[bool] = []
    with caplog.at_level(logging.WARNING, logger="hf_task2vec.fisher"):
        got = fisher_diagonal(probe, _stream(x, 3, alive), method="exact").values
    assert "vmap" in caplog.text
    np.testing.assert_allclose(got, ref, rtol=1e-10)
    assert len(alive) == 2 and max(alive) <= 1, f"earlier batches alive at each step: {alive}"
