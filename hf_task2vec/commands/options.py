"""Argument groups shared by the sub-commands: which task to read (a `TaskSpec`) and how to embed it."""

from __future__ import annotations

import argparse
from typing import Any


def add_task_arguments(p: argparse.ArgumentParser, *, name: bool = True) -> None:
    """``--classes --split --config --revision --input-column --label-column --allow-empty`` (and ``--name``)."""
    p.add_argument("--classes", help="comma-separated label names or ids to keep (a sub-task)")
    p.add_argument("--split", default="train")
    p.add_argument("--config", default=None, help="dataset configuration name")
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit)")
    p.add_argument("--input-column", default=None)
    p.add_argument("--label-column", default=None)
    p.add_argument("--allow-empty", action="store_true",
                   help="text tasks: leave out rows whose text is empty or missing (default: refuse them)")
    if name:
        p.add_argument("--name", default=None, help="task name (default: from the source)")


def task_spec(args: argparse.Namespace) -> Any:
    """The `TaskSpec` of ``args.source`` and the options of `add_task_arguments`."""
    from ..tasks import TaskSpec

    return TaskSpec(
        args.source,
        input_column=args.input_column,
        label_column=args.label_column,
        split=args.split,
        classes=tuple(c.strip() for c in args.classes.split(",")) if args.classes else None,
        name=getattr(args, "name", None),
        revision=args.revision,
        config=args.config,
        allow_empty=bool(getattr(args, "allow_empty", False)),
    )
