#!/usr/bin/env python
"""The paper's checks on text (issue 12, item 4): Task2Vec with the offline MiniLM-L6 text probe.

The text analogs of the image checks of ``reproduce_paper.py``, with the default text probe
(``t2v.load_probe("embedded-text")``: all-MiniLM-L6-v2, mean pooling) and the default estimator
(``t2v.Task2Vec``: method ``relative``, the robust Fisher with the prior at the task's own level), on the offline text
datasets of ``hf_task2vec.data`` (real data, no network):

a. **Taxonomy vs embedding distance** (Fig. 2 centre analog). Tasks = pairs of WordNet noun
   lexicographer classes (``offline:wordnet``). The distance between two classes comes from the
   WordNet hypernym taxonomy (``wordnet_class_ancestors``): with ``p_c(s)`` the share of class c's
   synsets that have synset s as an ancestor, ``d(a, b) = 1 - sum_s min(p_a, p_b) / sum_s max(p_a, p_b)``
   (weighted Jaccard; 0 for a class with itself). Task distance ``D_tax`` = the paper's min over class
   pairs (`hf_task2vec.distance.taxonomic_distance`). Spearman between ``D_tax`` and d_sym over all task
   pairs and over the pairs sharing no class (there ``D_tax`` is the taxonomy alone), with a 95%
   bootstrap interval over tasks and a permutation p-value (the classes' taxonomy rows shuffled).
b. **Embedding norm vs task difficulty** (Fig. 2 right): Spearman between the data norm of each task's
   embedding (`TaskEmbedding.data_norm`, the L1 of ``values - trivial``) and its test error (balanced
   error of a logistic regression on the probe's pooled features, trained on the train split, tested on
   held-out texts of the test split).
c. **Task vs domain embedding** (Fig. 1): relabelings of one fixed set of texts (fortunes topics regrouped;
   SpamAssassin mail as ham/spam, by corpus round, by group; the mailing-list ham by list). The domain
   embedding (``t2v.domain_embedding``, mean activations, cosine) depends on the texts only: 0 between
   relabelings. The task embedding should tell them apart: relabelings further apart than two resamples
   of one task (the noise of d).
d. **SNR** (as ``benchmarks/embedding_quality.py`` defines it, its ``snr_stats`` is reused): mean d_sym
   between embeddings of different tasks / mean d_sym between two resamples (seeds 0 and 1: another
   class-balanced subsample of the task) of the same task; and label-permuted copies (same texts,
   classes swapped cyclically) whose distance to the original should sit within that noise.

    python benchmarks/reproduce_paper_text.py            # full run (~6 CPU minutes, one thread)
    python benchmarks/reproduce_paper_text.py --quick    # CI-sized (under 2 minutes)

Writes ``<out-dir>/paper_text.{json,md}`` (``paper_text_quick.*`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO, REPO / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from embedding_quality import TARGET_SNR, snr_stats  # noqa: E402  (issue 11's SNR definition and bar, reused)
from model_selection import machine_info  # noqa: E402

import hf_task2vec as t2v  # noqa: E402
from hf_task2vec.data import load_offline, wordnet_class_ancestors  # noqa: E402
from hf_task2vec.distance import distance_matrix, taxonomic_distance  # noqa: E402
from hf_task2vec.embedding import TaskEmbedding  # noqa: E402

logger = logging.getLogger("reproduce_paper_text")


# ================================================================================================
# configuration
# ================================================================================================
@dataclass
class Config:
    quick: bool
    seed: int = 0
    max_samples: int = 64  # texts per task
    max_length: int = 32  # tokens per text
    wordnet_classes: tuple[str, ...] = (
        "noun.animal", "noun.plant", "noun.artifact", "noun.cognition", "noun.communication", "noun.feeling",
    )  # fmt: skip
    # domain name -> (dataset, column, the values whose texts form the domain, {relabeling: groups})
    domains: dict = field(default_factory=dict)
    snr_tasks: tuple = ()  # (dataset, column, groups)
    clf_per_class: int = 40  # train and test texts per source class for the test error
    clf_C: float = 0.1
    methods: tuple[str, ...] = ("relative",)  # the first is the default estimator's (the verdicts)
    bootstrap: int = 1000
    permutations: int = 999

    @staticmethod
    def make(quick: bool, seed: int) -> Config:
        fortunes = ("computers", "science", "love", "food")
        lists = ("fork", "ilug", "rpm-list", "exmh")
        groups = ("easy-ham-1", "easy-ham-2", "spam-1", "spam-2")
        domains = {
            "fortunes": ("fortunes", "label", fortunes, {
                "topic": [["computers"], ["science"], ["love"], ["food"]],
                "tech-vs-life": [["computers", "science"], ["love", "food"]],
                "mixed": [["computers", "love"], ["science", "food"]],
                "computers-vs-rest": [["science", "love", "food"], ["computers"]],
            }),
            "spamassassin": ("spamassassin", "group", groups, {
                "ham-vs-spam": [["easy-ham-1", "easy-ham-2"], ["spam-1", "spam-2"]],
                "round": [["easy-ham-1", "spam-1"], ["easy-ham-2", "spam-2"]],
                "group": [["easy-ham-1"], ["easy-ham-2"], ["spam-1"], ["spam-2"]],
            }),
            "spamassassin-lists": ("spamassassin-lists", "label", lists, {
                "list": [["fork"], ["ilug"], ["rpm-list"], ["exmh"]],
                "fork-vs-rest": [["ilug", "rpm-list", "exmh"], ["fork"]],
                "pairs": [["fork", "ilug"], ["rpm-list", "exmh"]],
            }),
        }  # fmt: skip
        ham = ["easy-ham-1", "easy-ham-2", "hard-ham-1"]
        snr = (
            ("wordnet", "label", (("noun.animal",), ("noun.plant",))),
            ("wordnet", "label", (("noun.artifact",), ("noun.cognition",))),
            ("fortunes", "label", (("computers",), ("science",))),
            ("fortunes", "label", (("love",), ("food",))),
            ("spamassassin", "group", (tuple(ham), ("spam-1", "spam-2"))),
            ("spamassassin-lists", "label", (("fork",), ("ilug",))),
        )
        if not quick:
            return Config(quick, seed, domains=domains, snr_tasks=snr, methods=("relative", "variational"))
        domains = {
            "fortunes": (domains["fortunes"][0], "label", fortunes,
                         {k: domains["fortunes"][3][k] for k in ("topic", "tech-vs-life", "mixed")}),
            "spamassassin": (domains["spamassassin"][0], "group", groups,
                             {k: domains["spamassassin"][3][k] for k in ("ham-vs-spam", "round")}),
        }  # fmt: skip
        return Config(
            quick, seed, max_samples=48, max_length=32,
            wordnet_classes=("noun.animal", "noun.plant", "noun.artifact", "noun.cognition"),
            domains=domains, snr_tasks=(snr[0], snr[2], snr[4]), clf_per_class=30, bootstrap=300, permutations=199,
        )  # fmt: skip


# ================================================================================================
# tasks
# ================================================================================================
@dataclass
class TextTask:
    """One text task: which texts of which dataset, and how their labels map to the task's."""

    name: str
    dataset: str
    column: str  # "label" (ClassLabel) or "group" (string) of the offline dataset
    mapping: dict[str, int]  # source value name -> task label
    label_names: list[str]
    task: t2v.Task
    kind: str  # taxonomy | relabel | snr | permuted
    classes: tuple[str, ...] = ()  # WordNet classes (taxonomy)
    domain: str = ""  # relabel: which fixed text set
    embeddings: dict[tuple[str, int], TaskEmbedding] = field(default_factory=dict)  # (method, seed) -> embedding
    test_error: float = float("nan")


