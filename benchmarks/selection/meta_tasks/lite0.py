"""The main meta-task (``--meta-task lite0``, the default): Table 2 and Table 1 with EfficientNet-Lite0 experts
fine-tuned on every source task plus the untouched ImageNet Lite0; the expert index the Space uses, the check
that the library's two-stage ``select`` makes the benchmark's choices, the search speed, and the report
``model_selection.{md,json}``."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

import hf_task2vec as t2v
from hf_task2vec.distance import distance as t2v_distance
from hf_task2vec.probes import file_sha256
from hf_task2vec.rerank import expert_weights, two_stage_select
from hf_task2vec.selection import ExpertIndex

from ..config import ALL_SOURCES, DATASETS, GENERIC, ROOT, Config, log
from ..data import Pool, TargetSpec, normalise
from ..experts import Expert, generic_expert, train_expert
from ..harness import MetaTask, Run
from ..peers import METHODS, PEERS, aggregate, table2_with_costs, two_stage
from ..report import _checks_and_targets, _pm, _rel, render_two_stage, run_facts


def lite0_experts(cfg: Config, train_pools: dict[str, Pool], test_pools: dict[str, Pool], cache: Path) -> list[Expert]:
    """The Lite0 experts: the embedded probe fine-tuned on every source task of ``cfg``, then the generic one."""
    experts = [
        train_expert(
            ALL_SOURCES[s], cfg, train_pools[ALL_SOURCES[s].dataset], test_pools[ALL_SOURCES[s].dataset], cache
        )
        for s in cfg.sources
    ]
    experts.append(generic_expert(cfg))
    return experts


def finish(run: Run) -> int:
    """The expert index (with Model2Vec fitted on every target of the first seed), the library's two-stage check,
    the search speed, the checks and ``model_selection.{md,json}``."""
    cfg, experts, names, J, targets = run.cfg, run.experts, run.names, len(run.experts), run.targets
    seed0_target_embs, seed0_errors, per_seed, costs = run.seed0_target_embs, run.seed0_errors, run.per_seed, run.costs
    index_dir, results_dir = run.index_dir, run.results_dir
    index = ExpertIndex(alpha=cfg.alpha)
    for e, emb in zip(experts, run.source_embs["embedded"], strict=True):
        info = {
            "task": e.name,
            "classes": e.label_names if e.name != GENERIC else ["ImageNet-1k (1000 classes)"],
            "dataset": f"offline:{DATASETS[e.dataset]}" if e.dataset in DATASETS else "imagenet-1k",
            "source_classes": e.classes,
            "kind": "generic" if e.name == GENERIC else "fine-tuned",
            "architecture": "tf_efficientnet_lite0",
            "image_size": cfg.image_size,
        }
        if e.source_error is not None:
            info["error"] = e.source_error
        if e.name != GENERIC:
            info["finetune_steps"] = cfg.finetune_steps
        info.update(e.info)
        info["mean_target_error"] = float(seed0_errors[:, names.index(e.name)].mean())
        # how to build the expert for the two-stage re-ranking (the fine-tuned weights live in the benchmark cache)
        if e.name == GENERIC:
            info["weights"] = expert_weights(load_probe="embedded", source_head=True, image_size=cfg.image_size)
        else:
            ckpt = ROOT / e.info["weights_cache"]
            info["weights"] = expert_weights(
                checkpoint=e.info["weights_cache"], sha256=file_sha256(ckpt), base="embedded", image_size=cfg.image_size
            )
        index.add(e.model_id, emb, **info)
    index.fit_model2vec(seed0_target_embs, seed0_errors, steps=cfg.model2vec_steps)
    index.save(index_dir)
    reloaded = ExpertIndex.load(index_dir)
    run.laps("expert index")

    library_check = check_library_rerank(
        reloaded, experts, targets, run.test_pools, seed0_target_embs, run.seed0, cfg
    )
    run.laps("library two-stage check")

    speed = search_speed(cfg)
    run.laps("search speed")

    # checks (loose; the quick run exits non-zero when one fails)
    asym = np.array([r["t2v_asym"]["mean_error"] for r in per_seed])
    chance = np.array([r["chance"]["mean_error"] for r in per_seed])
    finite = all(np.isfinite(r[k]["mean_error"]) for r in per_seed for k, _ in METHODS)
    probe_q = seed0_target_embs[0]
    checks = {
        "Task2Vec asymmetric beats chance (mean selected error, every seed)": bool(np.all(asym < chance)),
        "all selection errors are finite": bool(finite),
        "saved expert index reloads and ranks like the in-memory one": bool(
            reloaded.model_ids == index.model_ids
            and [m.model_id for m in reloaded.select(probe_q, k=J)] == [m.model_id for m in index.select(probe_q, k=J)]
        ),
        "the library's two-stage select (real checkpoints, real forward passes) makes the benchmark's choices": bool(
            library_check["agree"]
        ),
    }
    # the two-stage curve: cost per target, and the issue's target (m <= N/3 matches the best all-experts peer)
    table2, rerank_target = table2_with_costs(per_seed, costs, J)
    checks["re-ranking a shortlist of all N experts picks an expert with the best peer score"] = bool(
        all(run.full_rerank_ok)
    )
    report = {
        **run_facts(run),
        "experts": [
            {
                "name": e.name,
                "model_id": e.model_id,
                "dataset": e.dataset,
                "classes": e.label_names if e.name != GENERIC else [],
                "source_error": e.source_error,
            }
            for e in experts
        ],
        "targets": [dataclasses.asdict(t) for t in targets],
        "per_seed": per_seed,
        "table2": table2,
        "rerank_target": rerank_target,
        "library_rerank_check": library_check,
        "table1": {p: aggregate(runs) for p, runs in run.table1_runs.items() if runs},
        "table1_embed_seconds": {p: float(np.mean(s)) for p, s in run.source_seconds.items()},
        "costs": {
            "task2vec_embed_s_per_target": float(np.mean(costs["task2vec_embed_s"])),
            "task2vec_select_s_per_target": float(np.mean(costs["task2vec_select_s"])),
            "peer_forward_s_per_target": float(np.mean(costs["peer_forward_s"])),
            "peer_metric_s_per_target": costs["peer_metric_s"],
            "model2vec_fit_s_per_fold": float(np.mean([r["_m2v_fit_s_per_task"] for r in per_seed])),
            "forward_s_per_image": dict(zip(names, run.fwd_per_image.tolist(), strict=True)),
        },
        "search_speed": speed,
        "per_target_seed0": run.per_target_rows,
        "checks": checks,
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "model_selection.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    (results_dir / "model_selection.md").write_text(render_markdown(report, index_dir))
    log.info("wrote %s and %s (%.0f s)", results_dir / "model_selection.md", results_dir / "model_selection.json",
             report["runtime_s"])
    for name, ok in checks.items():
        print(f"[{'PASS' if ok else 'FAIL'}] {name}")
    return 0 if all(checks.values()) else 1



def check_library_rerank(
    index: ExpertIndex,
    experts: list[Expert],
    targets: list[TargetSpec],
    pools: dict[str, Pool],
    target_embs: list[t2v.TaskEmbedding],
    seed0: dict,
    cfg: Config,
) -> dict:
    """Run the library's two-stage selection (`ExpertIndex.select(..., rerank=...)`: loads the shortlisted
    experts from their checkpoints, runs them forward, scores them) on the first targets of the first seed, and
    compare with the benchmark's computation from cached features: same choice, same scores."""
    probe = t2v.load_probe("embedded", image_size=cfg.image_size)
    m = min(4, len(experts))
    names = [e.model_id for e in experts]
    rows, agree = [], True
    for i in range(min(2, len(targets))):
        t = targets[i]
        tr, ytr, _, _ = seed0["splits"][i]
        task = t2v.Task.from_tensors(normalise(pools[t.dataset].x01[tr], probe), ytr, name=t.name)
        for metric in ("leep", "logme"):
            start = time.perf_counter()
            sel = two_stage_select(
                index, target_embs[i], rerank=metric, k=m, shortlist=m, examples=task, max_examples=None, root=ROOT
            )
            seconds = time.perf_counter() - start
            chosen, _ = two_stage(seed0["asym"][i : i + 1], seed0["peer_scores"][metric][i : i + 1], m)
            expected = {names[j]: float(seed0["peer_scores"][metric][i, j]) for j in np.argsort(seed0["asym"][i])[:m]}
            got = {x.model_id: x.rerank_score for x in sel}
            ok = (
                not sel.skipped
                and sel[0].model_id == names[int(chosen[0])]
                and set(got) == set(expected)
                and all(abs(got[k] - expected[k]) <= 1e-3 * max(1.0, abs(expected[k])) for k in got)
            )
            agree &= bool(ok)
            rows.append(
                {
                    "target": t.name,
                    "rerank": metric,
                    "shortlist": m,
                    "library_top1": sel[0].model_id,
                    "benchmark_top1": names[int(chosen[0])],
                    "max_score_difference": max(abs(got[k] - expected.get(k, np.nan)) for k in got),
                    "skipped": dict(sel.skipped),
                    "seconds": seconds,
                    "cost": sel.cost.as_dict(),
                    "agree": bool(ok),
                }
            )
    return {"agree": bool(agree), "rows": rows}


