"""The input pipeline: decode and preprocess a task's examples in batches, in order, optionally in
worker processes (a `torch.utils.data.DataLoader`), so that a GPU is not starved by PIL decoding and
timm transforms running in the main process.

Each DataLoader item is one whole batch (``task.get_inputs(indices[start:stop], transform)``): the
same function as the serial path, so the inputs are bit-identical whatever the number of workers, and
the DataLoader returns items in sampler order, so the batches arrive in the same order too (the Fisher's
label draws follow the batch order; ``tests/test_pipeline.py`` checks identical embeddings for 0 and 2
workers). Eval transforms are deterministic; nothing random happens in a worker.

With ``num_workers=0`` no DataLoader is built (the plain loop of the serial path). Workers use the
platform's default start method (fork on Linux: the task's Arrow tables are shared, not pickled) and
one torch thread each; ``pin_memory=True`` (set by the embedder on CUDA) pins batches for
asynchronous host-to-device copies.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from .tasks import Task

__all__ = ["BatchDataset", "iter_batches"]


class BatchDataset(torch.utils.data.Dataset):
    """Map-style dataset whose item ``b`` is batch ``b`` of ``indices``: ``(inputs, labels)``."""

    def __init__(
        self,
        task: Task,
        indices: np.ndarray,
        batch_size: int,
        transform: Callable[[Any], Any] | None,
        labels: torch.Tensor,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.task = task
        self.indices = np.asarray(indices, dtype=np.int64)
        self.batch_size = int(batch_size)
        self.transform = transform
        self.labels = labels

    def __len__(self) -> int:
        return (len(self.indices) + self.batch_size - 1) // self.batch_size

    def rows(self, b: int) -> np.ndarray:
        """The example indices of batch ``b``."""
        return self.indices[b * self.batch_size : (b + 1) * self.batch_size]

    def __getitem__(self, b: int) -> tuple[Any, torch.Tensor]:
        if not 0 <= b < len(self):
            raise IndexError(f"batch {b} out of range (0..{len(self) - 1})")
        idx = self.rows(b)
        return self.task.get_inputs(idx, self.transform), self.labels[torch.as_tensor(idx)]


def _identity(item: Any) -> Any:
    return item


def iter_batches(
    task: Task,
    indices: np.ndarray,
    batch_size: int,
    transform: Callable[[Any], Any] | None,
    labels: torch.Tensor,
    *,
    num_workers: int = 0,
    pin_memory: bool = False,
    prefetch_factor: int = 2,
) -> Iterator[tuple[np.ndarray, Any, torch.Tensor]]:
    """``(rows, inputs, labels)`` for consecutive batches of ``indices``, in order.

    Args:
        task: the task whose examples are read.
        indices: the example indices, in the order the batches must follow.
        batch_size: examples per batch (the last one may be smaller).
        transform: the probe's preprocessing (images) or tokenisation (text), or ``None`` for tensor tasks.
        labels: the task's labels (a tensor indexed by example index).
        num_workers: worker processes decoding and preprocessing (0: in this process).
        pin_memory: pin the batches (for asynchronous copies to a CUDA device).
        prefetch_factor: batches loaded ahead by each worker.
    """
    if not isinstance(num_workers, int) or isinstance(num_workers, bool) or num_workers < 0:
        raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")
    data = BatchDataset(task, indices, batch_size, transform, labels)
    if num_workers == 0 or len(data) <= 1:
        for b in range(len(data)):
            x, y = data[b]
            if pin_memory:
                x, y = _pin(x), y.pin_memory()
            yield data.rows(b), x, y
        return
    loader = torch.utils.data.DataLoader(
        data,
        batch_size=None,  # items are whole batches already
        shuffle=False,
        num_workers=min(num_workers, len(data)),
        collate_fn=_identity,
        pin_memory=pin_memory,
        prefetch_factor=prefetch_factor,
        persistent_workers=False,
    )
    for b, (x, y) in enumerate(loader):  # the DataLoader yields items in sampler order
        yield data.rows(b), x, y


def _pin(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.pin_memory()
    if hasattr(x, "items"):  # a tokenizer's output
        return {k: _pin(v) for k, v in x.items()}
    return x
