"""Model-selection commands: ``select`` (rank the experts of an index for a new task) and
``experts add|list|remove`` (build an expert index from Hub models)."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from ..errors import TaskError
from .options import add_task_arguments, task_spec

logger = logging.getLogger(__name__)


def _open_index(spec: str, *, must_exist: bool = True):
    """An index from a local folder (or its experts.safetensors), else a Hub dataset repo id."""
    from ..selection import TENSORS_FILE, ExpertIndex

    path = Path(spec)
    if path.exists() and (path.is_file() or (path / TENSORS_FILE).is_file()):
        return ExpertIndex.load(path)
    if path.exists() and path.is_dir() and not must_exist and not any(path.iterdir()):
        return ExpertIndex()
    if not path.exists():
        if not must_exist:
            return ExpertIndex()
        if spec.count("/") == 1 and not spec.startswith((".", "/")):
            return ExpertIndex.from_hub(spec)
    raise FileNotFoundError(
        f"no expert index at {spec!r}: expected a folder with {TENSORS_FILE} (create one with "
        "`hf-task2vec experts add MODEL_ID... --index PATH`) or a Hub dataset repo id"
    )


#: The committed expert indexes of this repository, by the modality of the task (`select` without --experts):
#: built from the cards of the expert zoo (benchmarks/zoo, `benchmarks/build_zoo.py`), whose every expert
#: loads on a fresh clone (base + PEFT adapter + head), so ``select --rerank`` skips none.
DEFAULT_INDEXES = {"image": "benchmarks/results/zoo_index", "text": "benchmarks/results/zoo_text_index"}


def index_modality(index: Any) -> str:
    """What an index's experts read: ``"text"`` when their embeddings record a text task, else ``"image"``."""
    return "text" if index.embedding_options.get("modality") == "text" else "image"


def query_modality(query: Any) -> str:
    """``"text"`` or ``"image"`` (anything not text: images, tensors) of a `Task` or a `TaskEmbedding`."""
    from ..embedding import TaskEmbedding

    if isinstance(query, TaskEmbedding):
        return "text" if query.meta.get("modality") == "text" else "image"
    return "text" if getattr(query, "modality", "image") == "text" else "image"


def default_index_path(modality: str) -> Path:
    """The committed index for a task of this modality (the text index for text, the image index otherwise)."""
    root = Path(__file__).resolve().parents[2]
    return root / DEFAULT_INDEXES["text" if modality == "text" else "image"]


def _open_query_index(args: argparse.Namespace, query: Any, index: Any = None) -> tuple[Any, str]:
    """The index to search for ``query`` (``index`` if already opened from ``--experts``, else
    ``--experts``, else the default of the query's modality), checked to read the same modality as
    the query; and how it was named (for messages)."""
    modality = query_modality(query)
    if args.experts is None:
        path = default_index_path(modality)
        if not (path / "experts.safetensors").is_file():
            raise FileNotFoundError(
                f"no --experts given and the default {modality} expert index {path} is missing: pass "
                "--experts INDEX (a folder or a Hub dataset repo id)"
            )
        where = str(path)
    else:
        where = args.experts
    index = _open_index(where) if index is None else index
    theirs = index_modality(index)
    if theirs != modality:
        other = "--experts with a text expert index" if modality == "text" else "an image expert index as --experts"
        raise TaskError(
            f"the expert index {where} holds {theirs} experts (probe {index.settings.get('probe')!r}) but the task "
            f"{getattr(query, 'name', '')!r} is {'a text' if modality == 'text' else 'an image'} task: pass {other} "
            f"(or leave --experts out to use the default {modality} index)"
        )
    return index, where


def _load_query(args: argparse.Namespace) -> Any:
    """The query: an embedding file as is, else the task (loaded, not embedded yet)."""
    from ..embedding import TaskEmbedding

    source = Path(args.source)
    if source.suffix == ".safetensors" and source.is_file():
        return TaskEmbedding.load(source, allow_unverified=getattr(args, "allow_unverified", False))
    return task_spec(args).load()


def _query_embedding(args: argparse.Namespace, index: Any, task: Any = None):
    from ..embedding import TaskEmbedding

    if isinstance(task, TaskEmbedding):
        return task
    source = Path(args.source)
    if task is None and source.suffix == ".safetensors" and source.is_file():
        return TaskEmbedding.load(source, allow_unverified=getattr(args, "allow_unverified", False))
    task = task_spec(args).load() if task is None else task
    overrides: dict[str, Any] = {"progress": not args.json}
    if args.max_samples is not None:
        overrides["max_samples"] = args.max_samples
    if args.device is not None:
        overrides["device"] = args.device
    embedder = index.embedder(probe=args.probe, **overrides)
    start = time.perf_counter()
    emb = embedder.embed(task)
    logger.info("embedded %s in %.1f s", task.name, time.perf_counter() - start)
    return emb


