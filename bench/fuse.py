"""Fusion at GUIE scale: fit PCA-64 on 205,000 x 9,216 random features with a decaying spectrum.

    .venv/bin/python bench/fuse.py [--rows 205000] [--dims 9216] [--sklearn]

Each method runs in its own subprocess so its peak RSS is its own. Writes bench/results/fuse.json and
the "Fusion scale" table of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_features(path: Path, rows: int, dims: int, rank: int = 512, chunk: int = 8192, seed: int = 0) -> None:
    """float16 memmap: low-rank signal with power-law singular values plus isotropic noise (unit-norm rows)."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((rank, dims)).astype(np.float32) / np.sqrt(dims)
    basis *= (np.arange(1, rank + 1, dtype=np.float32) ** -0.6)[:, None] * 4
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(rows, dims))
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        x = rng.standard_normal((n, rank), dtype=np.float32) @ basis
        x += 0.05 * rng.standard_normal((n, dims), dtype=np.float32) / np.sqrt(dims) * 10
        out[start:start + n] = x / np.linalg.norm(x, axis=1, keepdims=True)
    out.flush()


def run_method(method: str, path: str, dims_out: int) -> dict:
    """Runs in a child process: fit, report seconds, explained variance ratio and peak RSS."""
    feats = np.load(path, mmap_mode="r")
    start = time.perf_counter()
    if method == "ens":
        from ensemble.fuse.reducer import fit_pca

        evr = fit_pca(feats, dims_out).explained_variance_ratio
    else:
        from sklearn.decomposition import PCA

        data = np.asarray(feats, dtype=np.float32)  # sklearn needs the data in memory
        solver = "randomized" if method == "sklearn_randomized" else "full"
        evr = float(PCA(dims_out, svd_solver=solver, random_state=0).fit(data).explained_variance_ratio_.sum())
    seconds = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"method": method, "seconds": round(seconds, 1), "peak_rss_gb": round(peak_gb, 2),
            "explained_variance_ratio": round(evr, 5)}


def in_child(method: str, path: Path, dims_out: int) -> dict:
    code = (f"import json,sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); sys.path.insert(0, {str(ROOT)!r}); "
            f"import fuse; print(json.dumps(fuse.run_method({method!r}, {str(path)!r}, {dims_out})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_table(result: dict) -> str:
    lines = [f"Command: `{result['command']}` — {result['date']}, {result['machine']}, one run.",
             f"Features: {result['rows']:,} x {result['dims']:,} float16 memmap ({result['data_gb']:.1f} GB), "
             f"power-law spectrum; PCA to {result['out_dims']}. Peak RSS includes the memory-mapped feature "
             "pages a process touched (the page cache, reclaimable).", "",
             "| method | wall s | peak RSS GB | explained variance | vs sklearn randomized |", "|---|---|---|---|---|"]
    ref = next((r["explained_variance_ratio"] for r in result["methods"] if r["method"] == "sklearn_randomized"), None)
    for r in result["methods"]:
        delta = f"{r['explained_variance_ratio'] - ref:+.5f}" if ref is not None else "n/a"
        lines.append(f"| {r['method']} | {r['seconds']} | {r['peak_rss_gb']} | {r['explained_variance_ratio']:.5f} | "
                     f"{delta} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=205_000)
    parser.add_argument("--dims", type=int, default=9_216)
    parser.add_argument("--out-dims", type=int, default=64)
    parser.add_argument("--sklearn", action="store_true", help="also run sklearn PCA (randomized) in memory")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "bench"))
    from update_benchmarks import machine, record

    with tempfile.TemporaryDirectory(dir=ROOT / "bench") as tmp:
        path = Path(tmp) / "features.npy"
        make_features(path, args.rows, args.dims)
        methods = ["ens"] + (["sklearn_randomized"] if args.sklearn else [])
        result = {"command": "python bench/fuse.py " + " ".join(sys.argv[1:]), "date": str(date.today()),
                  "machine": machine(),
                  "rows": args.rows, "dims": args.dims, "out_dims": args.out_dims,
                  "data_gb": path.stat().st_size / 2**30,
                  "methods": [in_child(m, path, args.out_dims) for m in methods]}
    record("fuse", result, "Fusion scale", write_table(result))
    print(write_table(result))


if __name__ == "__main__":
    main()
