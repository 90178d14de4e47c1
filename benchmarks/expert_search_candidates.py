"""Which part of the two-stage candidate stage loses the exact top-10: the PCA projection or the graph?

`benchmarks/expert_search.py` measures the whole search (PCA + faiss HNSW candidates, then re-ranking).
This script takes the graph out: for the same synthetic experts and queries it ranks every expert by the
*exact* squared L2 distance between projections (plus the asymmetric bias, as the graph stores it) and
reports how often the exact ``d_asym`` top-10 lies among the nearest ``C`` projections, for 64..512
components. If an exact scan of the projections misses as often as the graph does, more graph effort
(``efSearch``) cannot help; more components or more candidates can.

    python benchmarks/expert_search_candidates.py            # 100,000 experts, 100 queries: ~4 min idle

Writes ``benchmarks/results/expert_search_candidates.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "benchmarks"):
    sys.path.insert(0, str(_p))

from expert_search import ALPHA, CHUNK, ExpertModel, top_k  # noqa: E402

from hf_task2vec import _dsym_kernels as kernels  # noqa: E402
from hf_task2vec.ann import TwoStageIndex, _fit_pca  # noqa: E402

COMPONENTS = (64, 128, 256, 512)
CANDIDATES = (128, 256, 512, 1024, 2048)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experts", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    t0 = time.perf_counter()
    load = os.getloadavg()
    n, nq = args.experts, args.queries
    model = ExpertModel(n, seed=0)
    queries = model.queries(nq)
    trivial = model.floor[None]
    n_chunks = (n + CHUNK - 1) // CHUNK
    # the PCA sample: 4,096 experts from ~10 chunks spread over the index (the library samples all rows;
    # the column scale here is that of those chunks)
    rng = np.random.default_rng(0)
    sample = np.concatenate([model.chunk(i) for i in range(0, n_chunks, max(1, n_chunks // 10))])
    scale = sample.max(axis=0)
    scale[~(scale > 0)] = 1.0
    sample = sample[rng.choice(sample.shape[0], min(4096, sample.shape[0]), replace=False)]
    pca = _fit_pca(TwoStageIndex._logs(sample, scale), max(COMPONENTS))
    del sample
    proj = np.empty((n, max(COMPONENTS)), np.float32)
    complexity = np.empty(n)
    ref = np.empty((nq, n))
    for i in range(n_chunks):
        c = model.chunk(i)
        lo, hi = i * CHUNK, i * CHUNK + c.shape[0]
        proj[lo:hi] = pca.transform(TwoStageIndex._logs(c, scale))
        complexity[lo:hi] = kernels.rowwise_sym(c, trivial)
        ref[:, lo:hi] = (kernels.pairwise_sym(c, queries) - ALPHA * complexity[lo:hi, None]).T
    best = [set(top_k(ref[q], 10).tolist()) for q in range(nq)]
    qproj = pca.transform(TwoStageIndex._logs(queries, scale))
    dsym = ref + ALPHA * complexity[None]
    rows = []
    for d in COMPONENTS:
        p, qp = proj[:, :d], qproj[:, :d]
        l2 = (qp**2).sum(1)[:, None] - 2.0 * qp @ p.T + (p**2).sum(1)[None]
        # the exchange rate d_sym ~ c * L2^2 over each query's 1,000 nearest (as the index calibrates it)
        near = np.argsort(l2, axis=1)[:, :1000]
        c = float(np.median(np.take_along_axis(dsym, near, 1) / np.maximum(np.take_along_axis(l2, near, 1), 1e-12)))
        score = l2 - ALPHA * complexity[None] / c
        for cand in CANDIDATES:
            found = [set(np.argpartition(score[q], cand)[:cand].tolist()) for q in range(nq)]
            rows.append(
                {
                    "components": d,
                    "candidates": cand,
                    "recall_at_10": float(np.mean([len(found[q] & best[q]) / 10 for q in range(nq)])),
                    "all_10_found": float(np.mean([best[q] <= found[q] for q in range(nq)])),
                }
            )
            print(rows[-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = {"experts": n, "queries": nq, "load": list(load), "wall_s": time.perf_counter() - t0, "rows": rows}
    (out / "expert_search_candidates.json").write_text(json.dumps(res, indent=1))
    lines = [
        "# The candidate stage without its graph: exact scan of the PCA projections",
        "",
        f"`python benchmarks/expert_search_candidates.py` — {n:,} synthetic experts (`expert_search.py`'s model), "
        f"{nq} queries, load average {load[0]:.1f} at the start, {res['wall_s']:.0f} s. Reference: the exact "
        "float64 d_asym top-10. Compare the graph (`expert_search.md`): 128 components, 256 candidates: 80% "
        "of queries with all 10 found.",
        "",
        "| components | candidates | recall@10 | queries with all 10 found |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['components']} | {r['candidates']:,} | {r['recall_at_10']:.3f} | {100 * r['all_10_found']:.0f}% |"
        for r in rows
    ]
    (out / "expert_search_candidates.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