def cmd_select(args: argparse.Namespace) -> int:
    from ..checks import check_float, check_int

    check_int("k", args.k)  # before the query is embedded
    check_float("alpha", args.alpha, allow_none=True)
    if args.shortlist is not None and args.rerank is None:
        raise TaskError("--shortlist needs --rerank SCORE (e.g. --rerank leep --shortlist 4)")
    index = _open_index(args.experts) if args.experts is not None else None  # fails before the task is read
    query = _load_query(args)
    index, _ = _open_query_index(args, query, index)
    if args.rerank is not None:
        return _select_rerank(args, index, query)
    emb = _query_embedding(args, index, query)
    matches = index.select(emb, k=args.k, metric=args.metric, alpha=args.alpha)
    if args.json:
        rows = [{"rank": m.rank, "model_id": m.model_id, "score": m.score, **m.info} for m in matches]
        print(json.dumps({"task": emb.name, "metric": args.metric, "experts": rows}, indent=1))
        return 0
    print(f"task {emb.name!r}: {len(matches)} of {len(index)} experts by {args.metric} distance (lower is better)")
    width = max(len(m.model_id) for m in matches)
    for m in matches:
        task = m.info.get("task", "")
        err = m.info.get("error")
        extra = f"  error {err:.3f}" if isinstance(err, int | float) else ""
        print(f"{m.rank:3d}. {m.model_id:<{width}}  {m.score:9.5f}  {task}{extra}")
    return 0


def _select_rerank(args: argparse.Namespace, index: Any, task: Any) -> int:
    """Two-stage selection: shortlist by the index's distance, re-rank by forward passes of the shortlist."""
    from ..embedding import TaskEmbedding

    if isinstance(task, TaskEmbedding) or Path(args.source).suffix == ".safetensors":
        raise TaskError(
            "--rerank runs the shortlisted experts on the task's examples: give the dataset itself, not an embedding"
        )
    start = time.perf_counter()
    emb = _query_embedding(args, index, task)
    embed_s = time.perf_counter() - start
    result = index.select(
        emb,
        k=args.k,
        metric=args.metric,
        alpha=args.alpha,
        rerank=args.rerank,
        shortlist=args.shortlist,
        examples=task,
        max_examples=args.max_examples,
        device=args.device or "cpu",
        progress=not args.json,
    )
    result.cost.embed_s = embed_s  # the probe embedding of the task (stage 1)
    if args.json:
        print(json.dumps({"task": emb.name, "metric": args.metric, **result.summary()}, indent=1, default=str))
        return 0
    c = result.cost
    print(
        f"task {emb.name!r}: shortlist of {len(result.shortlist)} of {len(index)} experts by {args.metric} distance, "
        f"re-ranked by {result.rerank} (higher is better): {c.forward_passes} expert forward passes over "
        f"{c.examples} examples, {c.forward_s + c.load_s + c.score_s:.1f} s"
    )
    if not result.reranked:
        print("no shortlisted expert could be scored: the list keeps the Task2Vec order")
    width = max((len(m.model_id) for m in result), default=8)
    for m in result:
        print(
            f"{m.rank:3d}. {m.model_id:<{width}}  {result.rerank} {m.rerank_score:10.5f}  "
            f"(stage 1: #{m.stage1_rank}, {m.score:.5f})  {m.info.get('task', '')}"
        )
    for mid, reason in result.skipped.items():
        print(f"  skipped {mid}: {reason}")
    return 0


def _parse_mapping(items: list[str] | None) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for item in items or []:
        model, sep, dataset = item.partition("=")
        if not sep or not model or not dataset:
            raise SystemExit(f"--dataset expects MODEL_ID=DATASET, got {item!r}")
        mapping[model] = dataset
    return mapping


def cmd_experts_add(args: argparse.Namespace) -> int:
    index = _open_index(args.index, must_exist=False)
    options: dict[str, Any] = {}
    for key in ("method", "image_size", "max_samples", "seed", "device"):
        value = getattr(args, key)
        if value is not None:
            options[key] = value
    added = index.add_hub_models(
        args.model_ids,
        probe=args.probe,
        mapping=_parse_mapping(args.dataset),
        split=args.split,
        replace=args.replace,
        **options,
    )
    index.save(args.index)
    for mid in added:
        info = index.info(mid)
        print(f"added {mid}: dataset {info.get('dataset')} ({len(info.get('classes', []))} classes)")
    print(f"{len(index)} experts in {args.index}")
    return 0


