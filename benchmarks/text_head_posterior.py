#!/usr/bin/env python
"""Would averaging the Fisher over the head's Laplace posterior remove the head's noise? (issue 21, text)

`text_head_noise.py` found that ~90% of the text resampling noise is the fitted head's. A user has only their
own texts, so the noise cannot be removed by a better head; it can be integrated out. This script embeds the
same six text tasks (MiniLM-L6, max_length 32, the default estimator, ``--texts`` texts, resamples seeds 0
and 1) two ways:

- **point head** (the library): the Fisher under the head fitted on the resample (MAP of the class-balanced
  cross-entropy with the default L2, 1e-3 on the mean loss);
- **posterior average**: the mean of the embeddings under ``--draws`` heads drawn from the Laplace
  approximation of that head's posterior: mean the fitted head, precision the Hessian of the summed
  class-balanced loss, ``sum_n w_n (x_n x_n^T kron (diag p_n - p_n p_n^T)) + N * l2 * I`` over the
  weights and bias (the bias gets the weights' precision, which only pins the softmax's shift direction).

It reports noise (resample vs resample), the mean distance between tasks and their ratio for both.

    python benchmarks/text_head_posterior.py          # ~8 min on the idle 2-core box

Writes ``benchmarks/results/text_head_posterior.{md,json}``.
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
from text_head_noise import fisher_embedding, snr_row, snr_table  # noqa: E402

import hf_task2vec as t2v  # noqa: E402
from hf_task2vec.embedding import TaskEmbedding  # noqa: E402
from hf_task2vec.head import class_balanced_weights, set_head  # noqa: E402


def laplace_draws(features: torch.Tensor, labels: torch.Tensor, head: torch.nn.Linear, l2: float, draws: int,
                  seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``draws`` heads ``(weight, bias)`` from the Laplace approximation around ``head`` (see the module)."""
    x = torch.cat([features.double(), torch.ones(len(features), 1, dtype=torch.float64)], 1)  # [N, D+1]
    theta = torch.cat([head.weight.detach().double(), head.bias.detach().double()[:, None]], 1)  # [K, D+1]
    k, d1 = theta.shape
    p = torch.softmax(x @ theta.T, dim=1)
    w = class_balanced_weights(labels, k)
    a = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]  # [N, K, K]
    hess = torch.einsum("n,nkl,ni,nj->kilj", w, a, x, x).reshape(k * d1, k * d1)
    hess += len(x) * l2 * torch.eye(k * d1, dtype=torch.float64)
    chol = torch.linalg.cholesky(hess)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(draws):
        z = torch.randn(k * d1, 1, dtype=torch.float64, generator=gen)
        step = torch.linalg.solve_triangular(chol.T, z, upper=True).reshape(k, d1)  # cov = hess^-1
        t = theta + step
        out.append((t[:, :-1].float(), t[:, -1].float()))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--draws", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    cfg = Config.make(False, 0)
    data = TextData(cfg)
    probe = t2v.load_probe("embedded-text", max_length=32)
    point: dict[str, list[TaskEmbedding]] = {}
    averaged: dict[str, list[TaskEmbedding]] = {}
    for t in snr_tasks(data, cfg, {}):
        task = t.task
        point[t.name], averaged[t.name] = [], []
        for seed in (0, 1):
            e = t2v.Task2Vec(probe, max_samples=args.texts, seed=seed, progress=False, device="cpu")
            idx = e.pass_order(task, e.sample(task))
            fitted, _ = e.fit_probe(task, idx)
            base = fisher_embedding(e, fitted, task, idx)
            point[t.name].append(base)
            feats = e.features(task, idx)
            labels = torch.as_tensor(task.labels[idx])
            values = []
            for weight, bias in laplace_draws(feats, labels, fitted.head, float(e.head_l2), args.draws, seed):
                set_head(fitted.head, weight, bias)
                values.append(fisher_embedding(e, fitted, task, idx).values)
            averaged[t.name].append(TaskEmbedding(np.mean(values, 0), base.trivial, base.layers, dict(base.meta)))
        print(t.name, flush=True)
    rows = {"point head (the library)": snr_row(point), f"posterior average ({args.draws} draws)": snr_row(averaged)}
    res = {"texts": args.texts, "draws": args.draws, "tasks": list(point), "rows": rows,
           "load": [load0, os.getloadavg()[0]], "wall_s": time.perf_counter() - t0}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "text_head_posterior.json").write_text(json.dumps(res, indent=1))
    lines = [
        "# Text: the Fisher averaged over the head's Laplace posterior",
        "",
        f"`python benchmarks/text_head_posterior.py --texts {args.texts} --draws {args.draws}`: {len(point)} text "
        f"tasks, MiniLM-L6 at max_length 32, default estimator, 2 resamples; load average {load0:.1f} -> "
        f"{os.getloadavg()[0]:.1f}, {res['wall_s']:.0f} s.",
        "",
        *snr_table(rows),
    ]
    (args.out_dir / "text_head_posterior.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
