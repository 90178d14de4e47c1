#!/usr/bin/env python
"""The head's form, judged as a classifier: the linear head (every weight free) against the prototype head
(class means times one fitted temperature), on held-out examples of real text and image tasks (issue 21).

The Fisher is taken under the head's predictive, so a head that changes from one sample of a task to the
next makes the embedding change with it (README, "Where the text noise comes from"). Before choosing the
form that varies less, this checks which one is the better model of the task's labels, by the measures a
classifier is judged by, on examples neither head saw:

- held-out class-balanced negative log-likelihood and balanced accuracy (mean over tasks and resamples);
- **head variability**: the mean symmetric KL divergence between the predictives of the heads of two
  resamples of one task on the same held-out examples (what the embedding inherits).

Both heads are fitted by the library (`fit_linear_head`, `fit_prototype_head`, the default strength 1e-3) on
the probe features the embedding uses (MiniLM-L6 at 32 tokens; EfficientNet-Lite0 at 32 px).

    python benchmarks/head_forms.py              # text 64 / 256 texts, images 100 / 500, 3 resamples
    python benchmarks/head_forms.py --quick      # two tasks per modality, 2 resamples

Writes ``<out-dir>/head_forms.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO, REPO / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from embedding_quality import TASKS, task_name  # noqa: E402
from reproduce_paper_text import Config, TextData, snr_tasks  # noqa: E402

import hf_task2vec as t2v  # noqa: E402
from hf_task2vec.head import class_balanced_weights, fit_linear_head, fit_prototype_head  # noqa: E402
from hf_task2vec.sampling import balanced_sample  # noqa: E402

logger = logging.getLogger("head_forms")
HEADS = {"linear": fit_linear_head, "prototype": fit_prototype_head}
HELD_OUT = 600  # held-out examples per task at most (class-balanced)
IMAGE_TASKS = (TASKS[0], TASKS[3], TASKS[8], TASKS[9], TASKS[13], TASKS[15])


def held_out_stats(x: torch.Tensor, y: torch.Tensor, k: int, weight: torch.Tensor, bias: torch.Tensor) -> dict:
    logits = x.double() @ weight.double().T + bias.double()
    w = class_balanced_weights(y, k)
    nll = float((F.cross_entropy(logits, y, reduction="none") * w).mean())
    acc = float((((logits.argmax(1) == y).double()) * w).mean())
    return {"nll": nll, "balanced_accuracy": acc, "log_probs": logits.log_softmax(1)}


def sym_kl(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean symmetric KL between two predictives given as log-probabilities ``[N, K]``."""
    pa, pb = a.exp(), b.exp()
    return float((0.5 * ((pa * (a - b)).sum(1) + (pb * (b - a)).sum(1))).mean())


def measure_task(feats: torch.Tensor, labels: np.ndarray, k: int, sizes: list[int], seeds: list[int]) -> dict:
    """``feats``/``labels``: a class-balanced pool; up to ``HELD_OUT`` rows (a third of a small pool, by a
    fixed permutation) are held out, the resamples are drawn from the rest. A size with fewer than ``1.5 n``
    rows left is skipped (its resamples would be nearly the same examples)."""
    rng = np.random.default_rng(1234)
    order = rng.permutation(len(labels))
    n_held = min(HELD_OUT, len(labels) // 3)
    held, rest = order[-n_held:], order[:-n_held]
    xh, yh = feats[held], torch.as_tensor(labels[held])
    out: dict = {}
    for n in sizes:
        if len(rest) < 1.5 * n:
            continue
        per: dict = {}
        for name, fit in HEADS.items():
            rows, preds = [], []
            for s in seeds:
                idx = rest[balanced_sample(labels[rest], n, s)]
                weight, bias, info = fit(feats[idx], torch.as_tensor(labels[idx]), k, l2=1e-3)
                st = held_out_stats(xh, yh, k, weight, bias)
                preds.append(st.pop("log_probs"))
                rows.append({**st, "train_accuracy": info["train_accuracy"]})
            kls = [sym_kl(preds[i], preds[j]) for i in range(len(preds)) for j in range(i + 1, len(preds))]
            means = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}
            per[name] = means | {"variability": float(np.mean(kls))}
        out[str(n)] = per
    return out


def pooled(embedder: t2v.Task2Vec, task: t2v.Task, total: int) -> tuple[torch.Tensor, np.ndarray]:
    idx = balanced_sample(task.labels, total, 99)
    return embedder.features(task, idx), np.asarray(task.labels)[idx]