def search_speed(cfg: Config) -> dict[str, float]:
    """Time `ExpertIndex.select` over many experts at the probe's dimension, vs a python loop of
    `hf_task2vec.distance` calls (measured on a sample and scaled)."""
    rng = np.random.default_rng(0)
    n, d = cfg.speed_experts, cfg.speed_dim
    meta = {"probe": "embedded", "probe_revision": "speed", "method": "montecarlo", "image_size": "32"}
    trivial = np.full(d, 1e-6, np.float32)
    index = ExpertIndex()
    block = rng.gamma(0.5, 1e-3, size=(n, d)).astype(np.float32)
    start = time.perf_counter()
    for i in range(n):
        index.add(f"expert-{i}", t2v.TaskEmbedding(block[i], trivial, [], meta))
    add_s = time.perf_counter() - start
    del block
    query = t2v.TaskEmbedding(rng.gamma(0.5, 1e-3, d).astype(np.float32), trivial, [], meta)
    index.select(query, k=5)  # builds the cached stacked arrays
    times = []
    for _ in range(5):
        start = time.perf_counter()
        index.select(query, k=5)
        times.append(time.perf_counter() - start)
    sample = 200
    embs = [index.embedding(f"expert-{i}") for i in range(sample)]
    start = time.perf_counter()
    for e in embs:
        t2v_distance(e, query, kind="asymmetric")
    loop_s = (time.perf_counter() - start) / sample * n
    return {
        "experts": n,
        "dim": d,
        "select_s": float(np.median(times)),
        "add_s_total": add_s,
        "loop_s_estimated": loop_s,
        "speedup_vs_loop": loop_s / float(np.median(times)),
    }


