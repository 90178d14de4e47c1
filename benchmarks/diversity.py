"""Diversity coefficients (Beyond Scale, Miranda, Lee et al. 2023) of the offline text datasets.

Two objectives, each on real offline text:

* supervised, probe = the real all-MiniLM-L6-v2 (``embedded-text``): two-class tasks cut from
  fortunes (computers vs science), SpamAssassin (ham vs spam) and WordNet (noun.animal vs
  noun.plant), and the union of the first two;
* next-token, probe = a tiny GPT-2-architecture model trained from scratch on the offline text by
  ``benchmarks/train_tiny_gpt2.py`` (no GPT-2 weights ship offline): raw fortunes, WordNet glosses,
  SpamAssassin mail, and the union of fortunes and glosses.

Also the sanity rows: a dataset of copies of one batch (diversity 0 by construction) and the
cross-diversity of two unrelated datasets. The paper's own values (GPT-2, 200 batches of 512 x 128
tokens: C4 0.2374, WikiText-103 0.2140, the Pile 0.2463) are quoted in the output for reference;
they are not comparable with these (other probe, far smaller batches).

    python benchmarks/diversity.py            # writes benchmarks/results/diversity.{json,md}
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def _f4(x: float) -> str:
    """Four decimals, without the '-0.0000' of a float rounding below zero."""
    return f"{x:.4f}".replace("-0.0000", "0.0000")


def _two_class(name: str, classes: list[str], per_class: int, seed: int = 0):
    import datasets

    from hf_task2vec.data import load_offline

    ds = load_offline(name, "train")
    names = ds.features["label"].names
    labels = np.asarray(ds["label"])
    rng = np.random.default_rng(seed)
    rows = []
    for c in classes:
        rows.extend(rng.choice(np.flatnonzero(labels == names.index(c)), per_class, replace=False).tolist())
    rng.shuffle(rows)
    sub = ds.select(rows)
    feat = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["a", "b"])})
    return datasets.Dataset.from_dict(
        {"text": [t[:400] for t in sub["text"]], "label": [classes.index(names[i]) for i in sub["label"]]},
        features=feat,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-batches", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=24)
    parser.add_argument("--per-class", type=int, default=12)
    parser.add_argument("--gpt2-steps", type=int, default=60, help="tiny GPT-2 training steps (the tests' model)")
    parser.add_argument("--gpt2-width", type=int, default=32)
    parser.add_argument("--objectives", default="next-token,supervised", help="which sections to run")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "diversity"))
    args = parser.parse_args()

    import os

    import datasets
    import torch
    import train_tiny_gpt2

    import hf_task2vec as t2v
    from hf_task2vec.diversity import PAPER_REFERENCE_VALUES

    started = time.perf_counter()
    rows: list[dict] = []
    gpt_info: dict = {}

    def write(info: dict | None = None) -> None:
        """(Re)write the results after every row: a run cut short keeps what it measured."""
        summary = {
            "rows": rows,
            "tiny_gpt2": info or "not trained yet in this run",
            "paper_reference_values_gpt2 (the paper's, not ours)": PAPER_REFERENCE_VALUES,
            "settings": vars(args),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"load average at end {os.getloadavg()[0]:.1f}",
            "seconds": round(time.perf_counter() - started, 1),
        }
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        tmp.replace(out.with_suffix(".json"))
        lines = [
            "# Diversity coefficients of the offline text (benchmarks/diversity.py)",
            "",
            f"{args.num_batches} batches of {args.batch_size} texts, {args.max_length} tokens, cosine distance, "
            "95% bootstrap CI. Supervised rows use `method='montecarlo'` (Beyond Scale's recipe), whatever "
            "`Task2Vec`'s default estimator is. Next-token rows use a tiny GPT-2-architecture model trained here "
            "on the offline text (not GPT-2); not comparable with the paper's GPT-2 values "
            + ", ".join(f"{k} {v}" for k, v in PAPER_REFERENCE_VALUES.items())
            + " (the paper's).",
            "",
            "| objective | dataset | diversity | 95% CI |",
            "|---|---|---|---|",
            *[
                f"| {r['objective']} | {r['dataset']} | {_f4(r['coefficient'])} "
                f"| {_f4(r['ci95'][0])}-{_f4(r['ci95'][1])} |"
                for r in rows
            ],
            "",
            f"Machine: {summary['machine']}; total {summary['seconds']:.0f} s.",
        ]
        tmp = out.with_suffix(".md.tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(out.with_suffix(".md"))

    def record(objective: str, name: str, result, seconds: float) -> None:
        rows.append({"objective": objective, "dataset": name, **result.to_dict(), "seconds": round(seconds, 1)})
        print(f"{objective:10s} {name:40s} {result}  ({seconds:.0f} s)", flush=True)
        write(gpt_info)

    common = dict(batch_size=args.batch_size, num_batches=args.num_batches, progress=False, device="cpu")
    objectives = [o.strip() for o in args.objectives.split(",")]
    if "next-token" in objectives:
        # -- next-token, tiny GPT-2 trained here
        t = time.perf_counter()
        folder = train_tiny_gpt2.cached(
            steps=args.gpt2_steps, n_embd=args.gpt2_width, n_layer=2, n_head=2, context=32, batch_size=16
        )
        gpt_info.update(json.loads((folder / "training_info.json").read_text()))
        print(f"tiny GPT-2: {gpt_info}", flush=True)
        gpt = t2v.load_probe(str(folder), max_length=args.max_length)
        raw = {
            "fortunes": list(_two_class("fortunes", ["computers", "science"], args.per_class, seed=1)["text"]),
            "wordnet glosses": list(
                _two_class("wordnet", ["noun.animal", "noun.plant"], args.per_class, seed=1)["text"]
            ),
            "spamassassin mail": list(_two_class("spamassassin", ["ham", "spam"], args.per_class, seed=1)["text"]),
        }
        raw["union fortunes+wordnet"] = raw["fortunes"] + raw["wordnet glosses"]
        raw["copies of one batch (fortunes)"] = raw["fortunes"][: args.batch_size] * args.num_batches
        for name, texts in raw.items():
            t = time.perf_counter()
            shuffle = not name.startswith("copies")
            record("next-token", name, t2v.diversity(texts, gpt, shuffle=shuffle, **common), time.perf_counter() - t)
        t = time.perf_counter()
        record("next-token", "cross fortunes x wordnet",
               t2v.cross_diversity(raw["fortunes"], raw["wordnet glosses"], gpt, **common), time.perf_counter() - t)

    if "supervised" in objectives:
        # -- supervised, real MiniLM
        minilm = t2v.load_probe("embedded-text", max_length=args.max_length)
        sup = {
            "fortunes[computers,science]": _two_class("fortunes", ["computers", "science"], args.per_class),
            "spamassassin[ham,spam]": _two_class("spamassassin", ["ham", "spam"], args.per_class),
            "wordnet[noun.animal,noun.plant]": _two_class("wordnet", ["noun.animal", "noun.plant"], args.per_class),
        }
        sup["union fortunes+spamassassin"] = datasets.concatenate_datasets(
            [sup["fortunes[computers,science]"], sup["spamassassin[ham,spam]"]]
        )
        one = sup["fortunes[computers,science]"].select(range(args.batch_size))
        sup["copies of one batch (fortunes)"] = datasets.concatenate_datasets([one] * args.num_batches)
        for name, ds in sup.items():
            t = time.perf_counter()
            shuffle = not name.startswith("copies")
            record("supervised", name, t2v.diversity(ds, minilm, method="exact", shuffle=shuffle, **common),
                   time.perf_counter() - t)
        t = time.perf_counter()
        cross = t2v.cross_diversity(sup["fortunes[computers,science]"], sup["spamassassin[ham,spam]"], minilm,
                                    method="exact", **common)
        record("supervised", "cross fortunes x spamassassin", cross, time.perf_counter() - t)

    print(f"-> {Path(args.out).with_suffix('.json')} and .md")


if __name__ == "__main__":
    main()
