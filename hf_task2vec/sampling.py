"""Class-balanced selection of a task's examples, in memory and from a stream.

* `balanced_sample`: the examples `Task2Vec` uses of an in-memory task (at most ``max_samples``,
  class-balanced, drawn with a seed).
* `take_balanced`: read a class-balanced prefix of a streamed dataset (`datasets.IterableDataset`).
  For a large Hub dataset there is no need to download all of it: the stream is iterated, examples
  are kept until every class has its share (``max_examples // K``, the remainder going to the first
  classes) and reading stops there, so only the first shards are fetched. When the stream ends
  first (small classes), the shares are water-filled over what was read. The result is an in-memory
  `datasets.Dataset` with the stream's features; images travel as their encoded bytes (decoding is
  turned off while streaming and back on in the result).
* `water_fill`: how many examples each class gets (both of the above).
* `class_index`: a class given by name or id -> its id (tasks and streams).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .errors import TaskError

logger = logging.getLogger(__name__)

__all__ = ["BalancedPrefix", "balanced_sample", "class_index", "take_balanced", "water_fill"]


@dataclass
class BalancedPrefix:
    """What `take_balanced` returns.

    Attributes:
        dataset: the kept examples, in stream order, as an in-memory `datasets.Dataset`.
        rows_read: how many examples were read from the stream (kept or not).
        exhausted: ``True`` when the stream ended before every class had its share.
        counts: kept examples per class (label id or raw label value -> count).
    """

    dataset: Any
    rows_read: int
    exhausted: bool
    counts: dict[Hashable, int]


def water_fill(available: Sequence[int], total: int | None) -> list[int]:
    """How many examples to take of each class: ``total`` split evenly, classes with fewer examples
    than their share giving the rest to the others (the remainder goes to the first classes).
    ``total=None`` takes everything."""
    avail = [int(a) for a in available]
    if total is None or total >= sum(avail):
        return avail
    take = [0] * len(avail)
    remaining = int(total)
    open_ = [i for i, a in enumerate(avail) if a > 0]
    while remaining > 0 and open_:
        share = max(1, remaining // len(open_))
        for i in list(open_):
            n = min(share, avail[i] - take[i], remaining)
            take[i] += n
            remaining -= n
            if take[i] == avail[i]:
                open_.remove(i)
            if remaining == 0:
                break
    return take


def _initial_quota(num_classes: int, total: int) -> list[int]:
    base, extra = divmod(total, num_classes)
    return [base + (1 if i < extra else 0) for i in range(num_classes)]


def class_index(c: str | int, names: Sequence[str], where: str) -> int:
    """The id of class ``c`` (a name, an id, or an id written as a string) among ``names``.

    Raises:
        TaskError: naming ``where`` (e.g. ``"task 'pets'"``) and the classes there are.
    """
    k = len(names)
    if isinstance(c, int | np.integer) and not isinstance(c, bool):
        if 0 <= int(c) < k:
            return int(c)
    elif str(c) in names:
        return list(names).index(str(c))
    elif str(c).isdigit() and int(str(c)) < k:
        return int(str(c))
    raise TaskError(f"{where} has no class {c!r}; its classes are {list(names)} (names or ids 0..{k - 1})")


def balanced_sample(labels: np.ndarray, max_samples: int | None, seed: int) -> np.ndarray:
    """Indices of at most ``max_samples`` examples, class-balanced (`water_fill`: classes with
    fewer examples than their share give the rest to the others). When the task is not larger
    than ``max_samples`` every example is taken exactly once, in order."""
    n = labels.size
    if max_samples is None or n <= max_samples:
        return np.arange(n)
    if max_samples < 1:
        raise ValueError(f"max_samples must be positive, got {max_samples}")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = water_fill(counts.tolist(), max_samples)
    chosen = [rng.choice(np.nonzero(labels == c)[0], q, replace=False) for c, q in zip(classes, quota, strict=True)]
    return np.sort(np.concatenate(chosen))


def _class_ids(feature: Any, classes: Sequence[str | int] | None, source: str) -> list[Hashable] | None:
    """The label values to keep, in order: ClassLabel ids, or raw values for other label types."""
    import datasets

    if isinstance(feature, datasets.ClassLabel):
        if classes is None:
            return list(range(feature.num_classes))
        return [class_index(c, feature.names, repr(source)) for c in classes]
    if classes is None:
        return None  # unknown until the stream has been read
    return [str(c) for c in classes]


def take_balanced(
    stream: Any,
    label_column: str,
    max_examples: int | None,
    *,
    classes: Sequence[str | int] | None = None,
    max_scan: int | None = None,
    source: str = "stream",
    progress: bool = True,
) -> BalancedPrefix:
    """Materialise at most ``max_examples`` class-balanced examples of a streamed dataset.

    Args:
        stream: a `datasets.IterableDataset` (e.g. ``load_dataset(..., streaming=True)``).
        label_column: the column holding the labels (a ``ClassLabel`` lets the reader stop as soon
            as every class has its share; with raw labels the classes are only known at the end,
            so the whole stream is read unless ``classes`` or ``max_scan`` is given).
        max_examples: examples to keep in total (``None``: keep everything, reading the whole stream).
        classes: keep only these classes (names or ids); quotas are shared among them only.
        max_scan: stop after reading this many examples whatever the quotas (``None``: no limit).
        source: a name for messages and the progress bar.
        progress: show a tqdm progress bar of the examples read.

    Returns:
        a `BalancedPrefix` (``.dataset`` is a `datasets.Dataset` with the stream's features).

    Raises:
        TaskError: for an unknown label column or class, or when nothing was kept.
    """
    import datasets

    if max_examples is not None and max_examples < 1:
        raise TaskError(f"max_examples must be positive, got {max_examples}")
    features = stream.features
    if features is None:
        features = stream._resolve_features().features
    if label_column not in features:
        raise TaskError(f"{source!r} has no column {label_column!r}; its columns are {list(features)}")
    is_classlabel = isinstance(features[label_column], datasets.ClassLabel)
    wanted = _class_ids(features[label_column], classes, source)
    if max_examples is not None and wanted is not None and len(wanted) == 0:
        raise TaskError(f"{source!r}: no classes to read")
    quota = (
        dict(zip(wanted, _initial_quota(len(wanted), max_examples), strict=True))
        if wanted is not None and max_examples is not None
        else None
    )
    wanted_set = set(wanted) if wanted is not None else None
    cap = max_examples  # no class can ever take more than the total

    buffers: dict[Hashable, list[tuple[int, dict]]] = {c: [] for c in wanted} if wanted is not None else {}
    unfilled = {c for c, q in quota.items() if q > 0} if quota is not None else None
    rows_read = 0
    exhausted = True
    bar = tqdm(desc=f"streaming {source}", unit="ex", disable=not progress, leave=False)
    try:
        for row in stream.decode(False):
            rows_read += 1
            bar.update(1)
            value = row[label_column]
            key: Hashable = value if is_classlabel or wanted is None else str(value)
            if wanted_set is not None and key not in wanted_set:
                pass
            else:
                buf = buffers.setdefault(key, [])
                if cap is None or len(buf) < cap:
                    buf.append((rows_read - 1, row))
                if unfilled is not None and key in unfilled and len(buf) >= quota[key]:
                    unfilled.discard(key)
            if unfilled is not None and not unfilled:
                exhausted = False
                break
            if max_scan is not None and rows_read >= max_scan:
                exhausted = False
                logger.warning(
                    "%s: stopped after max_scan=%d examples before every class had its share", source, max_scan
                )
                break
    finally:
        bar.close()
    if wanted is None and max_examples is not None:
        logger.warning(
            "%s: label column %r is not a ClassLabel, so the whole stream was read (%d examples) to find the "
            "classes; pass classes=... to stop early",
            source,
            label_column,
            rows_read,
        )
    order = list(buffers)
    take = water_fill([len(buffers[c]) for c in order], max_examples)
    kept = sorted((item for c, n in zip(order, take, strict=True) for item in buffers[c][:n]), key=lambda t: t[0])
    if not kept:
        raise TaskError(
            f"{source!r}: the stream yielded no examples"
            + (f" of classes {list(classes)}" if classes is not None else "")
            + f" ({rows_read} read); check the split, config and class names"
        )
    rows = [row for _, row in kept]
    columns = {name: [row[name] for row in rows] for name in features}
    dataset = datasets.Dataset.from_dict(columns, features=features)
    counts = {c: n for c, n in zip(order, take, strict=True) if n}
    logger.info("%s: kept %d of %d examples read (%s)", source, len(rows), rows_read, counts)
    return BalancedPrefix(dataset=dataset, rows_read=rows_read, exhausted=exhausted, counts=counts)
