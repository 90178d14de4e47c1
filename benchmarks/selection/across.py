"""What the meta-tasks whose experts are of several networks share (``architectures``, ``zoo``): the networks
(``ARCH_PROBES`` and their short names), which network each selector picks (``architecture_summary``), the expected
pick under a random tie-break (``tiebreak_summary``), the peers' ties (``peer_ties``), the issue's targets
(``selection_targets``) and the report (``finish_across``, ``render_across_markdown``)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

import numpy as np

from .config import GENERIC, log
from .experts import Expert
from .harness import Run
from .peers import METHODS, PEER_LABELS, PEERS, table2_with_costs, two_stage
from .report import _checks_and_targets, _pm, render_two_stage, run_facts

# the offline ImageNet networks, and the random-init Lite0 of the architectures meta-task
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


def named_by_network(e: Expert, probe: str) -> Expert:
    """Name an expert by its network: ``lite1/animals-all``."""
    e.name = f"{ARCH_SHORT[probe]}/{e.task}"
    e.model_id = f"task2vec-bench/{ARCH_SHORT[probe]}-{e.task}"
    e.info["architecture"] = ARCH_TIMM[probe]
    return e


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
        "static": sd["static"].argmax(1),
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


def finish_across(run: Run, meta_task: str, render: Callable[[dict], str]) -> int:
    """Checks, tables and report of a meta-task whose experts are of several networks (``architectures``,
    ``zoo``): ``model_selection_<meta_task>.{md,json}``, the Markdown by ``render(report)``."""
    experts, targets, per_seed, costs = run.experts, run.targets, run.per_seed, run.costs
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
    report = {
        "meta_task": meta_task,
        **run_facts(run),
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
    report["issue_targets"] = selection_targets(report)
    report["peer_ties"] = peer_ties(run.seed_data, table2)
    results_dir.mkdir(parents=True, exist_ok=True)
    out_json = results_dir / f"model_selection_{meta_task}.json"
    out_md = results_dir / f"model_selection_{meta_task}.md"
    out_json.write_text(json.dumps(report, indent=1, default=float) + "\n")
    out_md.write_text(render(report))
    log.info("wrote %s and %s (%.0f s)", out_md, out_json, report["runtime_s"])
    for name, ok in checks.items():
        print(f"[{'PASS' if ok else 'FAIL'}] {name}")
    return 0 if all(checks.values()) else 1


def peer_ties(seed_data: list[dict], table2: dict) -> dict[str, dict[str, float]]:
    """How often a peer's best score is shared by several experts (its pick is then the first of them in the table's
    order), how often a score is exactly 1 (a saturated SFDA / N-LEEP / k-NN), and the peer's relative error increase
    when its ties are broken at random instead (an expectation); means over seeds."""
    out = {}
    for m in PEERS:
        tied, at_one, expected = [], [], []
        for sd in seed_data:
            s = sd["peers"][m]
            best = np.isclose(s, s.max(1, keepdims=True), rtol=1e-9, atol=0.0)
            tied.append(float(np.mean(best.sum(1) > 1)))
            at_one.append(float(np.mean(np.abs(s - 1.0) <= 1e-9)))
            expected.append(tiebreak_summary(sd["errors"], -s)["relative_increase"])
        out[m] = {
            "targets_with_tied_best": float(np.mean(tied)),
            "scores_equal_to_one": float(np.mean(at_one)),
            "relative_increase_first_of_ties": table2[m]["relative_increase"][0],
            "relative_increase_random_tiebreak": float(np.mean(expected)),
        }
    return out


def selection_targets(r: dict) -> list[dict]:
    """The issue's targets for selection across architectures, judged on the report's table: the two-stage
    selector within N/3 forward passes against the best all-experts peer; Task2Vec or Model2Vec alone against the
    static baseline; how often the right architecture is picked by our selectors (Task2Vec, Model2Vec, the best
    two-stage setting within the budget) against the best peer."""
    t2, tgt, right = r["table2"], r["rerank_target"], r["architectures"]["right_architecture"]

    def rel(k: str) -> float:
        return t2[k]["relative_increase"][0]

    alone = min(("t2v_asym", "model2vec"), key=rel)
    ours = max(("t2v_asym", "model2vec", tgt["best_two_stage_within_budget"]), key=lambda k: right[k][0])
    peer = max(PEERS, key=lambda k: right[k][0])
    return [
        {
            "target": f"two-stage selector within m <= N/3 = {tgt['budget_forward_passes']} forward passes at least "
            "as good as the best all-experts peer (relative error increase)",
            "met": bool(tgt["met"]),
            "detail": f"`{tgt['best_two_stage_within_budget']}` {100 * tgt['best_two_stage_relative_increase']:.1f}% "
            f"vs {PEER_LABELS[tgt['best_all_experts_peer']]} "
            f"{100 * tgt['best_all_experts_peer_relative_increase']:.1f}%",
        },
        {
            "target": "Task2Vec or Model2Vec alone ahead of the static baseline (relative error increase)",
            "met": bool(rel(alone) < rel("static")),
            "detail": f"{PEER_LABELS[alone]} {100 * rel(alone):.1f}% vs static {100 * rel('static'):.1f}%",
        },
        {
            "target": "the right architecture picked more often than by any peer",
            "met": bool(right[ours][0] > right[peer][0]),
            "detail": f"`{ours}` {100 * right[ours][0]:.0f}% vs {PEER_LABELS[peer]} {100 * right[peer][0]:.0f}%",
        },
    ]


def expert_rows(r: dict) -> list[str]:
    """The setup's table of experts (Markdown lines, indented under a bullet)."""
    lines = [
        "  | expert | network | source task | source test error | forward ms / image |",
        "  |---|---|---|---|---|",
    ]
    for e in r["experts"]:
        err = "n/a" if e["source_error"] is None else f"{e['source_error']:.3f}"
        task = e["task"] if e["task"] and e["task"] != GENERIC else ("ImageNet-1k" if e["task"] else "none")
        lines.append(f"  | {e['name']} | {e['architecture']} | {task} | {err} | {e['forward_ms_per_image']:.2f} |")
    return lines


