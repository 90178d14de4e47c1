# ruff: noqa: B023  (closures over loop variables are called at once by timeit)
"""Speed and memory of the per-sample Fisher, side by side with its baselines in the same run.

    python benchmarks/fisher_speed.py            # full CPU run (results/fisher_speed.md + .json)
    python benchmarks/fisher_speed.py --quick    # a few minutes
    python benchmarks/fisher_speed.py --sections gpu --device cuda   # the GPU section only
    python benchmarks/fisher_speed.py --sections text --threads 1 --name fisher_speed_text   # text (MiniLM)

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
import re
import statistics
import subprocess
import sys
import tempfile
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
import json, resource, sys, threading, time
sys.path.insert(0, {root!r})
import torch
torch.set_num_threads({threads})
import hf_task2vec as t2v
from hf_task2vec.data import load_offline

def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

start = time.perf_counter()
def report():  # a killed run still leaves its peak so far
    while True:
        time.sleep(15)
        row = {{"partial": True, "seconds": time.perf_counter() - start, "peak_rss_mb": rss_mb()}}
        print(json.dumps(row), flush=True)
threading.Thread(target=report, daemon=True).start()
n, res = {n}, {res}
ds = load_offline({dataset!r}, {split!r})
task = t2v.load_task(ds, name={dataset!r})
emb = t2v.Task2Vec("embedded", max_samples=n, image_size=res, progress=True, device={device!r}{extra})
before = rss_mb()
t = time.perf_counter()
e = emb.embed(task)
print(json.dumps({{"n": n, "resolution": res, "seconds": time.perf_counter() - t, "batch_size": emb.pass_batch_size,
                  "rss_before_embed_mb": before, "peak_rss_mb": rss_mb(), "num_samples": int(e.meta["num_samples"]),
                  "method": e.meta.get("method", "")}}),
      flush=True)
"""


BATCH_MEMORY_WORKER = r"""
import json, resource, sys
sys.path.insert(0, {root!r})
import torch
torch.set_num_threads({threads})
import hf_task2vec as t2v
from hf_task2vec.fisher import fisher_diagonal
emb = t2v.Task2Vec("embedded", image_size={res}, batch_size={batch}, device="cpu")
probe = emb.probe
probe.reset_head(10, probe.num_features)
x = torch.rand({batch}, 3, {res}, {res}, generator=torch.Generator().manual_seed(0))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
fisher = emb.fisher_pass(probe, iter([(x, torch.zeros({batch}, dtype=torch.long))]))
print(json.dumps({{"batch": {batch}, "resolution": {res}, "method": emb.method, "rss_before_mb": before,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}), flush=True)
"""


def section_memory_batch(args, device, results):
    """Peak RSS of the default estimator's Fisher pass over ONE batch at 224 px per batch size (a child
    each): with a streamed Fisher this is what sets an embed's peak, whatever N."""
    rows = []
    for batch in args.memory_batches:
        code = BATCH_MEMORY_WORKER.format(root=str(ROOT), threads=args.memory_threads, res=224, batch=batch)
        env = {**os.environ, "OMP_NUM_THREADS": str(args.memory_threads)}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        lines = [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]
        rows.append(lines[-1] if lines else {"batch": batch, "error": out.stderr.strip().splitlines()[-1:]})
        print(rows[-1], flush=True)
    results["memory_batch"] = {"load_at_start": os.getloadavg(), "rows": rows}


def _memory_child(args, device, n: int, res: int) -> tuple[subprocess.Popen, Path]:
    code = MEMORY_WORKER.format(
        root=str(ROOT),
        n=n,
        res=res,
        dataset=args.memory_dataset,
        split=args.memory_split,
        device=str(device),
        threads=args.memory_threads,
        extra=f", batch_size={args.memory_batch}" if args.memory_batch else "",
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(args.memory_threads)}
    log = Path(tempfile.mkdtemp(prefix="t2v_mem_")) / "child"
    with open(f"{log}.out", "w") as out, open(f"{log}.err", "w") as err:  # files: no pipe can fill up
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=err, text=True, env=env)
    return proc, log


