#!/usr/bin/env python
"""How much of the text resampling noise is the fitted head's? (issue 21: the text SNR)

The six SNR tasks of ``text_snr.py`` (WordNet, fortunes, SpamAssassin), MiniLM-L6 (``embedded-text``,
max_length 32), the library default (``relative``, head L2 1e-3), ``--texts`` texts per resample, two
resamples per task (seeds 0 and 1). Each resample is embedded twice:

- **own head**: its Fisher under the head fitted on its own texts (what `Task2Vec.embed` does);
- **shared head**: its Fisher under one head per task, fitted once on a 2,000-text class-balanced pool of
  the task and used by both resamples (a head with far less estimation noise; a user does not have it).

Reported for each: the resampling noise (d_sym between the two resamples of a task), the mean d_sym between
different tasks, and their ratio (SNR); and the d_sym between the same texts under the two resamples' own
heads (the head's share of the noise, with the texts held fixed).

    python benchmarks/text_head_noise.py            # ~4 min on the idle 2-core box

Writes ``benchmarks/results/text_head_noise.{md,json}``.
"""

from __future__ import annotations

import argparse
import itertools
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

import hf_task2vec as t2v  # noqa: E402
from hf_task2vec.distance import distance  # noqa: E402
from hf_task2vec.embedding import TaskEmbedding  # noqa: E402
from hf_task2vec.sampling import balanced_sample  # noqa: E402

POOL = 2000


def fisher_embedding(embedder: t2v.Task2Vec, probe: t2v.Probe, task, indices: np.ndarray) -> TaskEmbedding:
    """The embedder's Fisher of ``probe`` (head already fitted) on ``indices``."""
    r = embedder._fisher(probe, task, indices)
    return TaskEmbedding(r.values, r.trivial, probe.layers, {"method": embedder.method})


def snr_row(embs: dict[str, list[TaskEmbedding]]) -> dict[str, float]:
    """Resampling noise (d_sym of a task's two resamples), mean d_sym between different tasks (resample by
    resample) and their ratio, for ``{task: [resample 0, resample 1]}``."""
    noise = float(np.mean([distance(a, b) for a, b in embs.values()]))
    pairs = itertools.combinations(embs, 2)
    between = float(np.mean([distance(embs[x][s], embs[y][s]) for x, y in pairs for s in (0, 1)]))
    return {"noise": noise, "between": between, "snr": between / noise}


def snr_table(rows: dict[str, dict[str, float]]) -> list[str]:
    """The markdown table of `snr_row` results, one line per way of embedding."""
    return [
        "| Fisher under | noise (resample vs resample) | between tasks | SNR |",
        "|---|---|---|---|",
        *[f"| {k} | {v['noise']:.4f} | {v['between']:.4f} | {v['snr']:.2f} |" for k, v in rows.items()],
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    cfg = Config.make(False, 0)
    data = TextData(cfg)
    probe = t2v.load_probe("embedded-text", max_length=32)
    own: dict[str, list[TaskEmbedding]] = {}
    shared: dict[str, list[TaskEmbedding]] = {}
    swapped: dict[str, float] = {}
    for t in snr_tasks(data, cfg, {}):
        task = t.task
        embedders = [t2v.Task2Vec(probe, max_samples=args.texts, seed=s, progress=False, device="cpu") for s in (0, 1)]
        indices = [e.sample(task) for e in embedders]
        heads = [e.fit_probe(task, i)[0] for e, i in zip(embedders, indices, strict=True)]
        pool_head, _ = embedders[0].fit_probe(task, balanced_sample(task.labels, POOL, 7))
        own[t.name] = [fisher_embedding(e, h, task, i) for e, h, i in zip(embedders, heads, indices, strict=True)]
        shared[t.name] = [fisher_embedding(e, pool_head, task, i) for e, i in zip(embedders, indices, strict=True)]
        swapped[t.name] = distance(own[t.name][0], fisher_embedding(embedders[0], heads[1], task, indices[0]))
        print(t.name, flush=True)
    rows = {"own head (the library)": snr_row(own), "shared head (2,000-text pool)": snr_row(shared)}
    res = {
        "texts": args.texts, "tasks": list(own), "rows": rows,
        "same_texts_two_heads": float(np.mean(list(swapped.values()))),
        "load": [load0, os.getloadavg()[0]], "wall_s": time.perf_counter() - t0,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "text_head_noise.json").write_text(json.dumps(res, indent=1))
    lines = [
        "# Text resampling noise: the texts or the fitted head?",
        "",
        f"`python benchmarks/text_head_noise.py --texts {args.texts}`: {len(own)} text tasks, MiniLM-L6 at "
        f"max_length 32, default estimator, {args.texts} texts per resample, 2 resamples; load average "
        f"{load0:.1f} -> {os.getloadavg()[0]:.1f}, {res['wall_s']:.0f} s.",
        "",
        *snr_table(rows),
        "",
        f"The same texts under the two resamples' own heads: d_sym {res['same_texts_two_heads']:.4f}.",
    ]
    (args.out_dir / "text_head_noise.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
