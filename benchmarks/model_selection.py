#!/usr/bin/env python
"""Model-selection benchmark: the paper's Table 2 (and Table 1) on real offline data.

Experts: the embedded ImageNet probe (EfficientNet-Lite0) fine-tuned on source tasks cut from
Animal-MNIST, Fashion-MNIST and digits (label subsets and groupings, *train* splits), plus the
untouched ImageNet network as the "generic" expert. Targets: held-out sub-tasks (random class
subsets of the *test* splits) with few training examples. Ground truth: the test error of a linear
classifier (logistic regression) on each expert's frozen features, for every target and expert.

Selection methods compared (Table 2): chance, always generic, Task2Vec symmetric and asymmetric
(one probe embedding of the target, `hf_task2vec.ExpertIndex`), Model2Vec (leave-one-task-out),
and the peer transferability metrics LogME, LEEP, NCE, H-score (a forward pass of every expert on
the target's training data, `hf_task2vec.transferability`). Table 1: the probe used for the
embeddings (EfficientNet-Lite0 ImageNet, MobileNetV2 ImageNet, random init).

Everything expensive is cached under ``benchmarks/cache/model_selection`` (gitignored): the
fine-tuned experts (safetensors), their features on the target pools, the embeddings and the
ground-truth errors, so a rerun only recomputes the tables.

    python benchmarks/model_selection.py             # full run (<= 60 min on 2 CPU cores)
    python benchmarks/model_selection.py --quick     # CI smoke run (<= 5 min), exits 1 if its checks fail
    python benchmarks/model_selection.py --quick --results-dir /tmp/ms   # do not touch committed results

Results: ``<results-dir>/model_selection.md`` and ``.json`` and a copy of the expert index in
``<results-dir>/expert_index/`` (``ExpertIndex.load`` it; the Space uses it as its offline default).

A second meta-task, across architectures (``--meta-task architectures``): the four offline ImageNet networks
(EfficientNet-Lite0/1/2, MobileNetV2), each fine-tuned on a few source tasks and each also untouched, plus the
random-init Lite0; same targets, splits, seeds and ground truth. Written to
``<results-dir>/model_selection_architectures.{md,json}`` (no Table 1, expert index or search speed):

    python benchmarks/model_selection.py --meta-task architectures [--seeds 1] [--arch-sources animals-all,...]

A third, on the expert zoo that ships in the repository (``--meta-task zoo``): its 64 image experts (LoRA adapters
on the four networks, 16 source tasks, ``benchmarks/zoo/``) loaded with ``hf_task2vec.experts.load_expert``, plus
the four networks untouched; Task2Vec uses the embeddings their cards ship. Written to
``<results-dir>/model_selection_zoo.{md,json}``:

    python benchmarks/model_selection.py --meta-task zoo [--seeds 2] [--zoo-tasks animals-all,...]

The code is the package ``benchmarks/selection/`` (see its ``__init__``): the shared harness (``config``,
``data``, ``experts``, ``peers``, ``harness``, ``report``, ``across``) and one module per meta-task in
``selection/meta_tasks/`` (``lite0``, ``architectures``, ``zoo``); a new meta-task is one new module there. This
script holds the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from selection.across import architecture_summary, tiebreak_summary  # noqa: E402
from selection.config import ALL_SOURCES, FULL, GENERIC, QUICK, Config  # noqa: E402
from selection.data import Pool, TargetSpec  # noqa: E402
from selection.experts import Expert, cache_stem, expert_outputs, generic_expert  # noqa: E402
from selection.harness import DEFAULT_META_TASK, meta_tasks, run  # noqa: E402
from selection.meta_tasks.architectures import ARCH_QUICK_SOURCES, ARCH_SOURCES, architecture_config  # noqa: E402
from selection.peers import PEERS  # noqa: E402
from selection.report import machine_info  # noqa: E402

# what other code imports from here (tests/test_model_selection_quick.py, reproduce_paper_text.py)
__all__ = ["ALL_SOURCES", "ARCH_QUICK_SOURCES", "ARCH_SOURCES", "FULL", "GENERIC", "PEERS", "QUICK", "Config",
           "Expert", "Pool", "TargetSpec", "architecture_config", "architecture_summary", "cache_stem",
           "expert_outputs", "generic_expert", "machine_info", "main", "run", "tiebreak_summary"]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    tasks = meta_tasks()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small CI run (<= 5 min) with loose checks")
    parser.add_argument(
        "--results-dir",
        default=None,
        help="where to write model_selection.md/.json "
        "(default: benchmarks/results; --quick: benchmarks/cache/model_selection/quick-results)",
    )
    parser.add_argument(
        "--index-dir", default=None, help="where to save the expert index (default: <results-dir>/expert_index)"
    )
    parser.add_argument("--cache-dir", default=str(ROOT / "benchmarks" / "cache" / "model_selection"))
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default: 3, quick: 1)")
    parser.add_argument(
        "--meta-task",
        choices=tuple(tasks),
        default=DEFAULT_META_TASK,
        help="; ".join(f"{t.name}: {t.help}" for t in tasks.values()),
    )
    for task in tasks.values():
        task.add_arguments(parser)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared 2-core machine a second thread mostly waits)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("hf_task2vec", "datasets", "httpx", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    cfg = tasks[args.meta_task].configure(QUICK if args.quick else FULL, args, parser)
    if args.seeds is not None:
        cfg = dataclasses.replace(cfg, seeds=tuple(range(args.seeds)))
    if args.results_dir:
        results_dir = Path(args.results_dir)
    elif args.quick:
        results_dir = Path(args.cache_dir) / "quick-results"
    else:
        results_dir = ROOT / "benchmarks" / "results"
    index_dir = Path(args.index_dir) if args.index_dir else results_dir / "expert_index"
    return run(cfg, results_dir.resolve(), Path(args.cache_dir).resolve(), index_dir.resolve(), args.meta_task)


if __name__ == "__main__":
    sys.exit(main())
