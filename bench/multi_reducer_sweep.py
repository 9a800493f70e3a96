"""GUIE-mini reducer sweep: closed-form ways to bring the three members' 3,584-d concatenation to 64-d.

    .venv/bin/ens pipeline configs/pipelines/multi_cpu.yaml      # first: members and embedding cache
    .venv/bin/python bench/multi_reducer_sweep.py [--workdir runs] [--ensemble multi_cpu]
    .venv/bin/python bench/multi_reducer_sweep.py --ensemble multi_lodo_cpu --leave-out dishes --leave-out illustrations

The exploration behind the shipped ensemble recipe, kept so every variant tried is reproducible. It
reads the members' pooled backbone features (flip TTA, 160 px) of multi's train, query and index
images from the workspace's embedding cache, L2-normalises each member and concatenates (as the
fusion does), fits each reducer on the TRAIN rows only (exact SVD / eigendecomposition in numpy,
not the library's randomised PCA), and scores query vs the shared index (macro mP@5 over domains).
Rows: PCA-k with whitening power p (eigenvalue^-p/2); signed square root of every feature before
normalising (the fusion's `power: 0.5`); per-member PCA-128 whitening before the joint PCA-64; and
supervised "learned whitening" (Radenovic et al. 2018: whiten the within-class covariance + lambda I,
then keep the top 64 directions of the total covariance); PCA of the within-domain covariance (each train
domain centred on its own mean before the SVD, so between-domain directions do not take the 64; a test
image is centred on the train mean as in every other row); random orthonormal projections to 64 (three
seeds; nothing fitted, the control for a map no domain chose); and, not closed-form, the shipped learned
projection (`fit_projection` with the swept ensemble's saved settings) from PCA-64, as `ens fuse`
fits it, and from the within-domain PCA-64 (plain and half whitened) as its start. With --leave-out the
reducers see only the other domains' train rows (the leave-domain-out question: which 64-d map keeps a
domain it never saw); the scores stay on all six. The trained projections' settings (label loss,
neighbour term) are swept in bench/multi_projection_sweep.py, whole recipes in bench/multi_variants.py.
Writes bench/results/multi_reducer_sweep.json and the "GUIE-mini reducer sweep"
table of BENCHMARKS.md (with --leave-out: multi_reducer_sweep_lodo_<ensemble>.json and a table per ensemble).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from functools import cached_property
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from update_benchmarks import domain_table, machine, record  # noqa: E402

from ensemble.config.load import load_data_cfg  # noqa: E402
from ensemble.config.schema import ProjectionCfg  # noqa: E402
from ensemble.data.manifest import read_manifest  # noqa: E402
from ensemble.evaluate.metrics import evaluate_embeddings  # noqa: E402
from ensemble.fuse.combine import combine  # noqa: E402
from ensemble.fuse.learned import fit_projection  # noqa: E402
from ensemble.fuse.reducer import PCAReducer, fit_pca  # noqa: E402
from ensemble.workspace.layout import Workspace  # noqa: E402
from ensemble.workspace.resolve import ResolvedModel, resolve_model  # noqa: E402

DATA = ROOT / "configs" / "data" / "multi.yaml"


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)


def pca(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, all principal directions [k, d] by decreasing variance, their variances) by exact SVD."""
    mean = x.mean(0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    return mean, vt, s ** 2 / len(x)


def projection(fitted: tuple, dims: int, whiten_power: float = 0.0):
    """x -> its top `dims` PCA coordinates, each divided by variance^(whiten_power / 2)."""
    mean, w, var = fitted
    return lambda x: (x - mean) @ w[:dims].T / var[:dims] ** (whiten_power / 2)


@dataclass
class FitSet:
    """The train rows a reducer is fitted on, their labels and each member's column block; the SVD
    is computed once and shared by every PCA row of one feature power."""

    train: np.ndarray
    labels: np.ndarray
    blocks: list[slice]
    domains: np.ndarray
    learned: ProjectionCfg  # the swept ensemble's own learned-projection settings, as saved with it

    @cached_property
    def pca(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return pca(self.train)


def pca_reducer(dims: int, whiten_power: float = 0.0):
    return lambda fit_set: projection(fit_set.pca, dims, whiten_power)


def within_domain_svd(fit_set: FitSet) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train mean, principal directions, variances) of the pooled within-domain covariance (each train
    domain minus its own mean); a projected image is centred on the train mean, since a test image's
    domain is unknown."""
    within = fit_set.train.copy()
    for domain in np.unique(fit_set.domains):
        rows = fit_set.domains == domain
        within[rows] -= within[rows].mean(0)
    _, vt, var = pca(within)  # each domain's rows sum to zero, so pca's own centring changes nothing
    return fit_set.train.mean(0), vt, var


def within_domain_pca(dims: int, whiten_power: float = 0.0):
    return lambda fit_set: projection(within_domain_svd(fit_set), dims, whiten_power)


def random_projection(dims: int, seed: int):
    """x -> x times a random orthonormal [d, dims] basis (QR of a Gaussian, numpy seed `seed`): nothing is fitted,
    so no direction is chosen by the fit domains (the data-independent control for --leave-out)."""
    def fit(fit_set: FitSet):
        basis, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((fit_set.train.shape[1], dims)))
        return lambda x: x @ basis
    return fit


def learned_recipe(start: str = "pca", whiten_power: float = 0.0):
    """The swept ensemble's learned projection (its saved `learned` settings, seed 0, the library's
    fit_projection) from a PCA-64 start
    (`start` "pca": as `ens fuse` fits it) or from the within-domain PCA-64 ("within": its directions
    scaled by variance^(-whiten_power/2), then to unit mean norm, the scale a PCA start has)."""
    def fit(fit_set: FitSet):
        train = fit_set.train.astype(np.float32)
        if start == "pca":
            first = fit_pca(train, 64)
        else:
            mean, vt, var = within_domain_svd(fit_set)
            rows = vt[:64] / var[:64, None] ** (whiten_power / 2)
            rows /= np.linalg.norm(rows, axis=1).mean()
            first = PCAReducer(mean.astype(np.float32), rows.astype(np.float32), np.ones(64), float(var.sum()))
        learned = fit_projection(train, list(fit_set.labels), first, fit_set.learned)
        return lambda x: learned.transform(x.astype(np.float32), normalize=False)
    return fit


def per_member_then_pca(per_member_dims: int):
    """Whitened PCA per member (its own column block), renormalise, then the joint PCA-64."""
    def fit(fit_set: FitSet):
        stages = [(b, projection(pca(fit_set.train[:, b]), per_member_dims, 1.0)) for b in fit_set.blocks]

        def first(x):
            return np.concatenate([unit(project(x[:, b])) for b, project in stages], 1)
        joint = projection(pca(first(fit_set.train)), 64)
        return lambda x: joint(first(x))
    return fit


def learned_whitening(lam: float):
    def fit(fit_set: FitSet):
        train = fit_set.train
        classes, inverse = np.unique(fit_set.labels, return_inverse=True)
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


VARIANTS = [  # (name, signed power of the member features (`power`), fit(FitSet of train rows) -> projection)
    ("plain concatenation (3,584-d), no reducer", 1.0, None),
    ("PCA-64", 1.0, pca_reducer(64)),
    ("PCA-64, whitened (power 1)", 1.0, pca_reducer(64, 1.0)),
    ("PCA-64, half whitened (power 0.5)", 1.0, pca_reducer(64, 0.5)),
    ("PCA-128 (not 64-d)", 1.0, pca_reducer(128)),
    ("PCA-256 (not 64-d)", 1.0, pca_reducer(256)),
    ("signed sqrt, plain concatenation (3,584-d)", 0.5, None),
    ("signed sqrt, PCA-64", 0.5, pca_reducer(64)),
    ("signed sqrt, PCA-64 half whitened", 0.5, pca_reducer(64, 0.5)),
    ("signed sqrt, PCA-64 whitened", 0.5, pca_reducer(64, 1.0)),
    ("per-member PCA-128 whitened, then PCA-64", 1.0, per_member_then_pca(128)),
    ("signed sqrt, per-member PCA-128 whitened, then PCA-64", 0.5, per_member_then_pca(128)),
    ("learned whitening (train labels), lambda 1e-3", 1.0, learned_whitening(1e-3)),
    ("learned whitening (train labels), lambda 3e-3", 1.0, learned_whitening(3e-3)),
    ("learned whitening (train labels), lambda 1e-2", 1.0, learned_whitening(1e-2)),
    ("signed sqrt, within-domain PCA-64", 0.5, within_domain_pca(64)),
    ("signed sqrt, within-domain PCA-64 half whitened", 0.5, within_domain_pca(64, 0.5)),
    ("signed sqrt, within-domain PCA-64 whitened", 0.5, within_domain_pca(64, 1.0)),
    *[(f"signed sqrt, random orthonormal 64-d projection (seed {seed}; nothing fitted)", 0.5,
       random_projection(64, seed)) for seed in range(3)],
    # not closed-form: the shipped learned projection, from PCA-64 (as `ens fuse` fits it) and from two other starts
    ("signed sqrt, the learned recipe (PCA-64 start, as ens fuse fits it)", 0.5, learned_recipe()),
    ("signed sqrt, the learned recipe from the within-domain PCA-64", 0.5, learned_recipe("within")),
    ("signed sqrt, the learned recipe from the within-domain PCA-64 half whitened", 0.5,
     learned_recipe("within", 0.5)),
]


@dataclass(frozen=True)
class MemberFeatures:
    """An ensemble's resolved model and its members' features: per split the cached features and the manifest,
    and each member's column block."""

    model: ResolvedModel
    parts: dict
    manifests: dict
    blocks: list[slice]


