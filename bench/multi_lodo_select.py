"""GUIE-mini leave-domain-out: choose the 64-d projection's settings without the held-out domains.

    .venv/bin/ens pipeline configs/pipelines/multi_lodo_cpu.yaml   # first: members and embedding cache
    .venv/bin/python bench/multi_lodo_select.py --ensemble multi_lodo_cpu --leave-out dishes --leave-out illustrations

The learned projection is fitted on the domains it is shipped for; the question of leave-domain-out is
which fit keeps a domain it never saw. This bench asks it of the training data alone: for every
candidate setting of `projection: learned` (and PCA-64), an inner leave-one-domain-out over the fit
domains' TRAIN images -- fit on three of the four, embed the fourth's train images, score each of them
against every fit-domain train image but itself (GUIE P@5; the held-out images' labels are used only to
score) -- and the mean over the four inner folds picks a setting. Then every candidate is fitted on all
fit domains and scored on multi's query vs shared index (all six domains), so the table shows the picked
row beside every other one: no eval image, and no image of a held-out domain, takes part in the choice.
Writes bench/results/multi_lodo_select_<ensemble>.json and its BENCHMARKS.md table.
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

from multi_reducer_sweep import DATA, score, sweep_inputs, unit  # noqa: E402
from update_benchmarks import domain_table, machine, record  # noqa: E402

from ensemble.config.schema import ProjectionCfg  # noqa: E402
from ensemble.evaluate.metrics import knn, precision_at  # noqa: E402
from ensemble.fuse.combine import combine  # noqa: E402
from ensemble.fuse.learned import fit_projection  # noqa: E402
from ensemble.fuse.reducer import fit_pca  # noqa: E402

RECIPE = {"neighbour_weight": 1.0, "neighbour_tau_teacher": 0.05, "lr": 3e-4}
CANDIDATES = [  # (name, ProjectionCfg settings; None: PCA-64 alone)
    ("PCA-64 (nothing learned)", None),
    ("labels only (neighbour_weight 0)", {**RECIPE, "neighbour_weight": 0.0}),
    ("the recipe (neighbour_weight 1)", RECIPE),
    ("neighbour_weight 2", {**RECIPE, "neighbour_weight": 2.0}),
    ("neighbour_weight 4", {**RECIPE, "neighbour_weight": 4.0}),
    ("neighbour_weight 8", {**RECIPE, "neighbour_weight": 8.0}),
    ("neighbour_weight 4, neighbour_tau_teacher 0.1", {**RECIPE, "neighbour_weight": 4.0,
                                                        "neighbour_tau_teacher": 0.1}),
    ("neighbours only (label_weight 0)", {**RECIPE, "label_weight": 0.0}),
]


def fit(train: np.ndarray, labels: list[str], settings: dict | None):
    """PCA-64 of `train`, then (settings given) the learned projection from it, seed 0, as `ens fuse` fits it."""
    start = fit_pca(train, 64)
    if settings is None:
        return start
    return fit_projection(train, labels, start, ProjectionCfg(**settings))


def loo_map5(query: np.ndarray, q_rows: np.ndarray, index: np.ndarray, labels: np.ndarray) -> float:
    """GUIE mP@5 of `query` (the rows `q_rows` of `index`) against `index` without itself."""
    neighbours = knn(unit(query), unit(index), 6)
    counts = dict(zip(*np.unique(labels, return_counts=True), strict=True))
    scores = []
    for q, row in enumerate(q_rows):
        others = neighbours[q][neighbours[q] != row][:5]
        n_q = counts[labels[row]] - 1
        if n_q:
            scores.append(precision_at(labels[others] == labels[row], n_q, 5))
    return float(np.mean(scores))


def inner_scores(train: np.ndarray, labels: np.ndarray, domains: np.ndarray, settings: dict | None) -> dict:
    """Per fit domain: its train images' leave-one-out mP@5 under a map fitted on the other fit domains."""
    scores = {}
    for domain in sorted(set(domains)):
        held = domains == domain
        project = fit(train[~held], list(labels[~held]), settings)
        emb = project.transform(train, normalize=False)
        scores[domain] = loo_map5(emb[held], np.flatnonzero(held), emb, labels)
    return scores


def main() -> None:
    args, features = sweep_inputs(__doc__.splitlines()[0], ensemble="multi_lodo_cpu", leave_out=True)
    manifests = features.manifests
    groups = [[i] for i in range(len(features.blocks))]
    fused = {s: combine(f, groups, 0.5) for s, f in features.parts.items()}  # the recipe's signed square root
    domains = np.asarray(manifests["train"].domains)
    if not args.leave_out or set(args.leave_out) - set(domains):
        sys.exit(f"--leave-out: name held-out train domains of {DATA} (it has {', '.join(sorted(set(domains)))})")
    fit_rows = ~np.isin(domains, args.leave_out)
    train, labels = fused["train"][fit_rows], np.asarray(manifests["train"].labels)[fit_rows]
    rows = []
    for name, settings in CANDIDATES:
        started = time.perf_counter()
        inner = inner_scores(train, labels, domains[fit_rows], settings)
        project = fit(train, list(labels), settings)
        report = score({s: project.transform(fused[s], normalize=False) for s in ("query", "index")}, manifests)
        rows.append({"variant": name, "inner_folds": {d: round(v, 4) for d, v in inner.items()},
                     "inner": float(np.mean(list(inner.values()))), "dim": 64, "macro_mP@5": report["macro_mP@5"],
                     "mP@5": report["mP@5"], "per_domain": report["per_domain"],
                     "seconds": round(time.perf_counter() - started, 1)})
        print(f"{name}: inner {rows[-1]['inner']:.3f}, macro {report['macro_mP@5']:.3f}", flush=True)
    picked = max(range(len(rows)), key=lambda i: rows[i]["inner"])
    for i, row in enumerate(rows):
        row["inner mP@5"] = f"{row['inner']:.3f}" + (" **(picked)**" if i == picked else "")
    flags = "".join(f" --leave-out {d}" for d in args.leave_out)
    result = {"command": f"python bench/multi_lodo_select.py --ensemble {args.ensemble}{flags}",
              "date": str(date.today()), "machine": machine(), "left_out": args.leave_out,
              "picked": rows[picked]["variant"], "rows": rows}
    record(f"multi_lodo_select_{args.ensemble}", result, f"GUIE-mini leave-domain-out, {args.ensemble}: the "
           "projection's settings picked by an inner leave-one-domain-out on the fit domains' train images",
           table(result))


def table(result: dict) -> str:
    folds = ", ".join(sorted(result["rows"][0]["inner_folds"]))
    return domain_table(
        f"Command: `{result['command']}` — {result['date']}, {result['machine']}, one run, in a workspace holding "
        f"that ensemble: its members' pooled backbone features (flip TTA, 160 px), signed square root, PCA-64 "
        f"then the learned projection with the settings named (the others as the recipe: lr 3e-4, "
        f"neighbour_tau_teacher 0.05, 20 epochs, seed 0). inner mP@5: the mean over four inner folds ({folds}) "
        f"of that domain's train images scored leave-one-out against all fit-domain train images, the map "
        f"fitted on the other three; the highest is picked. The other columns: the map fitted on all four fit "
        f"domains' train images (without {' and '.join(result['left_out'])}), 888 queries against the shared "
        "index of 3,626 images (all six domains). s: seconds for the row (four inner fits and the outer one).",
        result["rows"], ["variant", "inner mP@5"])


if __name__ == "__main__":
    main()