class TextData:
    """The offline text datasets (train split) and the texts' source values by column."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.ds = {n: load_offline(n, "train") for n in ("wordnet", "fortunes", "spamassassin", "spamassassin-lists")}
        self._values: dict = {}

    def values(self, dataset: str, column: str, split: str = "train") -> np.ndarray:
        """The value names (class or group) of every row of ``dataset``'s ``split``."""
        key = (dataset, column, split)
        if key not in self._values:
            ds = self.ds[dataset] if split == "train" else load_offline(dataset, split)
            raw = ds[column]
            if column == "label":
                names = ds.features["label"].names
                raw = [names[v] for v in raw]
            self._values[key] = np.asarray(raw, dtype=object)
        return self._values[key]

    def make(self, name: str, dataset: str, column: str, groups: Sequence[Sequence[str]], kind: str,
             rows: np.ndarray | None = None, **extra) -> TextTask:  # fmt: skip
        """A task whose label ``i`` is the texts with a value in ``groups[i]`` (``rows``: only these rows)."""
        import datasets

        mapping = {v: i for i, grp in enumerate(groups) for v in grp}
        vals = self.values(dataset, column)
        if rows is None:
            rows = np.nonzero([v in mapping for v in vals])[0]
        label_names = ["+".join(g) for g in groups]
        sub = self.ds[dataset].select(rows).select_columns(["text"])
        sub = sub.add_column(
            "task_label", [mapping[v] for v in vals[rows]], feature=datasets.ClassLabel(names=label_names)
        )
        task = t2v.load_task(sub, input_column="text", label_column="task_label", name=name)
        return TextTask(name, dataset, column, mapping, label_names, task, kind, **extra)

    def fixed_rows(self, dataset: str, column: str, values: Sequence[str], total: int, seed: int) -> np.ndarray:
        """``total`` rows, as many of each value: the one text set every relabeling of a domain uses."""
        vals = self.values(dataset, column)
        rng = np.random.default_rng(seed)
        per = total // len(values)
        idx = [rng.choice(np.nonzero(vals == v)[0], per, replace=False) for v in values]
        return np.sort(np.concatenate(idx))