def run(args: argparse.Namespace) -> dict:
    seeds = list(range(args.seeds))
    res: dict = {"text": {}, "image": {}}
    sizes = {"text": [64, 256], "image": [100, 500]}
    cfg = Config.make(False, 0)
    data = TextData(cfg)
    text_embedder = t2v.Task2Vec("embedded-text", max_length=32, device="cpu", progress=False)
    tasks = snr_tasks(data, cfg, {})[: (2 if args.quick else None)]
    for t in tasks:
        feats, labels = pooled(text_embedder, t.task, max(sizes["text"]) * 2 + HELD_OUT)
        res["text"][t.name] = measure_task(feats, labels, t.task.num_classes, sizes["text"], seeds)
        logger.info("text %s: %s", t.name, res["text"][t.name])
    from hf_task2vec.data import load_offline

    image_embedder = t2v.Task2Vec("embedded", image_size=32, device="cpu", progress=False)
    full: dict = {}
    for dataset, classes in IMAGE_TASKS[: (2 if args.quick else None)]:
        if dataset not in full:
            full[dataset] = t2v.load_task(load_offline(dataset, "train"), name=dataset)
        task = full[dataset].subtask(list(classes), name=task_name(dataset, classes))
        feats, labels = pooled(image_embedder, task, max(sizes["image"]) * 2 + HELD_OUT)
        res["image"][task.name] = measure_task(feats, labels, task.num_classes, sizes["image"], seeds)
        logger.info("image %s: %s", task.name, res["image"][task.name])
    res["sizes"], res["seeds"] = sizes, seeds
    return res


def summary(res: dict, modality: str, n: str, head: str) -> dict:
    rows = [v[n][head] for v in res[modality].values() if n in v]
    return {key: float(np.mean([r[key] for r in rows])) for key in rows[0]} | {"tasks": len(rows)}


def report(res: dict) -> str:
    lines = [
        "# The head's form: linear vs prototype, as classifiers (held-out examples)",
        "",
        f"Command: `python benchmarks/head_forms.py {res['argv']}`. Machine: {res['machine']}; load average "
        f"{res['load']}. Wall time {res['wall_min']:.1f} min.",
        "",
        f"Both heads fitted by the library at the default strength (1e-3) on the probe features the embedding uses "
        f"(text: MiniLM-L6, 32 tokens, the six SNR tasks of `text_snr.py`; images: EfficientNet-Lite0 at 32 px, "
        f"{len(res['image'])} tasks of `embedding_quality.py`), {len(res['seeds'])} class-balanced resamples per "
        f"task and size, evaluated on up to {HELD_OUT} held-out examples of the same task (a third of a small "
        "task; class-balanced measures; a size is skipped where fewer than 1.5x its examples are left). "
        "`variability`: mean symmetric KL between the predictives of two resamples' heads on the held-out examples "
        "(what the Fisher inherits from the head). Lower NLL and variability are better.",
        "",
        "| modality | examples | tasks | head | held-out NLL | balanced accuracy | train accuracy | variability |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for modality in ("text", "image"):
        if not res[modality]:
            continue
        for n in map(str, res["sizes"][modality]):
            for head in HEADS:
                s = summary(res, modality, n, head)
                lines.append(f"| {modality} | {n} | {s['tasks']} | {head} | {s['nll']:.3f} | "
                             f"{s['balanced_accuracy']:.3f} | {s['train_accuracy']:.3f} | {s['variability']:.3f} |")
    lines += ["", "Per task (held-out NLL, linear / prototype):", ""]
    for modality in ("text", "image"):
        for name, v in res[modality].items():
            cells = "; ".join(f"{n}: {v[n]['linear']['nll']:.3f} / {v[n]['prototype']['nll']:.3f}" for n in v)
            lines.append(f"- {modality} `{name}`: {cells}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="resamples per task and size (>= 2)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds = 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    from model_selection import machine_info

    start = time.time()
    res = run(args)
    info = machine_info()
    res.update(
        argv=" ".join(sys.argv[1:] if argv is None else argv),
        machine=f"{info['cpu']}, {info['cores']} cores, torch {info['torch']}, {args.threads} thread(s)",
        load=", ".join(f"{x:.1f}" for x in os.getloadavg()),
        wall_min=(time.time() - start) / 60,
    )
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = "head_forms_quick" if args.quick else "head_forms"
    (args.out_dir / f"{stem}.json").write_text(json.dumps(res, indent=1))
    (args.out_dir / f"{stem}.md").write_text(report(res))
    print(report(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
