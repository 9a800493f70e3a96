"""GUIE-mini projection probes: can a 64-d map of the strongest members' features keep their concatenation?

    .venv/bin/python bench/multi_projection_probes.py [--workdir runs] [--ensemble multi_lite2_seeds_lite0]

The ensemble's own fusion (its groups and signed power, from ensemble.yaml) of its members' cached features,
PCA-64 fitted on multi's TRAIN rows as the start, then either the library's `fit_projection` (the shipped
recipe, reseeded: the noise of one fit) or a probe that changes one thing in that training -- where the
neighbour term's rows come from (larger random batches, one batch per domain), how rows are sampled
(domain shares ~ size^-alpha), or the map itself (a residual MLP beside the linear projection, so it is
no longer a linear map of the frozen features). The probes are bench code, not options of `ens fuse`:
none beat the recipe's seed noise. Every fit sees train rows only; scored query vs the shared index.
Writes bench/results/multi_projection_probes.json and the "GUIE-mini projection probes" table of BENCHMARKS.md.
"""

from __future__ import annotations

import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from multi_reducer_sweep import score, sweep_inputs  # noqa: E402
from update_benchmarks import domain_table, machine, record  # noqa: E402

from ensemble.config.schema import ProjectionCfg  # noqa: E402
from ensemble.fuse.combine import combine  # noqa: E402
from ensemble.fuse.learned import fit_projection, label_head, labelled_rows, neighbour_loss  # noqa: E402
from ensemble.fuse.reducer import fit_pca  # noqa: E402

RECIPE = ProjectionCfg(neighbour_weight=1.0, neighbour_tau_teacher=0.05, lr=3e-4)  # configs/ensemble/multi_cpu.yaml
# (variant text, probe settings or None for the library's fit_projection, ProjectionCfg changes, seeds)
VARIANTS = [
    ("the recipe (library fit_projection)", None, {}, [0, 1, 2]),
    ("the recipe, batch 1,024 (library fit_projection)", None, {"batch_size": 1024}, [0]),
    ("neighbour term on its own random 1,024 rows per step", {"neighbour_rows": 1024}, {}, [0]),
    ("neighbour term on its own random 2,048 rows per step", {"neighbour_rows": 2048}, {}, [0]),
    ("neighbour term within each domain (64 rows of each, per step)", {"per_domain_rows": 64}, {}, [0]),
    ("neighbour term within each domain (128 rows of each, per step)", {"per_domain_rows": 128}, {}, [0]),
    ("rows sampled with domain shares ~ size^0.75 (alpha 0.25)", {"domain_alpha": 0.25}, {}, [0]),
    ("rows sampled with domain shares ~ size^0.5 (alpha 0.5)", {"domain_alpha": 0.5}, {}, [0, 1, 2]),
    ("rows sampled with domain shares ~ size^0.25 (alpha 0.75)", {"domain_alpha": 0.75}, {}, [0]),
    ("rows sampled with equal domain shares (alpha 1)", {"domain_alpha": 1.0}, {}, [0]),
    ("+ a residual MLP (2,560 -> 512 -> 64, GELU, zero-initialised output)", {"mlp_hidden": 512}, {}, [0]),
]