def taxonomy_tasks(data: TextData, cfg: Config) -> list[TextTask]:
    return [
        data.make(f"wordnet:{a}+{b}", "wordnet", "label", [[a], [b]], "taxonomy", classes=(a, b))
        for a, b in itertools.combinations(cfg.wordnet_classes, 2)
    ]


def domain_tasks(data: TextData, cfg: Config) -> list[TextTask]:
    out = []
    for k, (domain, (dataset, column, values, relabelings)) in enumerate(cfg.domains.items()):
        rows = data.fixed_rows(dataset, column, values, cfg.max_samples, cfg.seed + 10 + k)
        for rname, groups in relabelings.items():
            out.append(data.make(f"{domain}:{rname}", dataset, column, groups, "relabel", rows=rows, domain=domain))
    return out


def snr_tasks(data: TextData, cfg: Config, existing: dict[str, TextTask]) -> list[TextTask]:
    out = []
    for dataset, column, groups in cfg.snr_tasks:
        name = f"{dataset}:{'+'.join('|'.join(g) for g in groups)}"
        if dataset == "wordnet":  # the same task as in the taxonomy check: reuse its seed-0 embedding
            name = f"wordnet:{groups[0][0]}+{groups[1][0]}"
        out.append(existing.get(name) or data.make(name, dataset, column, [list(g) for g in groups], "snr"))
    return out


def permuted_copy(data: TextData, t: TextTask, embedder: t2v.Task2Vec) -> TextTask:
    """The seed-0 sample of ``t`` (same texts, same order) with its classes permuted cyclically."""
    import datasets

    idx = embedder.sample(t.task)
    k = t.task.num_classes
    labels = (t.task.labels[idx] + 1) % k
    names = [t.label_names[(i - 1) % k] for i in range(k)]
    sub = t.task.dataset.select(idx).select_columns(["text"])
    sub = sub.add_column("task_label", labels.tolist(), feature=datasets.ClassLabel(names=names))
    task = t2v.load_task(sub, input_column="text", label_column="task_label", name=f"{t.name} (permuted)")
    return TextTask(task.name, t.dataset, t.column, {}, names, task, "permuted")


# ================================================================================================
# statistics
# ================================================================================================
def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b)[0])


def boot_ci(stat, n: int, rng: np.random.Generator, reps: int) -> list[float]:
    """95% percentile interval of ``stat(idx)`` over ``reps`` draws of ``n`` indices with replacement."""
    vals = [stat(rng.integers(0, n, n)) for _ in range(reps)]
    vals = [v for v in vals if np.isfinite(v)]
    if not vals:
        return [float("nan"), float("nan")]
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return [float(lo), float(hi)]


def pair_spearman(dist: np.ndarray, dtax: np.ndarray, keep: np.ndarray, idx: np.ndarray | None = None) -> float:
    """Spearman over task pairs (i < j, ``keep[i, j]``); with ``idx`` over pairs of distinct draws."""
    if idx is not None:
        dist, dtax, keep = dist[np.ix_(idx, idx)], dtax[np.ix_(idx, idx)], keep[np.ix_(idx, idx)]
        keep = keep & (idx[:, None] != idx[None, :])
    iu = np.triu_indices(dist.shape[0], 1)
    sel = keep[iu]
    return spearman(dist[iu][sel], dtax[iu][sel])


# ================================================================================================
# a. taxonomy
# ================================================================================================
@functools.cache
def class_distances(classes: tuple[str, ...]) -> dict[tuple[str, str], float]:
    """Weighted Jaccard distance between the ancestor shares of two WordNet classes (module docstring)."""
    ds_all = load_offline("wordnet", "all")  # every synset: the hypernym links cross the train/test cut
    anc = wordnet_class_ancestors(ds_all)
    names = ds_all.features["label"].names
    counts = np.bincount(np.asarray(ds_all["label"]), minlength=len(names))
    share = {c: {s: k / counts[names.index(c)] for s, k in anc[c].items()} for c in classes}
    out = {}
    for a in classes:
        for b in classes:
            if a == b:
                out[a, b] = 0.0
                continue
            keys = set(share[a]) | set(share[b])
            lo = sum(min(share[a].get(s, 0.0), share[b].get(s, 0.0)) for s in keys)
            hi = sum(max(share[a].get(s, 0.0), share[b].get(s, 0.0)) for s in keys)
            out[a, b] = 1.0 - lo / hi
    return out