def section_memory(args, device, results):
    """Peak RSS of one whole embed (head fit + Fisher) per (N, resolution), each in a fresh child process
    (`--memory-jobs` at a time, largest first; a child past `--memory-timeout` s is stopped and its peak
    so far is reported as unfinished)."""
    # the largest N of every resolution starts at once (one slot each), the others share the last slot, smallest first
    biggest = max(args.memory_sizes)
    jobs = [(n, r) for r in args.memory_resolutions for n in args.memory_sizes]
    jobs.sort(key=lambda j: (j[0] != biggest, j[0] * j[1] ** 2))
    running: list[tuple[tuple[int, int], subprocess.Popen, Path, float]] = []
    rows = []
    results["memory"] = {
        "dataset": f"{args.memory_dataset} ({args.memory_split}; real 28x28 images resized by the probe's transform)",
        "device": str(device),
        "threads_per_child": args.memory_threads,
        "load_at_start": os.getloadavg(),
        "rows": rows,
    }
    section_start = time.perf_counter()
    while jobs or running:
        while jobs and len(running) < args.memory_jobs and time.perf_counter() - section_start < args.memory_deadline:
            job = jobs.pop(0)
            running.append((job, *_memory_child(args, device, *job), time.perf_counter()))
        if jobs and time.perf_counter() - section_start >= args.memory_deadline:
            left = "not started (deadline)"
            rows += [{"n": n, "resolution": r, "finished": False, "stopped_in": left} for n, r in jobs]
            jobs.clear()
        time.sleep(2)
        for item in list(running):
            (n, res), proc, log, started = item
            now = time.perf_counter()
            timed_out = now - started > args.memory_timeout or now - section_start > args.memory_deadline
            if proc.poll() is None and not timed_out:
                continue
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            out, err = Path(f"{log}.out").read_text(), Path(f"{log}.err").read_text()
            running.remove(item)
            lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
            final = [x for x in lines if not x.get("partial")]
            if final:
                row = final[-1]
                row["images_per_s"] = n / row["seconds"]
                row["finished"] = True
            else:
                last = lines[-1] if lines else {}
                bars = re.findall(r"(features|fisher)[^|\r\n]*\|[^|\r\n]*\|\s*(\d+)/(\d+)", err)
                stage = f"{bars[-1][0]} pass at {bars[-1][1]}/{bars[-1][2]} images" if bars else "not started"
                row = {"n": n, "resolution": res, "finished": False, "seconds": last.get("seconds"),
                       "peak_rss_mb": last.get("peak_rss_mb"), "stopped_in": stage,
                       "error": [] if timed_out else err.strip().splitlines()[-1:]}
            rows.append(row)
            print(row, flush=True)
    rows.sort(key=lambda r: (r["resolution"], r["n"]))
    growth = {}
    for res in args.memory_resolutions:
        done = [r for r in rows if r["resolution"] == res and r.get("finished")]  # stopped runs: no growth figure
        if len(done) >= 2:
            growth[str(res)] = done[-1]["peak_rss_mb"] - done[0]["peak_rss_mb"]
    results["memory"]["growth_mb_smallest_to_largest"] = growth


