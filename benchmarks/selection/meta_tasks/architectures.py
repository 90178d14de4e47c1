"""Selection across architectures (``--meta-task architectures``): the four offline ImageNet networks
(EfficientNet-Lite0/1/2, MobileNetV2), each fine-tuned on a few source tasks and each also untouched, plus the
random-init Lite0; the main meta-task's targets, splits, seeds and ground truth (its Lite0 experts, features,
embeddings and ground-truth columns are reused from the cache). Report: ``model_selection_architectures.{md,json}``
(no Table 1, expert index or search speed)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from ..across import (
    ARCH_PROBES,
    ARCH_SHORT,
    ARCH_TIMM,
    RANDOM_PROBE,
    add_tiebreak,
    expert_rows,
    finish_across,
    named_by_network,
    render_across_markdown,
)
from ..config import ALL_SOURCES, GENERIC, Config, log
from ..data import Pool, TargetSpec, load_bench_probe
from ..experts import Expert, generic_expert, train_expert
from ..harness import MetaTask, Run

ARCH_SOURCES = ("animals-all", "fashion-all", "digits-all")
ARCH_QUICK_SOURCES = ("animals-hoofed", "fashion-tops")
RANDOM_INIT = "random-init"


def architecture_config(cfg: Config) -> Config:
    """The architectures meta-task's configuration: the same recipe, targets, splits and seeds as ``cfg`` (so the
    Lite0 experts, features and target embeddings of the main run are reused from its cache), fewer source tasks,
    no Table 1."""
    sources = ARCH_QUICK_SOURCES if cfg.quick else ARCH_SOURCES
    return dataclasses.replace(cfg, sources=sources, table1_probes=(), table1_seeds=())


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
            experts.append(named_by_network(e, probe))
        experts.append(named_by_network(generic_expert(cfg, probe), probe))
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


def finish_architectures(run: Run) -> int:
    """Checks, tables and report of the architectures meta-task (``model_selection_architectures.{md,json}``)."""
    return finish_across(run, "architectures", render_architectures_markdown)


def render_architectures_markdown(r: dict) -> str:
    return render_across_markdown(r, architectures_head(r))


def architectures_head(r: dict) -> list[str]:
    """The report's title, provenance and setup (everything above the table)."""
    cfg, n = r["config"], len(r["experts"])
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
        *expert_rows(r),
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
    ]
    return lines


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
