"""Selection across architectures (``--meta-task architectures``): the four offline ImageNet networks
(EfficientNet-Lite0/1/2, MobileNetV2), each fine-tuned on a few source tasks and each also untouched, plus the
random-init Lite0; the main meta-task's targets, splits, seeds and ground truth (its Lite0 experts, features,
embeddings and ground-truth columns are reused from the cache). Report: ``model_selection_architectures.{md,json}``
(no Table 1, expert index or search speed)."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import time
from pathlib import Path

import numpy as np
import torch

from ..config import ALL_SOURCES, GENERIC, Config, log
from ..data import Pool, TargetSpec, load_bench_probe
from ..experts import Expert, generic_expert, train_expert
from ..harness import MetaTask, Run
from ..peers import METHODS, PEER_LABELS, PEERS, table2_with_costs, two_stage
from ..report import _checks_and_targets, _pm, machine_info, render_two_stage

# the architectures meta-task: every offline ImageNet network, fine-tuned on a few source tasks, plus its untouched
# ImageNet network, plus the random-init Lite0 (`architecture_experts`)
ARCH_PROBES = ("embedded", "embedded-lite1", "embedded-lite2", "embedded-mobilenetv2")
RANDOM_PROBE = "embedded-random-init"
ARCH_SHORT = {
    "embedded": "lite0",
    "embedded-lite1": "lite1",
    "embedded-lite2": "lite2",
    "embedded-mobilenetv2": "mobilenetv2",
    RANDOM_PROBE: "lite0-random-init",
}
ARCH_TIMM = {
    "embedded": "tf_efficientnet_lite0",
    "embedded-lite1": "tf_efficientnet_lite1",
    "embedded-lite2": "tf_efficientnet_lite2",
    "embedded-mobilenetv2": "mobilenetv2_100",
    RANDOM_PROBE: "tf_efficientnet_lite0",
}
ARCH_SOURCES = ("animals-all", "fashion-all", "digits-all")
ARCH_QUICK_SOURCES = ("animals-hoofed", "fashion-tops")
RANDOM_INIT = "random-init"


def architecture_config(cfg: Config) -> Config:
    """The architectures meta-task's configuration: the same recipe, targets, splits and seeds as ``cfg`` (so the
    Lite0 experts, features and target embeddings of the main run are reused from its cache), fewer source tasks,
    no Table 1."""
    sources = ARCH_QUICK_SOURCES if cfg.quick else ARCH_SOURCES
    return dataclasses.replace(cfg, sources=sources, table1_probes=(), table1_seeds=())


def _arch_named(e: Expert, probe: str) -> Expert:
    """Name an expert of the architectures meta-task by its network: ``lite1/animals-all``."""
    e.name = f"{ARCH_SHORT[probe]}/{e.task}"
    e.model_id = f"task2vec-bench/{ARCH_SHORT[probe]}-{e.task}"
    e.info["architecture"] = ARCH_TIMM[probe]
    return e


def random_init_expert(cfg: Config) -> Expert:
    """The randomly initialised EfficientNet-Lite0 (seed 0, as Table 1's random probe) as an expert: its features
    are those of the untrained network. It has no source task and no trained classifier: its "source head" is a
    random 1000-way linear layer (nn.Linear's initialisation, seed 0), which is what LEEP / NCE see."""
    probe = load_bench_probe(RANDOM_PROBE, cfg)
    gen = torch.Generator().manual_seed(0)
    bound = 1.0 / np.sqrt(probe.num_features)
    w = (torch.rand(1000, probe.num_features, generator=gen) * 2 - 1) * bound
    b = (torch.rand(1000, generator=gen) * 2 - 1) * bound
    e = Expert(
        f"{ARCH_SHORT[RANDOM_PROBE]}",
        f"task2vec-bench/{ARCH_SHORT[RANDOM_PROBE]}",
        probe.backbone.eval(),
        w,
        b,
        [f"random-{i}" for i in range(1000)],
        "none",
        [],
        None,
        {
            "architecture": ARCH_TIMM[RANDOM_PROBE],
            "note": "the random-init Lite0 (no training): no source task; Task2Vec represents it, like the generic "
            "experts, by the union of all source classes; its source head is a random 1000-way linear layer",
        },
        task=GENERIC,
        probe=RANDOM_PROBE,
        stem=f"{RANDOM_INIT}-lite0",
    )
    return e


def architecture_experts(cfg: Config, train_pools: dict[str, Pool], test_pools: dict[str, Pool], cache: Path):
    """Experts of the architectures meta-task, in this order: for each network of ARCH_PROBES its fine-tuned experts
    (``cfg.sources``, the main recipe) then its untouched ImageNet network; last the random-init Lite0. Lite0's
    experts are the main benchmark's (same cache files)."""
    experts = []
    for probe in ARCH_PROBES:
        for s in cfg.sources:
            spec = ALL_SOURCES[s]
            e = train_expert(spec, cfg, train_pools[spec.dataset], test_pools[spec.dataset], cache, probe_name=probe)
            experts.append(_arch_named(e, probe))
        experts.append(_arch_named(generic_expert(cfg, probe), probe))
    experts.append(random_init_expert(cfg))
    return experts


# -- the architectures meta-task ----------------------------------------------------------------------
def known_error_columns(
    errors_dir: Path, gt_key: str, seed: int, experts: list[Expert], targets: list[TargetSpec]
) -> dict[int, np.ndarray]:
    """Ground-truth columns already measured by an earlier run for the same targets and seed (``errors_dir``:
    ``<cache>/errors``): the main benchmark's Lite0 experts are named by their cache stem there, and their
    features are the same files, so their errors are the same numbers."""
    wanted = {e.stem: j for j, e in enumerate(experts) if e.probe == "embedded"}
    names = [t.name for t in targets]
    out: dict[int, np.ndarray] = {}
    for path in sorted(errors_dir.glob(f"{gt_key}-*/seed{seed}.json")):
        data = json.loads(path.read_text())
        if data.get("targets") != names:
            continue
        for k, name in enumerate(data["experts"]):
            if name in wanted and wanted[name] not in out:
                out[wanted[name]] = np.array([row[k] for row in data["errors"]])
    if out:
        log.info("ground truth seed %d: %d expert column(s) reused from earlier runs", seed, len(out))
    return out


def tiebreak_summary(errors: np.ndarray, distances: np.ndarray) -> dict[str, float]:
    """A distance-based selector's expected quality when its ties (experts at the same smallest distance: here the
    experts of one source task, which Task2Vec cannot tell apart) are broken uniformly at random."""
    opt = errors.min(1)
    tied = np.isclose(distances, distances.min(1, keepdims=True), rtol=1e-9, atol=0.0)
    sel = (errors * tied).sum(1) / tied.sum(1)
    hit = ((errors == opt[:, None]) & tied).sum(1) / tied.sum(1)
    return {
        "mean_error": float(sel.mean()),
        "relative_increase": float(sel.mean() / opt.mean() - 1.0),
        "regret": float(np.mean(sel - opt)),
        "top1": float(hit.mean()),
        "tied_experts": float(tied.sum(1).mean()),
    }


def architecture_choices(sd: dict, J: int, generic_j: int) -> dict[str, np.ndarray | None]:
    """The expert each selector picks on every target of one seed (``None``: chance, an expectation)."""
    errors, peers, loo = sd["errors"], sd["peers"], sd["m2v"]
    T = len(errors)
    out: dict[str, np.ndarray | None] = {
        "optimal": errors.argmin(1),
        "chance": None,
        "generic": np.full(T, generic_j),
        "t2v_sym": sd["sym"].argmin(1),
        "t2v_asym": sd["asym"].argmin(1),
        "model2vec": np.asarray(loo.selected),
    }
    for m in PEERS:
        out[m] = peers[m].argmax(1)
    for prefix, dist in (("", sd["asym"]), ("m2v_", loo.distances)):
        for m in range(1, J + 1):
            for metric in PEERS:
                out[f"rerank_{prefix}{metric}_m{m}"] = two_stage(dist, peers[metric], m)[0]
    return out


def architecture_summary(experts: list[Expert], seed_data: list[dict], targets: list, generic_j: int) -> dict:
    """Which network the optimal expert has, how good the best expert of each network is, and how often each selector
    picks an expert of the right network (one of the networks of the target's optimal experts)."""
    J = len(experts)
    fam = np.array([ARCH_SHORT[e.probe] for e in experts])
    families = list(dict.fromkeys(fam.tolist()))
    datasets = list(dict.fromkeys(t.dataset for t in targets))
    right: dict[str, list[float]] = {}
    picks: dict[str, list[dict[str, float]]] = {}
    optimal_counts = {ds: {f: 0.0 for f in families} for ds in datasets}
    family_oracle: dict[str, dict[str, list[float]]] = {
        f: {"mean_error": [], "relative_increase": []} for f in families
    }
    for sd in seed_data:
        errors = sd["errors"]
        opt = errors.min(1)
        is_opt = errors == opt[:, None]
        ok = np.stack([np.isin(fam, np.unique(fam[is_opt[t]])) for t in range(len(errors))])  # [T, J]
        for t, target in enumerate(targets):
            for j in np.nonzero(is_opt[t])[0]:
                optimal_counts[target.dataset][fam[j]] += 1.0 / is_opt[t].sum() / len(seed_data)
        for f in families:
            best = errors[:, fam == f].min(1)
            family_oracle[f]["mean_error"].append(float(best.mean()))
            family_oracle[f]["relative_increase"].append(float(best.mean() / opt.mean() - 1.0))
        choices = architecture_choices(sd, J, generic_j)
        tied = np.isclose(sd["asym"], sd["asym"].min(1, keepdims=True), rtol=1e-9, atol=0.0)
        choices["t2v_asym_tiebreak"] = tied  # an expectation over the tied experts
        for key, chosen in choices.items():
            if chosen is None:  # chance: a uniformly random expert
                w = np.full((len(errors), J), 1.0 / J)
            elif chosen.ndim == 2:
                w = chosen / chosen.sum(1, keepdims=True)
            else:
                w = np.zeros((len(errors), J))
                w[np.arange(len(errors)), chosen] = 1.0
            right.setdefault(key, []).append(float((w * ok).sum(1).mean()))
            picks.setdefault(key, []).append({f: float(w[:, fam == f].sum(1).mean()) for f in families})

    def ms(v: list[float]) -> list[float]:
        return [float(np.mean(v)), float(np.std(v)) if len(v) > 1 else 0.0]

    return {
        "families": families,
        "expert_family": dict(zip([e.name for e in experts], fam.tolist(), strict=True)),
        "optimal_family_counts": optimal_counts,
        "family_oracle": {f: {k: ms(v) for k, v in d.items()} for f, d in family_oracle.items()},
        "right_architecture": {k: ms(v) for k, v in right.items()},
        "picks": {k: {f: float(np.mean([p[f] for p in v])) for f in families} for k, v in picks.items()},
    }


def finish_architectures(run: Run) -> int:
    """Checks, tables and report of the architectures meta-task (``model_selection_architectures.{md,json}``)."""
    cfg, experts, targets, per_seed, costs = run.cfg, run.experts, run.targets, run.per_seed, run.costs
    per_target_rows, fwd_per_image, results_dir = run.per_target_rows, run.fwd_per_image, run.results_dir
    J = len(experts)
    names = [e.name for e in experts]
    generic_j = next(j for j, e in enumerate(experts) if e.task == GENERIC and e.probe == "embedded")
    asym = np.array([r["t2v_asym"]["mean_error"] for r in per_seed])
    chance = np.array([r["chance"]["mean_error"] for r in per_seed])
    finite = all(np.isfinite(r[k]["mean_error"]) for r in per_seed for k, _ in METHODS)
    checks = {
        "Task2Vec asymmetric beats chance (mean selected error, every seed)": bool(np.all(asym < chance)),
        "all selection errors are finite": bool(finite),
        "re-ranking a shortlist of all N experts picks an expert with the best peer score": bool(
            all(run.full_rerank_ok)
        ),
    }
    table2, rerank_target = table2_with_costs(per_seed, costs, J)
    summary = architecture_summary(experts, run.seed_data, targets, generic_j)
    for row in per_target_rows:
        row["optimal_architecture"] = summary["expert_family"][row["optimal"]]
    total = time.perf_counter() - run.t_start
    report = {
        "meta_task": "architectures",
        "config": {**dataclasses.asdict(cfg), "task2vec_method": run.task2vec_method},
        "machine": machine_info(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "runtime_s": total,
        "from_scratch": not any(e.from_cache for e in experts),
        "timings_s": run.timings,
        "experts": [
            {
                "name": e.name,
                "model_id": e.model_id,
                "architecture": summary["expert_family"][e.name],
                "probe": e.probe,
                "task": e.task if e.probe != RANDOM_PROBE else None,
                "dataset": e.dataset,
                "classes": e.label_names if e.task != GENERIC else [],
                "source_error": e.source_error,
                "forward_ms_per_image": 1000 * float(fwd_per_image[j]),
            }
            for j, e in enumerate(experts)
        ],
        "targets": [dataclasses.asdict(t) for t in targets],
        "per_seed": per_seed,
        "table2": table2,
        "rerank_target": rerank_target,
        "architectures": summary,
        "table1_embed_seconds": {p: float(np.mean(s)) for p, s in run.source_seconds.items()},
        "costs": {
            "task2vec_embed_s_per_target": float(np.mean(costs["task2vec_embed_s"])),
            "task2vec_select_s_per_target": float(np.mean(costs["task2vec_select_s"])),
            "peer_forward_s_per_target": float(np.mean(costs["peer_forward_s"])),
            "peer_metric_s_per_target": costs["peer_metric_s"],
            "model2vec_fit_s_per_fold": float(np.mean([r["_m2v_fit_s_per_task"] for r in per_seed])),
            "forward_s_per_image": dict(zip(names, fwd_per_image.tolist(), strict=True)),
        },
        "per_target_seed0": per_target_rows,
        "checks": checks,
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    out_json = results_dir / "model_selection_architectures.json"
    out_md = results_dir / "model_selection_architectures.md"
    out_json.write_text(json.dumps(report, indent=1, default=float) + "\n")
    out_md.write_text(render_architectures_markdown(report))
    log.info("wrote %s and %s (%.0f s)", out_md, out_json, total)
    for name, ok in checks.items():
        print(f"[{'PASS' if ok else 'FAIL'}] {name}")
    return 0 if all(checks.values()) else 1


def render_architectures_markdown(r: dict) -> str:
    cfg, t2, costs, arch = r["config"], r["table2"], r["costs"], r["architectures"]
    n = len(r["experts"])
    fams = arch["families"]
    tgt = r["rerank_target"]
    fwd = costs["peer_forward_s_per_target"]
    metric_s = costs["peer_metric_s_per_target"]
    t2v_cost = costs["task2vec_embed_s_per_target"] + costs["task2vec_select_s_per_target"]
    budget = tgt["budget_forward_passes"]
    best = tgt["best_all_experts_peer"]
    rows = [(k, label) for k, label in METHODS]
    rows.insert(5, ("t2v_asym_tiebreak", "Task2Vec asymmetric, ties broken at random (expectation)"))
    for metric in dict.fromkeys(("leep", "logme", best)):
        for m in dict.fromkeys((4, budget)):
            rows.append((f"rerank_{metric}_m{m}", f"Two-stage: Task2Vec shortlist m={m}, {PEER_LABELS[metric]}"))
    if tgt["best_two_stage_within_budget"] not in dict(rows):
        k = tgt["best_two_stage_within_budget"]
        rows.append((k, f"Two-stage, best within m <= {budget}: `{k}`"))
    cost = {
        "optimal": f"train & test all {n} experts",
        "chance": "0",
        "generic": "0",
        "t2v_sym": f"{t2v_cost:.2f} s (1 probe embedding)",
        "t2v_asym": f"{t2v_cost:.2f} s (1 probe embedding)",
        "t2v_asym_tiebreak": f"{t2v_cost:.2f} s (1 probe embedding)",
        "model2vec": f"{t2v_cost:.2f} s (+ fit {costs['model2vec_fit_s_per_fold']:.1f} s, once)",
    }
    for m in PEERS:
        cost[m] = f"{fwd + metric_s[m]:.2f} s ({n} forward passes)"
    for k, _ in rows:
        if k.startswith("rerank_"):
            v = t2[k]
            cost[k] = f"{v['seconds_per_target'][0]:.2f} s ({v['forward_passes'][0]:.0f} forward passes)"
    label = {"generic": "Always generic (untouched ImageNet Lite0)"}
    lines = [
        "# Model selection across architectures (a second Table 2 meta-task)",
        "",
        f"Generated by `benchmarks/model_selection.py --meta-task architectures{' --quick' if cfg['quick'] else ''}` "
        f"on {r['created']}; total runtime {r['runtime_s'] / 60:.1f} min "
        + (
            "(from scratch)."
            if r["from_scratch"]
            else "(reusing cached experts, features and embeddings where they exist: the Lite0 experts, their "
            "features and every target embedding are the main benchmark's)."
        )
        + " Times are wall-clock on a CPU shared with other jobs: compare them within this file only.",
        f"Machine: {r['machine']['cpu']}, {r['machine']['cores']} cores, torch {r['machine']['torch']} "
        f"({r['machine']['torch_threads']} thread(s)), Python {r['machine']['python']}.",
        "",
        "## Setup",
        "",
        f"- **Experts** ({n}): each offline ImageNet network (EfficientNet-Lite0, Lite1, Lite2, MobileNetV2; real "
        "ImageNet-1k weights) fine-tuned with the main benchmark's recipe (head fitted on the frozen features, then "
        f"{cfg['finetune_steps']} Adam steps of the whole network, lr {cfg['finetune_lr']:g}, batch "
        f"{cfg['finetune_batch']}, frozen batch-norm statistics, {cfg['image_size']} px, each network with its own "
        "input normalisation: MobileNetV2 ImageNet mean/std, the Lites 0.5/0.5) on the source tasks "
        f"{', '.join(cfg['sources'])}; plus each network untouched (its ImageNet classifier from its checkpoint is "
        "the source head LEEP/NCE use); plus the randomly initialised Lite0 (seed 0; features of the untrained "
        "network, a random 1000-way linear layer as its source head).",
        "",
        "  | expert | network | source task | source test error | forward ms / image |",
        "  |---|---|---|---|---|",
    ]
    for e in r["experts"]:
        err = "n/a" if e["source_error"] is None else f"{e['source_error']:.3f}"
        task = e["task"] if e["task"] and e["task"] != GENERIC else ("ImageNet-1k" if e["task"] else "none")
        lines.append(f"  | {e['name']} | {e['architecture']} | {task} | {err} | {e['forward_ms_per_image']:.2f} |")
    lines += [
        "",
        f"- **Targets, splits, seeds, ground truth**: those of the main benchmark ({len(r['targets'])} targets, "
        f"seeds {cfg['seeds']}): test error of an L2 logistic regression on each expert's frozen features.",
        "- **Task2Vec** embeds every task with the one embedded Lite0 probe: an expert is represented by its source "
        "task's embedding, so its network does not enter Task2Vec at all. The experts of one source task (4 networks) "
        "have the same embedding and **tie**; the untouched networks and the random-init one are all represented by "
        "the union of the source classes (ImageNet is not offline) and tie too. Ties go to the first expert in the "
        "table's order (Lite0); the row *ties broken at random* gives the expectation instead. Model2Vec (learned "
        "offsets per expert, leave-one-task-out) and the two-stage re-ranking (a forward pass of each shortlisted "
        "expert) can separate the tied experts.",
        "- **Right architecture** = the selected expert's network is that of (one of) the target's optimal experts "
        "(the random-init Lite0 counts as its own network).",
        f"- Mean ± standard deviation over {len(cfg['seeds'])} seed(s).",
        "",
        "## Table: selecting an expert across architectures",
        "",
        "| method | mean error (%) | relative error increase (%) | regret (pp) | top-1 (%) | right architecture (%) | "
        "weighted Kendall tau | forward passes | cost per target |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, name in rows:
        v = t2[key]
        tau = _pm(v["kendall_tau"], fmt=".3f") if "kendall_tau" in v else "-"
        passes = f"{v['forward_passes'][0]:.0f}" if "forward_passes" in v else "0"
        ra = arch["right_architecture"].get(key)
        lines.append(
            f"| {label.get(key, name)} | {_pm(v['mean_error'], 100)} | {_pm(v['relative_increase'], 100, '.1f')} | "
            f"{_pm(v['regret'], 100)} | {_pm(v['top1'], 100, '.0f')} | "
            f"{_pm(ra, 100, '.0f') if ra else '-'} | {tau} | {passes} | {cost.get(key, '-')} |"
        )
    lines += [
        "",
        f"**Issue target on this meta-task** (the two-stage selector with m <= N/3 = {budget} forward passes matches "
        f"or beats the best all-experts peer, {PEER_LABELS[best]} at "
        f"{100 * tgt['best_all_experts_peer_relative_increase']:.1f}%): **{'met' if tgt['met'] else 'not met'}**; "
        f"the best two-stage setting within that budget is `{tgt['best_two_stage_within_budget']}` at "
        f"{100 * tgt['best_two_stage_relative_increase']:.1f}%.",
        "",
        "## Per architecture",
        "",
        "Which network the optimal expert has (targets per dataset, averaged over seeds; a tie splits a target):",
        "",
        "| target dataset | " + " | ".join(fams) + " |",
        "|---|" + "---|" * len(fams),
    ]
    for ds, counts in arch["optimal_family_counts"].items():
        lines.append(f"| {ds} | " + " | ".join(f"{counts[f]:.1f}" for f in fams) + " |")
    lines += [
        "",
        "The best expert of one network only (an oracle restricted to that network's experts), against the "
        "cross-architecture optimum:",
        "",
        "| network | mean error (%) | relative error increase (%) |",
        "|---|---|---|",
    ]
    for f in fams:
        v = arch["family_oracle"][f]
        lines.append(f"| {f} | {_pm(v['mean_error'], 100)} | {_pm(v['relative_increase'], 100, '.1f')} |")
    lines += [
        "",
        "Which network each selector picks (share of targets, %), and how often it is the right one:",
        "",
        "| method | " + " | ".join(fams) + " | right architecture (%) |",
        "|---|" + "---|" * len(fams) + "---|",
    ]
    for key, name in rows:
        if key not in arch["picks"]:
            continue
        p = arch["picks"][key]
        ra = arch["right_architecture"][key]
        cells = " | ".join(f"{100 * p[f]:.0f}" for f in fams)
        lines.append(f"| {label.get(key, name)} | {cells} | {_pm(ra, 100, '.0f')} |")
    lines += render_two_stage(r)
    lines += _checks_and_targets(r, "generic Lite0")
    lines += [
        "",
        "Stage timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in r["timings_s"].items()) + ".",
        "",
    ]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--arch-sources",
        default=None,
        help="architectures meta-task: comma-separated source tasks to fine-tune every network on "
        f"(default: {','.join(ARCH_SOURCES)}; quick: {','.join(ARCH_QUICK_SOURCES)})",
    )


def configure(cfg: Config, args: argparse.Namespace, parser: argparse.ArgumentParser) -> Config:
    cfg = architecture_config(cfg)
    if args.arch_sources:
        sources = tuple(args.arch_sources.split(","))
        unknown = [x for x in sources if x not in ALL_SOURCES]
        if unknown:
            parser.error(f"unknown source task(s) {unknown}; choose from {list(ALL_SOURCES)}")
        cfg = dataclasses.replace(cfg, sources=sources)
    return cfg


def add_tiebreak(results: dict, seed_data: dict) -> None:
    """Experts of one source task tie under Task2Vec: its expected pick under a random tie-break."""
    results["t2v_asym_tiebreak"] = tiebreak_summary(seed_data["errors"], seed_data["asym"])


META_TASK = MetaTask(
    name="architectures",
    help="experts of four ImageNet networks plus the random-init Lite0, written to "
    "model_selection_architectures.{md,json}",
    experts=architecture_experts,
    finish=finish_architectures,
    add_arguments=add_arguments,
    configure=configure,
    known_errors=known_error_columns,
    per_seed=add_tiebreak,
)