def old_sym_matrix(a: np.ndarray, b: np.ndarray, block_bytes: int = 256 * 2**20) -> np.ndarray:
    """The previous CPU kernel of `distance_matrix` (float64 broadcasting blocks), kept as the baseline."""
    ta, tb = torch.from_numpy(np.asarray(a, np.float64)), torch.from_numpy(np.asarray(b, np.float64))
    dim = max(a.shape[1], 1)
    cols = min(b.shape[0], max(1, block_bytes // (8 * dim * 4)))
    rows = max(1, block_bytes // (8 * dim * 4 * cols))
    out = torch.empty(a.shape[0], b.shape[0], dtype=torch.float64)
    for i in range(0, a.shape[0], rows):
        for j in range(0, b.shape[0], cols):
            x, y = ta[i : i + rows, None, :], tb[None, j : j + cols, :]
            s = x + y
            both_zero = s == 0
            w = s.square_().reciprocal_()
            w.masked_fill_(both_zero, 0.0)
            uv = (x * y * w).sum(-1)
            uu = (x.square() * w).sum(-1)
            vv = (y.square() * w).sum(-1)
            extra = both_zero.sum(-1).to(uv.dtype) * 0.25
            uv, uu, vv = uv + extra, uu + extra, vv + extra
            out[i : i + rows, j : j + cols] = 1.0 - uv / torch.sqrt(uu * vv).clamp_min(torch.finfo(torch.float64).tiny)
    return out.numpy()


def section_distance(args, device, results):
    """``pairwise_distances`` (the fused kernel on the CPU) on n x n embeddings of 21,008 filters, against
    the previous float64 kernel timed in the same run on the first ``--distance-baseline-rows`` rows (its
    cost is linear in the number of pairs; the ratio is of pairs per second) and checked to agree."""
    from hf_task2vec.distance import pairwise_distances

    rows = []
    rng = np.random.default_rng(0)
    for n in args.distance_sizes:
        a = (rng.gamma(0.5, size=(n, 21_008)) * np.exp(rng.normal(0, 3, size=21_008))).astype(np.float32)
        a[:, :500] *= rng.random((n, 500)) < 0.7  # some zeros, some filters zero in both
        t = time.perf_counter()
        new = pairwise_distances(a, a, device=device if device.type == "cuda" else None)
        if device.type == "cuda":
            torch.cuda.synchronize()
        sec = time.perf_counter() - t
        row = {"n": n, "dim": 21_008, "seconds": sec, "pairs_per_s": n * n / sec, "device": str(device)}
        if device.type == "cpu" and args.distance_baseline_rows:
            m = min(n, args.distance_baseline_rows)
            t = time.perf_counter()
            old = old_sym_matrix(a[:m], a)
            old_sec = time.perf_counter() - t
            row.update(
                baseline_pairs=m * n,
                baseline_seconds=old_sec,
                baseline_pairs_per_s=m * n / old_sec,
                speedup=(n * n / sec) / (m * n / old_sec),
                max_abs_diff=float(np.abs(old - new[:m]).max()),
            )
        rows.append(row)
        print(rows[-1], flush=True)
    results["distance_matrix"] = rows


def _photo_task(n: int):
    """``n`` rows of real JPEG photos (scikit-learn's two sample photos, 427 x 640, re-encoded at four
    qualities and flipped, so rows differ) in a `datasets.Dataset` with an Image column."""
    import io

    import datasets
    from PIL import Image
    from sklearn.datasets import load_sample_images

    import hf_task2vec as t2v

    photos = []
    for arr in load_sample_images().images:
        for q in (70, 80, 90, 95):
            for flip in (False, True):
                img = Image.fromarray(arr[:, ::-1] if flip else arr)
                buf = io.BytesIO()
                img.save(buf, format="JPEG", quality=q)
                photos.append(buf.getvalue())
    images = [{"bytes": photos[i % len(photos)], "path": None} for i in range(n)]
    rows = {"image": images, "label": [i % 2 for i in range(n)]}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    return t2v.load_task(datasets.Dataset.from_dict(rows, features=features), name="photos")


def section_pipeline(args, device, results):
    """Images/s of the input pipeline alone (decode + probe transform to 224 px, batches of 32, in order)
    with 0, 1 and 2 worker processes, on real Fashion-MNIST (28 x 28 PNG) and on real JPEG photos
    (427 x 640); ratios against 0 workers in the same run."""
    import hf_task2vec as t2v
    from hf_task2vec.data import load_offline

    tasks = {
        "fashion-mnist (28x28 PNG)": t2v.load_task(load_offline("fashion-mnist", "train"), name="fashion"),
        "photos (427x640 JPEG)": _photo_task(args.pipeline_images),
    }
    rows = []
    for name, task in tasks.items():
        indices = np.arange(min(args.pipeline_images, len(task)))
        base = None
        for workers in args.pipeline_workers:
            emb = t2v.Task2Vec("embedded", image_size=224, num_workers=workers, progress=False, device="cpu")
            emb.probe  # noqa: B018  (load the probe outside the timing)
            list(emb.batches(task, indices[:64]))  # warm-up (worker start-up is timed below)
            t = time.perf_counter()
            count = sum(int(x.shape[0]) for x, _ in emb.batches(task, indices))
            sec = time.perf_counter() - t
            ips = count / sec
            base = base or ips
            rows.append({"data": name, "workers": workers, "images": count, "seconds": sec, "images_per_s": ips,
                         "vs_0_workers": ips / base})
            print(rows[-1], flush=True)
    results["pipeline"] = {"load_at_start": os.getloadavg(), "rows": rows}


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


def _text_batch(probe, n: int, length: int, classes: int, device: torch.device):
    """``n`` real mails (SpamAssassin subject + body) tokenised to exactly ``length`` tokens (long texts:
    none ends early, so every row is ``length`` tokens) and random labels."""
    from hf_task2vec.data import load_offline

    ds = load_offline("spamassassin", "train")
    texts = [t for t in ds["text"] if len(t) > 8 * length][:n]
    x = {k: v.to(device) for k, v in probe.tokenize(texts, max_length=length).items()}
    y = torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(0)).to(device)
    return x, y


def section_text(args, device, results):
    """The text Fisher of the offline MiniLM-L6 probe (``"embedded-text"``) vs a plain training step of the
    same encoder + head on the same batch: the default estimator's pass (the exact Fisher along at most
    ``VARIATIONAL_RANK`` label directions + the closed-form robust Fisher, what ``Task2Vec()`` runs) and
    montecarlo (one label draw per text)."""
    import hf_task2vec as t2v

    rows = []
    for length in args.text_lengths:
        for classes in args.text_classes:
            probe = load_probe("embedded-text", max_length=length)
            probe.to(device)
            head = probe.reset_head(classes, probe.num_features)
            with torch.no_grad():
                head.weight.normal_(0, 0.05, generator=torch.Generator(device=device).manual_seed(0))
            probe.eval()
            x, y = _text_batch(probe, args.batch, length, classes, device)
            batches = [(x, y)]
            embedder = t2v.Task2Vec(probe, max_samples=args.batch, device=device, progress=False)

            def default_pass():
                embedder.robust(probe, embedder.fisher_pass(probe, batches), args.batch)

            timings = {
                "train_step": timeit(lambda: train_step(probe, x, y), device, args.repeats),
                "fisher_default": timeit(default_pass, device, args.repeats),
                "fisher_montecarlo": timeit(lambda: fisher_diagonal(probe, batches), device, args.repeats),
            }
            row = {
                "probe": "embedded-text (all-MiniLM-L6-v2)",
                "max_length": length,
                "tokens_per_text": int(x["attention_mask"].sum(1).min()),
                "classes": classes,
                "batch": args.batch,
                "device": str(device),
                "load_average": list(os.getloadavg()),
                "default_method": embedder.method,
                "seconds": timings,
                "texts_per_s": {k: args.batch / v for k, v in timings.items()},
                "default_vs_train_step": timings["train_step"] / timings["fisher_default"],
                "montecarlo_vs_train_step": timings["train_step"] / timings["fisher_montecarlo"],
            }
            rows.append(row)
            print(json.dumps(row, indent=1), flush=True)
    results["text"] = rows


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
    if "text" in results:
        lines += [
            "## Text: the Fisher of the MiniLM-L6 probe vs a training step of the same encoder (same batch, same run)",
            "",
            "| max_length | classes | batch | train step texts/s | default Fisher texts/s | default / train step "
            "| montecarlo texts/s | montecarlo / train step | load average |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in results["text"]:
            tps = r["texts_per_s"]
            lines.append(
                f"| {r['max_length']} | {r['classes']} | {r['batch']} | {tps['train_step']:.1f} | "
                f"{tps['fisher_default']:.1f} | **{r['default_vs_train_step']:.2f}x** | "
                f"{tps['fisher_montecarlo']:.1f} | **{r['montecarlo_vs_train_step']:.2f}x** | "
                f"{r['load_average'][0]:.1f} |"
            )
        lines += [
            "",
            "Real SpamAssassin mails, every text truncated at exactly `max_length` tokens. The default estimator "
            "(`Task2Vec()`, variational) runs the exact Fisher along at most 4 label directions per text, then "
            "the closed-form robust Fisher; montecarlo draws one label per text. Ratio = throughput over a "
            "training step's (forward + backward with weight gradients of encoder and head; target >= 0.7x).",
            "",
        ]
    if "memory" in results:
        m = results["memory"]
        lines += [
            f"## Peak RSS of one embed vs number of images (embedded probe, {m['dataset']}, device {m['device']}, "
            f"{m['threads_per_child']} thread(s) per child, load average at start "
            f"{', '.join(f'{x:.1f}' for x in m['load_at_start'])})",
            "",
            "| px | images | batch | finished | seconds | peak RSS (MB) | RSS before embed (MB) |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in m["rows"]:
            sec = f"{r['seconds']:.0f}" if r.get("seconds") else "-"
            peak = f"{r['peak_rss_mb']:.0f}" if r.get("peak_rss_mb") else "-"
            before = f"{r['rss_before_embed_mb']:.0f}" if r.get("rss_before_embed_mb") else "-"
            done = "yes" if r["finished"] else f"no: stopped in the {r.get('stopped_in', '?')}"
            lines.append(
                f"| {r['resolution']} | {r['n']:,} | {r.get('batch_size', '-')} | {done} | {sec} | {peak} | {before} |"
            )
        if m.get("note"):
            lines.append(f"\n{m['note']}.")
        for res, g in m.get("growth_mb_smallest_to_largest", {}).items():
            lines.append(f"\nGrowth of peak RSS from the smallest to the largest N at {res} px: **{g:+.0f} MB**.")
        lines.append("")
    if "memory_batch" in results:
        lines += [
            "## Peak RSS of the Fisher pass over one batch at 224 px (default estimator, CPU, a child each)",
            "",
            "| batch | method | RSS before (MB) | peak RSS (MB) |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {r['batch']} | {r.get('method', '-')} | {r.get('rss_before_mb', 0):.0f} "
            f"| {r.get('peak_rss_mb', 0):.0f} |"
            for r in results["memory_batch"]["rows"]
        ]
        lines.append("")
    if "distance_matrix" in results:
        lines += [
            "## distance_matrix (symmetric, D = 21,008): fused kernel vs the previous float64 kernel, same run",
            "",
            "| n | device | seconds | pairs/s | previous kernel pairs/s (on rows x n) | speed-up | max abs diff |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in results["distance_matrix"]:
            base = (
                f"{r['baseline_pairs_per_s']:.0f} ({r['baseline_pairs'] // r['n']} x {r['n']}) | "
                f"**{r['speedup']:.0f}x** | {r['max_abs_diff']:.1e}"
                if "speedup" in r
                else "- | - | -"
            )
            lines.append(f"| {r['n']} | {r['device']} | {r['seconds']:.2f} | {r['pairs_per_s']:.0f} | {base} |")
        lines.append("")
    if "pipeline" in results:
        p = results["pipeline"]
        lines += [
            "## Input pipeline alone: decode + transform to 224 px, batches of 32, in order (load average at start "
            f"{', '.join(f'{x:.1f}' for x in p['load_at_start'])})",
            "",
            "| data | workers | images | images/s | vs 0 workers |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['data']} | {r['workers']} | {r['images']} | {r['images_per_s']:.1f} | {r['vs_0_workers']:.2f}x |"
            for r in p["rows"]
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
    parser.add_argument("--sections", default="speed,memory,distance,pipeline,gpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--name", default="fisher_speed", help="results file stem")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (e.g. 2 to mimic 2 cores)")
    parser.add_argument("--memory-dataset", default="fashion-mnist")
    parser.add_argument("--memory-split", default="train")
    parser.add_argument("--memory-sizes", dest="memory_sizes_arg", default=None, help="comma-separated image counts")
    parser.add_argument("--memory-resolutions", default="112,224", help="comma-separated image sides")
    parser.add_argument("--memory-jobs", type=int, default=1, help="child processes at once")
    parser.add_argument("--memory-threads", type=int, default=1, help="torch threads per child")
    parser.add_argument("--memory-timeout", type=float, default=7200.0, help="seconds before a child is stopped")
    parser.add_argument("--memory-deadline", type=float, default=1e9, help="seconds for the whole section")
    parser.add_argument("--memory-batches", type=lambda v: [int(x) for x in v.split(",")], default=[8, 16, 32])
    parser.add_argument("--memory-batch", type=int, default=None, help="batch size (default: the embedder's)")
    parser.add_argument("--distance-sizes", dest="distance_sizes_arg", default=None, help="comma-separated counts")
    parser.add_argument("--distance-baseline-rows", type=int, default=20, help="rows timed with the old kernel")
    parser.add_argument("--pipeline-images", type=int, default=512)
    parser.add_argument("--pipeline-workers", type=lambda v: [int(x) for x in v.split(",")], default=[0, 1, 2])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.probes = ["embedded"]
    args.resolutions = [64, 224]
    args.batch = 32
    args.repeats = 3 if args.quick else 5
    args.all_baselines = False
    args.memory_resolutions = [int(v) for v in args.memory_resolutions.split(",")]
    args.memory_sizes = [256, 512] if args.quick else [256, 2048, 10000]
    args.distance_sizes = [100, 300] if args.quick else [100, 300, 1000]
    if args.memory_sizes_arg:
        args.memory_sizes = [int(v) for v in args.memory_sizes_arg.split(",")]
    if args.distance_sizes_arg:
        args.distance_sizes = [int(v) for v in args.distance_sizes_arg.split(",")]
    args.gpu_batch = 64
    args.text_lengths = [64, 128]
    args.text_classes = [2, 10]
    device = torch.device(args.device)
    torch.manual_seed(0)
    results: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads"
        + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    sections = {
        "speed": section_speed,
        "memory": section_memory,
        "memory_batch": section_memory_batch,
        "distance": section_distance,
        "pipeline": section_pipeline,
        "gpu": section_gpu,
        "text": section_text,
    }
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
