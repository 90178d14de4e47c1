#!/usr/bin/env python
"""What a Space user sees for a small upload (issue 21): 30 images per class, ranked by the default index.

For uploads cut from the offline *test* splits (images no expert was trained on) — T-shirt / pullover /
coat, cat / dog / bear, digits 3 / 7 / 8, sneaker / sandal / ankle boot, horse / zebra / cow — each drawn
three times (seeds 0-2, 30 images per class), this script embeds the upload the way the Space does
(`ExpertIndex.embedder`: the index's own probe, estimator and settings) and ranks every expert of the
default image index (`benchmarks/results/zoo_index`, the expert zoo's; ``--index`` for another) by the asymmetric
distance (the Space's default). Experts of one source task on several bases share one task embedding and tie.
It reports the top-1 expert, whether it was trained on the upload's dataset, and the rank of the
expert(s) whose source classes include every class of the upload (e.g. `fashion-tops` for tops).

    python benchmarks/space_uploads.py        # ~2 min on 2 CPU cores

Writes ``benchmarks/results/space_uploads.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hf_task2vec import ExpertIndex, load_task  # noqa: E402
from hf_task2vec.commands.selection import default_index_path  # noqa: E402
from hf_task2vec.data import load_offline  # noqa: E402
from hf_task2vec.sampling import balanced_sample  # noqa: E402

UPLOADS = {
    "fashion tops": ("fashion-mnist", ["T-shirt/top", "Pullover", "Coat"]),
    "fashion footwear": ("fashion-mnist", ["Sneaker", "Sandal", "Ankle boot"]),
    "animals cat/dog/bear": ("animal-mnist", ["cat", "dog", "bear"]),
    "animals horse/zebra/cow": ("animal-mnist", ["horse", "zebra", "cow"]),
    "digits 3/7/8": ("digits", ["3", "7", "8"]),
}
PER_CLASS = 30
SEEDS = (0, 1, 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", default=str(default_index_path("image")))
    parser.add_argument("--out-dir", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    index = ExpertIndex.load(args.index)
    embedder = index.embedder(progress=False, max_samples=3 * PER_CLASS)
    rows, start = [], time.perf_counter()
    for name, (dataset, classes) in UPLOADS.items():
        full = load_task(load_offline(dataset, "test"), classes=classes, name=name)
        for seed in SEEDS:
            task = full.subset(balanced_sample(full.labels, PER_CLASS * len(classes), seed))
            emb = embedder.embed(task)
            ranked = [r.model_id for r in index.select(emb, k=len(index))]
            info = {m: index.info(m) for m in ranked}
            top = ranked[0]
            covering = [m for m in ranked if set(classes) <= set(info[m].get("source_classes") or [])
                        and info[m].get("dataset") == f"offline:{dataset}"]  # fmt: skip
            rows.append({
                "upload": name, "seed": seed, "top1": top, "top1_dataset": info[top].get("dataset"),
                "top1_same_dataset": info[top].get("dataset") == f"offline:{dataset}",
                "covering_experts": {m: ranked.index(m) + 1 for m in covering},
            })  # fmt: skip
            print(f"{name} seed {seed}: #1 {top} ({info[top].get('dataset')}); covering {rows[-1]['covering_experts']}")
    hits = sum(r["top1_same_dataset"] for r in rows)
    result = {"index": args.index, "estimator": index.settings.get("method"), "per_class": PER_CLASS, "rows": rows,
              "top1_same_dataset": f"{hits}/{len(rows)}", "wall_s": time.perf_counter() - start}  # fmt: skip
    out = Path(args.out_dir)
    shown = Path(args.index).resolve()
    shown = shown.relative_to(REPO) if shown.is_relative_to(REPO) else shown
    (out / "space_uploads.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        "# A Space user's upload: 30 images per class, ranked by the default index",
        "",
        f"`python benchmarks/space_uploads.py`: uploads cut from the offline test splits, {PER_CLASS} images per "
        f"class, seeds {list(SEEDS)}, embedded as the Space does (the index's estimator: "
        f"`{result['estimator']}`) and ranked among the {len(index)} experts of `{shown}` "
        f"by the asymmetric distance. Top-1 expert from the upload's own dataset: **{result['top1_same_dataset']}**.",
        "",
        "| upload | seed | #1 expert | same dataset | rank of the experts trained on all its classes |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        cov = ", ".join(f"{m.split('/')[-1]} #{k}" for m, k in r["covering_experts"].items()) or "-"
        lines.append(f"| {r['upload']} | {r['seed']} | {r['top1'].split('/')[-1]} | "
                     f"{'yes' if r['top1_same_dataset'] else 'no'} | {cov} |")  # fmt: skip
    lines += ["", f"{result['wall_s']:.0f} s wall.", ""]
    (out / "space_uploads.md").write_text("\n".join(lines))
    ranks = [min(r["covering_experts"].values()) for r in rows if r["covering_experts"]]
    print(f"top-1 from the same dataset {hits}/{len(rows)}; best covering expert's rank median "
          f"{float(np.median(ranks)) if ranks else float('nan')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
