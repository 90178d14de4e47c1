#!/usr/bin/env python
"""A warm Space search of 90 texts against one of 90 images (issue 24: text within 2x of images).

Runs the Space's own search (`spaces/expert-finder/finder.search`, its defaults: the index's probe and
estimator, resamples for the confidence line, the figures) on two uploads of 90 examples, 3 classes x 30,
cut from the offline test splits: fortunes (literature / love / food) ranked among the default text
index's experts, and Animal-MNIST (cat / dog / bear) at the index's 32 px ranked among the default image
index's. Each search runs once to warm up (probe loaded, index read), then ``--repeats`` times; the
median is reported, and the ratio text / image.

    python benchmarks/space_search_speed.py       # ~3 min on the idle 2-core box

Writes ``benchmarks/results/space_search_speed.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO, REPO / "spaces" / "expert-finder", REPO / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import finder  # noqa: E402
from inputs import PreparedTask  # noqa: E402

from hf_task2vec import load_task  # noqa: E402
from hf_task2vec.data import load_offline  # noqa: E402
from hf_task2vec.sampling import balanced_sample  # noqa: E402

UPLOADS = {
    "text": ("fortunes", ["literature", "love", "food"], finder.load_text_expert_index),
    "image": ("animal-mnist", ["cat", "dog", "bear"], finder.load_expert_index),
}
PER_CLASS = 30


def upload(dataset: str, classes: list[str]) -> PreparedTask:
    full = load_task(load_offline(dataset, "test"), classes=classes, name=f"{dataset} upload")
    idx = balanced_sample(full.labels, PER_CLASS * len(classes), 0)
    return PreparedTask(full.subset(idx), [], "benchmark")


def probe_costs(repeats: int) -> dict[str, float]:
    """Seconds of one warm `Task2Vec.embed` of the same two uploads (max_samples 200, like the indexes)
    with the image index's probe and with text probes of less work: where the text / image ratio comes
    from, and what a cheaper text index would buy."""
    from hf_task2vec import Task2Vec
    from hf_task2vec.onnx_text import load_minilm_l3_probe

    text = upload("fortunes", UPLOADS["text"][1]).task
    image = upload("animal-mnist", UPLOADS["image"][1]).task
    kw = {"progress": False, "device": "cpu", "max_samples": 200}
    setups = {
        "image: embedded (EfficientNet-Lite0), 32 px": (Task2Vec("embedded", image_size=32, **kw), image),
        "text: embedded-text (MiniLM-L6), max_length 64 (the text index)": (
            Task2Vec("embedded-text", max_length=64, **kw), text),
        "text: embedded-text (MiniLM-L6), max_length 32": (Task2Vec("embedded-text", max_length=32, **kw), text),
        "text: MiniLM-L3 (ONNX weights), max_length 64": (
            Task2Vec(load_minilm_l3_probe(max_length=64), **kw), text),
    }
    out = {}
    for name, (embedder, task) in setups.items():
        embedder.embed(task)
        seconds = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            embedder.embed(task)
            seconds.append(time.perf_counter() - t0)
        out[name] = statistics.median(seconds)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from model_selection import machine_info

    load0 = os.getloadavg()
    res: dict = {"per_class": PER_CLASS, "repeats": args.repeats, "kinds": {}}
    with tempfile.TemporaryDirectory() as out:
        for kind, (dataset, classes, load_index) in UPLOADS.items():
            index = load_index()
            task = upload(dataset, classes)
            assert len(task.task) == PER_CLASS * len(classes), len(task.task)
            finder.search(task, index, out)  # warm: probe and index loaded, first-call costs paid
            seconds = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                finder.search(task, index, out)
                seconds.append(time.perf_counter() - t0)
            res["kinds"][kind] = {"dataset": dataset, "classes": classes, "examples": len(task.task),
                                  "experts": len(index.model_ids), "seconds": seconds,
                                  "median_s": statistics.median(seconds)}
    res["text_over_image"] = res["kinds"]["text"]["median_s"] / res["kinds"]["image"]["median_s"]
    res["embed_seconds"] = probe_costs(args.repeats)
    info = machine_info()
    res["machine"] = f"{info['cpu']}, {info['cores']} cores, torch {info['torch']}, {args.threads} thread(s)"
    res["load"] = [list(load0), list(os.getloadavg())]
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "space_search_speed.json").write_text(json.dumps(res, indent=1))
    lines = [
        "# A warm Space search: 90 texts vs 90 images",
        "",
        f"`python benchmarks/space_search_speed.py` — {res['machine']}; load average "
        f"{load0[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end. The Space's own `finder.search` "
        f"(default settings), {PER_CLASS} examples per class, warmed once, median of {args.repeats}.",
        "",
        "| upload | examples | experts ranked | median s | runs (s) |",
        "|---|---|---|---|---|",
    ]
    for kind, r in res["kinds"].items():
        lines.append(f"| {kind}: {r['dataset']} ({', '.join(r['classes'])}) | {r['examples']} | {r['experts']} | "
                     f"{r['median_s']:.1f} | {', '.join(f'{s:.1f}' for s in r['seconds'])} |")
    lines += ["", f"Text / image: **{res['text_over_image']:.2f}x** (target: within 2x)."]
    base = next(iter(res["embed_seconds"].values()))
    lines += [
        "",
        "One warm `Task2Vec.embed` of the same uploads (no resamples, no figures), median of "
        f"{args.repeats}: where the ratio comes from.",
        "",
        "| probe | s per embedding | vs the image probe |",
        "|---|---|---|",
        *[f"| {name} | {sec:.2f} | {sec / base:.2f}x |" for name, sec in res["embed_seconds"].items()],
    ]
    (out_dir / "space_search_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
