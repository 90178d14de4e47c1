"""Build the small text expert index: MiniLM experts fine-tuned on source tasks cut from the offline text data.

The text counterpart of the image index that `benchmarks/model_selection.py` writes to
``benchmarks/results/expert_index/``: with it, ``hf-task2vec select`` and the Space rank experts for a
text task out of the box.

* **Experts.** The offline text probe all-MiniLM-L6-v2 (`t2v.load_probe("embedded-text")`) fine-tuned on
  8 source tasks, class subsets of four real offline datasets (fortunes topics, SpamAssassin ham/spam,
  SpamAssassin ham by mailing list, WordNet lexicographer classes): a new linear head on the mean-pooled
  features plus the last encoder layer (the other five stay frozen, so their outputs are computed once
  and the epochs only run the last layer). Each expert's source **test** error is measured on the test
  split (and, for reference, the error of a linear head alone on the frozen probe).
* **Embeddings.** Each expert is represented, as in the paper, by the Task2Vec embedding of its source
  task made with the probe and the DEFAULT embedder (`t2v.Task2Vec("embedded-text", ...)`: the
  relative estimator), here with ``max_length=64`` and ``max_samples=200`` training texts.
* **Held-out check.** Target tasks cut from the *test* splits of the same datasets, with class subsets
  no expert was trained on; for each, is the nearest expert (asymmetric distance, the `select` default)
  from the same dataset? Measured with 200 and with 64 query texts (what the test uses).

Outputs: ``benchmarks/results/text_expert_index/`` (``experts.json`` + ``experts.safetensors``; no model
weights: the fine-tuned layers are not stored, so the two-stage ``--rerank`` skips these experts),
``benchmarks/results/text_expert_index.json`` and ``benchmarks/results/text_expert_index.md``.

Run: ``python benchmarks/build_text_experts.py`` (about 10-15 minutes on one CPU core).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import hf_task2vec as t2v  # noqa: E402
from hf_task2vec.sampling import balanced_sample  # noqa: E402
from hf_task2vec.selection import ExpertIndex  # noqa: E402

logger = logging.getLogger("build_text_experts")

RESULTS = ROOT / "benchmarks" / "results"
INDEX_DIR = RESULTS / "text_expert_index"
PROBE = "embedded-text"
MAX_LENGTH = 64
LAYER_LR = 3e-5  # the last encoder layer (the head: 1e-3)


@dataclass(frozen=True)
class Source:
    dataset: str  # offline text dataset name
    classes: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.dataset}-" + "-".join(c.replace(".", "-") for c in self.classes)

    @property
    def model_id(self) -> str:
        return f"offline-text/{self.name}"


EXPERTS: tuple[Source, ...] = (
    Source("fortunes", ("computers", "science")),
    Source("fortunes", ("politics", "law", "education")),
    Source("fortunes", ("food", "medicine", "sports")),
    Source("spamassassin", ("ham", "spam")),
    Source("spamassassin-lists", ("fork", "ilug", "rpm-list")),
    Source("spamassassin-lists", ("razor-users", "spamassassin-talk", "exmh")),
    Source("wordnet", ("noun.animal", "noun.plant", "noun.food")),
    Source("wordnet", ("verb.motion", "verb.communication", "verb.cognition")),
)
# held-out targets: test splits, class subsets no expert was trained on
TARGETS: tuple[Source, ...] = (
    Source("fortunes", ("literature", "songs-poems", "art")),
    Source("fortunes", ("love", "men-women", "kids")),
    Source("spamassassin-lists", ("fork", "exmh")),
    Source("spamassassin-lists", ("ilug", "spamassassin-talk")),
    Source("wordnet", ("noun.artifact", "noun.person", "noun.location")),
    Source("wordnet", ("verb.contact", "verb.change", "verb.creation")),
)


def corpus(dataset: str) -> str:
    """The corpus a dataset's texts come from (both SpamAssassin labellings read the same mail)."""
    return "spamassassin" if dataset.startswith("spamassassin") else dataset


