"""``hf-task2vec batch CONFIG``: embed the tasks of a YAML config into a store, in one process or
under ``accelerate launch -m hf_task2vec batch CONFIG`` on several processes / GPUs / machines."""

from __future__ import annotations

import argparse
import logging
import sys

logger = logging.getLogger(__name__)

EPILOG = """\
examples:
  hf-task2vec batch docs/examples/batch.yaml --out ./store          # one process
  accelerate launch --multi_gpu --num_processes 4 -m hf_task2vec batch cfg.yaml
  accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \\
      --dynamo_backend no -m hf_task2vec batch cfg.yaml              # two CPU processes (gloo)

Exit status: 0 when every task is embedded (or already was), 1 when a task failed (the others are
still embedded; the failures are listed at the end), 2 for a bad config.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "batch",
        help="embed the tasks of a YAML config into a store (resumable; accelerate launch for several processes)",
        description="Embed every task listed in CONFIG (YAML) into an embedding store "
        "(embeddings/<probe>/<task>.safetensors + index.parquet). A rerun skips the tasks already in the store. "
        "Under `accelerate launch` the tasks (or, for few tasks, their examples) are spread over the processes.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="the batch config (YAML); see docs/distributed.md")
    p.add_argument("--out", default=None, metavar="STORE", help="output store folder (overrides 'store:' in CONFIG)")
    p.add_argument("--dry-run", action="store_true", help="list the tasks and what would run where; embed nothing")
    p.add_argument("--shard", choices=["tasks", "samples", "auto"], default=None, help="override 'shard:' in CONFIG")
    p.add_argument("--cpu", action="store_true", help="use the CPU even when CUDA is available")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ..batch import format_plan, load_batch_config, run_batch

    cfg = load_batch_config(args.config)
    if args.shard is not None:
        cfg = replace(cfg, shard=args.shard)
    report = run_batch(
        cfg,
        store=args.out,
        dry_run=args.dry_run,
        progress=not args.no_progress,
        cpu=True if args.cpu else None,
    )
    if report.process_index != 0:  # one report, from the main process
        return 0 if report.ok or args.dry_run else 1
    if args.dry_run:
        print(format_plan(report))
        print(
            f"dry run: {len(report.plan)} to embed, {len(report.skipped)} already in the store, "
            f"{len(report.failed)} in error, {report.num_processes} process(es) ({report.distributed_type})"
        )
        return 0
    for name, err in report.failed.items():
        print(f"FAILED {name}: {err}", file=sys.stderr)
    print(report.summary())
    return 0 if report.ok else 1
