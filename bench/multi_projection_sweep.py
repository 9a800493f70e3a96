"""GUIE-mini projection sweep: the trained 64-d projection's settings, on the cached member features.

    .venv/bin/ens pipeline configs/pipelines/multi_cpu.yaml      # first: members and embedding cache
    .venv/bin/python bench/multi_projection_sweep.py [--workdir runs]

Every setting tried for `projection: learned` (configs/ensemble/multi_cpu.yaml), each fitted the way
`ens fuse` fits it -- the library's combine (signed power, L2 per member, concatenate), fit_pca,
fit_projection -- on multi's TRAIN rows only, and scored query vs the shared index (macro mP@5).
Several rows repeat one setting with other seeds (batch order), so the table shows the noise of a
single fit next to the differences between settings. Writes bench/results/multi_projection_sweep.json
and the "GUIE-mini projection sweep" table of BENCHMARKS.md.

    .venv/bin/python bench/multi_projection_sweep.py --ensemble multi_cpu_ms --recipe-only

fits only the shipped recipe (seeds 0, 1, 2) on another ensemble's members, here the main job's members
embedded at three sizes (bench/multi_variants.py makes multi_cpu_ms), and writes its own JSON and table
(multi_projection_sweep_<ensemble>), so the seed noise of that ensemble's fit is measured beside it.

    .venv/bin/python bench/multi_projection_sweep.py --soup

fits the recipe's settings with seeds 0-9, one at a time, then scores means of their matrices (the
library's `mean_of_fits`, what `learned.seeds` fits): three, five and ten seeds; writes
multi_projection_soup.json and the "GUIE-mini projection soup" table (with another --ensemble:
multi_projection_soup_<ensemble>, e.g. multi_lodo_cpu, whose train rows lack the held-out domains).
"""

from __future__ import annotations

import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
from multi_reducer_sweep import score, sweep_inputs  # noqa: E402
from update_benchmarks import domain_table, machine, record  # noqa: E402

from ensemble.config.schema import ProjectionCfg  # noqa: E402
from ensemble.data.manifest import read_manifest  # noqa: E402
from ensemble.fuse.combine import combine  # noqa: E402
from ensemble.fuse.learned import fit_projection, mean_of_fits  # noqa: E402
from ensemble.fuse.reducer import fit_pca  # noqa: E402

RECIPE = {"neighbour_weight": 1.0, "neighbour_tau_teacher": 0.05, "lr": 3e-4}
VARIANTS = [  # (power, ProjectionCfg settings, seeds)
    (1.0, {"neighbour_weight": 1.0}, [0]),  # the previous recipe
    (1.0, {"neighbour_weight": 1.0, "lr": 3e-4}, [0, 1]),
    (1.0, RECIPE, [0]),
    (0.5, {"neighbour_weight": 1.0}, [0, 1, 2]),
    (0.5, {"neighbour_weight": 1.0, "epochs": 40}, [0]),
    (0.5, {"neighbour_weight": 0.5}, [0]),
    (0.5, {"neighbour_weight": 2.0}, [0]),
    (0.5, {"neighbour_weight": 1.0, "neighbour_tau_teacher": 0.05}, [0]),
    (0.5, {"neighbour_weight": 1.0, "neighbour_tau": 0.03}, [0]),
    (0.5, {"neighbour_weight": 1.0, "batch_size": 512}, [0]),
    (0.5, {"neighbour_weight": 1.0, "lr": 1e-4}, [0, 1, 2]),
    (0.5, {"neighbour_weight": 1.0, "lr": 3e-4}, [0, 1, 2]),
    (0.5, {"neighbour_weight": 1.0, "lr": 3e-4, "epochs": 10}, [0]),
    (0.5, {"neighbour_weight": 0.0, "lr": 3e-4}, [0]),  # labels only
    (0.5, {"neighbour_weight": 0.5, "lr": 3e-4}, [0, 1]),
    (0.5, {"neighbour_weight": 2.0, "lr": 3e-4}, [0]),
    (0.5, RECIPE, [0, 1, 2]),  # the shipped recipe (seed 0 is what `ens fuse` fits)
    (0.5, {**RECIPE, "neighbour_tau_teacher": 0.1}, [0]),
]


