"""The ``hf-task2vec`` command line (argparse). Each area registers its sub-commands from
`hf_task2vec.commands`; ``python -m hf_task2vec`` is the same program (for ``accelerate launch -m``)."""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys
import traceback
from collections.abc import Sequence

from ._version import __version__
from .errors import OptionError, Task2VecError

COMMAND_MODULES: tuple[str, ...] = (
    "hf_task2vec.commands.core",
    "hf_task2vec.commands.hub",
    "hf_task2vec.commands.selection",
    "hf_task2vec.commands.distributed",
    "hf_task2vec.commands.text",
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


def _flag(args: argparse.Namespace, option: str) -> str | None:
    """The command-line spelling of an API option name, if this command has that option."""
    if not hasattr(args, option):
        return None
    return f"-{option}" if len(option) == 1 else "--" + option.replace("_", "-")


def expected_error(exc: BaseException, args: argparse.Namespace) -> str | None:
    """The one-line message for a failure the user can fix, or ``None`` for a bug.

    Expected: errors of hf_task2vec (`Task2VecError`: bad options, tasks, probes, files, stores,
    the Hub), ``ValueError`` from validation, ``OSError`` on paths, device errors (no such device,
    out of GPU memory) and errors of the Hub client."""
    from .checks import os_reason

    if isinstance(exc, OptionError) and exc.option:
        text = str(exc)
        flag = _flag(args, exc.option)
        if flag is not None:
            text = re.sub(rf"(?<![\w-]){re.escape(exc.option)}\b", flag, text, count=1)
        # other options the message mentions (the fix: "lower batch_size"), as this command spells them
        for other in sorted({m for m in re.findall(r"(?<![\w-])[a-z]+(?:_[a-z]+)+\b", text)}):
            other_flag = _flag(args, other)
            if other_flag is not None:
                text = re.sub(rf"(?<![\w-]){re.escape(other)}\b", other_flag, text)
        return text
    if isinstance(exc, Task2VecError | ValueError):
        return str(exc)
    if isinstance(exc, OSError):
        where = f"{exc.filename!r}: " if getattr(exc, "filename", None) else ""
        return f"{where}{os_reason(exc)}"
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return "out of GPU memory: lower --batch-size (or --max-samples), or use --device cpu"
    except ImportError:  # pragma: no cover
        pass
    if isinstance(exc, RuntimeError) and any(w in str(exc) for w in ("CUDA", "device", "cuDNN", "NCCL")):
        return f"device error: {str(exc).splitlines()[0]}. Check --device (cpu, cuda, cuda:N) and the GPU"
    try:
        from huggingface_hub.errors import HfHubHTTPError

        if isinstance(exc, HfHubHTTPError):
            return f"the Hub refused the request: {str(exc).splitlines()[0]}"
    except ImportError:  # pragma: no cover
        pass
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Exit status: 0 done, 2 an expected failure (one line on stderr naming the
    input and the fix; nothing is half-written), 130 interrupted, 1 a bug (with a traceback) or, for
    ``batch``, a task that failed."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    prefix = f"hf-task2vec {args.command}"
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as exc:
        # on a new line: Ctrl-C usually lands in the middle of a progress bar. A command that keeps
        # completed work (batch: the rounds already pushed) says so in the interrupt's note.
        note = getattr(exc, "hf_task2vec_note", None) or "nothing was written"
        print(f"\n{prefix}: interrupted; {note} (a partly written output is never left behind)", file=sys.stderr)
        return 130
    except Exception as exc:
        message = expected_error(exc, args)
        if message is None:
            traceback.print_exc()
            print(f"{prefix}: internal error ({type(exc).__name__}: {exc}). This is a bug in hf_task2vec: please "
                  f"report it (hf_task2vec {__version__}, the command and the traceback above) on the project's "
                  "issue tracker", file=sys.stderr)
            return 1
        print(f"{prefix}: error: {' '.join(message.split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
