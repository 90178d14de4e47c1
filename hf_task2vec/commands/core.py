"""Core commands: ``embed``, ``distance``, ``probes`` and ``demo`` (the main job on the embedded defaults)."""

from __future__ import annotations

import argparse
import copy
import logging
import re
import time
from pathlib import Path

import numpy as np

from ..task2vec import DEFAULT_METHOD, METHODS
from .options import add_task_arguments, task_spec

logger = logging.getLogger(__name__)

# The demo's tasks: real offline sub-tasks of three datasets (DESIGN.md: Animal-MNIST, Fashion-MNIST, digits).
DEMO_TASKS: dict[str, tuple[str, list[str]]] = {
    "animals: cat vs dog": ("animal-mnist", ["cat", "dog"]),
    "animals: horse vs zebra": ("animal-mnist", ["horse", "zebra"]),
    "animals: cow vs sheep": ("animal-mnist", ["cow", "sheep"]),
    "animals: bird vs bear": ("animal-mnist", ["bird", "bear"]),
    "fashion: T-shirt vs shirt": ("fashion-mnist", ["T-shirt/top", "Shirt"]),
    "fashion: sneaker vs boot": ("fashion-mnist", ["Sneaker", "Ankle boot"]),
    "fashion: trouser vs dress": ("fashion-mnist", ["Trouser", "Dress"]),
    "fashion: bag vs sandal": ("fashion-mnist", ["Bag", "Sandal"]),
    "digits: 0 vs 1": ("digits", ["0", "1"]),
    "digits: 3 vs 8": ("digits", ["3", "8"]),
    "digits: 4 vs 9": ("digits", ["4", "9"]),
    "digits: 1 vs 7": ("digits", ["1", "7"]),
}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "task"