def render_markdown(r: dict, index_dir: Path) -> str:
    cfg, t2, costs = r["config"], r["table2"], r["costs"]
    nseeds = len(cfg["seeds"])
    fwd = costs["peer_forward_s_per_target"]
    metric_s = costs["peer_metric_s_per_target"]
    t2v_cost = costs["task2vec_embed_s_per_target"] + costs["task2vec_select_s_per_target"]
    cost = {
        "optimal": f"train & test all {len(r['experts'])} experts",
        "chance": "0",
        "generic": "0",
        "static": "0 (every expert's error on the other targets, known in advance)",
        "t2v_sym": f"{t2v_cost:.2f} s (1 probe embedding)",
        "t2v_asym": f"{t2v_cost:.2f} s (1 probe embedding)",
        "model2vec": f"{t2v_cost:.2f} s (+ fit {costs['model2vec_fit_s_per_fold']:.1f} s, once)",
    }
    for m in PEERS:
        cost[m] = f"{fwd + metric_s[m]:.2f} s ({len(r['experts'])} forward passes)"
    lines = [
        "# Model selection benchmark (paper Table 2 / Table 1 analogs)",
        "",
        f"Generated by `benchmarks/model_selection.py{' --quick' if cfg['quick'] else ''}` on "
        f"{r['created']}; total runtime {r['runtime_s'] / 60:.1f} min "
        + (
            "(from scratch: experts fine-tuned in this run)."
            if r["from_scratch"]
            else "(reusing the cached experts, features and embeddings of an earlier run)."
        )
        + " Times are wall-clock on a CPU shared with other jobs: compare them within this file only.",
        f"Machine: {r['machine']['cpu']}, {r['machine']['cores']} cores, torch {r['machine']['torch']} "
        f"({r['machine']['torch_threads']} thread(s)), Python {r['machine']['python']}.",
        "",
        "## Setup",
        "",
        f"- **Experts** ({len(r['experts'])}): the embedded ImageNet EfficientNet-Lite0 probe fine-tuned "
        f"(head fitted on the frozen features first, then {cfg['finetune_steps']} Adam steps of the whole network, "
        f"lr {cfg['finetune_lr']:g} with cosine decay, batch {cfg['finetune_batch']}, batch-norm statistics frozen, "
        f"{cfg['image_size']} px) on source tasks "
        "cut from the *train* splits of Animal-MNIST, Fashion-MNIST and digits (label subsets and label groupings), "
        "plus the untouched ImageNet network as the *generic* expert:",
        "",
        "  | expert | source classes (labels) | source test error |",
        "  |---|---|---|",
    ]
    for e in r["experts"]:
        err = "n/a" if e["source_error"] is None else f"{e['source_error']:.3f}"
        classes = ", ".join(e["classes"]) if e["classes"] else "ImageNet-1k"
        lines.append(f"  | {e['name']} | {classes} | {err} |")
    n_targets = len(r["targets"])
    ntr = [t["per_class_train"] * len(t["classes"]) for t in r["targets"]]
    lines += [
        "",
        f"- **Targets** ({n_targets}): random 2-5 class subsets of the *test* splits (held-out images), "
        f"{min(ntr)}-{max(ntr)} training examples each (10-100 per class; digits fewer), up to "
        f"{cfg['max_test_per_class']} test examples per class.",
        "- **Ground truth**: test error of an L2 logistic regression on each expert's frozen (pooled) features, "
        "for every target and expert. *Optimal* picks the best expert per target with hindsight.",
        f"- **Task2Vec**: one embedding of the target's training set with the embedded probe ({cfg['image_size']} px, "
        f"{cfg.get('task2vec_method', 'montecarlo')} Fisher, the library default), searched in an `ExpertIndex` "
        "holding each expert's source-task embedding "
        f"({cfg['expert_embed_samples']} examples). The generic expert's training task (ImageNet) is not available "
        "offline; it is represented by the union of all source classes (a 30-way task over the three datasets).",
        "- **Model2Vec**: `m_j = F_j + b_j` and gamma fitted on the other targets' measured errors "
        "(leave-one-task-out; "
        f"soft labels a=20, Adam lr 0.05, weight decay 5e-4, {cfg['model2vec_steps']} steps).",
        "- **Peers** (LogME, LEEP, NCE, H-score, and H-score with Ledoit-Wolf shrinkage of Ibrahim et al. 2022): "
        "every expert is run on the "
        "target's training examples; LEEP/NCE use the expert's own source head (ImageNet head for the generic one).",
        f"- Mean ± standard deviation over {nseeds} seed(s) (target train/test draws and embedding seed).",
        "",
        "Relative error increase = mean selected error / mean optimal error - 1 (over targets; the paper's Table 2 "
        "measure). Regret = mean (selected - optimal) error. Top-1 = fraction of targets where the optimal expert is "
        "chosen. Kendall tau = `scipy.stats.weightedtau` of the method's scores against the negative true errors "
        "(per target, averaged; 1 = perfect ranking with emphasis on the top).",
        "",
        "## Table 2: selecting an expert",
        "",
        "| method | mean error (%) | relative error increase (%) | regret (pp) | top-1 (%) | weighted Kendall tau |"
        " cost per target |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, label in METHODS:
        v = t2[key]
        tau = _pm(v["kendall_tau"], fmt=".3f") if "kendall_tau" in v else "-"
        lines.append(
            f"| {label} | {_pm(v['mean_error'], 100)} | {_pm(v['relative_increase'], 100, '.1f')} | "
            f"{_pm(v['regret'], 100)} | {_pm(v['top1'], 100, '.0f')} | {tau} | {cost[key]} |"
        )
    lines += render_two_stage(r)
    if r["table1"]:
        lines += [
            "",
            "## Table 1: choice of probe network",
            "",
            f"Task2Vec selection with embeddings from different probes (seeds {cfg['table1_seeds']}; same experts, "
            "targets and ground truth).",
            "",
            "| probe | asymmetric: relative error increase (%) | asymmetric: top-1 (%) | asymmetric: Kendall tau | "
            "symmetric: relative error increase (%) | embedding time per source task (s) |",
            "|---|---|---|---|---|---|",
        ]
        for p, v in r["table1"].items():
            lines.append(
                f"| {p} | {_pm(v['asymmetric']['relative_increase'], 100, '.1f')} | "
                f"{_pm(v['asymmetric']['top1'], 100, '.0f')} | {_pm(v['asymmetric']['kendall_tau'], fmt='.3f')} | "
                f"{_pm(v['symmetric']['relative_increase'], 100, '.1f')} | {r['table1_embed_seconds'][p]:.2f} |"
            )
    s = r["search_speed"]
    lines += [
        "",
        "## Cost",
        "",
        f"- Task2Vec: embedding a target {costs['task2vec_embed_s_per_target']:.2f} s, searching the index "
        f"{costs['task2vec_select_s_per_target'] * 1000:.1f} ms (mean per target).",
        f"- Peers: forward passes of all {len(r['experts'])} experts over the target's training set "
        f"{fwd:.2f} s per target (per-image forward time measured once per expert, times the training-set size), "
        "plus the metric for all experts: " + ", ".join(f"{m} {v * 1000:.0f} ms" for m, v in metric_s.items()) + ". "
        "The H-score costs are those of the library calls (`h_score` on the 1280-d features, timed on the first "
        "target); the table's H-score values are computed in the features' N-dim row space, which gives the same "
        "numbers (checked against the library on the first target in every run) for a fraction of the time.",
        f"- Search speed: `ExpertIndex.select` over {s['experts']:,} experts x {s['dim']:,} filters answers in "
        f"{s['select_s'] * 1000:.0f} ms (median of 5; cached stacked float32 arrays); a python loop of "
        f"`hf_task2vec.distance` calls would take ~{s['loop_s_estimated']:.1f} s ({s['speedup_vs_loop']:.0f}x slower).",
    ]
    lines += _checks_and_targets(r, "generic")
    lines += [
        "",
        "## Expert index",
        "",
        f"The experts with their source-task embeddings (embedded probe, {cfg['image_size']} px) and Model2Vec offsets "
        f"fitted on all targets of the first seed are saved in `{_rel(index_dir)}`"
        " (`ExpertIndex.load(...)`). Each expert's info holds `task`, `classes`, `dataset`, `error` (its source test "
        "error) and `mean_target_error`. The fine-tuned weights themselves stay in the (gitignored) benchmark cache.",
        "",
        "Stage timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in r["timings_s"].items()) + ".",
        "",
    ]
    return "\n".join(lines)


META_TASK = MetaTask(
    name="lite0",
    help="Table 2/1 with EfficientNet-Lite0 experts (default)",
    experts=lite0_experts,
    finish=finish,
)
