"""Retrieval scale: exact k-NN of 5,000 queries against 200,000 and 2,000,000 random 64-d vectors.

    .venv/bin/python bench/knn.py

`ens eval`'s search (faiss IndexFlatL2) vs a plain numpy baseline (chunked matrix product +
argpartition), and the approximate search `ens eval` switches to above `--approx-above` index rows
(IVF-Flat, nprobe 32) with the share of the exact top-k it keeps. Writes bench/results/knn.json and the "Retrieval scale" table of BENCHMARKS.md.
"""

from __future__ import annotations

import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def unit_rows(n: int, dim: int, rng) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def numpy_knn(query: np.ndarray, index: np.ndarray, k: int, chunk: int = 100_000) -> np.ndarray:
    """Baseline: per index chunk, distances by matrix product, top-k by argpartition, then merge."""
    best_d = np.full((len(query), 0), np.inf, np.float32)
    best_i = np.zeros((len(query), 0), np.int64)
    q2 = (query**2).sum(1, keepdims=True)
    for start in range(0, len(index), chunk):
        block = index[start:start + chunk]
        d = q2 - 2 * query @ block.T + (block**2).sum(1)[None]
        part = np.argpartition(d, k, axis=1)[:, :k]
        best_d = np.concatenate([best_d, np.take_along_axis(d, part, 1)], 1)
        best_i = np.concatenate([best_i, part + start], 1)
        keep = np.argsort(best_d, axis=1)[:, :k]
        best_d, best_i = np.take_along_axis(best_d, keep, 1), np.take_along_axis(best_i, keep, 1)
    return best_i


def timed(fn) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    from ensemble.evaluate.metrics import approx_knn, knn
    from update_benchmarks import machine, record

    rng = np.random.default_rng(0)
    query = unit_rows(5_000, 64, rng)
    rows = []
    for n_index in (200_000, 2_000_000):
        index = unit_rows(n_index, 64, rng)
        for k in (5, 100):
            faiss_s, ours = timed(lambda: knn(query, index, k))
            numpy_s, base = timed(lambda: numpy_knn(query, index, k))
            agree = float((ours[:, 0] == base[:, 0]).mean())
            approx_s, (_, how) = timed(lambda: approx_knn(query, index, k, nprobe=32))
            rows.append({"index": n_index, "k": k, "faiss_s": round(faiss_s, 2), "numpy_s": round(numpy_s, 2),
                         "speedup": round(numpy_s / faiss_s, 1), "top1_agreement": agree,
                         "ivf_s": round(approx_s, 2), "ivf_nlist": how["nlist"],
                         "ivf_recall_vs_exact": round(how["recall_vs_exact"], 4)})
        index = None  # free before the larger index
    result = {"command": "python bench/knn.py", "date": str(date.today()),
              "machine": machine(), "rows": rows}
    lines = [f"Command: `{result['command']}` — {result['date']}, {result['machine']}, one run. 5,000 random "
             "unit 64-d queries (Euclidean). IVF: train + add + search, recall of the exact top-k measured on "
             "200 queries; uniform random vectors have no clusters, the worst case for IVF.", "",
             "| index vectors | k | ens eval (faiss flat) s | numpy argpartition s | speedup | same top-1 "
             "| IVF-Flat s (nlist, nprobe 32) | IVF keeps of exact top-k |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['index']:,} | {r['k']} | {r['faiss_s']} | {r['numpy_s']} | {r['speedup']}x | "
              f"{r['top1_agreement']:.4f} | {r['ivf_s']} ({r['ivf_nlist']}) | {r['ivf_recall_vs_exact']:.3f} |"
              for r in rows]
    record("knn", result, "Retrieval scale", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
