"""GUIE-mini: multi-scale TTA on trained members, every combination of the sizes measured.

    .venv/bin/python bench/multi_scale.py --workdir RUNS --members a,b --sizes 224,260,300

Each member's model file (RUNS/members/<name>/best.pt, pooled as it embeds) extracts the query and index
images of configs/data/multi.yaml once at every size (one decode per image, flip TTA, each size's
features L2-normalised); each combination of sizes is then scored with the sum of its sizes' features,
re-normalised: what a recipe with `eval.image_size` one of them and `eval.extra_sizes` the others
embeds (the package's own sum: tests/embed/test_extract.py). The per-size features are kept in
RUNS/cache/multi_scale/ under the model file's SHA-1, so a rerun only scores. They are kept in float32
on purpose, not in the workspace's float16 feature cache: summing float16-rounded sizes moved the scores
in the third decimal (tried 2026-12-05 on mnv2_multi at 128 + 160 + 192 px: 0.557 with packaged_goods
0.383, against 0.558 / 0.387 from the package's own multi-scale embed, which these rows otherwise match
to the last digit). Writes
bench/results/multi_scale.json and the "GUIE-mini: multi-scale TTA" table of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from update_benchmarks import domain_table, machine, record  # noqa: E402

from ensemble.config.load import load_data_cfg  # noqa: E402
from ensemble.data.manifest import read_manifest  # noqa: E402
from ensemble.embed.embedder import model_embedder  # noqa: E402
from ensemble.embed.extract import TTA, extract_many  # noqa: E402
from ensemble.evaluate.metrics import evaluate_embeddings  # noqa: E402
from ensemble.workspace.artifacts import load_model_file  # noqa: E402

DATA = ROOT / "configs" / "data" / "multi.yaml"


def per_size_features(runs: Path, member: str, sizes: list[int], query, index) -> tuple[dict, float]:
    """{"query_<px>" / "index_<px>": features} of `member` at each size (cached), and seconds spent."""
    file = load_model_file(runs / "members" / member / "best.pt")
    cache = runs / "cache" / "multi_scale" / f"{member}_{file.sha1[:12]}_{'-'.join(map(str, sizes))}.npz"
    if cache.is_file():
        with np.load(cache) as saved:
            return dict(saved), 0.0
    cpu, started = torch.device("cpu"), time.perf_counter()
    embedders = [model_embedder(file.model, f"{member}@{s}", f"ms{s}", file.arch, "backbone", cpu, s,
                                file.cfg.backbone.channels_last) for s in sizes]
    feats = {}
    for split, m in (("query", query), ("index", index)):
        for size, f in zip(sizes, extract_many(embedders, m.paths, cpu, TTA(flip=True), 64, 2, 0.01,
                                               f"embed {split}"), strict=True):
            feats[f"{split}_{size}"] = f
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **feats)
    return feats, time.perf_counter() - started


def normalised(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def member_rows(member: str, feats: dict, sizes: list[int], query, index) -> list[dict]:
    rows = []
    for r in range(1, len(sizes) + 1):
        for combo in itertools.combinations(sizes, r):
            q = normalised(sum(feats[f"query_{s}"] for s in combo))
            x = normalised(sum(feats[f"index_{s}"] for s in combo))
            started = time.perf_counter()
            report = evaluate_embeddings(q, query.labels, x, index.labels, 5, query.domains)
            rows.append({"step": member, "variant": " + ".join(f"{s} px" for s in combo), "dim": int(q.shape[1]),
                         "mP@5": report["mP@5"], "macro_mP@5": report["macro_mP@5"],
                         "per_domain": report["per_domain"], "seconds": time.perf_counter() - started})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--members", required=True)
    parser.add_argument("--sizes", default="224,260,300")
    args = parser.parse_args()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    data = load_data_cfg(DATA)
    query, index = read_manifest(data.query), read_manifest(data.index)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows, seconds = [], {}
    for member in args.members.split(","):
        feats, seconds[member] = per_size_features(args.workdir, member, sizes, query, index)
        rows += member_rows(member, feats, sizes, query, index)
    command = f"python bench/multi_scale.py --workdir RUNS --members {args.members} --sizes {args.sizes}"
    intro = (f"Command: `{command}` — {date.today()}, {machine()}, one run; RUNS: the workspace holding the "
             f"members. configs/data/multi.yaml: {len(query)} queries against one shared index of {len(index)} "
             "images; backbone features as each member embeds (pooling), flip TTA; each row sums the "
             "L2-normalised features of its sizes and re-normalises (s: seconds to score the row). Seconds "
             "extracting every size: "
             + ", ".join(f"{m} {s:.0f} s" + (" (cached)" if not s else "") for m, s in seconds.items()) + ".")
    text = domain_table(intro, rows, ["step", "variant"])
    print(text)
    record("multi_scale", {"command": command, "date": str(date.today()), "machine": machine(), "rows": rows},
           "GUIE-mini: multi-scale TTA on trained members", text)


if __name__ == "__main__":
    main()
