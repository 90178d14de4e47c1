"""The ``hf-task2vec`` command line (argparse). Each area registers its sub-commands from
`hf_task2vec.commands`; ``python -m hf_task2vec`` is the same program (for ``accelerate launch -m``)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from ._version import __version__
from .errors import Task2VecError

COMMAND_MODULES: tuple[str, ...] = (
    "hf_task2vec.commands.core",
    "hf_task2vec.commands.hub",
    "hf_task2vec.commands.selection",
    "hf_task2vec.commands.distributed",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-task2vec",
        description="Task2Vec task embeddings for Hugging Face datasets: embed tasks, compare them, "
        "share embeddings on the Hub and pick the best pretrained expert.",
    )
    parser.add_argument("--version", action="version", version=f"hf_task2vec {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real missing dependency inside the module
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (Task2VecError, FileNotFoundError) as exc:
        print(f"hf-task2vec {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
