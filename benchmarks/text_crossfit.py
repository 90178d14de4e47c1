#!/usr/bin/env python
"""A Fisher that does not rest on its own head's fit: cross-fitting (issue 21, the text SNR).

``text_head_noise.py`` measured that ~90% of the text resampling noise is the fitted head's: the Fisher is taken
under the predictive of a head fitted on the very texts it is then computed on, and a head that has memorised
them is confident on all but the few near its boundary, so the Fisher rests on those few. Cross-fitting (as in
double machine learning) takes each example's Fisher under a head that has *not* seen it: the sample is cut into
``K`` class-balanced folds, a head is fitted on the other ``K - 1`` folds, and the fold's per-example Fisher (and
second moment) is taken under it; the folds' sums make one Fisher over all examples, which the default estimator
(``relative``) then turns into the embedding exactly as it does today. Same single Fisher pass; ``K`` head fits on
cached features instead of one.

Measured on the six SNR tasks of ``text_snr.py`` (MiniLM-L6 ``embedded-text`` at max_length 32, two resamples
per task, seeds 0 and 1) at ``--texts`` texts per resample, the library's own head against ``K``-fold
cross-fitting; ``--images`` does the same on ``embedding_quality.py``'s image tasks (EfficientNet-Lite0, 32 px).

    python benchmarks/text_crossfit.py --texts 64,256 --folds 2,5

Writes ``<out-dir>/text_crossfit.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO, REPO / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from reproduce_paper_text import Config, TextData, snr_tasks  # noqa: E402
from text_head_noise import snr_row, snr_table  # noqa: E402

import hf_task2vec as t2v  # noqa: E402
from hf_task2vec.embedding import TaskEmbedding  # noqa: E402
from hf_task2vec.fisher import FisherResult  # noqa: E402


def folds_of(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """A class-balanced fold number in ``0..k-1`` for every example."""
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        members = rng.permutation(np.nonzero(labels == c)[0])
        fold[members] = np.arange(members.size) % k
    return fold


def own_head_embedding(embedder: t2v.Task2Vec, task, indices: np.ndarray) -> TaskEmbedding:
    """What `Task2Vec.embed` computes: the Fisher under the head fitted on the same examples."""
    probe, _ = embedder.fit_probe(task, indices)
    r = embedder._fisher(probe, task, indices)
    return TaskEmbedding(r.values, r.trivial, probe.layers, {"method": embedder.method})


def crossfit_embedding(embedder: t2v.Task2Vec, task, indices: np.ndarray, k: int) -> TaskEmbedding:
    """Each fold's Fisher under the head fitted on the other folds, summed into one Fisher over every example,
    then the embedder's robust estimator on it."""
    fold = folds_of(task.labels[indices], k, embedder.seed)
    parts = []  # (probe with the fold's head, the fold's Fisher)
    for f in range(k):
        held, rest = indices[fold == f], indices[fold != f]
        probe, _ = embedder.fit_probe(task, embedder.pass_order(task, rest))
        parts.append((probe, embedder.fisher_pass(probe, embedder.batches(task, embedder.pass_order(task, held)))))
    n = np.array([r.num_inputs for _, r in parts], dtype=np.float64)
    inputs = int(n.sum())
    pooled = FisherResult(
        sum(w * r.values for w, (_, r) in zip(n, parts, strict=True)) / inputs, inputs,
        sum(r.num_draws for _, r in parts), parts[-1][1].options,
        second_moment=sum(w * r.second_moment for w, (_, r) in zip(n, parts, strict=True)) / inputs,
    )
    probe = parts[-1][0]
    r = embedder.robust(probe, pooled, inputs)
    return TaskEmbedding(r.values, r.trivial, probe.layers, {"method": embedder.method})


def measure(tasks: list, probe: t2v.Probe, n: int, folds: list[int], **embed_kwargs) -> dict[str, dict[str, float]]:
    own: dict[str, list[TaskEmbedding]] = {}
    cross: dict[int, dict[str, list[TaskEmbedding]]] = {k: {} for k in folds}
    for name, task in tasks:
        embedders = [t2v.Task2Vec(probe, max_samples=n, seed=s, progress=False, device="cpu", **embed_kwargs)
                     for s in (0, 1)]  # fmt: skip
        indices = [e.pass_order(task, e.sample(task)) for e in embedders]
        own[name] = [own_head_embedding(e, task, i) for e, i in zip(embedders, indices, strict=True)]
        for k in folds:
            cross[k][name] = [crossfit_embedding(e, task, i, k) for e, i in zip(embedders, indices, strict=True)]
        print(n, name, flush=True)
    rows = {"own head (the library)": snr_row(own)}
    rows.update({f"cross-fitted, {k} folds": snr_row(cross[k]) for k in folds})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", default="64,256", help="texts per resample (comma-separated)")
    parser.add_argument("--folds", default="2,5")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    folds = [int(k) for k in args.folds.split(",")]
    sizes = [int(n) for n in args.texts.split(",")]
    cfg = Config.make(False, 0)
    data = TextData(cfg)
    probe = t2v.load_probe("embedded-text", max_length=32)
    tasks = [(t.name, t.task) for t in snr_tasks(data, cfg, {})]
    results = {n: measure(tasks, probe, n, folds) for n in sizes}
    res = {"texts": sizes, "folds": folds, "tasks": [n for n, _ in tasks], "rows": results,
           "load": [load0, os.getloadavg()[0]], "wall_s": time.perf_counter() - t0}  # fmt: skip
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "text_crossfit.json").write_text(json.dumps(res, indent=1))
    lines = [
        "# Text embeddings with a cross-fitted head",
        "",
        f"`python benchmarks/text_crossfit.py --texts {args.texts} --folds {args.folds}`: {len(tasks)} text tasks, "
        f"MiniLM-L6 at max_length 32, default estimator, 2 resamples per task; load average {load0:.1f} -> "
        f"{os.getloadavg()[0]:.1f}, {res['wall_s']:.0f} s.",
    ]
    for n, rows in results.items():
        lines += ["", f"## {n} texts per resample", "", *snr_table(rows)]
    (args.out_dir / "text_crossfit.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