def cmd_experts_list(args: argparse.Namespace) -> int:
    index = _open_index(args.index)
    rows = index.rows()
    if args.json:
        print(json.dumps({"settings": index.settings, "experts": rows}, indent=1))
        return 0
    s = index.settings
    print(
        f"{len(index)} experts, probe {s.get('probe')} ({s.get('method')}, image size {s.get('image_size')}), "
        f"Model2Vec: {'yes' if index.has_model2vec else 'no'}"
    )
    width = max((len(r["model_id"]) for r in rows), default=8)
    for r in rows:
        err = r.get("error")
        extra = f"  error {err:.3f}" if isinstance(err, int | float) else ""
        print(f"  {r['model_id']:<{width}}  {r.get('task', '')}  [{r.get('dataset', '')}]{extra}")
    return 0


def cmd_experts_remove(args: argparse.Namespace) -> int:
    index = _open_index(args.index)
    missing = [m for m in args.model_ids if m not in index]
    if missing:
        raise SystemExit(f"not in the index {args.index}: {', '.join(missing)}")
    for mid in args.model_ids:
        index.remove(mid)
    if len(index) == 0:
        raise SystemExit("refusing to save an empty index; delete the folder instead")
    index.save(args.index)
    print(f"removed {len(args.model_ids)}; {len(index)} experts left in {args.index}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "select",
        help="rank the experts of an index for a task (embeds the task with the index's probe settings)",
    )
    p.add_argument("source", help="Hub dataset id, local folder/file, offline:<name>, or an embedding .safetensors")
    p.add_argument(
        "--experts",
        default=None,
        help="expert index folder (or a Hub dataset repo id); default: the committed index of the task's modality "
        f"({DEFAULT_INDEXES['image']} for images, {DEFAULT_INDEXES['text']} for text)",
    )
    p.add_argument("-k", type=int, default=5, help="how many experts to show (default 5)")
    p.add_argument("--metric", default="asymmetric", choices=["asymmetric", "symmetric", "model2vec"])
    p.add_argument("--alpha", type=float, default=None, help="override the asymmetric weight")
    p.add_argument(
        "--rerank",
        default=None,
        choices=["leep", "logme", "nce", "sfda", "nleep", "knn", "h_score", "h_score_shrinkage"],
        help="two-stage selection: re-rank the shortlist by this score from forward passes of its experts",
    )
    p.add_argument("--shortlist", type=int, default=None, help="stage-1 size with --rerank (default max(k, 4))")
    p.add_argument("--max-examples", type=int, default=1000, help="examples the experts are run on (--rerank)")
    add_task_arguments(p, name=False)
    p.add_argument("--probe", default=None, help="override the probe (default: the index's)")
    p.add_argument("--max-samples", type=int, default=None, help="override the index's max_samples")
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--allow-unverified", action="store_true",
                   help="also read a query embedding file whose metadata cannot be verified (format 1)")
    p.set_defaults(func=cmd_select)

    experts = sub.add_parser("experts", help="build and inspect an expert index (add Hub models, list, remove)")
    esub = experts.add_subparsers(dest="experts_command", metavar="ACTION", required=True)

    p = esub.add_parser("add", help="add Hub models: embeds the training dataset named in each model card")
    p.add_argument("model_ids", nargs="+", metavar="MODEL_ID")
    p.add_argument("--index", required=True, help="index folder (created if missing)")
    p.add_argument(
        "--dataset",
        action="append",
        metavar="MODEL_ID=DATASET",
        help="training dataset of a model (overrides its card)",
    )
    p.add_argument("--split", default="train")
    p.add_argument("--probe", default=None, help="probe for a new index (default: embedded)")
    p.add_argument("--method", default=None, choices=["relative", "variational", "exact", "montecarlo"])
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--max-samples", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--replace", action="store_true", help="re-embed experts already in the index")
    p.set_defaults(func=cmd_experts_add)

    p = esub.add_parser("list", help="list the experts of an index")
    p.add_argument("--index", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_experts_list)

    p = esub.add_parser("remove", help="remove experts from an index")
    p.add_argument("model_ids", nargs="+", metavar="MODEL_ID")
    p.add_argument("--index", required=True)
    p.set_defaults(func=cmd_experts_remove)
