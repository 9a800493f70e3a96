"""GUIE-mini reducer sweep: closed-form ways to bring the three members' 3,584-d concatenation to 64-d.

    .venv/bin/ens pipeline configs/pipelines/multi_cpu.yaml      # first: members and embedding cache
    .venv/bin/python bench/multi_reducer_sweep.py [--workdir runs]

The exploration behind the shipped ensemble recipe, kept so every variant tried is reproducible. It
reads the members' pooled backbone features (flip TTA, 160 px) of multi's train, query and index
images from the workspace's embedding cache, L2-normalises each member and concatenates (as the
fusion does), fits each reducer on the TRAIN rows only (exact SVD / eigendecomposition in numpy,
not the library's randomised PCA), and scores query vs the shared index (macro mP@5 over domains).
Rows: PCA-k with whitening power p (eigenvalue^-p/2); signed square root of every feature before
normalising; per-member PCA-128 whitening before the joint PCA-64; and supervised "learned
whitening" (Radenovic et al. 2018: whiten the within-class covariance + lambda I, then keep the top
64 directions of the total covariance). The trained projections (label loss, neighbour term) are in
bench/multi_variants.py. Writes bench/results/multi_reducer_sweep.json and the "GUIE-mini reducer
sweep" table of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from update_benchmarks import domain_table, record  # noqa: E402

from ensemble.config.load import load_data_cfg  # noqa: E402
from ensemble.data.manifest import read_manifest  # noqa: E402
from ensemble.evaluate.metrics import evaluate_embeddings  # noqa: E402
from ensemble.workspace.layout import Workspace  # noqa: E402
from ensemble.workspace.resolve import resolve_model  # noqa: E402

DATA = ROOT / "configs" / "data" / "multi.yaml"


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)


def signed_sqrt(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.sqrt(np.abs(x))


def pca(x: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, top `dims` directions [dims, d], their variances) by exact SVD."""
    mean = x.mean(0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    return mean, vt[:dims], s[:dims] ** 2 / len(x)


def pca_reducer(dims: int, whiten_power: float = 0.0):
    def fit(train: np.ndarray, labels: np.ndarray, blocks: list[slice]):
        mean, w, var = pca(train, dims)
        return lambda x: (x - mean) @ w.T / var ** (whiten_power / 2)
    return fit


def per_member_then_pca(per_member_dims: int):
    """Whitened PCA per member (its own column block), renormalise, then the joint PCA-64."""
    def fit(train: np.ndarray, labels: np.ndarray, blocks: list[slice]):
        stages = [(b, *pca(train[:, b], per_member_dims)) for b in blocks]

        def first(x):
            return np.concatenate([unit((x[:, b] - m) @ w.T / v ** 0.5) for b, m, w, v in stages], 1)
        joint = pca_reducer(64)(first(train), labels, blocks)
        return lambda x: joint(first(x))
    return fit


def learned_whitening(lam: float):
    def fit(train: np.ndarray, labels: np.ndarray, blocks: list[slice]):
        classes, inverse = np.unique(labels, return_inverse=True)
        centres = np.zeros((len(classes), train.shape[1]))
        np.add.at(centres, inverse, train)
        centres /= np.bincount(inverse)[:, None]
        within = train - centres[inverse]
        values, vectors = np.linalg.eigh(within.T @ within / len(train))
        whiten = vectors @ np.diag((values + lam) ** -0.5) @ vectors.T
        mean = train.mean(0)
        total = whiten @ ((train - mean).T @ (train - mean) / len(train)) @ whiten.T
        _, rot = np.linalg.eigh(total)
        w = rot[:, ::-1][:, :64].T @ whiten
        return lambda x: (x - mean) @ w.T
    return fit


VARIANTS = [  # (name, feature transform before normalising, fit(train, train labels, member blocks) -> projection)
    ("plain concatenation (3,584-d), no reducer", None, None),
    ("PCA-64", None, pca_reducer(64)),
    ("PCA-64, whitened (power 1)", None, pca_reducer(64, 1.0)),
    ("PCA-64, half whitened (power 0.5)", None, pca_reducer(64, 0.5)),
    ("PCA-128 (not 64-d)", None, pca_reducer(128)),
    ("PCA-256 (not 64-d)", None, pca_reducer(256)),
    ("signed sqrt, plain concatenation (3,584-d)", signed_sqrt, None),
    ("signed sqrt, PCA-64", signed_sqrt, pca_reducer(64)),
    ("signed sqrt, PCA-64 half whitened", signed_sqrt, pca_reducer(64, 0.5)),
    ("signed sqrt, PCA-64 whitened", signed_sqrt, pca_reducer(64, 1.0)),
    ("per-member PCA-128 whitened, then PCA-64", None, per_member_then_pca(128)),
    ("signed sqrt, per-member PCA-128 whitened, then PCA-64", signed_sqrt, per_member_then_pca(128)),
    ("learned whitening (train labels), lambda 1e-3", None, learned_whitening(1e-3)),
    ("learned whitening (train labels), lambda 3e-3", None, learned_whitening(3e-3)),
    ("learned whitening (train labels), lambda 1e-2", None, learned_whitening(1e-2)),
]


def member_features(ws: Workspace, ensemble: str) -> tuple[dict, dict, list[slice]]:
    """Per split: the members' features (cached), the manifests, and each member's column block."""
    model = resolve_model(f"ensemble:{ensemble}", ws)
    data = load_data_cfg(str(DATA))
    manifests = {split: read_manifest(getattr(data, split)) for split in ("train", "query", "index")}
    parts = {split: model.part_features(m, ws, workers=2) for split, m in manifests.items()}
    widths = [f.shape[1] for f in parts["train"]]
    starts = np.cumsum([0, *widths])
    return parts, manifests, [slice(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:])]