def texts_of(source: Source, split: str, n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """``n`` class-balanced texts of a source task's split (labels 0..K-1 in the order of ``classes``)."""
    task = t2v.load_task(t2v.TaskSpec(f"offline:{source.dataset}", split=split, classes=list(source.classes)))
    idx = balanced_sample(task.labels, n, seed)
    texts = task.dataset.select(idx.tolist())[task.input_column]
    return list(texts), task.labels[idx]


# -- fine-tuning ------------------------------------------------------------------------------------
def _layer_out(layer: nn.Module, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    out = layer(h, attention_mask=bias)
    return out[0] if isinstance(out, tuple) else out


def _pool(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(h.dtype).unsqueeze(-1)
    return (h * m).sum(1) / m.sum(1).clamp_min(1.0)


@torch.no_grad()
def _cache_inputs(probe, model: nn.Module, texts: list[str], batch: int) -> list[tuple[torch.Tensor, ...]]:
    """Per batch: the input of the last encoder layer, its additive attention bias, the mask and
    the frozen model's pooled output (for the head-only baseline)."""
    out = []
    for i in range(0, len(texts), batch):
        x = probe.tokenize(texts[i : i + batch], max_length=MAX_LENGTH)
        bias = (1.0 - x["attention_mask"].float()[:, None, None, :]) * torch.finfo(torch.float32).min
        kw = {k: x[k] for k in ("token_type_ids",) if k in x}
        res = model(input_ids=x["input_ids"], attention_mask=bias, output_hidden_states=True, **kw)
        mask = x["attention_mask"]
        out.append((res.hidden_states[-2], bias, mask, _pool(res.last_hidden_state, mask)))
    return out


def _error(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) != y).float().mean())


def finetune(probe, train: tuple[list[str], np.ndarray], test: tuple[list[str], np.ndarray], num_classes: int,
             *, epochs: int, batch: int, seed: int) -> dict:
    """Fine-tune a new head + the last encoder layer of a copy of the probe's encoder; test errors."""
    torch.manual_seed(seed)
    model = copy.deepcopy(probe.backbone.model).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    last = model.encoder.layer[-1]
    start = time.perf_counter()
    tr = _cache_inputs(probe, model, train[0], batch)
    te = _cache_inputs(probe, model, test[0], batch)
    # the cached path must reproduce the full model exactly (same layer, same mask)
    with torch.no_grad():
        h, bias, mask, pooled = te[0]
        check = float((_pool(_layer_out(last, h, bias), mask) - pooled).abs().max())
    assert check < 1e-4, f"cached last-layer input does not reproduce the encoder (max diff {check})"
    cache_s = time.perf_counter() - start
    ytr = [torch.as_tensor(train[1][i : i + batch]) for i in range(0, len(train[0]), batch)]
    yte = torch.as_tensor(test[1])

    # baseline: a linear head on the frozen probe's features
    feats = torch.cat([b[3] for b in tr])
    base = nn.Linear(feats.shape[1], num_classes)
    opt = torch.optim.Adam(base.parameters(), lr=1e-2, weight_decay=1e-4)
    y_all = torch.cat(ytr)
    for _ in range(300):
        opt.zero_grad()
        nn.functional.cross_entropy(base(feats), y_all).backward()
        opt.step()
    with torch.no_grad():
        head_only_error = _error(base(torch.cat([b[3] for b in te])), yte)

    # the expert: head (initialised from the baseline) + the last encoder layer
    for p in last.parameters():
        p.requires_grad_(True)
    head = copy.deepcopy(base)
    opt = torch.optim.AdamW([
        {"params": last.parameters(), "lr": LAYER_LR},
        {"params": head.parameters(), "lr": 1e-3},
    ], weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    train_start = time.perf_counter()
    losses = []
    for _ in range(epochs):
        last.train()
        total = 0.0
        for j in torch.randperm(len(tr), generator=gen).tolist():
            h, bias, mask, _ = tr[j]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(head(_pool(_layer_out(last, h, bias), mask)), ytr[j])
            loss.backward()
            opt.step()
            total += loss.item() * len(ytr[j])
        losses.append(total / len(train[0]))
    last.eval()
    with torch.no_grad():
        logits = torch.cat([head(_pool(_layer_out(last, h, bias), mask)) for h, bias, mask, _ in te])
        train_logits = torch.cat([head(_pool(_layer_out(last, h, bias), mask)) for h, bias, mask, _ in tr])
    return {
        "error": _error(logits, yte),
        "train_error": _error(train_logits, y_all),
        "head_only_error": head_only_error,
        "chance_error": 1.0 - 1.0 / num_classes,
        "epoch_losses": [round(v, 4) for v in losses],
        "cache_s": cache_s,
        "train_s": time.perf_counter() - train_start,
        "cached_path_max_diff": check,
    }


# -- the build --------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--max-samples", type=int, default=200, help="texts per source-task embedding")
    ap.add_argument("--train-texts", type=int, default=240, help="fine-tuning texts per expert")
    ap.add_argument("--test-texts", type=int, default=240, help="test texts per expert")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--query-samples", type=int, nargs="+", default=[200, 64], help="query sizes of the check")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=INDEX_DIR)
    ap.add_argument("--check-only", action="store_true",
                    help="skip the build: run the held-out check on the index already in --out and write the results")
    ap.add_argument("--build-log", type=Path, default=None,
                    help="with --check-only: the log of the build run, for its per-expert timings")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load_start = os.getloadavg()[0]

    probe = t2v.load_probe(PROBE, max_length=MAX_LENGTH)
    if args.check_only:
        rows = rows_from_index(ExpertIndex.load(args.out), args.build_log)
    else:
        rows = build(args, probe)
    reloaded = ExpertIndex.load(args.out)
    checks = held_out_check(reloaded, probe, args.query_samples)
    signal = embedding_signal(reloaded)
    total_s = time.perf_counter() - started
    result = {
        "experts": rows,
        "checks": checks,
        "settings": {**reloaded.settings, "max_length": MAX_LENGTH, "max_samples": args.max_samples,
                     "train_texts": args.train_texts, "test_texts": args.test_texts, "epochs": args.epochs,
                     "threads": args.threads, "seed": args.seed},
        "check_only": args.check_only,
        "signal": signal,
        "total_s": total_s,
        "machine": {"cpu_count": os.cpu_count(), "load_average_start": load_start,
                    "load_average_end": os.getloadavg()[0], "python": platform.python_version(),
                    "torch": torch.__version__, "library": t2v.__version__},
    }
    (RESULTS / "text_expert_index.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "text_expert_index.md").write_text(report(result))
    print(report(result))
    return 0


def embedding_signal(index: ExpertIndex) -> dict:
    """How far the experts' embeddings are from their trivial embedding (the prior) and from each
    other: when the prior dominates, every task embeds alike and the ranking is noise."""
    from hf_task2vec import distance

    embs = [index.embedding(m) for m in index.model_ids]
    ratio = np.concatenate([e.values / e.trivial - 1.0 for e in embs])
    d = [distance(a, b, kind="symmetric") for i, a in enumerate(embs) for b in embs[i + 1:]]
    return {"excess_over_trivial_median": float(np.median(ratio)),
            "excess_over_trivial_p95": float(np.percentile(ratio, 95)),
            "dsym_between_experts_mean": float(np.mean(d)), "dsym_between_experts_max": float(np.max(d))}


def rows_from_index(index: ExpertIndex, log: Path | None) -> list[dict]:
    """The expert rows of an index built before (``--check-only``); timings from the build's log lines
    ``<model_id>: test error ..., fine-tune N s, embed M s`` when given."""
    import re

    timings = {}
    if log is not None and log.is_file():
        for m in re.finditer(r"(offline-text/\S+): test error .*?fine-tune (\d+) s, embed (\d+) s", log.read_text()):
            timings[m.group(1)] = (float(m.group(2)), float(m.group(3)))
    rows = []
    for mid in index.model_ids:
        info = index.info(mid)
        ft, em = timings.get(mid, (info.get("finetune_s"), info.get("embed_s")))
        rows.append({"model_id": mid, **info, "chance_error": 1.0 - 1.0 / len(info["classes"]),
                     "finetune_s": ft, "embed_s": em})
    return rows


def build(args: argparse.Namespace, probe) -> list[dict]:
    """Fine-tune and embed every expert; save the index to ``args.out``; the expert rows."""
    embedder = t2v.Task2Vec(probe, max_length=MAX_LENGTH, max_samples=args.max_samples, seed=args.seed,
                            progress=False)
    index = ExpertIndex()
    rows = []
    for src in EXPERTS:
        t0 = time.perf_counter()
        ft = finetune(probe, texts_of(src, "train", args.train_texts, args.seed),
                      texts_of(src, "test", args.test_texts, args.seed + 1), len(src.classes),
                      epochs=args.epochs, batch=16, seed=args.seed)
        t1 = time.perf_counter()
        task = t2v.load_task(t2v.TaskSpec(f"offline:{src.dataset}", split="train", classes=list(src.classes)))
        emb = embedder.embed(task)
        embed_s = time.perf_counter() - t1
        info = {
            "task": src.name,
            "classes": list(src.classes),
            "dataset": f"offline:{src.dataset}",
            "corpus": corpus(src.dataset),
            "kind": "fine-tuned",
            "architecture": "all-MiniLM-L6-v2",
            "finetune": f"new linear head + last encoder layer, {args.epochs} epochs on {args.train_texts} "
                        f"train texts, max_length {MAX_LENGTH}",
            "error": round(ft["error"], 4),
            "head_only_error": round(ft["head_only_error"], 4),
            "test_texts": args.test_texts,
            "weights": "not stored (the index holds the source-task embeddings only)",
            "finetune_s": round(t1 - t0, 1),
            "embed_s": round(embed_s, 1),
        }
        index.add(src.model_id, emb, **info)
        row = {"model_id": src.model_id, **info, **{k: ft[k] for k in ("train_error", "chance_error", "epoch_losses",
                                                                         "cache_s", "train_s", "cached_path_max_diff")},
               "finetune_s": t1 - t0, "embed_s": embed_s}
        rows.append(row)
        logger.info("%s: test error %.3f (head only %.3f), fine-tune %.0f s, embed %.0f s", src.model_id,
                    ft["error"], ft["head_only_error"], t1 - t0, embed_s)
    index.save(args.out)
    return rows


def held_out_check(reloaded: ExpertIndex, probe, query_samples: list[int]) -> list[dict]:
    """For each held-out target and query size: the ranking, and whether its nearest expert comes
    from the target's dataset (and corpus)."""
    checks = []
    for n in query_samples:
        query = reloaded.embedder(probe=probe, max_samples=n, progress=False)
        for tgt in TARGETS:
            t0 = time.perf_counter()
            emb = query.embed(t2v.load_task(t2v.TaskSpec(f"offline:{tgt.dataset}", split="test",
                                                         classes=list(tgt.classes))))
            ranked = reloaded.select(emb, k=len(reloaded))
            top = reloaded.info(ranked[0].model_id)
            same = [m for m in ranked if reloaded.info(m.model_id)["dataset"] == f"offline:{tgt.dataset}"]
            checks.append({
                "target": tgt.name, "dataset": f"offline:{tgt.dataset}", "query_samples": n,
                "top": ranked[0].model_id, "top_score": ranked[0].score,
                "same_dataset": top["dataset"] == f"offline:{tgt.dataset}",
                "same_corpus": top["corpus"] == corpus(tgt.dataset),
                "best_same_dataset_rank": same[0].rank if same else None,
                "ranking": [(m.model_id, float(m.score)) for m in ranked],
                "embed_s": time.perf_counter() - t0,
            })
            logger.info("target %s (n=%d): top %s (%s)", tgt.name, n, ranked[0].model_id,
                        "same dataset" if checks[-1]["same_dataset"] else "OTHER dataset")

    return checks


def _num(v) -> str:
    return "n/a" if v is None else f"{v:.0f}"


def report(r: dict) -> str:
    s, m = r["settings"], r["machine"]
    lines = [
        "# Text expert index",
        "",
        "`python benchmarks/build_text_experts.py` — the index `hf-task2vec select` and the Space use for text tasks "
        "(`benchmarks/results/text_expert_index/`).",
        "",
        f"{len(r['experts'])} experts: all-MiniLM-L6-v2 (`embedded-text`) fine-tuned on class subsets of the offline "
        f"text datasets (a new linear head + the last encoder layer, {s['epochs']} epochs, {s['train_texts']} "
        f"class-balanced train texts, max_length {s['max_length']}); source test error on {s['test_texts']} "
        "class-balanced test texts. Each expert is represented by the Task2Vec embedding of its source task "
        f"(probe `{s['probe']}`, estimator `{s['method']}` — the default embedder, {s['max_samples']} train texts). "
        "No weights are stored.",
        "",
        "| expert | classes | test error | head only | chance | fine-tune s | embed s |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in r["experts"]:
        lines.append(
            f"| `{e['model_id']}` | {', '.join(e['classes'])} | {e['error']:.3f} | {e['head_only_error']:.3f} | "
            f"{e['chance_error']:.3f} | {_num(e.get('finetune_s'))} | {_num(e.get('embed_s'))} |"
        )
    sig = r.get("signal")
    if sig:
        lines += [
            "",
            f"**How much the embeddings say.** Each expert's embedding exceeds its trivial embedding (the prior) by "
            f"a median {sig['excess_over_trivial_median']:.1e} of it per filter (95th percentile "
            f"{sig['excess_over_trivial_p95']:.1e}); the symmetric distance between two experts is "
            f"{sig['dsym_between_experts_mean']:.1e} on average (max {sig['dsym_between_experts_max']:.1e}). "
            + ("With this embedder on MiniLM the prior dominates: every text task embeds "
               "almost exactly to the prior, so the distances below are differences of ~1e-8 and the ranking is "
               "noise-level." if sig["dsym_between_experts_mean"] < 1e-4 else ""),
        ]
    lines += [
        "",
        "## Held-out check: is the nearest expert from the same dataset?",
        "",
        "Targets: test splits, class subsets no expert was trained on; ranked by the asymmetric distance "
        "(`select`'s default). *same corpus*: both SpamAssassin labellings read the same mail.",
        "",
        "| target | query texts | nearest expert | same dataset | same corpus | rank of the best same-dataset expert |",
        "|---|---|---|---|---|---|",
    ]
    for c in r["checks"]:
        lines.append(
            f"| {c['target']} | {c['query_samples']} | `{c['top']}` | {'yes' if c['same_dataset'] else 'no'} | "
            f"{'yes' if c['same_corpus'] else 'no'} | {c['best_same_dataset_rank']} |"
        )
    for n in sorted({c["query_samples"] for c in r["checks"]}, reverse=True):
        sub = [c for c in r["checks"] if c["query_samples"] == n]
        lines.append("")
        lines.append(
            f"With {n} query texts: nearest expert from the same dataset for {sum(c['same_dataset'] for c in sub)} of "
            f"{len(sub)} targets, from the same corpus for {sum(c['same_corpus'] for c in sub)} of {len(sub)}."
        )
    lines += [
        "",
        (f"Experts: {sum(e.get('finetune_s') or 0 for e in r['experts']) / 60:.1f} min fine-tuning + "
         f"{sum(e.get('embed_s') or 0 for e in r['experts']) / 60:.1f} min embedding (from the build's log); "
         "held-out check" if r.get("check_only") else "Build")
        + f": {r['total_s'] / 60:.1f} min on {s['threads']} torch thread(s) of a {m['cpu_count']}-core machine "
        f"shared with other jobs (load average {m['load_average_start']:.1f} at the start, "
        f"{m['load_average_end']:.1f} at the end); torch {m['torch']}, hf_task2vec {m['library']}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