def describe(power: float, settings: dict, seed: int) -> str:
    shown = ", ".join(f"{k} {v:g}" for k, v in settings.items())
    recipe = " **(recipe)**" if power == 0.5 and settings == RECIPE and seed == 0 else ""
    return f"power {power:g}; {shown}; seed {seed}{recipe}"


SOUPS = [(0, 3), (3, 6), (6, 9), (1, 4), (4, 7), (7, 10), (0, 5), (5, 10), (0, 10)]  # seeds a..b-1 averaged


def recipe_only(parser) -> None:
    parser.add_argument("--recipe-only", action="store_true", help="fit only the shipped recipe, seeds 0, 1, 2 "
                        "(its own JSON and BENCHMARKS.md table, named after --ensemble)")
    parser.add_argument("--soup", action="store_true", help="the recipe's settings, seeds 0-9 alone and averaged "
                        "(multi_projection_soup)")


def soup_rows(fused: dict, labels: list[str], start, score_of) -> list[dict]:
    """The recipe's settings fitted with seeds 0-9, each alone, then the means of the SOUPS ranges."""
    fits, rows = [], []
    for seed in range(10):
        started = time.perf_counter()
        fits.append(fit_projection(fused["train"], labels, start, ProjectionCfg(**RECIPE), seed=seed))
        rows.append(score_of(f"seed {seed}", fits[-1], time.perf_counter() - started))
    for first, end in SOUPS:
        rows.append(score_of(f"mean of seeds {first}-{end - 1}", mean_of_fits(fits[first:end], start),
                             sum(r["seconds"] for r in rows[first:end])))
    return rows


def main() -> None:
    args, features = sweep_inputs(__doc__.splitlines()[0], more_args=recipe_only)
    variants = [v for v in VARIANTS if v[0] == 0.5 and v[1] == RECIPE] if args.recipe_only else VARIANTS
    manifests, blocks = features.manifests, features.blocks
    groups = [[i] for i in range(len(blocks))]  # three architectures: nothing to average
    keep = fit_rows(manifests["train"], features.model.ensemble.description["fit_on"]["manifest"])
    parts = {**features.parts, "train": [feats[keep] for feats in features.parts["train"]]}
    labels = [manifests["train"].labels[i] for i in np.flatnonzero(keep)]
    if args.soup:
        return soup(args, {s: combine(feats, groups, 0.5) for s, feats in parts.items()}, labels, manifests)
    fused, starts, rows = {}, {}, []  # per power: the fused splits, and PCA-64 of its train rows
    for power, settings, seeds in variants:
        if power not in fused:
            fused[power] = {s: combine(feats, groups, power) for s, feats in parts.items()}
            starts[power] = fit_pca(fused[power]["train"], 64)
        for seed in seeds:
            started = time.perf_counter()
            reducer = fit_projection(fused[power]["train"], labels, starts[power], ProjectionCfg(**settings),
                                     seed=seed)
            report = score({s: reducer.transform(fused[power][s]) for s in ("query", "index")}, manifests)
            rows.append({"variant": describe(power, settings, seed), "dim": 64, "macro_mP@5": report["macro_mP@5"],
                         "mP@5": report["mP@5"], "per_domain": report["per_domain"],
                         "seconds": round(time.perf_counter() - started, 1)})
            print(f"{rows[-1]['variant']}: macro {report['macro_mP@5']:.3f}", flush=True)
    flag = " --recipe-only" if args.recipe_only else ""
    result = {"command": f"python bench/multi_projection_sweep.py --ensemble {args.ensemble}{flag}",
              "date": str(date.today()), "machine": machine(), "rows": rows}
    if args.recipe_only:
        record(f"multi_projection_sweep_{args.ensemble}", result,
               f"GUIE-mini projection sweep: the recipe's seeds on {args.ensemble}'s members", table(result))
    else:
        record("multi_projection_sweep", result,
               "GUIE-mini projection sweep: settings of the learned 64-d projection", table(result))