def score(emb: dict, manifests: dict) -> dict:
    q, x = manifests["query"], manifests["index"]
    return evaluate_embeddings(unit(emb["query"]), list(q.labels), unit(emb["index"]), list(x.labels),
                               q_domains=list(q.domains))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs")
    parser.add_argument("--ensemble", default="multi_cpu", help="its members' features are swept")
    args = parser.parse_args()
    parts, manifests, blocks = member_features(Workspace.at(args.workdir), args.ensemble)
    labels = np.asarray(manifests["train"].labels)
    rows = []
    for name, transform, fit in VARIANTS:
        started = time.perf_counter()
        concat = {s: np.concatenate([unit(transform(f) if transform else f) for f in feats], 1).astype(np.float64)
                  for s, feats in parts.items()}
        if fit is not None:
            project = fit(concat["train"], labels, blocks)  # every fit sees train rows only
            concat = {s: project(x) for s, x in concat.items()}
        report = score(concat, manifests)
        rows.append({"variant": name, "dim": concat["query"].shape[1], "macro_mP@5": report["macro_mP@5"],
                     "mP@5": report["mP@5"], "per_domain": report["per_domain"],
                     "seconds": round(time.perf_counter() - started, 1)})
        print(f"{name}: macro {report['macro_mP@5']:.3f}", flush=True)
    result = {"command": f"python bench/multi_reducer_sweep.py --ensemble {args.ensemble}", "date": str(date.today()),
              "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, no GPU", "rows": rows}
    record("multi_reducer_sweep", result, "GUIE-mini reducer sweep: closed-form 64-d reducers on multi", table(result))


def table(result: dict) -> str:
    return domain_table(
        f"Command: `{result['command']}` — {result['date']}, {result['machine']}, one run, in the workspace "
        "of `ens pipeline configs/pipelines/multi_cpu.yaml`: the three members' pooled backbone features "
        "(flip TTA, 160 px), every reducer fitted on multi's train images only, 888 queries against the "
        "shared index of 3,626 images. s: seconds to fit and score.", result["rows"], ["variant"])


if __name__ == "__main__":
    main()
