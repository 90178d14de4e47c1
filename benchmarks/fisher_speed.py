# ruff: noqa: B023  (closures over loop variables are called at once by timeit)
"""Speed and memory of the per-sample Fisher, side by side with its baselines in the same run.

    python benchmarks/fisher_speed.py            # full CPU run (results/fisher_speed.md + .json)
    python benchmarks/fisher_speed.py --quick    # a few minutes
    python benchmarks/fisher_speed.py --sections gpu --device cuda   # the GPU section only

Every figure is a ratio against a baseline timed in the same process, interleaved, median of
repeats: images/s of the montecarlo Fisher vs a plain training step (forward + backward with weight
gradients); vs a python loop over single samples and vs ``torch.func.vmap(grad)``; exact and
variational vs montecarlo; peak RSS and time vs number of images (each N in a fresh subprocess);
``distance_matrix`` on many embeddings; and, where CUDA is present, a GPU section.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hf_task2vec.fisher import fisher_diagonal  # noqa: E402
from hf_task2vec.probes import Probe, load_probe  # noqa: E402
from hf_task2vec.robust import fisher_variational  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up (autotuning, allocator)
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def make_probe(name: str, res: int, device: torch.device, classes: int = 10) -> Probe:
    if name == "embedded":
        probe = load_probe("embedded", image_size=res)
    else:  # an architecture for speed only (random init: no weights needed for timing)
        probe = load_probe(name, pretrained=False, image_size=res)
    probe.to(device)
    head = probe.reset_head(classes, probe.num_features)
    with torch.no_grad():
        head.weight.normal_(0, 0.05, generator=torch.Generator(device=device).manual_seed(0))
    return probe


def train_step(probe: Probe, x: torch.Tensor, y: torch.Tensor) -> None:
    for p in probe.parameters():
        p.requires_grad_(True)
        p.grad = None
    F.cross_entropy(probe(x), y).backward()


def loop_baseline(probe: Probe, x: torch.Tensor) -> None:
    """Per-sample gradients by a python loop over single samples (one label draw each)."""
    params = [dict(probe.backbone.named_modules())[g.name].weight for g in probe.filters]
    for p in probe.parameters():
        p.requires_grad_(True)
    acc = [torch.zeros_like(p) for p in params]
    for i in range(x.shape[0]):
        logp = F.log_softmax(probe(x[i : i + 1]), -1)[0]
        y = torch.multinomial(logp.detach().exp(), 1)[0]
        for a, g in zip(acc, torch.autograd.grad(logp[y], params), strict=True):
            a += g.square()


def section_speed(args, device, results):
    rows = []
    for res in args.resolutions:
        for probe_name in args.probes:
            probe = make_probe(probe_name, res, device)
            probe.eval()
            x = torch.randn(args.batch, 3, res, res, device=device)
            y = torch.randint(0, 10, (args.batch,), device=device)
            batches = [(x, y)]
            timings = {
                "train_step": timeit(lambda: train_step(probe, x, y), device, args.repeats),
                "fisher_montecarlo": timeit(lambda: fisher_diagonal(probe, batches), device, args.repeats),
            }
            if res <= 64 or args.all_baselines:
                timings["fisher_exact_10cls"] = timeit(
                    lambda: fisher_diagonal(probe, batches, method="exact"), device, max(1, args.repeats // 2)
                )
                timings["vmap_grad"] = timeit(
                    lambda: fisher_diagonal(probe, batches, strategy="functional"), device, max(1, args.repeats // 2)
                )
                timings["python_loop"] = timeit(lambda: loop_baseline(probe, x), device, 1)

                def variational_epoch():
                    fisher_variational(probe, lambda e: batches, args.batch, epochs=1)

                timings["variational_step"] = timeit(variational_epoch, device, max(1, args.repeats // 2))
            base = timings["fisher_montecarlo"]
            row = {
                "probe": probe_name,
                "resolution": res,
                "batch": args.batch,
                "device": str(device),
                "seconds": timings,
                "images_per_s": {k: args.batch / v for k, v in timings.items()},
                "montecarlo_vs_train_step": timings["train_step"] / base,
            }
            for k in ("vmap_grad", "python_loop", "fisher_exact_10cls", "variational_step"):
                if k in timings:
                    row[f"montecarlo_speedup_vs_{k}"] = timings[k] / base
            rows.append(row)
            print(json.dumps(row, indent=1), flush=True)
    results["speed"] = rows


MEMORY_WORKER = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
import hf_task2vec as t2v
from hf_task2vec.data import load_offline
n, res = {n}, {res}
ds = load_offline({dataset!r}, {split!r})
task = t2v.load_task(ds, name={dataset!r})
emb = t2v.Task2Vec("embedded", max_samples=n, image_size=res, batch_size=32, progress=False, device={device!r})
t = time.perf_counter()
e = emb.embed(task)
print(json.dumps({{"n": n, "seconds": time.perf_counter() - t,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def section_memory(args, device, results):
    rows = []
    for n in args.memory_sizes:
        code = MEMORY_WORKER.format(
            root=str(ROOT),
            n=n,
            res=args.memory_resolution,
            dataset=args.memory_dataset,
            split=args.memory_split,
            device=str(device),
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        row["images_per_s"] = n / row["seconds"]
        rows.append(row)
        print(row, flush=True)
    results["memory"] = {
        "resolution": args.memory_resolution,
        "dataset": f"{args.memory_dataset} ({args.memory_split})",
        "device": str(device),
        "rows": rows,
    }


def section_distance(args, device, results):
    from hf_task2vec.distance import pairwise_distances

    rows = []
    rng = np.random.default_rng(0)
    for n in args.distance_sizes:
        a = rng.gamma(0.5, size=(n, 21_008)).astype(np.float32)
        t = time.perf_counter()
        pairwise_distances(a, a, device=device if device.type == "cuda" else None)
        if device.type == "cuda":
            torch.cuda.synchronize()
        sec = time.perf_counter() - t
        rows.append({"n": n, "dim": 21_008, "seconds": sec, "pairs_per_s": n * n / sec, "device": str(device)})
        print(rows[-1], flush=True)
    results["distance_matrix"] = rows


def section_gpu(args, device, results):
    if not torch.cuda.is_available():
        results["gpu"] = "skipped: CUDA not available"
        return
    dev = torch.device("cuda")
    rows = []
    for probe_name in ("embedded", "resnet34"):
        probe = make_probe(probe_name, 224, dev)
        probe.eval()
        x = torch.randn(args.gpu_batch, 3, 224, 224, device=dev)
        y = torch.randint(0, 10, (args.gpu_batch,), device=dev)
        batches = [(x, y)]
        out = {"probe": probe_name, "batch": args.gpu_batch, "card": torch.cuda.get_device_name(dev)}
        torch.cuda.reset_peak_memory_stats(dev)
        out["train_step_s"] = timeit(lambda: train_step(probe, x, y), dev, args.repeats)
        out["train_peak_mem_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
        torch.cuda.reset_peak_memory_stats(dev)
        ref = fisher_diagonal(probe, batches, method="exact")
        out["fisher_s"] = timeit(lambda: fisher_diagonal(probe, batches), dev, args.repeats)
        out["fisher_peak_mem_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
        fast = fisher_diagonal(probe, batches, method="exact", precision="bf16", channels_last=True)
        out["fisher_bf16_cl_s"] = timeit(
            lambda: fisher_diagonal(probe, batches, precision="bf16", channels_last=True), dev, args.repeats
        )
        probe.to(memory_format=torch.contiguous_format)
        from scipy.stats import spearmanr

        out["bf16_rel_l1_error"] = float(np.abs(fast.values - ref.values).sum() / ref.values.sum())
        out["bf16_spearman"] = float(spearmanr(fast.values, ref.values)[0])
        out["images_per_s_fisher"] = args.gpu_batch / out["fisher_s"]
        out["images_per_s_train"] = args.gpu_batch / out["train_step_s"]
        out["fisher_vs_train_step"] = out["train_step_s"] / out["fisher_s"]
        out["bf16_speedup"] = out["fisher_s"] / out["fisher_bf16_cl_s"]
        rows.append(out)
        print(json.dumps(out, indent=1), flush=True)
    results["gpu"] = rows


def write_markdown(results: dict, path: Path) -> None:
    lines = [
        "# Fisher speed and memory",
        "",
        f"Machine: {results['machine']}. Command: `{results['command']}`. Every ratio compares two timings "
        "taken in the same process (median of repeats).",
        "",
    ]
    if "speed" in results:
        lines += [
            "## Montecarlo Fisher vs a training step and per-sample baselines",
            "",
            "| probe | px | batch | train step img/s | Fisher img/s | Fisher / train step | x vmap(grad) "
            "| x python loop | exact (10 cls) cost | variational step cost |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in results["speed"]:
            ips = r["images_per_s"]

            def fmt(key, row=r):
                return f"{row[key]:.2f}x" if key in row else "-"

            exact = r["seconds"].get("fisher_exact_10cls")
            var = r["seconds"].get("variational_step")
            base = r["seconds"]["fisher_montecarlo"]
            lines.append(
                f"| {r['probe']} | {r['resolution']} | {r['batch']} | {ips['train_step']:.1f} | "
                f"{ips['fisher_montecarlo']:.1f} | **{r['montecarlo_vs_train_step']:.2f}x** | "
                f"{fmt('montecarlo_speedup_vs_vmap_grad')} | {fmt('montecarlo_speedup_vs_python_loop')} | "
                f"{(exact or float('nan')) / base:.2f}x mc | {(var or float('nan')) / base:.2f}x mc |"
            )
        lines += ["", "`Fisher / train step` is the Fisher's throughput over a training step's (target >= 0.7x).", ""]
    if "memory" in results:
        m = results["memory"]
        lines += [
            f"## Peak memory and time vs number of images ({m['resolution']} px, embedded probe, {m['dataset']}, "
            f"device {m['device']})",
            "",
            "| images | seconds | images/s | peak RSS (MB) |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {r['n']} | {r['seconds']:.1f} | {r['images_per_s']:.1f} | {r['peak_rss_mb']:.0f} |" for r in m["rows"]
        ]
        lines.append("")
    if "distance_matrix" in results:
        lines += [
            "## distance_matrix (symmetric, D = 21,008)",
            "",
            "| n | device | seconds | pairs/s |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {r['n']} | {r['device']} | {r['seconds']:.2f} | {r['pairs_per_s']:.0f} |"
            for r in results["distance_matrix"]
        ]
        lines.append("")
    if "gpu" in results:
        lines += ["## GPU", ""]
        if isinstance(results["gpu"], str):
            lines.append(results["gpu"])
        else:
            lines += [
                "| probe | card | batch | train img/s | Fisher img/s | Fisher / train | bf16+NHWC speed-up "
                "| bf16 rel. L1 error | bf16 Spearman | Fisher peak GPU MB | train peak GPU MB |",
                "|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            for r in results["gpu"]:
                lines.append(
                    f"| {r['probe']} | {r['card']} | {r['batch']} | {r['images_per_s_train']:.0f} | "
                    f"{r['images_per_s_fisher']:.0f} | {r['fisher_vs_train_step']:.2f}x | {r['bf16_speedup']:.2f}x | "
                    f"{r['bf16_rel_l1_error']:.4f} | {r['bf16_spearman']:.4f} | {r['fisher_peak_mem_mb']:.0f} | "
                    f"{r['train_peak_mem_mb']:.0f} |"
                )
        lines.append("")
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sections", default="speed,memory,distance,gpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--name", default="fisher_speed", help="results file stem")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (e.g. 2 to mimic 2 cores)")
    parser.add_argument("--memory-dataset", default="fashion-mnist")
    parser.add_argument("--memory-split", default="train")
    parser.add_argument("--memory-sizes", dest="memory_sizes_arg", default=None, help="comma-separated image counts")
    parser.add_argument("--distance-sizes", dest="distance_sizes_arg", default=None, help="comma-separated counts")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.probes = ["embedded"]
    args.resolutions = [64, 224]
    args.batch = 32
    args.repeats = 3 if args.quick else 5
    args.all_baselines = False
    args.memory_resolution = 224
    args.memory_sizes = [256, 512, 1024] if args.quick else [1000, 5000, 10000]
    args.distance_sizes = [100, 300] if args.quick else [100, 300, 1000]
    if args.memory_sizes_arg:
        args.memory_sizes = [int(v) for v in args.memory_sizes_arg.split(",")]
    if args.distance_sizes_arg:
        args.distance_sizes = [int(v) for v in args.distance_sizes_arg.split(",")]
    args.gpu_batch = 64
    device = torch.device(args.device)
    torch.manual_seed(0)
    results: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads"
        + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    sections = {"speed": section_speed, "memory": section_memory, "distance": section_distance, "gpu": section_gpu}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.sections.split(","):
        t = time.perf_counter()
        sections[name](args, device, results)
        print(f"[{name}] {time.perf_counter() - t:.0f} s", flush=True)
        # written after every section, so a run cut short keeps what it measured
        (out / f"{args.name}.json").write_text(json.dumps(results, indent=1))
        write_markdown(results, out / f"{args.name}.md")
    print(f"wrote {out / args.name}.md")


if __name__ == "__main__":
    main()
