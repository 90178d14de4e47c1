"""Hub commands: ``push``, ``pull``, ``nearest`` and ``index`` over an `EmbeddingStore`.

``--repo`` takes a Hub dataset repo id (``user/name``) or a local folder (``./dir``, ``/abs/dir``,
``file://...``). The token comes from ``HF_TOKEN`` or ``hf auth login`` (``--token`` overrides it).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _store(args: argparse.Namespace, *, private: bool | None = None, must_exist: bool = True):
    """The store of ``--repo``. Reading commands need an existing local folder (a typo must not
    read as an empty store); ``push`` creates it."""
    from ..errors import HubError
    from ..hub import EmbeddingStore

    store = EmbeddingStore(args.repo, token=args.token, revision=getattr(args, "revision", None), private=private)
    if must_exist and store.is_local and store.path is not None and not store.path.is_dir():
        raise HubError(
            f"--repo {args.repo!r}: the local store folder {str(store.path)!r} does not exist; check the path "
            "(a store is created by `hf-task2vec push`)",
            reason="not_found",
        )
    return store


def _table(frame, columns: list[str]) -> str:
    import pandas as pd

    shown = frame[[c for c in columns if c in frame.columns]].copy()
    if "task_revision" in shown.columns:
        shown["task_revision"] = shown["task_revision"].fillna("").astype(str).str.slice(0, 12)
    with pd.option_context(
        "display.max_rows", None, "display.max_columns", None, "display.width", 200, "display.max_colwidth", 48
    ):
        return shown.to_string(index=False)


def cmd_push(args: argparse.Namespace) -> int:
    missing = [f for f in args.files if not Path(f).is_file()]
    if missing:
        raise FileNotFoundError(f"no such embedding file(s): {', '.join(missing)}")
    store = _store(args, private=True if args.private else None, must_exist=False)
    result = store.push([Path(f) for f in args.files], key=args.key, message=args.message)
    if result.changed:
        where = f" in commit {result.commit[:12]}" if result.commit else ""
        print(f"pushed {len(result.keys)} embedding(s) to {result.store}{where}: {', '.join(result.uploaded)}")
        if result.url:
            print(result.url)
    else:
        print(f"{result.store} is up to date: nothing to push ({', '.join(result.keys)})")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from ..checks import check_output_dir

    store = _store(args)
    check_output_dir(args.out, option="--out")
    keys = args.key or store.keys()
    if not keys:
        print(f"{store.name} holds no embeddings")
        return 0
    out = Path(args.out)
    for key in keys:
        path = store.download(key, out)
        print(path)
    return 0


def cmd_nearest(args: argparse.Namespace) -> int:
    from ..embedding import TaskEmbedding

    query = TaskEmbedding.load(args.query, allow_unverified=args.allow_unverified)
    store = _store(args)
    result = store.nearest(query, k=args.k, kind=args.kind, alpha=args.alpha)
    print(f"nearest to {query.name!r} in {store.name} ({args.kind} distance, stored task -> query):")
    print(_table(result, ["key", "distance", "task", "estimator", "samples", "norm", "task_source", "task_revision"]))
    skipped = result.attrs.get("skipped") or {}
    if skipped:  # each one was logged (a warning line with the reason and the option that fixes it)
        print(f"skipped {len(skipped)} stored embedding(s) that cannot be compared with the query (see the warnings)")
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    store = _store(args)
    if args.rebuild:
        result = store.rebuild_index()
        print(f"rebuilt the index of {result.store} from {len(result.keys)} embedding file(s)")
    frame = store.index()
    if frame.empty:
        print(f"{store.name} holds no embeddings")
        return 0
    columns = ["key", "probe", "estimator", "task_source", "task_revision", "samples", "norm", "created"]
    print(_table(frame, columns))
    return 0


def _add_store_options(p: argparse.ArgumentParser, *, revision: bool = True) -> None:
    p.add_argument("--repo", required=True, help="Hub dataset repo id (user/name) or local folder (./dir)")
    p.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the `hf auth login` token)")
    if revision:
        p.add_argument("--revision", default=None, help="read the store at this branch, tag or commit")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("push", help="push embedding files to a Hub dataset repo or folder (one commit)")
    p.add_argument("files", nargs="+", help="embedding .safetensors files")
    _add_store_options(p, revision=False)
    p.add_argument("--private", action="store_true", help="create the repo private if the push creates it")
    p.add_argument("--key", default=None, help="store a single file under this key (default: <probe>/<task>)")
    p.add_argument("--message", default=None, help="commit message")
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("pull", help="download embeddings from a store (all, or --key ones)")
    _add_store_options(p)
    p.add_argument("--key", action="append", default=None, help="key to pull (repeatable; default: all)")
    p.add_argument("--out", default=".", help="folder to write <probe>/<task>.safetensors into (default: .)")
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("nearest", help="the stored tasks nearest to a query embedding")
    p.add_argument("query", help="query embedding .safetensors file (the target task)")
    _add_store_options(p)
    p.add_argument("-k", type=int, default=5, help="how many (default 5)")
    p.add_argument("--kind", default="asymmetric", choices=["asymmetric", "symmetric", "cosine"])
    p.add_argument("--alpha", type=float, default=0.15, help="asymmetric distance weight")
    p.add_argument("--allow-unverified", action="store_true",
                   help="also read a query file whose metadata cannot be verified (format 1)")
    p.set_defaults(func=cmd_nearest)

    p = sub.add_parser("index", help="print the index of a store")
    _add_store_options(p)
    p.add_argument("--rebuild", action="store_true",
                   help="first rewrite the index from the stored embedding files (fixes an unreadable index)")
    p.set_defaults(func=cmd_index)