def member_features(ws: Workspace, ensemble: str) -> MemberFeatures:
    """`MemberFeatures` of `ensemble` in `ws` (resolved once; its members' features from the feature cache)."""
    model = resolve_model(f"ensemble:{ensemble}", ws)
    data = load_data_cfg(str(DATA))
    manifests = {split: read_manifest(getattr(data, split)) for split in ("train", "query", "index")}
    parts = {split: model.part_features(m, ws, workers=2) for split, m in manifests.items()}
    widths = [f.shape[1] for f in parts["train"]]
    starts = np.cumsum([0, *widths])
    return MemberFeatures(model, parts, manifests, [slice(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:])])


def sweep_inputs(description: str, ensemble: str = "multi_cpu", leave_out: bool = False,
                 more_args: Callable[[argparse.ArgumentParser], None] | None = None
                 ) -> tuple[argparse.Namespace, MemberFeatures]:
    """The command line of a sweep (--workdir, --ensemble, default `ensemble`; with `leave_out` also
    --leave-out DOMAIN, repeatable; `more_args` adds a sweep's own) and `member_features` of that ensemble."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--workdir", default="runs")
    parser.add_argument("--ensemble", default=ensemble, help="its members' features are swept")
    if leave_out:
        parser.add_argument("--leave-out", action="append", default=[], metavar="DOMAIN",
                            help="fit every reducer without this domain's train rows (repeatable)")
    if more_args:
        more_args(parser)
    args = parser.parse_args()
    return args, member_features(Workspace.at(args.workdir), args.ensemble)


def score(emb: dict, manifests: dict) -> dict:
    q, x = manifests["query"], manifests["index"]
    return evaluate_embeddings(unit(emb["query"]), list(q.labels), unit(emb["index"]), list(x.labels),
                               q_domains=list(q.domains))


def main() -> None:
    args, features = sweep_inputs(__doc__.splitlines()[0], leave_out=True)
    parts, manifests, blocks = features.parts, features.manifests, features.blocks
    model_groups = [[i] for i in range(len(blocks))]  # three architectures: nothing to average
    domains = np.asarray(manifests["train"].domains)
    unknown = sorted(set(args.leave_out) - set(domains))
    if unknown:
        sys.exit(f"--leave-out: no train domain {', '.join(unknown)} in {DATA} "
                 f"(it has {', '.join(sorted(set(domains)))})")
    fit_rows = ~np.isin(domains, args.leave_out)
    labels = np.asarray(manifests["train"].labels)[fit_rows]
    learned = ProjectionCfg(**features.model.ensemble.description["config"]["learned"])
    fused, fit_sets, rows = {}, {}, []
    for name, power, fit in VARIANTS:
        started = time.perf_counter()
        if power not in fused:  # the fusion's merge (power, L2 per member, concatenate), once per power
            fused[power] = {s: combine(feats, model_groups, power).astype(np.float64) for s, feats in parts.items()}
            fit_sets[power] = FitSet(fused[power]["train"][fit_rows], labels, blocks, domains[fit_rows], learned)
        emb = fused[power]
        if fit is not None:
            project = fit(fit_sets[power])  # every fit sees train rows only
            emb = {s: project(x) for s, x in emb.items()}
        report = score(emb, manifests)
        rows.append({"variant": name, "dim": emb["query"].shape[1], "macro_mP@5": report["macro_mP@5"],
                     "mP@5": report["mP@5"], "per_domain": report["per_domain"],
                     "seconds": round(time.perf_counter() - started, 1)})
        print(f"{name}: macro {report['macro_mP@5']:.3f}", flush=True)
    flags = "".join(f" --leave-out {d}" for d in args.leave_out)
    result = {"command": f"python bench/multi_reducer_sweep.py --ensemble {args.ensemble}{flags}",
              "date": str(date.today()), "machine": machine(), "left_out": args.leave_out, "rows": rows}
    if args.leave_out:
        record(f"multi_reducer_sweep_lodo_{args.ensemble}", result, f"GUIE-mini reducer sweep, leave-domain-out, "
               f"{args.ensemble}: 64-d reducers fitted without the held-out domains", table(result))
    else:
        record("multi_reducer_sweep", result, "GUIE-mini reducer sweep: closed-form 64-d reducers on multi",
               table(result))


def table(result: dict) -> str:
    left_out = result.get("left_out") or []
    fitted_on = (f"multi's train images without the {' and '.join(left_out)} domains (the leave-domain-out fit)"
                 if left_out else "multi's train images only")
    return domain_table(
        f"Command: `{result['command']}` — {result['date']}, {result['machine']}, one run, in a workspace "
        "holding that ensemble (`ens pipeline configs/pipelines/multi_cpu.yaml` or `multi_lodo_cpu.yaml`, "
        "or bench/multi_variants.py's rows): its three members' pooled backbone features (flip TTA, 160 px), "
        f"every reducer fitted on {fitted_on}, 888 queries against the shared index of 3,626 images (all six "
        "domains). s: seconds for the row; the first row of a feature power also fuses the features, the first "
        "PCA row of a power computes the SVD the later ones reuse. The last three rows train the ensemble's "
        "learned projection (its settings as saved in its ensemble.yaml, seed 0) from the start named.",
        result["rows"], ["variant"])


if __name__ == "__main__":
    main()
