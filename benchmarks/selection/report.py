"""Pieces of the reports every meta-task shares: ``_pm`` (mean ± std), the two-stage curve (``render_two_stage``),
the checklist and per-target table (``_checks_and_targets``), ``machine_info`` and ``run_facts``."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import ROOT
from .peers import PEER_LABELS, PEERS


def machine_info() -> dict[str, str]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def run_facts(run: Any) -> dict[str, Any]:
    """What every report records about its run: the configuration (with the estimator), the machine, when,
    how long, whether from scratch, and the stages' timings."""
    return {
        "config": {**dataclasses.asdict(run.cfg), "task2vec_method": run.task2vec_method},
        "machine": machine_info(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "runtime_s": time.perf_counter() - run.t_start,
        "from_scratch": not any(e.from_cache for e in run.experts),
        "timings_s": run.timings,
    }


def _pm(v: list[float], scale: float = 1.0, fmt: str = ".2f", spread: bool = True) -> str:
    mean, std = v[0] * scale, v[1] * scale
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean:{fmt}} ± {std:{fmt}}" if spread else f"{mean:{fmt}}"


def _checks_and_targets(r: dict, generic: str) -> list[str]:
    """The report's checklist and its per-target table of the first seed (``generic``: that column's name)."""
    lines = ["", "## Checks", ""]
    lines += [f"- [{'x' if ok else ' '}] {name}" for name, ok in r["checks"].items()]
    lines += [
        "",
        "## Per-target detail (first seed)",
        "",
        f"| target | n train | optimal expert (error %) | {generic} error % | Task2Vec asym pick (error %) | "
        "Model2Vec pick | LogME pick |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in r["per_target_seed0"]:
        lines.append(
            f"| {row['target']} | {row['n_train']} | {row['optimal']} ({100 * row['optimal_error']:.1f}) | "
            f"{100 * row['generic_error']:.1f} | {row['t2v_asym']} ({100 * row['t2v_asym_error']:.1f}) | "
            f"{row['model2vec']} | {row['logme']} |"
        )
    return lines


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def render_two_stage(r: dict) -> list[str]:
    """The two-stage selector's cost/quality curve (Markdown lines)."""
    t2, tgt = r["table2"], r["rerank_target"]
    n = len(r["experts"])
    best = tgt["best_all_experts_peer"]
    lines = [
        "",
        "## Two-stage selection: a probe-embedding shortlist re-ranked by a peer score",
        "",
        "`ExpertIndex.select(task, rerank=metric, shortlist=m)`: the Task2Vec asymmetric distance (one probe "
        "embedding) shortlists the m nearest experts; only those m are run forward on the target's training examples "
        "and ranked by the peer score. Forward fraction = m / N of the forward passes an all-experts peer needs. "
        "Seconds per target = probe embedding + search + the shortlisted experts' forward passes + the metric on them.",
        "",
        f"**Target** (m <= N/3 = {tgt['budget_forward_passes']} forward passes matches or beats the best all-experts "
        f"peer, {PEER_LABELS[best]} at {100 * tgt['best_all_experts_peer_relative_increase']:.1f}%): "
        + ("met" if tgt["met"] else "not met")
        + f"; the best two-stage setting within that budget is `{tgt['best_two_stage_within_budget']}` at "
        f"{100 * tgt['best_two_stage_relative_increase']:.1f}%.",
        "",
        "Relative error increase (%) of the two-stage selector, by shortlist size m (rows) and re-ranking score "
        "(columns); Task2Vec shortlist. The last rows are the all-experts peers (every expert run forward) and "
        "Task2Vec alone.",
        "",
        "| m | forward fraction | " + " | ".join(PEER_LABELS[p] for p in PEERS) + " |",
        "|---|---|" + "---|" * len(PEERS),
    ]
    for m in range(1, n + 1):
        cells = [_pm(t2[f"rerank_{p}_m{m}"]["relative_increase"], 100, ".1f") for p in PEERS]
        lines.append(f"| {m} | {m / n:.2f} | " + " | ".join(cells) + " |")
    lines.append(
        "| all experts (peer alone) | 1.00 | "
        + " | ".join(_pm(t2[p]["relative_increase"], 100, ".1f") for p in PEERS)
        + " |"
    )
    t2v_rel = _pm(t2["t2v_asym"]["relative_increase"], 100, ".1f")
    lines.append(f"| Task2Vec alone | 0 | {t2v_rel} |" + " |" * (len(PEERS) - 1))
    lines += [
        "",
        "Same with the Model2Vec (leave-one-task-out) shortlist:",
        "",
        "| m | " + " | ".join(PEER_LABELS[p] for p in PEERS) + " |",
        "|---|" + "---|" * len(PEERS),
    ]
    for m in range(1, n + 1):
        cells = [_pm(t2[f"rerank_m2v_{p}_m{m}"]["relative_increase"], 100, ".1f") for p in PEERS]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    for metric in dict.fromkeys(("leep", best)):
        lines += [
            "",
            f"Full curve for the {PEER_LABELS[metric]} re-ranking (Task2Vec shortlist):",
            "",
            "| m | forward passes | relative error increase (%) | top-1 (%) | weighted Kendall tau "
            "| seconds per target |",
            "|---|---|---|---|---|---|",
        ]
        for m in range(1, n + 1):
            v = t2[f"rerank_{metric}_m{m}"]
            lines.append(
                f"| {m} | {m} | {_pm(v['relative_increase'], 100, '.1f')} | {_pm(v['top1'], 100, '.0f')} | "
                f"{_pm(v['kendall_tau'], fmt='.3f')} | {v['seconds_per_target'][0]:.2f} |"
            )
    return lines
