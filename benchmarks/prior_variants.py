#!/usr/bin/env python
"""Where the prior should sit (issue 21): the same data Fisher, only the floor and the scaling changed.

For real image tasks of the three offline datasets (two sets: the demo's 12 tasks at 64 px / 200
examples and 12 other tasks at 32 px / 300), two resamples each (seeds 0, 1) and, for two tasks per
set, a copy with 25% of its labels flipped (same images, another class: same content, harder), this
script computes once per embedding the exact Fisher of the fitted probe along the label covariance's
leading 4 directions and its per-input second moment (`fisher_diagonal(second_moment=True)`), then
builds every variant below from those same numbers and measures, per set:

* **SNR**: mean d_sym between different tasks / mean d_sym between the two resamples of a task;
* **nearest task from the same dataset**: for each clean embedding, its nearest among the other tasks;
* **noisy copy**: d(task, its 25%-flipped copy) / min and / median d(task, tasks of another dataset).

Variants (``x = F / lambda^2``, the Fisher in units of the probe's prior precision; ``s`` its standard
error; ``c`` the geometric mean over layers of the layer means; ``N`` the examples):

* ``paper``: the paper's robust Fisher, ``F + lambda^2 / 2N`` (the round-two default, ``variational``);
* ``exact``: ``F`` (no prior);
* ``relative k=...``: ``x / c + k`` (the prior at k times the task's own level);
* ``relative shrunk``: ``x_hat / c(x_hat) + 1`` with ``x_hat = x * x^2 / (x^2 + s^2)`` (the library default);
* ``F + k SE``: a floor of k standard errors per filter, no scaling.

    python benchmarks/prior_variants.py            # ~15 min on 2 CPU cores (cached under benchmarks/cache/)

Writes ``benchmarks/results/prior_variants.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import hf_task2vec as t2v  # noqa: E402
from hf_task2vec.data import load_offline  # noqa: E402
from hf_task2vec.fisher import fisher_diagonal  # noqa: E402
from hf_task2vec.robust import fisher_scale, prior_precision  # noqa: E402
from hf_task2vec.tasks import load_task  # noqa: E402

DEMO = [
    ("animal-mnist", ["cat", "dog"]), ("animal-mnist", ["horse", "zebra"]), ("animal-mnist", ["cow", "sheep"]),
    ("animal-mnist", ["bird", "bear"]), ("fashion-mnist", ["T-shirt/top", "Shirt"]),
    ("fashion-mnist", ["Sneaker", "Ankle boot"]), ("fashion-mnist", ["Trouser", "Dress"]),
    ("fashion-mnist", ["Bag", "Sandal"]), ("digits", ["0", "1"]), ("digits", ["3", "8"]), ("digits", ["4", "9"]),
    ("digits", ["1", "7"]),
]  # fmt: skip
OTHER = [
    ("animal-mnist", ["cat", "dog", "bear"]), ("animal-mnist", ["cow", "zebra", "bird"]),
    ("animal-mnist", ["horse", "sheep", "giraffe"]), ("animal-mnist", ["elephant", "giraffe"]),
    ("fashion-mnist", ["Sandal", "Sneaker", "Ankle boot"]), ("fashion-mnist", ["Pullover", "Coat", "Bag"]),
    ("fashion-mnist", ["T-shirt/top", "Trouser", "Pullover", "Dress"]), ("fashion-mnist", ["Pullover", "Coat"]),
    ("digits", ["0", "6", "8", "9"]), ("digits", ["1", "2", "5", "7"]), ("digits", ["2", "3"]), ("digits", ["5", "6"]),
]  # fmt: skip
# name -> (tasks, image side, examples, seeds); the label-noise copies are of tasks[0] and tasks[4]
SETS = {"demo64": (DEMO, 64, 200, (0, 1)), "other32": (OTHER, 32, 300, (0, 1))}
NOISE = 0.25


def flipped(task, frac: float, seed: int):
    """The task with ``frac`` of its labels moved to another class (seeded): same inputs, harder."""
    rng = np.random.default_rng(1234 + seed)
    y = task.labels.copy()
    flip = rng.random(y.size) < frac
    y[flip] = (y[flip] + rng.integers(1, task.num_classes, flip.sum())) % task.num_classes
    out = task.subset(np.arange(len(task)), name=f"{task.name}+noise")
    out._labels = y
    return out


def collect(setname: str, cache: Path) -> list[dict]:
    tasks, px, n, seeds = SETS[setname]
    jobs = [(ds, cls, s, 0.0) for ds, cls in tasks for s in seeds]
    jobs += [(*tasks[i], s, NOISE) for s in seeds for i in (0, 4)]
    data: dict = {}
    out = []
    for ds, cls, seed, noise in jobs:
        key = f"{setname}__{ds}__{'+'.join(cls)}__s{seed}__n{noise}".replace("/", "_")
        path = cache / f"{key}.npz"
        if not path.exists():
            start = time.perf_counter()
            data.setdefault(ds, load_offline(ds, "train"))
            task = load_task(data[ds], classes=cls, name=f"{ds}:{cls}")
            task = flipped(task, noise, seed) if noise else task
            embedder = t2v.Task2Vec(image_size=px, max_samples=n, seed=seed, progress=False, device="cpu")
            idx = embedder.sample(task)
            probe, _ = embedder.fit_probe(task, idx)
            res = fisher_diagonal(probe, embedder.batches(task, idx), method="exact", rank=4, seed=seed,
                                  second_moment=True)  # fmt: skip
            layers = np.array([[g.start, g.stop] for g in probe.filters])
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, F=res.values, M2=res.second_moment, n=res.num_inputs, prior=prior_precision(probe),
                     layers=layers, dataset=ds, seed=seed, noise=noise)  # fmt: skip
            os.replace(tmp, path)
            print(f"{key}: {time.perf_counter() - start:.1f} s", flush=True)
        z = np.load(path)
        out.append(dict(F=z["F"], M2=z["M2"], n=int(z["n"]), prior=z["prior"], layers=z["layers"], ds=ds,
                        task=(ds, tuple(cls)), seed=seed, noise=noise))  # fmt: skip
    return out


def dsym_matrix(values: list[np.ndarray]) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    d = np.zeros((len(v), len(v)))
    for i in range(len(v)):
        total = v[i][None] + v
        empty = total <= 0
        total = np.where(empty, 1.0, total)
        a, b = np.where(empty, 0.5, v[i][None] / total), np.where(empty, 0.5, v / total)
        d[i] = 1 - (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))
    np.fill_diagonal(d, 0)
    return d


def measure(recs: list[dict], values: list[np.ndarray]) -> dict:
    d = dsym_matrix(values)
    clean = [i for i, r in enumerate(recs) if r["noise"] == 0]
    same = [d[i, j] for i in clean for j in clean if j > i and recs[i]["task"] == recs[j]["task"]]
    diff = [d[i, j] for i in clean for j in clean if j > i and recs[i]["task"] != recs[j]["task"]]
    hits = 0
    for i in clean:
        others = [j for j in clean if recs[j]["task"] != recs[i]["task"]]
        hits += recs[min(others, key=lambda j: d[i, j])]["ds"] == recs[i]["ds"]
    ratios = []
    for i, r in enumerate(recs):
        if r["noise"]:
            base = next(j for j in clean if recs[j]["task"] == r["task"] and recs[j]["seed"] == r["seed"])
            other = [d[base, j] for j in clean if recs[j]["ds"] != r["ds"]]
            ratios.append((d[base, i] / min(other), d[base, i] / float(np.median(other))))
    ratios_a = np.array(ratios)
    return {
        "snr": float(np.mean(diff) / np.mean(same)),
        "nearest_same_dataset": f"{hits}/{len(clean)}",
        "noisy_over_min_other": [round(float(x), 3) for x in ratios_a[:, 0]],
        "noisy_over_median_other": [round(float(x), 3) for x in ratios_a[:, 1]],
        "mean_distance": float(np.mean(diff)),
    }


def std_error(r: dict) -> np.ndarray:
    return np.sqrt(np.clip(r["M2"] - r["F"] ** 2, 0, None) / r["n"])


def relative(r: dict, shrink: bool) -> tuple[np.ndarray, float]:
    """``x`` (shrunk by its reliability when ``shrink``) and its level ``c``."""
    x = r["F"] / r["prior"]
    if shrink:
        s = std_error(r) / r["prior"]
        with np.errstate(invalid="ignore", divide="ignore"):
            x = np.where(x > 0, x * x**2 / (x**2 + s**2), 0.0)
    groups = [type("G", (), {"start": int(a), "stop": int(b)}) for a, b in r["layers"]]
    return x, fisher_scale(x, groups)


def variants(n: int) -> dict:
    def rel(k, shrink=False):
        return lambda r: (lambda x, c: x / c + k)(*relative(r, shrink))

    return {
        "paper: F + lambda^2 / 2N (round-two default)": lambda r: r["F"] + r["prior"] / (2 * n),
        "exact: F": lambda r: r["F"],
        "F + 1 SE": lambda r: r["F"] + std_error(r),
        "F + 4 SE": lambda r: r["F"] + 4 * std_error(r),
        "relative k=0.1": rel(0.1),
        "relative k=0.3": rel(0.3),
        "relative k=1": rel(1.0),
        "relative k=3": rel(3.0),
        "relative k=10": rel(10.0),
        "relative shrunk, k=1 (the library default)": rel(1.0, shrink=True),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", default=str(REPO / "benchmarks" / "cache" / "prior_variants"))
    parser.add_argument("--out-dir", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cache, out = Path(args.cache_dir), Path(args.out_dir)
    cache.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for setname, (_, px, n, _) in SETS.items():
        recs = collect(setname, cache)
        results[setname] = {name: measure(recs, [f(r) for r in recs]) for name, f in variants(n).items()}
        results[setname]["_setting"] = f"{px} px, {n} examples, {len(recs)} embeddings"
    (out / "prior_variants.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = ["# Where the prior should sit (issue 21)", "",
             "`python benchmarks/prior_variants.py`: the same data Fisher of each embedding, only the floor and the "
             "scaling changed (module docstring). SNR = different tasks / resamples; nearest = clean embeddings whose "
             "nearest other task is from the same dataset; noisy copy = d(task, its 25%-label-flipped copy) / min "
             "(median) d(task, tasks of other datasets), target < 1.", ""]  # fmt: skip
    for setname, res in results.items():
        lines += [f"## {setname} ({res['_setting']})", "",
                  "| variant | SNR | nearest from same dataset | noisy copy / min other | / median other | mean d |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for name, m in res.items():
            if name.startswith("_"):
                continue
            low = ", ".join(f"{x:.2f}" for x in m["noisy_over_min_other"])
            mid = ", ".join(f"{x:.2f}" for x in m["noisy_over_median_other"])
            lines.append(f"| {name} | {m['snr']:.2f} | {m['nearest_same_dataset']} | {low} | {mid} | "
                         f"{m['mean_distance']:.3g} |")  # fmt: skip
        lines.append("")
    (out / "prior_variants.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