def _add_embed_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--probe", default="embedded", help="probe spec for load_probe (default: embedded)")
    p.add_argument("--arch", default=None,
                   help="timm architecture of a local weights file given as --probe (e.g. resnet18)")
    p.add_argument("--method", default=DEFAULT_METHOD, choices=list(METHODS),
                   help="Fisher estimator (default relative: the robust Fisher with the prior at the task's own "
                   "level; variational: the paper's fixed prior)")
    p.add_argument("--max-samples", type=int, default=10_000, help="examples used at most (class-balanced)")
    p.add_argument("--n-samples", type=int, default=1, help="label draws per input (montecarlo)")
    p.add_argument("--image-size", type=int, default=None, help="resize images to this side (default: probe's)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="peak memory grows with it (activations); default: automatic (8 at 224 px on the CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--max-length", type=int, default=None,
                   help="text tasks: truncate texts to this many tokens (default: the probe's, 128)")


_EMBED_OPTIONS = (
    "method", "max_samples", "n_samples", "image_size", "batch_size", "seed", "device", "max_length"
)


def _embedder(args: argparse.Namespace):
    """The `Task2Vec` of the embed options given on the command line (the others keep their defaults).
    A local weights file as ``--probe`` is loaded with its timm architecture ``--arch``."""
    from ..errors import OptionError
    from ..task2vec import Task2Vec

    options = {k: getattr(args, k) for k in _EMBED_OPTIONS if hasattr(args, k)}
    embedder = Task2Vec(args.probe, **options)  # checks the options before any probe is loaded
    arch = getattr(args, "arch", None)
    weights_file = isinstance(args.probe, str) and Path(args.probe).is_file()
    if weights_file and arch is None:
        flag = "--arch" if hasattr(args, "arch") else "`hf-task2vec embed --arch`"
        raise OptionError(
            f"--probe {args.probe!r} is a weights file: say which timm architecture it holds with {flag} "
            "(e.g. --arch resnet18)"
        )
    if arch is not None and not weights_file:
        raise OptionError(
            f"--arch {arch!r} applies to a local weights file given as --probe, and --probe {args.probe!r} is not "
            "one: drop --arch, or give the weights file"
        )
    if weights_file:
        from ..probes import load_probe

        embedder = Task2Vec(load_probe(args.probe, arch=arch, image_size=args.image_size), **options)
    return embedder


def _expected_file_bytes(embedder) -> int:
    """About how large the embedding file will be: two float32 tensors per filter plus metadata."""
    return 8 * embedder.probe.dim + 64 * 1024


def cmd_embed(args: argparse.Namespace) -> int:
    from ..checks import check_max_length, check_output_dir, check_output_file

    # everything that can be checked is checked before the work: the options (Task2Vec), the output
    # location (not a directory, writable), the task source, then the room for the file (needs the probe)
    embedder = _embedder(args)
    def check_out(expected_bytes: int = 0) -> None:
        if args.out:
            check_output_file(args.out, option="--out", expected_bytes=expected_bytes)
        else:
            check_output_dir(".", option="--out (default: the current folder)", expected_bytes=expected_bytes)

    check_out()
    task = task_spec(args).load()
    if task.is_text and args.probe == "embedded":  # the default image probe: use its text counterpart
        args.probe = "embedded-text"
        embedder = _embedder(args)
    if task.is_text and args.max_length is not None:  # the probe's position limit (512 for MiniLM)
        check_max_length(args.max_length, embedder.probe)
    check_out(_expected_file_bytes(embedder))
    start = time.perf_counter()
    emb = embedder.embed(task)
    out = Path(args.out) if args.out else Path(f"{_slug(task.name)}.safetensors")
    emb.save(out)
    print(
        f"embedded {task.name!r}: {emb.meta['num_samples']} examples, {task.num_classes} classes, dim {emb.dim}, "
        f"data norm {emb.data_norm:.4g}, {time.perf_counter() - start:.1f} s -> {out}"
    )
    return 0


def cmd_distance(args: argparse.Namespace) -> int:
    from ..distance import distance_matrix
    from ..embedding import TaskEmbedding

    if len(args.files) < 2:
        from ..errors import OptionError

        raise OptionError(f"distance needs at least two embedding files, got {len(args.files)}: give two or more")
    embs = [TaskEmbedding.load(f, allow_unverified=args.allow_unverified) for f in args.files]
    m = distance_matrix(embs, kind=args.kind, alpha=args.alpha)
    if len(embs) == 2:
        print(f"{m[0, 1]:.6f}")
        return 0
    names = [e.name or Path(f).stem for e, f in zip(embs, args.files, strict=True)]
    width = max(len(n) for n in names)
    print(" " * width + "  " + "  ".join(f"{i:>8d}" for i in range(len(names))))
    for i, n in enumerate(names):
        print(f"{n:<{width}}  " + "  ".join(f"{v:8.4f}" for v in m[i]))
    return 0


def cmd_probes(args: argparse.Namespace) -> int:
    from ..probes import PROBE_REGISTRY

    for name, cfg in sorted(PROBE_REGISTRY.items()):
        print(f"{name:24s} {cfg.architecture:24s} {cfg.description}")
    print("...and any timm model name, hf-hub:/timm/ id, transformers checkpoint, or local checkpoint (--arch)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..checks import check_output_dir, check_output_file
    from ..data import load_offline
    from ..distance import distance_matrix
    from ..plots import distance_heatmap
    from ..tasks import load_task

    start = time.perf_counter()
    embedder = _embedder(args)
    check_output_file(args.out, option="--out")  # before the 12 embeddings, not after
    if args.embeddings_dir:
        check_output_dir(args.embeddings_dir, option="--embeddings-dir")
    print(
        f"probe {embedder.probe.name} ({embedder.probe.dim} filters), {args.image_size}px, "
        f"{args.max_samples} examples per task, {args.method} Fisher"
    )
    datasets_cache: dict[str, object] = {}
    embeddings, names, groups = [], [], []
    out_dir = Path(args.embeddings_dir) if args.embeddings_dir else None
    for name, (dataset, classes) in DEMO_TASKS.items():
        if dataset not in datasets_cache:
            datasets_cache[dataset] = load_offline(dataset, "train")
        task = load_task(datasets_cache[dataset], classes=classes, name=name)
        t0 = time.perf_counter()
        emb = embedder.embed(task)
        print(f"  {name:28s} {emb.meta['num_samples']:>5s} ex  data norm {emb.data_norm:9.4g}  "
              f"{time.perf_counter() - t0:5.1f} s")
        if out_dir is not None:
            emb.save(out_dir / f"{_slug(name)}.safetensors")
        embeddings.append(emb)
        names.append(name)
        groups.append(dataset)
    dist = distance_matrix(embeddings, kind="symmetric")
    # the noise level a reader needs to judge the distances: one task embedded again from another sample
    resampler = copy.copy(embedder)
    resampler.seed = args.seed + 1
    first = next(iter(DEMO_TASKS))
    again = resampler.embed(load_task(datasets_cache[DEMO_TASKS[first][0]], classes=DEMO_TASKS[first][1], name=first))
    noise = float(distance_matrix([embeddings[0], again], kind="symmetric")[0, 1])
    print("\nnearest task (symmetric Task2Vec distance; x = times the resampling noise):")
    same, unclear = 0, []
    for i, name in enumerate(names):
        d = dist[i].copy()
        d[i] = np.inf
        j = int(np.argmin(d))
        same += groups[i] == groups[j]
        ratio = d[j] / noise if noise > 0 else np.inf
        if ratio < 2:
            unclear.append(name)
        print(f"  {name:28s} -> {names[j]:28s} {d[j]:.4f}  ({ratio:.1f}x)")
    print(f"\nresampling noise: {first!r} embedded again from another sample (seed {resampler.seed}) lies "
          f"{noise:.4f} from itself")
    if unclear:
        print(f"{len(unclear)} task(s) have their nearest neighbour within 2x that noise, so they cannot be told apart "
              f"from it at {args.max_samples} examples: {', '.join(unclear)}")
    print(f"{same}/{len(names)} tasks have their nearest neighbour in the same source dataset")
    distance_heatmap(dist, names, args.out, groups=groups, title="Task2Vec symmetric distance (12 offline tasks)")
    print(f"heatmap with dendrogram -> {args.out}")
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="embed a task (Hub id, folder, file or offline:<name>) to a .safetensors file")
    p.add_argument("source", help="Hub dataset id, local folder/file, or offline:<name> (fashion-mnist, animal-mnist, "
                   "digits; text: fortunes, spamassassin, spamassassin-lists, wordnet)")
    add_task_arguments(p)
    p.add_argument("--out", default=None, help="output file (default: <task>.safetensors)")
    _add_embed_options(p)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("distance", help="distance between embedding files (a matrix for more than two)")
    p.add_argument("files", nargs="+", help="embedding .safetensors files (for asymmetric: source first)")
    p.add_argument("--kind", default="symmetric", choices=["symmetric", "asymmetric", "cosine"])
    p.add_argument("--alpha", type=float, default=0.15, help="asymmetric distance weight")
    p.add_argument("--allow-unverified", action="store_true",
                   help="also read files whose metadata cannot be verified (format 1); never pushed to a store")
    p.set_defaults(func=cmd_distance)

    p = sub.add_parser("probes", help="list the registered offline probes")
    p.set_defaults(func=cmd_probes)

    p = sub.add_parser("demo", help="embed 12 real offline tasks and draw their clustered distance heatmap")
    p.add_argument("--out", default="demo_heatmap.png", help="PNG path for the heatmap")
    p.add_argument("--embeddings-dir", default=None, help="also save the embeddings here")
    p.add_argument("--probe", default="embedded")
    p.add_argument("--max-samples", type=int, default=200)
    p.add_argument("--method", default=DEFAULT_METHOD, choices=list(METHODS),
                   help="Fisher estimator (default relative: the robust Fisher with the prior at the task's own "
                   "level; variational: the paper's fixed prior)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_demo)
