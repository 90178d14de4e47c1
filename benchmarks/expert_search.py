"""Expert search at Hub scale: two-stage search (faiss HNSW candidates + exact d_asym re-ranking)
against the exact ranking, on 10,000 and 100,000 synthetic experts with the embedded probe's layout.

    python benchmarks/expert_search.py                 # 10k and 100k (results/expert_search.md + .json)
    python benchmarks/expert_search.py --sizes 2000 --queries 50 --name expert_search.quick

The experts are synthetic (no Hub index of 100k experts exists offline) but shaped like the real ones
in ``benchmarks/results/expert_index/experts.safetensors`` (13 real embeddings of the embedded probe,
21,008 filters, 49 layers; the data Fisher part, above the prior floor the index stores as ``trivial``,
which every synthetic expert shares as well): per filter the mean of the log Fisher and the fraction of zeros are taken
from the real embeddings, and per layer the spread of the log values, split into a per-expert offset
(``tau``) and per-filter noise (``s``), heavy-tailed like the real ones (``s`` up to ~6.6 nats in the
last layer). Experts come in task clusters (log-normal sizes, mean ~25) inside 50 domains, so that
nearest neighbours mean something; queries are new tasks drawn from a random cluster.

Reference: the exact float64-accumulated ``d_asym`` (alpha 0.15) of every query to every expert, from
the float64 values (regenerated chunk by chunk). Reported: median / p90 query time of the two-stage
search, of the exact scan over float16 copies (what ``exact=True`` costs with the fused kernel), of
the previous torch kernel (10k only: it needs float32 copies of every expert), top-10 agreement with
the reference, and memory per expert.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import faiss
import numba
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hf_task2vec import _dsym_kernels as kernels  # noqa: E402
from hf_task2vec.ann import DEFAULT_COMPONENTS, TwoStageIndex  # noqa: E402

REAL = ROOT / "benchmarks" / "results" / "expert_index" / "experts.safetensors"
ALPHA = 0.15
TRIVIAL = 1e-6  # montecarlo trivial embedding of the embedded probe (its prior_fisher), for indexes without one
CHUNK = 2000


class ExpertModel:
    """Synthetic experts shaped like the real embeddings (see the module docstring)."""

    def __init__(self, n: int, seed: int = 0) -> None:
        from safetensors import safe_open
        from safetensors.numpy import load_file

        stored = load_file(str(REAL))
        # the robust default's embeddings are the data Fisher lifted by a prior shared by every task (the
        # index's `trivial`): model the data part and add the same floor back (montecarlo-era indexes
        # have a tiny constant floor instead)
        dim = stored["values"].shape[1]
        floor = stored["trivial"][0].astype(np.float64) if "trivial" in stored else np.full(dim, TRIVIAL)
        real = np.clip(stored["values"].astype(np.float64) - floor, 0.0, None)
        self.floor = floor
        layers = json.loads(safe_open(str(REAL), "np").metadata()["layers"])
        nz = real > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.where(nz, np.log(np.where(nz, real, 1.0)), np.nan)
            mu = np.nanmean(logs, axis=0)
        self.dim = real.shape[1]
        self.p_zero = 1.0 - nz.mean(axis=0)
        self.tau = np.empty(self.dim)
        self.s = np.empty(self.dim)
        self.layers = layers
        for _, a, b in layers:
            res = logs[:, a:b] - mu[a:b]
            with np.errstate(invalid="ignore"):
                rowm = np.nanmean(res, axis=1)
            lmu = np.nanmean(mu[a:b]) if np.isfinite(mu[a:b]).any() else -10.0
            mu[a:b] = np.where(np.isfinite(mu[a:b]), mu[a:b], lmu)
            self.tau[a:b] = np.nanstd(rowm) if np.isfinite(rowm).sum() > 1 else 0.5
            s = np.nanstd(res - rowm[:, None])
            self.s[a:b] = s if np.isfinite(s) else 1.0
        self.mu = mu
        self.n = n
        self.seed = seed
        rng = np.random.default_rng(seed)
        sizes = np.maximum(1, rng.lognormal(np.log(18), 0.8, size=n)).astype(np.int64)
        bounds = np.cumsum(sizes)
        k = int(np.searchsorted(bounds, n)) + 1
        self.cluster_of = np.minimum(np.searchsorted(bounds, np.arange(n), side="right"), k - 1)
        self.n_clusters = k
        self.domain_of_cluster = rng.integers(0, 50, size=k)

    def _domain(self, g: int) -> np.ndarray:
        return np.random.default_rng([self.seed, 1, g]).standard_normal(self.dim)

    def _cluster(self, c: int) -> tuple[np.ndarray, np.ndarray, float]:
        rng = np.random.default_rng([self.seed, 2, c])
        return rng.standard_normal(self.dim), rng.random(self.dim), float(rng.standard_normal())

    def _draw(self, clusters: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = np.empty((clusters.size, self.dim))
        cache: dict[int, tuple] = {}
        for r, c in enumerate(clusters.tolist()):
            if c not in cache:
                cache.clear()
                z, u, row = self._cluster(c)
                cache[c] = (z, u, row, self._domain(int(self.domain_of_cluster[c])))
            z, u, row, g = cache[c]
            own = rng.standard_normal(self.dim)
            offset = self.tau * (0.7 * row + 0.7 * rng.standard_normal())
            logs = self.mu + offset + self.s * (0.55 * g + 0.55 * z + 0.63 * own)
            flip = rng.random(self.dim) < 0.15
            u_e = np.where(flip, rng.random(self.dim), u)
            out[r] = self.floor + np.where(u_e < self.p_zero, 0.0, np.exp(logs))
        return out

    def chunk(self, i: int) -> np.ndarray:
        """Experts ``[i * CHUNK, (i + 1) * CHUNK)`` (the same values every call)."""
        lo, hi = i * CHUNK, min(self.n, (i + 1) * CHUNK)
        return self._draw(self.cluster_of[lo:hi], np.random.default_rng([self.seed, 3, i]))

    def chunks(self):
        for i in range((self.n + CHUNK - 1) // CHUNK):
            yield self.chunk(i)

    def queries(self, q: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 4])
        return self._draw(rng.choice(self.cluster_of, size=q), rng)


def old_sym_rows(rows: np.ndarray, query: np.ndarray, chunk: int = 32) -> np.ndarray:
    """The previous `ExpertIndex` kernel (torch float32, three dot products per row), the baseline."""
    import torch

    A = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))
    B = torch.from_numpy(np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32))
    n, dim = A.shape
    out = np.empty(n)
    u_buf, v_buf = torch.empty(chunk, dim), torch.empty(chunk, dim)
    with torch.no_grad():
        for start in range(0, n, chunk):
            a = A[start : start + chunk]
            m = a.shape[0]
            u, v = u_buf[:m], v_buf[:m]
            torch.add(a, B, out=v)
            torch.div(a, v, out=u)
            torch.div(B.expand_as(a), v, out=v)
            torch.nan_to_num_(u, nan=0.5)
            torch.nan_to_num_(v, nan=0.5)
            uv = torch.linalg.vecdot(u, v).double()
            uu = torch.linalg.vecdot(u, u).double()
            vv = torch.linalg.vecdot(v, v).double()
            out[start : start + m] = (1.0 - uv / torch.sqrt(uu * vv)).numpy()
    return out


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    part = np.argpartition(scores, k - 1)[:k]
    return part[np.lexsort((part, scores[part]))]


def run_size(n: int, args) -> dict:
    t0 = time.perf_counter()
    model = ExpertModel(n, seed=args.seed)
    queries = model.queries(args.queries)
    trivial = model.floor[None]
    # one index per candidate-space size (the first is the baseline: the previous default)
    indexes, build_s = {}, {}
    for comps in args.components:
        t = time.perf_counter()
        indexes[comps] = TwoStageIndex.build(model.chunks, trivial=trivial, alpha=ALPHA, n_components=comps)
        build_s[comps] = time.perf_counter() - t
    index = indexes[args.components[-1]]
    bias = -ALPHA * index.complexity
    # reference: exact d_asym from the float64 values; float32 copies for the final exact step (in RAM
    # up to --ram-max experts, else a memory-mapped file)
    if n <= args.ram_max:
        values = np.empty((n, model.dim), np.float32)
    else:
        values = np.lib.format.open_memmap(Path(args.tmp) / f"experts_{n}.npy", "w+", np.float32, (n, model.dim))
    t = time.perf_counter()
    ref = np.empty((args.queries, n))
    for i in range((n + CHUNK - 1) // CHUNK):
        c = model.chunk(i)
        lo = i * CHUNK
        values[lo : lo + c.shape[0]] = c
        ref[:, lo : lo + c.shape[0]] = (
            kernels.pairwise_sym(c, queries) - ALPHA * kernels.rowwise_sym(c, trivial)[:, None]
        ).T
    ref_s = time.perf_counter() - t
    if isinstance(values, np.memmap):
        values.flush()
    ref_top = [top_k(ref[q], args.k) for q in range(args.queries)]
    rows = []
    runs = [(comps, c, args.refine) for comps in args.components for c in args.candidates]
    for comps, cands, refine in runs + [(args.components[-1], args.candidates[-1], -1)]:
        index = indexes[comps]
        index.values = values if refine >= 0 else None
        times, same_set, same_order, cand_recall = [], 0, 0, []
        for q in range(args.queries):
            t = time.perf_counter()
            idx, _ = index.search(queries[q], args.k, candidates=cands, bias=bias, refine=max(refine, 0))
            times.append(time.perf_counter() - t)
            same_set += set(idx.tolist()) == set(ref_top[q].tolist())
            same_order += bool(np.array_equal(idx, ref_top[q]))
            cand = set(index.candidates(queries[q], cands).tolist())
            cand_recall.append(len(cand & set(ref_top[q].tolist())) / args.k)
        times.sort()
        rows.append(
            {
                "components": comps,
                "candidates": cands,
                "refine": refine if refine >= 0 else "none (codes only)",
                "median_ms": 1e3 * statistics.median(times),
                "p90_ms": 1e3 * times[int(0.9 * (len(times) - 1))],
                "top10_same_set": same_set / args.queries,
                "top10_same_order": same_order / args.queries,
                "candidate_recall_at_10": float(np.mean(cand_recall)),
            }
        )
        print(n, rows[-1], flush=True)
    index.values = values
    # exact scans for a few queries: all 16-bit codes (fused kernel), and float32 values in RAM
    code_times, code_same, f32_times = [], 0, []
    # what ExpertIndex(exact=True) does: float32 rows scaled once, one fused pass per query
    prepared = kernels.ScaledRows(values) if not isinstance(values, np.memmap) else None
    for q in range(min(args.queries, args.exact_queries)):
        t = time.perf_counter()
        scores = index.exact(queries[q], bias=bias)
        code_times.append(time.perf_counter() - t)
        code_same += bool(np.array_equal(top_k(scores, args.k), ref_top[q]))
        if prepared is not None:
            t = time.perf_counter()
            prepared.to_query(queries[q])
            f32_times.append(time.perf_counter() - t)
    out = {
        "experts": n,
        "dim": model.dim,
        "clusters": model.n_clusters,
        "queries": args.queries,
        "k": args.k,
        "build_s": {str(c): s for c, s in build_s.items()},
        "reference_s": ref_s,
        "bytes_per_expert": {str(c): ix.bytes_per_expert for c, ix in indexes.items()},
        "codes_storage_mb": index.codes.nbytes / 2**20,
        "float32_values": "RAM" if not isinstance(values, np.memmap) else "memory-mapped file",
        "two_stage": rows,
        "exact_codes_median_ms": 1e3 * statistics.median(code_times),
        "exact_codes_top10_same_order": code_same / len(code_times),
    }
    if f32_times:
        out["exact_float32_median_ms"] = 1e3 * statistics.median(f32_times)
    if n <= args.old_kernel_max and not isinstance(values, np.memmap):
        comp = kernels.rowwise_sym(values, trivial)
        old = []
        for q in range(min(args.queries, 3)):
            t = time.perf_counter()
            old_sym_rows(values, queries[q]) - ALPHA * comp
            old.append(time.perf_counter() - t)
        out["old_kernel_exact_median_ms"] = 1e3 * statistics.median(old)
    del values, prepared
    if n > args.ram_max:
        (Path(args.tmp) / f"experts_{n}.npy").unlink(missing_ok=True)
    out["wall_s"] = time.perf_counter() - t0
    print(json.dumps({k: v for k, v in out.items() if k != "two_stage"}), flush=True)
    return out


def refine_label(refine: int | str) -> str:
    return refine if isinstance(refine, str) else f"k+{refine}"


def write_markdown(results: dict, path: Path) -> None:
    lines = [
        "# Expert search: two-stage (faiss HNSW candidates + exact d_asym re-ranking) vs exact",
        "",
        f"Machine: {results['machine']}. Command: `{results['command']}`. Load average at start: "
        f"{', '.join(f'{x:.1f}' for x in results['load'])}. Synthetic experts shaped like the real embedded-probe "
        "embeddings (see the script's docstring); reference = exact d_asym (alpha 0.15) from the float64 values. "
        "One query at a time, all timings in the same run.",
        "",
        "| experts | components | candidates | exact re-score of best | median ms | p90 ms | top-10 = exact (set) "
        "| top-10 = exact (order) | candidate recall@10 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["sizes"]:
        for row in r["two_stage"]:
            lines.append(
                f"| {r['experts']:,} | {row.get('components', 128)} | {row['candidates']} "
                f"| {refine_label(row['refine'])} "
                f"| {row['median_ms']:.2f} | {row['p90_ms']:.2f} | {100 * row['top10_same_set']:.1f}% "
                f"| {100 * row['top10_same_order']:.1f}% | {row['candidate_recall_at_10']:.4f} |"
            )
    lines += [
        "",
        "| experts | clusters | build s (per components) | RAM per expert | 16-bit codes | exact scan, codes (ms) "
        "| exact scan, float32 (ms) | previous exact kernel (ms) | codes-only top-10 order = exact |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["sizes"]:
        old = f"{r['old_kernel_exact_median_ms']:.0f}" if "old_kernel_exact_median_ms" in r else "-"
        f32 = f"{r['exact_float32_median_ms']:.0f}" if "exact_float32_median_ms" in r else "-"
        build = ", ".join(f"{c}: {s:.0f}" for c, s in r["build_s"].items())
        ram = ", ".join(f"{c}: {b / 1024:.1f} KB" for c, b in r["bytes_per_expert"].items())
        lines.append(
            f"| {r['experts']:,} | {r['clusters']:,} | {build} | {ram} "
            f"(+ {4 * r['dim'] / 1024:.0f} KB float32 in {r['float32_values']}) | {r['codes_storage_mb']:.0f} MB "
            f"| {r['exact_codes_median_ms']:.0f} | {f32} | {old} | {100 * r['exact_codes_top10_same_order']:.0f}% |"
        )
    lines.append("")
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--queries", default="200,100", help="queries per size (comma-separated, aligned)")
    parser.add_argument("--exact-queries", type=int, default=5)
    parser.add_argument("--candidates", default="256,1024")
    parser.add_argument(
        "--components", default=f"128,{DEFAULT_COMPONENTS}", help="candidate-space sizes; the first is the baseline"
    )
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--old-kernel-max", type=int, default=10_000)
    parser.add_argument("--refine", type=int, default=10, help="best candidates re-scored from float32 values")
    parser.add_argument("--ram-max", type=int, default=20_000, help="above this, float32 values are memory-mapped")
    parser.add_argument("--tmp", default="/tmp", help="folder of the memory-mapped float32 values")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--name", default="expert_search")
    args = parser.parse_args()
    args.candidates = [int(c) for c in args.candidates.split(",")]
    args.components = [int(c) for c in args.components.split(",")]
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"numba {numba.__version__} ({numba.get_num_threads()} threads), faiss {faiss.__version__}",
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "load": os.getloadavg(),
        "sizes": [],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    queries = [int(q) for q in args.queries.split(",")]
    for i, n in enumerate(sizes):
        args.queries = queries[min(i, len(queries) - 1)]
        results["sizes"].append(run_size(n, args))
        (out / f"{args.name}.json").write_text(json.dumps(results, indent=1))
        write_markdown(results, out / f"{args.name}.md")
    print(f"wrote {out / args.name}.md")


if __name__ == "__main__":
    main()
