"""Text commands: ``diversity`` (the diversity coefficient of a dataset, or the cross-diversity of two)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .options import add_task_arguments, task_spec


def cmd_diversity(args: argparse.Namespace) -> int:
    from ..checks import MAX_BATCH_SIZE, MAX_SEED, check_int, check_max_length, check_output_file
    from ..diversity import PAPER_REFERENCE_VALUES, cross_diversity, diversity
    from ..embedding import atomic_write_bytes
    from ..probes import load_probe

    check_int("batch_size", args.batch_size, maximum=MAX_BATCH_SIZE,
              why="every batch is embedded in one pass, whose activations grow with it")
    check_int("num_batches", args.num_batches, maximum=MAX_DIVERSITY_BATCHES,
              why="each batch is one Task2Vec embedding (the paper uses 200)")
    check_int("head_steps", args.head_steps, maximum=MAX_HEAD_STEPS,
              why="Adam steps on the LM head per batch (50 by default)")
    check_int("seed", args.seed, minimum=0, maximum=MAX_SEED, why="numpy and torch take seeds up to 2^32 - 1")
    check_max_length(args.max_length)
    if args.json:
        check_output_file(args.json, option="--json")
    probe = load_probe(args.probe, **({"max_length": args.max_length} if args.max_length else {}))
    check_max_length(args.max_length, probe)  # the probe's position limit (512 for MiniLM)
    objective = args.objective
    if objective == "auto":
        objective = "next-token" if getattr(probe, "causal", False) else "supervised"

    def source(text: str):
        if objective == "next-token":
            return text  # raw text: "offline:<name>", a Hub id or a local file (its text column)
        return task_spec(argparse.Namespace(**{**vars(args), "source": text})).load()

    options = dict(
        objective=objective, batch_size=args.batch_size, num_batches=args.num_batches, distance=args.distance,
        seed=args.seed, method=args.method, head_steps=args.head_steps, device=args.device,
        text_column=args.input_column, split=args.split, progress=not args.no_progress,
    )
    start = time.perf_counter()
    if args.cross:
        result = cross_diversity(source(args.source), source(args.cross), probe, **options)
        what = f"cross-diversity of {args.source!r} and {args.cross!r}"
    else:
        result = diversity(source(args.source), probe, **options)
        what = f"diversity of {args.source!r}"
    seconds = time.perf_counter() - start
    print(f"{what}: {result} [{objective}, probe {probe.name}, {args.distance} distance, {seconds:.0f} s]")
    if args.json:
        summary = {**result.to_dict(), "source": args.source, "cross": args.cross or "", "seconds": round(seconds, 1),
                   "paper_reference_values_gpt2": PAPER_REFERENCE_VALUES}
        atomic_write_bytes(Path(args.json), (json.dumps(summary, indent=2) + "\n").encode())
        print(f"-> {args.json}")
    return 0


#: Bounds of the diversity options (each batch is one embedding; head steps are per batch).
MAX_DIVERSITY_BATCHES = 100_000
MAX_HEAD_STEPS = 100_000


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "diversity",
        help="diversity coefficient of a dataset (Beyond Scale): mean Task2Vec distance between random batches",
    )
    p.add_argument("source", help="dataset: Hub id, local folder/file, or offline:<name> (e.g. offline:fortunes)")
    add_task_arguments(p, name=False)
    p.add_argument("--cross", default=None, help="a second dataset: print the cross-diversity of the two")
    p.add_argument("--probe", default="embedded-text", help="text probe (a causal LM folder selects next-token)")
    p.add_argument("--objective", default="auto", choices=["auto", "supervised", "next-token"])
    p.add_argument("--batch-size", type=int, default=64, help="examples per batch (the paper: 512)")
    p.add_argument("--num-batches", type=int, default=20, help="batches drawn (the paper: 200)")
    p.add_argument("--distance", default="cosine", choices=["cosine", "symmetric"])
    p.add_argument("--method", default="montecarlo", choices=["montecarlo", "exact"],
                   help="Fisher estimator of the supervised objective")
    p.add_argument("--max-length", type=int, default=None, help="truncate texts to this many tokens")
    p.add_argument("--head-steps", type=int, default=50, help="next-token: Adam steps on the LM head per batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--json", default=None, help="also write the result (and the paper's reference values) here")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_diversity)
