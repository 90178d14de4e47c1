#!/usr/bin/env python
"""Reproduce the Task2Vec paper's findings (Achille et al., ICCV 2019) on real offline data.

Six experiments (the paper's figure in brackets, the module of ``benchmarks/paper/`` that runs it
in parentheses), each run with every Fisher estimator (``paper.harness.ESTIMATORS``; ``exact`` not on the
real-image tasks of ``--quick``): ``relative``, the library default (``hf_task2vec.task2vec.DEFAULT_METHOD``:
the robust Fisher with its prior at the task's own level, docs/robust_fisher.md), which the verdicts
judge; ``montecarlo``; ``variational`` (the paper's fixed-prior robust Fisher, round two's default);
``exact`` (the reference):

1. Analytic FIM [Suppl. A] (``paper.analytic``): a two-layer sigmoid network; exact / relative /
   montecarlo / variational Fisher against the closed form; montecarlo error vs number of label draws
   (expect ~1/sqrt(n)).
2. Toy tasks on the unit square [Fig. 5] (``paper.toy``): 64 binary k-means tasks (k in [3, 16]) embedded
   with 10 random ReLU features and with degree-3 polynomial features; t-SNE with task pictures; how
   embedding norm and nearest neighbours follow the task complexity k.
3. Taxonomy [Fig. 2 centre] (``paper.taxonomy``): Animal-MNIST class pairs and triples against the real
   biological taxonomy of its ten animals; mean taxonomic distance of the k nearest tasks under d_sym.
4. Difficulty [Fig. 2 right] (``paper.difficulty``): embedding L1 norm vs the held-out error of a linear
   classifier on the probe's features.
5. Task vs domain embedding [Fig. 1] (``paper.domains``): relabelings of the *same* Fashion-MNIST images,
   mixed with Animal-MNIST and digits tasks; task embedding (d_sym) vs domain embedding (cosine).
6. Clustered similarity matrix [Fig. 2 left] (``paper.clustering``): heatmaps with dendrogram over the
   tasks of 3 and 5; dendrogram purity against random relabelings.

Shared by all of them: ``paper.harness`` (the run's ``Config``, timing, small statistics, the real-image
tasks and the worker processes that embed them) and ``paper.agreement`` (how far the estimators agree).
``paper.verdicts`` holds the paper's claims, our verdicts and the checks; ``paper.report`` writes the
report. This script holds the command line and the order of the experiments (``run``).

Writes ``<out-dir>/paper.md`` and ``paper.json`` (``paper_quick.*`` with ``--quick``) and figures
``<fig-dir>/paper_*.png`` (``paper_quick_*.png``). Exits with status 1 when a check of the
science fails (the checks are listed in the report), so CI catches regressions.

    python benchmarks/reproduce_paper.py            # full run (about 45 min on 2 shared CPU cores)
    python benchmarks/reproduce_paper.py --quick    # CI-sized run (a few minutes)

Nothing is cached between runs: every embedding, feature and classifier is recomputed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO, REPO / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from paper.analytic import exp_analytic  # noqa: E402
from paper.clustering import dendrogram_purity, exp_heatmaps, purity_test  # noqa: E402
from paper.difficulty import exp_difficulty  # noqa: E402
from paper.domains import domain_tasks, exp_domains  # noqa: E402
from paper.harness import Config, RealData, cpu_name, stopwatch  # noqa: E402
from paper.report import _jsonable, write_report  # noqa: E402
from paper.taxonomy import TAXONOMY, exp_taxonomy, knn_curve, taxonomy_tasks, tree_distance  # noqa: E402
from paper.toy import exp_toy  # noqa: E402
from paper.verdicts import checks, verdicts  # noqa: E402

import hf_task2vec as t2v  # noqa: E402
from hf_task2vec.embedding import atomic_write_bytes  # noqa: E402

# what other code imports from here (embedding_quality.py, tests/test_reproduce_quick.py); `run` below looks
# `checks` up in this module, so a test can patch it here
__all__ = ["TAXONOMY", "checks", "dendrogram_purity", "knn_curve", "main", "purity_test", "run", "tree_distance",
           "verdicts"]  # fmt: skip

logger = logging.getLogger("reproduce_paper")


EXPERIMENTS = ("analytic", "toy", "taxonomy", "difficulty", "domains", "heatmaps")


def run(cfg: Config, out_dir: Path, fig_dir: Path, only: set[str]) -> dict:
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(cfg.threads)
    prefix = "paper_quick_" if cfg.quick else "paper_"
    r: dict = {
        "config": asdict(cfg),
        "environment": {
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "cpu": cpu_name(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "hf_task2vec": t2v.__version__,
        },
        "timings": {},
        "total": {},
    }
    steps: list[tuple[str, Callable[[], dict]]] = []
    data: RealData | None = None
    state: dict = {}

    def real() -> RealData:
        nonlocal data
        if data is None:
            data = RealData(cfg)
            state["tax"] = taxonomy_tasks(data, cfg)
            state["dom"] = domain_tasks(data, cfg)
        return data

    steps.append(("analytic", lambda: exp_analytic(cfg, fig_dir, prefix)))
    steps.append(("toy", lambda: exp_toy(cfg, fig_dir, prefix)))
    steps.append(("taxonomy", lambda: exp_taxonomy(cfg, real(), state["tax"], fig_dir, prefix)))
    steps.append(("domains", lambda: exp_domains(cfg, real(), state["dom"], fig_dir, prefix)))
    steps.append(("difficulty", lambda: exp_difficulty(
        cfg, real(), list({t.name: t for t in state["tax"] + state["dom"]}.values()), fig_dir, prefix)))
    steps.append(("heatmaps", lambda: exp_heatmaps(cfg, state["tax"], r["domains"], state["dom"], fig_dir, prefix)))
    if "heatmaps" in only:
        only = only | {"taxonomy", "domains"}
    try:
        with threadpool_limits(cfg.threads), stopwatch(r["total"]):
            for name, step in steps:
                if name not in only:
                    continue
                logger.info("experiment %s ...", name)
                r["timings"][name] = {}
                with stopwatch(r["timings"][name]):
                    r[name] = step()
                logger.info("experiment %s done: %s", name, r["timings"][name])
    finally:
        if data is not None:
            data.close()
    r["checks"] = checks(r)
    r["verdicts"] = verdicts(r)
    stem = "paper_quick" if cfg.quick else "paper"
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / f"{stem}.json", json.dumps(_jsonable(r), indent=1).encode())
    write_report(r, out_dir, stem)
    return r


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI-sized run (a few minutes)")
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results", help="results folder")
    parser.add_argument("--fig-dir", type=Path, default=REPO / "docs" / "figures", help="figures folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch / BLAS threads (1 is fastest on a shared machine: see docs/paper.md)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="processes embedding real-image tasks in parallel (default: 2 or the core count)")
    parser.add_argument("--image-size", type=int, default=None, help="probe input size (default 32)")
    parser.add_argument("--only", default=",".join(EXPERIMENTS),
                        help=f"comma-separated experiments to run (default all: {','.join(EXPERIMENTS)})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("hf_task2vec").setLevel(logging.WARNING)
    import datasets

    datasets.disable_progress_bars()
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - set(EXPERIMENTS)
    if unknown:
        parser.error(f"unknown experiments {sorted(unknown)}; choose from {', '.join(EXPERIMENTS)}")
    cfg = Config.make(args.quick, args.seed, args.threads, args.workers, args.image_size)
    r = run(cfg, args.out_dir, args.fig_dir, only)
    for row in r["verdicts"]:
        print(f"{row[0]:<18} {row[3]:<18} {row[2]}")
    failed = [name for name, ok, _ in r["checks"] if not ok]
    for name, ok, detail in r["checks"]:
        print(f"check {'ok  ' if ok else 'FAIL'} {name}: {detail}")
    print(f"total {r['total']['wall_s']:.0f} s wall, {r['total']['cpu_s']:.0f} s CPU; report: "
          f"{args.out_dir / ('paper_quick.md' if cfg.quick else 'paper.md')}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
