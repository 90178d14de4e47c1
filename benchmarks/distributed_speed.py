"""Wall time of `hf-task2vec batch` on one process vs. several (`accelerate launch`), same tasks.

CPU section (always): a batch of real offline tasks (sklearn digits, pairs of classes) embedded
with the offline EfficientNet-Lite0 probe, into a fresh store each time, by

* 1 process (``python -m hf_task2vec batch``; torch uses every core),
* 1 process limited to 1 thread (the per-core cost, for reference),
* 2 processes (``accelerate launch --multi_gpu --num_processes 2`` with the CPU, gloo), each with
  cores / 2 threads (OMP_NUM_THREADS), whole tasks round-robin (``shard: tasks``) and each task's
  examples sharded (``shard: samples``).

Multi-GPU section: when CUDA has >= 2 devices, the same batch (larger images and samples) on 1 GPU
vs. all GPUs (``accelerate launch --multi_gpu --num_processes N``); otherwise it records
"skipped: no multi-GPU". With exactly one GPU a 1-GPU row is measured for reference.

Each time is the whole command (launcher start, imports, probe load included) and the in-process
time `run_batch` reports. Embeddings of the multi-process runs are compared with the 1-process run.
Results: benchmarks/results/distributed_speed.md and .json.

    python benchmarks/distributed_speed.py            # ~5 min on 2 busy cores
    python benchmarks/distributed_speed.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PAIRS = [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (1, 7), (3, 8), (4, 9), (5, 6), (2, 7), (0, 6), (3, 5)]


def make_config(path: Path, n_tasks: int, max_samples: int, image_size: int, method: str, shard: str) -> Path:
    groups = {f"digits-{a}-{b}": [a, b] for a, b in PAIRS[:n_tasks]}
    cfg = {
        "probe": "embedded",
        "method": method,
        "shard": shard,
        "options": {"max_samples": max_samples, "image_size": image_size, "seed": 0},
        "tasks": [{"source": "offline:digits", "split": "all", "groups": groups}],
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def launch_prefix(nproc: int, cpu: bool) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "hf_task2vec"]
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(nproc),
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
        "-m", "hf_task2vec",
    ]  # fmt: skip


def run_case(
    label: str, cfg: Path, nproc: int, *, cpu: bool, env: dict[str, str] | None = None, repeats: int = 1
) -> dict:
    """The fastest of ``repeats`` runs, each into a fresh store."""
    rows = [_run_once(label, cfg, nproc, cpu=cpu, env=env) for _ in range(repeats)]
    best = min(rows, key=lambda r: r["wall_s"])
    best["all_wall_s"] = [r["wall_s"] for r in rows]
    return best


def _run_once(label: str, cfg: Path, nproc: int, *, cpu: bool, env: dict[str, str] | None = None) -> dict:
    store = Path(tempfile.mkdtemp(prefix="t2v-bench-"))
    cmd = [*launch_prefix(nproc, cpu), "batch", str(cfg), "--out", str(store), "--no-progress"]
    if cpu:
        cmd.append("--cpu")
    full_env = {**os.environ, **(env or {})}
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{label}: exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    m = re.search(r"batch: (\d+) tasks, (\d+) process.*\(([\d.]+) s\)", proc.stdout)
    if m is None:
        raise RuntimeError(f"{label}: unexpected output {proc.stdout!r}")
    row = {
        "case": label,
        "processes": int(m.group(2)),
        "tasks": int(m.group(1)),
        "wall_s": round(wall, 2),
        "in_process_s": float(m.group(3)),
        "load_avg_1min_before": round(load, 2),
        "store": str(store),
    }
    print(f"  {label:45s} wall {wall:7.1f} s  in-process {row['in_process_s']:7.1f} s  (load {load:.1f})", flush=True)
    return row


def compare(base: dict, other: dict) -> float:
    """Largest relative difference (to the largest value) between the two runs' embeddings."""
    from hf_task2vec import TaskEmbedding

    worst = 0.0
    for p in sorted(Path(base["store"], "embeddings").glob("*/*.safetensors")):
        a = TaskEmbedding.load(p).values.astype(np.float64)
        b = TaskEmbedding.load(Path(other["store"]) / p.relative_to(base["store"])).values.astype(np.float64)
        worst = max(worst, float(np.abs(a - b).max() / np.abs(a).max()))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=6)
    ap.add_argument("--max-samples", type=int, default=128)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--method", default="montecarlo")
    ap.add_argument("--gpu-tasks", type=int, default=8)
    ap.add_argument("--gpu-max-samples", type=int, default=1000)
    ap.add_argument("--gpu-image-size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=1, help="runs per case (the fastest is kept)")
    ap.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--render", type=Path, default=None, help="only rewrite the .md of this results .json")
    args = ap.parse_args()
    if args.render is not None:
        rerender(args.render)
        return
    if args.quick:
        args.tasks, args.max_samples, args.gpu_tasks, args.gpu_max_samples = 2, 16, 2, 64

    import accelerate

    work = Path(tempfile.mkdtemp(prefix="t2v-bench-cfg-"))
    machine = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads_default": torch.get_num_threads(),
        "accelerate": accelerate.__version__,
        "cuda_devices": torch.cuda.device_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    settings = {
        "tasks": args.tasks,
        "max_samples": args.max_samples,
        "image_size": args.image_size,
        "method": args.method,
        "probe": "embedded (EfficientNet-Lite0)",
        "data": "sklearn digits, class pairs",
        "repeats": args.repeats,
    }
    print(f"CPU section: {args.tasks} tasks x {args.max_samples} samples at {args.image_size} px, {args.method}")
    cfg_tasks = make_config(work / "tasks.yaml", args.tasks, args.max_samples, args.image_size, args.method, "tasks")
    cfg_samples = make_config(
        work / "samples.yaml", args.tasks, args.max_samples, args.image_size, args.method, "samples"
    )
    # warm-up, not timed: builds the offline dataset cache and fills the file cache
    _run_once(
        "warm-up (not timed)", make_config(work / "warm.yaml", 1, 8, args.image_size, args.method, "tasks"), 1, cpu=True
    )
    rep = {"repeats": args.repeats}
    cores = os.cpu_count() or 1
    half = {"OMP_NUM_THREADS": str(max(1, cores // 2))}  # the cores shared out: cores / processes threads each
    cpu_rows = [
        run_case("1 process", cfg_tasks, 1, cpu=True, **rep),
        run_case("1 process, 1 thread", cfg_tasks, 1, cpu=True, env={"OMP_NUM_THREADS": "1"}, **rep),
        run_case("2 processes, shard: tasks", cfg_tasks, 2, cpu=True, env=half, **rep),
        run_case("2 processes, shard: samples", cfg_samples, 2, cpu=True, env=half, **rep),
    ]
    for row, threads in zip(
        cpu_rows,
        [torch.get_num_threads(), 1, int(half["OMP_NUM_THREADS"]), int(half["OMP_NUM_THREADS"])],
        strict=True,
    ):
        row["threads_per_process"] = threads
    base = cpu_rows[0]
    for row in cpu_rows:
        row["speedup_vs_1_process"] = round(base["wall_s"] / row["wall_s"], 3)
        row["max_rel_diff_vs_1_process"] = compare(base, row)

    gpu: dict = {}
    n_gpu = torch.cuda.device_count()
    if n_gpu >= 1:
        print(f"GPU section: {args.gpu_tasks} tasks x {args.gpu_max_samples} samples at {args.gpu_image_size} px")
        cfg_gpu = make_config(
            work / "gpu.yaml", args.gpu_tasks, args.gpu_max_samples, args.gpu_image_size, args.method, "auto"
        )
        _run_once(
            "GPU warm-up (not timed)", make_config(work / "gw.yaml", 1, 8, 64, args.method, "tasks"), 1, cpu=False
        )
        rows = [run_case("1 GPU", cfg_gpu, 1, cpu=False, env={"CUDA_VISIBLE_DEVICES": "0"}, **rep)]
        if n_gpu >= 2:
            rows.append(run_case(f"{n_gpu} GPUs (accelerate launch --multi_gpu)", cfg_gpu, n_gpu, cpu=False, **rep))
        for row in rows:
            row["speedup_vs_1_gpu"] = round(rows[0]["wall_s"] / row["wall_s"], 3)
            row["max_rel_diff_vs_1_gpu"] = compare(rows[0], row)
        gpu = {
            "settings": {
                "tasks": args.gpu_tasks,
                "max_samples": args.gpu_max_samples,
                "image_size": args.gpu_image_size,
            },
            "rows": rows,
        }
    if n_gpu < 2:
        gpu["multi_gpu"] = f"skipped: no multi-GPU ({n_gpu} CUDA device{'s' if n_gpu != 1 else ''} found)"
    machine["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]

    result = {"machine": machine, "cpu": {"settings": settings, "rows": cpu_rows}, "gpu": gpu}
    for rows in (cpu_rows, gpu.get("rows", [])):
        for row in rows:
            row.pop("store", None)
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "" if n_gpu == 0 else ".gpu"
    (args.out / f"distributed_speed{suffix}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"distributed_speed{suffix}.md").write_text(render(result))
    print(render(result))


def rerender(json_path: Path) -> None:
    """Rewrite the .md next to a results .json (e.g. one copied back from a GPU machine)."""
    result = json.loads(json_path.read_text())
    json_path.with_suffix(".md").write_text(render(result))


def render(r: dict) -> str:
    m, s = r["machine"], r["cpu"]["settings"]
    out = [
        "# Batch embedding: 1 process vs. several (`benchmarks/distributed_speed.py`)",
        "",
        f"Machine: {m['cpu_count']} CPU cores, {m['platform']}, Python {m['python']}, torch {m['torch']} "
        f"(default {m['torch_threads_default']} threads), accelerate {m['accelerate']}, "
        f"CUDA devices: {m['cuda_devices']}{' (' + m['gpu'] + ')' if m['gpu'] else ''}. "
        f"Load average (1/5/15 min) at start {m['load_avg_at_start']}, at end {m['load_avg_at_end']}"
        + (
            " (the machine was busy with other jobs: times are inflated and noisy)"
            if m["load_avg_at_start"][0] > 0.5 * m["cpu_count"]
            else ""
        )
        + f". Run {m['date']}.",
        "",
        f"## CPU: {s['tasks']} tasks ({s['data']}), {s['max_samples']} samples each, {s['image_size']} px, "
        f"{s['method']}, probe {s['probe']}",
        "",
        "Wall = the whole command (launcher start, imports, probe load); in-process = `run_batch` itself. "
        f"Fastest of {r['cpu']['settings'].get('repeats', 1)} run(s) per row, after an untimed warm-up.",
        "",
        "| case | processes | threads each | wall (s) | in-process (s) | speed-up vs 1 process (wall) "
        "| max rel. diff vs 1 process |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in r["cpu"]["rows"]:
        out.append(
            f"| {row['case']} | {row['processes']} | {row['threads_per_process']} | {row['wall_s']:.1f} | "
            f"{row['in_process_s']:.1f} | {row['speedup_vs_1_process']:.2f}x | {row['max_rel_diff_vs_1_process']:.1e} |"
        )
    rows = r["cpu"]["rows"]
    fastest = min(rows, key=lambda row: row["wall_s"])
    one_thread = next((row for row in rows if row["case"] == "1 process, 1 thread"), None)
    out += ["", f"Fastest here: {fastest['case']} ({fastest['wall_s']:.1f} s wall)."]
    if one_thread is not None:
        for row in rows:
            if row["processes"] == 2:
                out[-1] += (
                    f" {row['case']} vs 1 process with 1 thread: {one_thread['wall_s'] / row['wall_s']:.2f}x wall, "
                    f"{one_thread['in_process_s'] / row['in_process_s']:.2f}x in-process."
                )
    out += [
        "",
        "`shard: tasks` runs the same computation per task as one process (differences come from thread "
        "counts only); `shard: samples` with `montecarlo` draws other labels on the second process (another "
        "valid Monte Carlo estimate), so its embeddings differ by Monte Carlo noise.",
        "",
        "## GPUs",
        "",
    ]
    gpu = r["gpu"]
    if gpu.get("rows"):
        g = gpu["settings"]
        out += [
            f"{g['tasks']} tasks, {g['max_samples']} samples each, {g['image_size']} px.",
            "",
            "| case | processes | wall (s) | in-process (s) | speed-up vs 1 GPU (wall) | max rel. diff vs 1 GPU |",
            "|---|---|---|---|---|---|",
        ]
        for row in gpu["rows"]:
            out.append(
                f"| {row['case']} | {row['processes']} | {row['wall_s']:.1f} | {row['in_process_s']:.1f} | "
                f"{row['speedup_vs_1_gpu']:.2f}x | {row['max_rel_diff_vs_1_gpu']:.1e} |"
            )
        out.append("")
    if "multi_gpu" in gpu:
        out += [f"Multi-GPU: {gpu['multi_gpu']}.", ""]
    return "\n".join(out)


if __name__ == "__main__":
    main()