def render_across_markdown(r: dict, head: list[str]) -> str:
    """A report of experts of several networks: ``head`` (title and setup), then the table, the per-network tables,
    the two-stage curve, the checks and the per-target detail."""
    t2, costs, arch = r["table2"], r["costs"], r["architectures"]
    n = len(r["experts"])
    fams = arch["families"]
    tgt = r["rerank_target"]
    fwd = costs["peer_forward_s_per_target"]
    metric_s = costs["peer_metric_s_per_target"]
    t2v_cost = costs["task2vec_embed_s_per_target"] + costs["task2vec_select_s_per_target"]
    budget = tgt["budget_forward_passes"]
    best = tgt["best_all_experts_peer"]
    rows = [(k, label) for k, label in METHODS]
    tiebreak = ("t2v_asym_tiebreak", "Task2Vec asymmetric, ties broken at random (expectation)")
    rows.insert([k for k, _ in rows].index("t2v_asym") + 1, tiebreak)
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
        "static": "0 (every expert's error on the other targets, known in advance)",
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
        *head,
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
    if "issue_targets" in r:
        lines += ["", "## The issue's targets on this meta-task", ""]
        lines += [f"- [{'x' if t['met'] else ' '}] {t['target']}: {t['detail']}" for t in r["issue_targets"]]
    if "peer_ties" in r:
        lines += [
            "",
            "## Ties among a peer's top scores",
            "",
            "A peer whose best score is shared by several experts picks the first of them in the table's order (as "
            "`argmax` does). SFDA's score is the mean posterior of the true class after a regularised FDA: where a "
            "target has fewer training samples than the features have dimensions (here 20-500 against 1,280-1,408) "
            "the FDA separates them and the score is 1 for most experts, whatever the expert.",
            "",
            "| peer | targets whose best score is shared (%) | scores equal to 1 (%) | relative error increase (%): "
            "first of the tied | ties broken at random (expectation) |",
            "|---|---|---|---|---|",
        ]
        for m, v in r["peer_ties"].items():
            lines.append(
                f"| {PEER_LABELS[m]} | {100 * v['targets_with_tied_best']:.0f} | {100 * v['scores_equal_to_one']:.0f} "
                f"| {100 * v['relative_increase_first_of_ties']:.1f} "
                f"| {100 * v['relative_increase_random_tiebreak']:.1f} |"
            )
    lines += render_two_stage(r)
    lines += _checks_and_targets(r, "generic Lite0")
    lines += [
        "",
        "Stage timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in r["timings_s"].items()) + ".",
        "",
    ]
    return "\n".join(lines)


def add_tiebreak(results: dict, seed_data: dict) -> None:
    """Experts of one source task tie under Task2Vec: its expected pick under a random tie-break."""
    results["t2v_asym_tiebreak"] = tiebreak_summary(seed_data["errors"], seed_data["asym"])