def exp_taxonomy(cfg: Config, tasks: list[TextTask], m: str) -> dict:
    classes = list(cfg.wordnet_classes)
    cdist = class_distances(tuple(classes))
    n = len(tasks)

    def dtax_matrix(cd) -> np.ndarray:
        return np.array([[taxonomic_distance(a.classes, b.classes, lambda i, j: cd[i, j]) for b in tasks]
                         for a in tasks])  # fmt: skip

    dtax = dtax_matrix(cdist)
    dist = distance_matrix([t.embeddings[m, cfg.seed] for t in tasks])
    all_pairs = ~np.eye(n, dtype=bool)
    disjoint = np.array([[not set(a.classes) & set(b.classes) for b in tasks] for a in tasks])
    rng = np.random.default_rng(cfg.seed + 1)
    res: dict = {
        "tasks": n,
        "classes": classes,
        "class_distance": {f"{a} vs {b}": cdist[a, b] for a, b in itertools.combinations(classes, 2)},
        "examples_per_task": cfg.max_samples,
    }
    for key, keep in (("all_pairs", all_pairs), ("disjoint_pairs", disjoint)):
        rho = pair_spearman(dist, dtax, keep)
        ci = boot_ci(lambda idx, keep=keep: pair_spearman(dist, dtax, keep, idx), n, rng, cfg.bootstrap)
        # permutation: shuffle which class carries which row of the taxonomy
        null = []
        for _ in range(cfg.permutations):
            perm = dict(zip(classes, rng.permutation(classes), strict=True))
            cd = {(a, b): cdist[perm[a], perm[b]] for a in classes for b in classes}
            null.append(pair_spearman(dist, dtax_matrix(cd), keep))
        null = np.asarray(null)
        p = float((1 + np.sum(null >= rho)) / (1 + len(null))) if np.isfinite(rho) else float("nan")
        res[key] = {"pairs": int(np.triu(keep, 1).sum()), "spearman": rho, "ci95": ci, "permutation_p": p}
    nn = np.where(np.eye(n, dtype=bool), np.inf, dist).argmin(1)
    res["nearest_task_mean_dtax"] = float(np.mean(dtax[np.arange(n), nn]))
    res["random_task_mean_dtax"] = float(dtax[all_pairs].mean())
    return res


# ================================================================================================
# b. difficulty
# ================================================================================================
def feature_pools(cfg: Config, data: TextData, embedder: t2v.Task2Vec, tasks: list[TextTask]) -> dict:
    """Pooled probe features of up to ``clf_per_class`` texts per source value, train and test split."""
    wanted: dict[tuple[str, str], set[str]] = {}
    for t in tasks:
        wanted.setdefault((t.dataset, t.column), set()).update(t.mapping)
    pools = {}
    for (dataset, column), values in sorted(wanted.items()):
        pool = {}
        for split in ("train", "test"):
            vals = data.values(dataset, column, split)
            ds = data.ds[dataset] if split == "train" else load_offline(dataset, split)
            rng = np.random.default_rng(cfg.seed + 7)
            idx = np.sort(np.concatenate([
                rng.choice(m, min(cfg.clf_per_class, len(m)), replace=False)
                for v in sorted(values) if len(m := np.nonzero(vals == v)[0])
            ]))  # fmt: skip
            task = t2v.load_task(ds.select(idx).select_columns(["text", "label"]), name=f"{dataset}:{split}")
            pool[split] = (embedder.features(task, np.arange(len(idx))).double().numpy(), vals[idx])
        pools[dataset, column] = pool
    return pools