def probe_fit(x: np.ndarray, labels: list[str], domains: np.ndarray, start, cfg: ProjectionCfg, seed: int,
              neighbour_rows: int = 0, per_domain_rows: int = 0, domain_alpha: float = 0.0, mlp_hidden: int = 0):
    """fit_projection's losses and schedule with one probe changed; returns the map (numpy rows -> 64-d)."""
    rows, targets, classes = labelled_rows(labels)
    assert len(rows) == len(labels), "the probes expect every train row labelled"
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    mean = torch.from_numpy(np.asarray(start.mean, np.float32))
    raw = torch.from_numpy(np.asarray(x, np.float32))
    centred, y = raw - mean, torch.from_numpy(targets)
    proj = torch.nn.Parameter(torch.from_numpy(start.components.copy()))
    mlp = None
    if mlp_hidden:
        mlp = torch.nn.Sequential(torch.nn.Linear(x.shape[1], mlp_hidden), torch.nn.GELU(),
                                  torch.nn.Linear(mlp_hidden, start.out_dim))
        torch.nn.init.zeros_(mlp[2].weight)
        torch.nn.init.zeros_(mlp[2].bias)

    def project(z: torch.Tensor) -> torch.Tensor:
        return z @ proj.T + (mlp(z) if mlp is not None else 0.0)

    head = label_head(centred, y, proj, classes, cfg)
    params = [proj, *head.parameters(), *(mlp.parameters() if mlp is not None else [])]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    names, domain_of, counts = np.unique(domains, return_inverse=True, return_counts=True)
    weights = torch.from_numpy((1.0 / counts[domain_of]) ** domain_alpha)
    by_domain = [torch.from_numpy(np.flatnonzero(domain_of == d)) for d in range(len(names))]

    def neighbour_term(batch: torch.Tensor, projected: torch.Tensor) -> torch.Tensor:
        if per_domain_rows:
            picks = [ids[torch.randperm(len(ids), generator=gen)[:per_domain_rows]] for ids in by_domain]
            return torch.stack([neighbour_loss(raw[p], project(centred[p]), cfg.neighbour_tau_teacher,
                                               cfg.neighbour_tau) for p in picks]).mean()
        if neighbour_rows:
            batch = torch.randint(len(raw), (neighbour_rows,), generator=gen)
            projected = project(centred[batch])
        return neighbour_loss(raw[batch], projected, cfg.neighbour_tau_teacher, cfg.neighbour_tau)

    for _ in range(cfg.epochs):
        order = (torch.multinomial(weights, len(raw), replacement=True, generator=gen) if domain_alpha
                 else torch.randperm(len(raw), generator=gen))
        for batch in order.split(cfg.batch_size):
            projected = project(centred[batch])
            loss = cfg.label_weight * F.cross_entropy(head(projected, y[batch]), y[batch])
            loss = loss + cfg.neighbour_weight * neighbour_term(batch, projected)
            opt.zero_grad()
            loss.backward()
            opt.step()

    def apply(rows_: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return project(torch.from_numpy(np.asarray(rows_, np.float32)) - mean).numpy()
    return apply


def main() -> None:
    args, features = sweep_inputs(__doc__.splitlines()[0], "multi_lite2_seeds_lite0")
    parts, manifests, head = features.parts, features.manifests, features.model.head
    fused = {split: combine(feats, head.groups, head.power) for split, feats in parts.items()}
    labels, domains = list(manifests["train"].labels), np.asarray(manifests["train"].domains)
    start = fit_pca(fused["train"], 64)
    rows = [row("the concatenation itself (no reducer)", fused, manifests, 0.0)]
    for text, probe, changes, seeds in VARIANTS:
        cfg = RECIPE.model_copy(update=changes)
        for seed in seeds:
            started = time.perf_counter()
            if probe is None:
                reducer = fit_projection(fused["train"], labels, start, cfg, seed=seed)
                apply = reducer.transform
            else:
                apply = probe_fit(fused["train"], labels, domains, start, cfg, seed, **probe)
            emb = {s: apply(fused[s]) for s in ("query", "index")}
            rows.append(row(f"{text}; seed {seed}", emb, manifests, time.perf_counter() - started))
    result = {"command": f"python bench/multi_projection_probes.py --ensemble {args.ensemble}",
              "date": str(date.today()), "machine": machine(), "ensemble": args.ensemble, "rows": rows}
    record("multi_projection_probes", result,
           "GUIE-mini projection probes: 64-d maps of the strongest members' features", table(result))


def row(variant: str, emb: dict, manifests: dict, seconds: float) -> dict:
    report = score(emb, manifests)
    print(f"{variant}: macro {report['macro_mP@5']:.3f}", flush=True)
    return {"variant": variant, "dim": emb["query"].shape[1], "macro_mP@5": report["macro_mP@5"],
            "mP@5": report["mP@5"], "per_domain": report["per_domain"], "seconds": round(seconds, 1)}


def table(result: dict) -> str:
    return domain_table(
        f"Command: `{result['command']}` — {result['date']}, {result['machine']}, one run, in the workspace "
        f"that holds ensemble {result['ensemble']} (its members' cached features, flip TTA, each member's eval "
        "size; its fusion: Lite2 seeds averaged, signed sqrt, 2,560-d). Every fit on multi's train images only, "
        "started at PCA-64 of them, the recipe's settings unless named (20 epochs, lr 3e-4, batch 256, CosFace "
        "s 30 m 0.2 on the train labels + neighbour term weight 1, teacher tau 0.05); 888 queries against the "
        "shared index of 3,626 images. s: seconds to fit the row.", result["rows"], ["variant"])


if __name__ == "__main__":
    main()
