"""GUIE-mini baselines: untrained ImageNet backbones on `multi` (six domains, one shared index).

    .venv/bin/python bench/multi_baselines.py

The headline metric of the multi-domain work is the macro mean of per-domain mP@5 on
configs/data/multi.yaml (query vs index), overall mP@5 beside it. Each backbone here is the pooled
feature of the ImageNet weights in ../shared/weights, flip TTA, at 224 px (EfficientNet-Lite2 at its
native 260 px as well; and each pooled by GeM p=3 instead of its average pool, at those sizes and at
the CPU recipes' 160 px), scored by `ens`'s
own metric code. Writes bench/results/multi_baselines.json
and the "GUIE-mini baselines" table of BENCHMARKS.md.
"""

from __future__ import annotations

import json
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

from update_benchmarks import machine, record  # noqa: E402

from ensemble.config.load import load_data_cfg, load_member_cfg  # noqa: E402
from ensemble.data.manifest import read_manifest  # noqa: E402
from ensemble.embed.embedder import model_embedder  # noqa: E402
from ensemble.embed.extract import TTA, extract_many  # noqa: E402
from ensemble.evaluate.metrics import evaluate_embeddings  # noqa: E402
from ensemble.models.member import build_member_model  # noqa: E402

WEIGHTS = ROOT.parent / "shared" / "weights"
RESULT = ROOT / "bench" / "results" / "multi_baselines.json"
BACKBONES = [  # (name, recipe overrides, eval size)
    ("MobileNet-v1", [], 224),
    ("MobileNet-v2", ["backbone.arch=mobilenetv2_100",
                      f"backbone.pretrained={WEIGHTS / 'mobilenetv2_100.coral_in1k.safetensors'}"], 224),
    ("EfficientNet-Lite0", ["backbone.arch=tf_efficientnet_lite0", "backbone.model_kwargs={}",
                            f"backbone.pretrained={WEIGHTS / 'tf_efficientnet_lite0.mli_in1k.safetensors'}"], 224),
    ("EfficientNet-Lite2", ["backbone.arch=tf_efficientnet_lite2", "backbone.model_kwargs={}",
                            f"backbone.pretrained={WEIGHTS / 'tf_efficientnet_lite2.mli_in1k.safetensors'}"], 260),
]
# the GUIE-mini CPU recipes (members/cpu/*_multi.yaml) evaluate at 160 px: their baselines at that size
BACKBONES += [(name, overrides, 160) for name, overrides, _ in BACKBONES[:3]]
# GeM pooling (backbone.gem_p) instead of each tower's average pool, at the native sizes
BACKBONES += [(f"{name} + GeM p=3", [*overrides, "backbone.gem_p=3"], size) for name, overrides, size in BACKBONES[:4]]
# and at the CPU recipes' 160 px, the baselines of their members pooled by GeM at eval (eval.gem_p)
BACKBONES += [(f"{name} + GeM p=3", [*overrides, "backbone.gem_p=3"], 160) for name, overrides, _ in BACKBONES[:3]]


def baseline(name: str, overrides: list[str], size_px: int, query, index) -> dict:
    cfg = load_member_cfg(ROOT / "members" / "cpu" / "mnv1_grocery.yaml",
                          [f"data={ROOT / 'configs' / 'data' / 'multi.yaml'}", *overrides])
    model = build_member_model(cfg)
    emb = model_embedder(model, name, "untrained", cfg.backbone.arch, "backbone", torch.device("cpu"), size_px)
    started = time.perf_counter()
    q, x = (extract_many([emb], m.paths, torch.device("cpu"), TTA(flip=True), workers=2, desc=f"{name} {label}")[0]
            for label, m in (("query", query), ("index", index)))
    report = evaluate_embeddings(q, query.labels, x, index.labels, 5, query.domains)
    per = report["per_domain"]
    return {"model": f"{name} ({cfg.backbone.arch}), untrained", "size_px": size_px, "dim": int(q.shape[1]),
            "mP@5": report["mP@5"], "macro_mP@5": float(np.mean(list(per.values()))), "per_domain": per,
            "seconds": time.perf_counter() - started}


def table(result: dict) -> str:
    domains = sorted(result["rows"][0]["per_domain"])
    lines = [f"Command: `{result['command']}` — {result['date']}, {result['machine']}, one run. "
             f"{result['queries']} queries against one shared index of {result['index']} images "
             "(configs/data/multi.yaml), pooled backbone features, flip TTA."
             + (" With --keep, rows already in bench/results/multi_baselines.json (same model and size) keep the "
                "numbers of the run that measured them; only the others were measured by this command."
                if "--keep" in result["command"] else ""), "",
             "| backbone | px | dim | macro mP@5 | overall mP@5 | " + " | ".join(domains) + " |",
             "|---|---|---|---|---|" + "---|" * len(domains)]
    for r in result["rows"]:
        per = " | ".join(f"{r['per_domain'][d]:.3f}" for d in domains)
        lines.append(f"| {r['model']} | {r['size_px']} | {r['dim']} | {r['macro_mP@5']:.3f} | {r['mP@5']:.3f} "
                     f"| {per} |")
    return "\n".join(lines)


def main() -> None:
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    cfg = load_data_cfg(ROOT / "configs" / "data" / "multi.yaml")
    query, index = read_manifest(cfg.query), read_manifest(cfg.index)
    # --keep: reuse rows already in bench/results/multi_baselines.json (same model and size), measure the rest
    kept = {}
    if "--keep" in sys.argv and RESULT.is_file():
        kept = {(r["model"], r["size_px"]): r for r in json.loads(RESULT.read_text())["rows"]}
    rows = []
    for name, overrides, size in BACKBONES:
        arch = load_member_cfg(ROOT / "members" / "cpu" / "mnv1_grocery.yaml", overrides).backbone.arch
        row = kept.get((f"{name} ({arch}), untrained", size))
        rows.append(row or baseline(name, overrides, size, query, index))
    result = {"command": "python bench/multi_baselines.py" + " --keep" * bool(kept), "date": str(date.today()),
              "machine": machine(),
              "queries": len(query), "index": len(index), "rows": rows}
    text = table(result)
    print(text)
    record("multi_baselines", result, "GUIE-mini baselines: untrained backbones on multi", text)


if __name__ == "__main__":
    main()