def test_error(cfg: Config, pools: dict, t: TextTask) -> float:
    """Balanced held-out error of a logistic regression on the probe's pooled features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def rows(split: str) -> tuple[np.ndarray, np.ndarray]:
        x, v = pools[t.dataset, t.column][split]
        keep = np.array([s in t.mapping for s in v])
        return x[keep], np.array([t.mapping[s] for s in v[keep]])

    xtr, ytr = rows("train")
    xte, yte = rows("test")
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=cfg.clf_C, max_iter=3000, class_weight="balanced"))
    clf.fit(xtr, ytr)
    return float(1.0 - balanced_accuracy_score(yte, clf.predict(xte)))


def l1(e: TaskEmbedding) -> float:
    """The norm the paper reads (Fig. 2 right): L1 of the data part, `TaskEmbedding.data_norm`."""
    return e.data_norm


def exp_difficulty(cfg: Config, data: TextData, embedder: t2v.Task2Vec, tasks: list[TextTask], m: str) -> dict:
    if any(not np.isfinite(t.test_error) for t in tasks):
        pools = feature_pools(cfg, data, embedder, tasks)
        for t in tasks:
            t.test_error = test_error(cfg, pools, t)
    norms = np.array([l1(t.embeddings[m, cfg.seed]) for t in tasks])
    errors = np.array([t.test_error for t in tasks])
    rng = np.random.default_rng(cfg.seed + 2)
    rho = spearman(norms, errors)
    within = {}
    for kind in sorted({t.kind for t in tasks}):
        sel = np.array([t.kind == kind for t in tasks])
        if sel.sum() > 3:
            within[kind] = spearman(norms[sel], errors[sel])
    return {
        "tasks": len(tasks),
        "classifier": f"StandardScaler + LogisticRegression(C={cfg.clf_C}, class_weight=balanced) on pooled MiniLM "
        f"features; up to {cfg.clf_per_class} train / {cfg.clf_per_class} test texts per source class (test texts "
        "from the held-out test split); balanced error",
        "spearman": rho,
        "ci95": boot_ci(lambda idx: spearman(norms[idx], errors[idx]), len(tasks), rng, cfg.bootstrap),
        "spearman_within_kind": within,
        "error_range": [float(errors.min()), float(errors.max())],
        "per_task": {t.name: {"l1_norm": float(nv), "test_error": t.test_error}
                     for t, nv in zip(tasks, norms, strict=True)},  # fmt: skip
    }


# ================================================================================================
# c. task vs domain
# ================================================================================================
def exp_domains(cfg: Config, domain: list[TaskEmbedding], tasks: list[TextTask], noise: float, m: str) -> dict:
    dists = {"task": distance_matrix([t.embeddings[m, cfg.seed] for t in tasks]),
             "domain": distance_matrix(domain, kind="cosine")}  # fmt: skip
    dom = np.array([t.domain for t in tasks])
    n = len(tasks)
    iu = np.triu_indices(n, 1)
    same = (dom[:, None] == dom[None, :])[iu]
    res: dict = {"tasks": [t.name for t in tasks], "texts_per_domain": cfg.max_samples,
                 "resample_noise": noise}  # fmt: skip
    for key, d in dists.items():
        w, b = d[iu][same], d[iu][~same]
        res[key] = {
            "within_domain_mean": float(w.mean()),
            "within_domain_min": float(w.min()),
            "within_domain_max": float(w.max()),
            "between_domains_mean": float(b.mean()),
            "within_over_between": float(w.mean() / b.mean()),
            "within_pairs": int(same.sum()),
            "within_pairs_above_noise": int(np.sum(w > noise)),
        }
    res["per_pair"] = [
        {"a": tasks[i].name, "b": tasks[j].name, "task": float(dists["task"][i, j]),
         "domain": float(dists["domain"][i, j])}
        for i, j in zip(*iu, strict=True) if dom[i] == dom[j]
    ]  # fmt: skip
    return res


# ================================================================================================
# d. SNR
# ================================================================================================
def exp_snr(cfg: Config, tasks: list[TextTask], permuted: list[TextTask], m: str) -> dict:
    seeds = (cfg.seed, cfg.seed + 1)
    embs, task_of, seed_of = [], [], []
    for i, t in enumerate(tasks):
        for s in seeds:
            embs.append(t.embeddings[m, s])
            task_of.append(i)
            seed_of.append(s)
    dist = distance_matrix(embs)
    rng = np.random.default_rng(cfg.seed + 3)
    out = snr_stats(dist, np.array(task_of), np.array(seed_of), [t.dataset for t in tasks], rng, cfg.bootstrap)
    pairs = zip(tasks, permuted, strict=True)
    perm = [float(t2v.distance(t.embeddings[m, cfg.seed], p.embeddings[m, cfg.seed])) for t, p in pairs]
    out["permuted_distance"] = perm
    out["perm_over_noise"] = float(np.mean(perm) / out["noise"])
    out["tasks_names"] = [t.name for t in tasks]
    out["examples_per_task"] = cfg.max_samples
    return out


# ================================================================================================
# verdicts and report
# ================================================================================================
def verdicts(r: dict, n_domains: int) -> list[dict]:
    rows = []
    tx = r["taxonomy"]
    a, dj = tx["all_pairs"], tx["disjoint_pairs"]
    sig_all = a["ci95"][0] > 0 and a["permutation_p"] < 0.05
    sig_dj = dj["ci95"][0] > 0 and dj["permutation_p"] < 0.05
    rows.append({
        "check": "a. taxonomy vs embedding distance (Fig. 2 centre)",
        "claim": "tasks near under d_sym are near in the WordNet hypernym taxonomy",
        "measured": f"{tx['tasks']} WordNet class-pair tasks: Spearman(d_sym, D_tax) {a['spearman']:.2f} "
        f"[{a['ci95'][0]:.2f}, {a['ci95'][1]:.2f}], p {a['permutation_p']:.3f}; pairs sharing no class "
        f"{dj['spearman']:.2f} [{dj['ci95'][0]:.2f}, {dj['ci95'][1]:.2f}], p {dj['permutation_p']:.3f}; nearest "
        f"task's D_tax {tx['nearest_task_mean_dtax']:.2f} vs {tx['random_task_mean_dtax']:.2f} random",
        "verdict": "reproduced" if sig_all and sig_dj else "partly" if sig_all or sig_dj else "not reproduced",
    })  # fmt: skip
    df = r["difficulty"]
    rows.append({
        "check": "b. embedding norm vs task difficulty (Fig. 2 right)",
        "claim": "the L1 norm of the embedding grows with the task's test error",
        "measured": f"{df['tasks']} tasks: Spearman(L1 norm, test error) {df['spearman']:.2f} "
        f"[{df['ci95'][0]:.2f}, {df['ci95'][1]:.2f}]; within kind "
        + ", ".join(f"{k} {v:.2f}" for k, v in df["spearman_within_kind"].items()),
        "verdict": "reproduced" if df["ci95"][0] > 0 and df["spearman"] >= 0.3
        else "partly" if df["spearman"] > 0 else "not reproduced",
    })  # fmt: skip
    dm = r["domains"]
    zero = dm["domain"]["within_domain_max"] < 1e-6
    above = dm["task"]["within_pairs_above_noise"]
    pairs = dm["task"]["within_pairs"]
    rows.append({
        "check": "c. task vs domain embedding (Fig. 1)",
        "claim": "relabelings of the same texts: the domain embedding cannot tell them apart, the task embedding can",
        "measured": f"{len(dm['tasks'])} relabelings in {n_domains} text sets: domain distance "
        f"within a set at most {dm['domain']['within_domain_max']:.1e}; task d_sym within a set "
        f"{dm['task']['within_domain_min']:.3g}-{dm['task']['within_domain_max']:.3g} (mean "
        f"{dm['task']['within_domain_mean']:.3g}) vs resampling noise {dm['resample_noise']:.3g}: {above} of "
        f"{pairs} pairs above the noise; within / between sets {dm['task']['within_over_between']:.2f}",
        "verdict": "reproduced" if zero and above == pairs else "partly" if zero and above > pairs / 2
        else "not reproduced",
    })  # fmt: skip
    s = r["snr"]
    rows.append({
        "check": "d. SNR: different tasks vs resamples of one task (embedding quality)",
        "claim": "an embedding is far from other tasks' and close to its own resamples; label permutations "
        "sit within the noise",
        "measured": f"{s['tasks']} tasks x 2 seeds: noise {s['noise']:.3g}, different tasks {s['between']:.3g}, "
        f"SNR {s['snr']:.2f} [{s['snr_ci95'][0]:.2f}, {s['snr_ci95'][1]:.2f}] (same dataset "
        f"{s['snr_same_dataset']:.2f}; target >= {TARGET_SNR:g}); permuted / noise {s['perm_over_noise']:.2f}",
        # the bar of the image benchmark (embedding_quality.TARGET_SNR); above 1 with its CI: partly
        "verdict": "reproduced" if s["snr"] >= TARGET_SNR and s["snr_ci95"][0] > 1 and s["perm_over_noise"] <= 1
        else "partly" if s["snr_ci95"][0] > 1 else "not reproduced",
    })  # fmt: skip
    return rows


def machine() -> str:
    info = machine_info()
    cpu = info["cpu"] or platform.machine()
    return f"{cpu}, {info['cores']} cores, torch {info['torch']}, {info['torch_threads']} thread(s)"


def cell(text: str) -> str:
    """A task name as a markdown table cell (``|`` joins label groups in some names)."""
    return text.replace("|", "/")


def write_report(r: dict, path: Path) -> None:
    c = r["config"]
    lines = [
        "# The paper's checks on text (Task2Vec, MiniLM-L6 probe)",
        "",
        f"Command: `{r['command']}`. Machine: {r['machine']}; load average at start "
        f"{', '.join(f'{x:.1f}' for x in r['load_at_start'])}, at end "
        f"{', '.join(f'{x:.1f}' for x in r['load_at_end'])} "
        f"(shared with other jobs). Wall time {r['wall_s'] / 60:.1f} min, CPU time {r['cpu_s'] / 60:.1f} min. "
        f"Library {r['version']}.",
        "",
        f"Probe `embedded-text` (all-MiniLM-L6-v2, mean pooling, {r['embedding_dim']:,} filters), default estimator "
        f"(`Task2Vec`, method `{r['method']}`), {c['max_samples']} texts per task, max_length {c['max_length']} "
        f"tokens, seed {c['seed']}; real offline data (`offline:wordnet`, `offline:fortunes`, "
        "`offline:spamassassin`, `offline:spamassassin-lists`, train split; test split for the test errors). "
        f"{r['embeds']} embeddings.",
        "",
        "| check | the paper's claim | what we measured | verdict |",
        "|---|---|---|---|",
    ]
    lines += [f"| {v['check']} | {v['claim']} | {v['measured']} | **{v['verdict']}** |" for v in r["verdicts"]]
    for m, res in r["by_method"].items():
        pr = res["prior"]
        lines += ["", f"`{m}`: median over tasks of the median filter's (value - trivial) / trivial "
                  f"{pr['median_signal_over_prior']:.3g}; share of filters at the trivial floor "
                  f"{pr['share_at_floor']:.2f}; "
                  f"distinct values of value - trivial per embedding {pr['distinct_values_median']:,} of "
                  f"{r['embedding_dim']:,} ({pr['dtype']})."]  # fmt: skip
    for m, res in list(r["by_method"].items())[1:]:
        lines += ["", f"### The same checks with `method=\"{m}\"` (for comparison; not the default)", "",
                  "| check | what we measured | verdict |", "|---|---|---|"]  # fmt: skip
        lines += [f"| {v['check']} | {v['measured']} | **{v['verdict']}** |" for v in res["verdicts"]]
        if m in r.get("comparison_runs", {}):
            x = r["comparison_runs"][m]
            lines += ["", f"From a second run on the same tasks: `{x['command']}`, wall {x['wall_s'] / 60:.1f} min, "
                      f"CPU {x['cpu_s'] / 60:.1f} min, load average at start {x['load_at_start'][0]:.1f}."]  # fmt: skip
    lines += ["", "The sections below are the default estimator's."]
    tx = r["taxonomy"]
    lines += [
        "",
        "## a. Taxonomy",
        "",
        "Class distance = weighted Jaccard distance of the classes' hypernym-ancestor shares (0 with itself); "
        "D_tax(task a, task b) = min over class pairs (`hf_task2vec.distance.taxonomic_distance`). CI: bootstrap "
        "over tasks; p: one-sided permutation test, the classes' taxonomy rows shuffled.",
        "",
        "| class pair | distance |",
        "|---|---|",
    ]
    lines += [f"| {cell(k)} | {v:.3f} |" for k, v in sorted(tx["class_distance"].items(), key=lambda kv: kv[1])]
    df = r["difficulty"]
    low = min(v["l1_norm"] for v in df["per_task"].values())
    lines += ["", "## b. Norm vs difficulty", "", df["classifier"] + ". Every task of one estimator has the same "
              "trivial floor (same probe, same N), so the norms differ by the data's part alone (last column).", "",
              "| task | data norm (L1) | test error | data norm - smallest |", "|---|---|---|---|"]  # fmt: skip
    lines += [f"| {cell(k)} | {v['l1_norm']:.4g} | {v['test_error']:.3f} | {v['l1_norm'] - low:.3g} |"
              for k, v in sorted(df["per_task"].items(), key=lambda kv: kv[1]["test_error"])]  # fmt: skip
    dm = r["domains"]
    lines += ["", "## c. Relabelings of the same texts", "",
              f"Resampling noise (mean d_sym between two resamples of one task, check d): {dm['resample_noise']:.3g}.",
              "", "| relabeling a | relabeling b | task d_sym | domain cosine |", "|---|---|---|---|"]  # fmt: skip
    lines += [f"| {cell(p['a'])} | {cell(p['b'])} | {p['task']:.3g} | {p['domain']:.1e} |" for p in dm["per_pair"]]
    lines += [
        "",
        f"Task embedding: within a text set {dm['task']['within_domain_mean']:.3g}, between sets "
        f"{dm['task']['between_domains_mean']:.3g}. Domain embedding: within {dm['domain']['within_domain_mean']:.1e}, "
        f"between {dm['domain']['between_domains_mean']:.3g}.",
    ]
    s = r["snr"]
    lines += [
        "",
        "## d. SNR",
        "",
        "SNR = mean d_sym between embeddings of different tasks / mean d_sym between two resamples (seeds "
        f"{c['seed']} and {c['seed'] + 1}: another class-balanced subsample) of the same task "
        "(`embedding_quality.snr_stats`; CI: bootstrap over tasks). Permuted: the seed-0 sample with its classes "
        "permuted cyclically (same texts, same order).",
        "",
        "| task | noise (2 resamples) | permuted copy |",
        "|---|---|---|",
    ]
    rows = zip(s["tasks_names"], s["noise_per_task"], s["permuted_distance"], strict=True)
    lines += [f"| {cell(n)} | {w:.3g} | {p:.3g} |" for n, w, p in rows]
    path.write_text("\n".join(lines) + "\n")


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


# ================================================================================================
# main
# ================================================================================================
def prior_diagnostics(embs: Sequence[TaskEmbedding]) -> dict:
    """How far the data lift the embedding above its trivial (prior) floor, filter by filter."""
    ratio = [np.median((e.values.astype(np.float64) - e.trivial) / e.trivial) for e in embs]
    at_floor = [float(np.mean(e.values <= e.trivial)) for e in embs]
    levels = [len(np.unique(e.values - e.trivial)) for e in embs]
    return {"median_signal_over_prior": float(np.median(ratio)), "share_at_floor": float(np.median(at_floor)),
            "distinct_values_median": int(np.median(levels)), "dtype": str(embs[0].values.dtype)}  # fmt: skip


def run(cfg: Config, done=lambda r: None) -> dict:
    probe = t2v.load_probe("embedded-text", max_length=cfg.max_length)
    seeds = (cfg.seed, cfg.seed + 1)
    embedders = {
        (m, s): t2v.Task2Vec(probe, method=m, max_samples=cfg.max_samples, seed=s, device="cpu", progress=False,
                             max_length=cfg.max_length)
        for m in cfg.methods for s in seeds
    }  # fmt: skip
    default = embedders[cfg.methods[0], cfg.seed]
    data = TextData(cfg)
    count = [0]

    def embed(tasks: Sequence[TextTask], m: str, seed: int, what: str) -> None:
        for t in tasks:
            if (m, seed) not in t.embeddings:
                t0 = time.perf_counter()
                t.embeddings[m, seed] = embedders[m, seed].embed(t.task)
                count[0] += 1
                logger.info("%s: %s %s seed %d (%.1f s)", what, t.name, m, seed, time.perf_counter() - t0)

    tax = taxonomy_tasks(data, cfg)
    snr = snr_tasks(data, cfg, {t.name: t for t in tax})
    perm = [permuted_copy(data, t, default) for t in snr]
    dom = domain_tasks(data, cfg)
    seen, diff = set(), []
    for t in tax + dom + snr:
        if t.name not in seen:
            seen.add(t.name)
            diff.append(t)
    domain = [
        t2v.domain_embedding(t.task, probe, max_samples=cfg.max_samples, seed=cfg.seed, device="cpu", progress=False)
        for t in dom
    ]
    by_method: dict = {}
    for m in cfg.methods:
        embed(tax, m, cfg.seed, "taxonomy")
        embed(snr, m, cfg.seed, "snr")
        embed(snr, m, cfg.seed + 1, "snr")
        embed(perm, m, cfg.seed, "permuted")
        embed(dom, m, cfg.seed, "relabel")
        res: dict = {"taxonomy": exp_taxonomy(cfg, tax, m)}
        res["snr"] = exp_snr(cfg, snr, perm, m)
        res["domains"] = exp_domains(cfg, domain, dom, res["snr"]["noise"], m)
        res["difficulty"] = exp_difficulty(cfg, data, default, diff, m)
        res["prior"] = prior_diagnostics([t.embeddings[m, cfg.seed] for t in diff])
        res["verdicts"] = verdicts(res, len(cfg.domains))
        by_method[m] = res
        logger.info("%s: %s", m, [v["verdict"] for v in res["verdicts"]])
        r: dict = dict(by_method[cfg.methods[0]])
        r.update(by_method=dict(by_method), embeds=count[0], embedding_dim=int(probe.dim), method=cfg.methods[0],
                 methods_done=list(by_method))  # fmt: skip
        done(r)  # the report is written after every estimator: a run cut short keeps the default's
    return r


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI-sized run (under 2 minutes on one core)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out-dir", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--from-json", default=None, help="only re-render the markdown report of a results JSON")
    parser.add_argument("--merge", default=None, help="with --from-json: add the estimators of this second results "
                        "JSON (same config, other --methods) as comparison columns")
    parser.add_argument("--methods", default=None, help="comma-separated estimators (default: relative, the library "
                        "default, and variational, the paper's fixed prior, for comparison in the full run; the first "
                        "one gets the verdicts)")
    args = parser.parse_args(argv)
    if args.from_json:
        src = Path(args.from_json)
        r = json.loads(src.read_text())
        if args.merge:
            other = json.loads(Path(args.merge).read_text())
            keys = ("max_samples", "max_length", "wordnet_classes", "domains", "snr_tasks", "seed")
            if any(other["config"][k] != r["config"][k] for k in keys):
                raise SystemExit(f"{args.merge}: another configuration than {src}")
            for m, res in other["by_method"].items():
                if m not in r["by_method"]:
                    r["by_method"][m] = res
                    r.setdefault("comparison_runs", {})[m] = {
                        k: other[k] for k in ("command", "wall_s", "cpu_s", "load_at_start", "load_at_end")
                    }
        for res in r["by_method"].values():  # verdicts from the stored numbers (the rules may have changed)
            res["verdicts"] = verdicts(res, len(r["config"]["domains"]))
        r["verdicts"] = r["by_method"][r["method"]]["verdicts"]
        src.write_text(json.dumps(_jsonable(r), indent=1, allow_nan=True) + "\n")
        write_report(r, src.with_suffix(".md"))
        print(f"wrote {src.with_suffix('.md')}")
        return 0
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("hf_task2vec", "transformers", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import datasets

    datasets.disable_progress_bars()
    cfg = Config.make(args.quick, args.seed)
    if args.methods:
        cfg.methods = tuple(args.methods.split(","))
    load0, wall0, cpu0, host = os.getloadavg(), time.perf_counter(), time.process_time(), machine()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = "paper_text_quick" if args.quick else "paper_text"

    command = " ".join(["python benchmarks/reproduce_paper_text.py", *(sys.argv[1:] if argv is None else argv)])

    def write(r: dict) -> None:
        r.update({
            "command": command,
            "machine": host,
            "load_at_start": list(load0),
            "load_at_end": list(os.getloadavg()),
            "wall_s": time.perf_counter() - wall0,
            "cpu_s": time.process_time() - cpu0,
            "version": t2v.__version__,
            "config": {k: v for k, v in vars(cfg).items()},
        })  # fmt: skip
        (out / f"{stem}.json").write_text(json.dumps(_jsonable(r), indent=1, allow_nan=True) + "\n")
        write_report(r, out / f"{stem}.md")
        for v in r["verdicts"]:
            print(f"{v['verdict']:>15}  {v['check']}: {v['measured']}")
        done = ", ".join(r["methods_done"])
        print(f"wrote {out / stem}.md ({done}; {r['wall_s']:.0f} s wall, {r['cpu_s']:.0f} s CPU)")

    run(cfg, write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