def fit_rows(train, fit_manifest: str) -> np.ndarray:
    """Which of multi's train rows the ensemble was fitted on (all for multi_cpu; multi_lodo_cpu's lack the
    held-out domains), so a refit sees only what the shipped fit saw."""
    fit_paths = read_manifest(fit_manifest, require_label=False).paths
    keep = np.isin(np.asarray(train.paths), np.asarray(fit_paths))
    if keep.sum() != len(fit_paths):
        sys.exit(f"{fit_manifest}: {len(fit_paths) - keep.sum()} of its rows are not multi's train images")
    return keep


def soup(args, fused: dict, labels: list[str], manifests: dict) -> None:
    """--soup: seeds alone and averaged, its own JSON and table."""
    start = fit_pca(fused["train"], 64)

    def score_of(variant: str, reducer, seconds: float) -> dict:
        report = score({s: reducer.transform(fused[s]) for s in ("query", "index")}, manifests)
        print(f"{variant}: macro {report['macro_mP@5']:.4f}", flush=True)
        return {"variant": variant, "dim": 64, "macro_mP@5": report["macro_mP@5"], "mP@5": report["mP@5"],
                "per_domain": report["per_domain"], "seconds": round(seconds, 1)}

    result = {"command": f"python bench/multi_projection_sweep.py --ensemble {args.ensemble} --soup",
              "date": str(date.today()), "machine": machine(), "rows": soup_rows(fused, labels, start, score_of)}
    name, on = ("multi_projection_soup", "") if args.ensemble == "multi_cpu" else \
        (f"multi_projection_soup_{args.ensemble}", f" on {args.ensemble}'s members")
    record(name, result, f"GUIE-mini projection soup: the learned projection's seeds, alone and averaged{on}",
           domain_table(
               f"Command: `{result['command']}` — {result['date']}, {result['machine']}, one run, in the "
               f"workspace of the `ens pipeline` that trained {args.ensemble}'s members (their cached features, "
               "flip TTA, 160 px; signed square root, PCA-64 of the train rows as the start). Each seed's row "
               "is one `fit_projection` with the recipe's settings (neighbour_weight 1, neighbour_tau_teacher "
               "0.05, lr 3e-4, 20 epochs; the seed sets the batch order) on the ensemble's own fit images only "
               f"({len(labels):,} train images, no query or index image); a "
               "'mean of seeds' row averages those fits' matrices (`mean_of_fits`, what `learned.seeds` "
               "fits). 888 queries against the shared index of 3,626 images. s: seconds of fitting "
               "(a mean: its fits' sum).", result["rows"], ["variant"]))


def table(result: dict) -> str:
    return domain_table(
        f"Command: `{result['command']}` — {result['date']}, {result['machine']}, one run, in the workspace "
        "of `ens pipeline configs/pipelines/multi_cpu.yaml`: the three members' pooled backbone features "
        "(flip TTA, at the sizes their model files name: 160 px; 128 + 160 + 192 for the _ms copies), "
        "the fusion's signed power, PCA-64 as the start, then `fit_projection` with "
        "the settings named (others at their defaults: 20 epochs, lr 1e-3, batch 256, CosFace s 30 m 0.2, "
        "neighbour_tau_teacher 0.02, neighbour_tau 0.05), on multi's train images only; 888 queries "
        "against the shared index of 3,626 images. s: seconds to fit the row.", result["rows"], ["variant"])


if __name__ == "__main__":
    main()
