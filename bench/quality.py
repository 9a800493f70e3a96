"""Retrieval quality and cost, side by side, on grocery and coil20 (open-set query vs index).

    .venv/bin/python bench/quality.py [--data grocery coil20]

Rows: the backbone without training, each CPU member, their plain concatenation and the fused
ensemble (configs/ensemble/<data>_cpu.yaml); mP@5, recall@1, per-domain mP@5, GFLOPs and measured
ms per image (flip TTA included). Members are trained first if the workspace lacks them (reused
otherwise); features are cached in runs/. Then the student (distill/cpu/mnv1_<data>.yaml, distilled
from that ensemble) and its TorchScript export (runs/exports/), whose row embeds every image by
running the exported file itself. With both datasets, each one's models are then evaluated on the
other ("Domains not trained on": does training hurt a domain the models never saw?).
Writes bench/results/quality.json, quality_cross_domain.json and BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from update_benchmarks import machine, record

from ensemble.config.load import load_data_cfg, load_member_cfg, load_student_cfg
from ensemble.data.manifest import read_manifest
from ensemble.deploy.export import export_or_reuse
from ensemble.deploy.exported import embed_exported
from ensemble.deploy.torchscript import jit_load
from ensemble.embed.cache import embed_manifest
from ensemble.embed.embedder import model_embedder
from ensemble.embed.extract import TTA
from ensemble.evaluate.metrics import evaluate_embeddings
from ensemble.fuse.config import ensemble_cfg
from ensemble.fuse.fit import fuse, fuse_or_reuse
from ensemble.hashing import file_sha1
from ensemble.models.member import build_member_model
from ensemble.train.member import train_member
from ensemble.train.student import distill
from ensemble.workspace import resolve_model

WORKDIR = ROOT / "runs"
CPU = torch.device("cpu")
MEMBERS = {"grocery": ["mnv1_grocery", "mnv2_grocery"], "coil20": ["mnv1_coil20", "mnv2_coil20"]}


def median_seconds(fn, min_seconds: float = 3.0) -> float:
    """Median wall time of fn() over repeats filling `min_seconds`, after one warm-up call."""
    fn()
    times, started = [], time.perf_counter()
    while len(times) < 3 or time.perf_counter() - started < min_seconds:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def cost(embedders, flip: bool = True, batch: int = 32) -> tuple[float, float]:
    """(GFLOPs, ms) per image for running every embedder (both flips) on one image."""
    from torch.utils.flop_counter import FlopCounterMode

    flops, seconds = 0.0, 0.0
    views = 2 if flip else 1
    for emb in embedders:
        x = torch.randn(1, 3, emb.size_px, emb.size_px).contiguous(memory_format=torch.channels_last)
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            emb(x)
        flops += views * counter.get_total_flops()
        xb = torch.randn(batch, 3, emb.size_px, emb.size_px).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            seconds += views * median_seconds(lambda: emb(xb)) / batch
    return flops / 1e9, seconds * 1000


def row(name: str, embedders, combine, query, index) -> dict:
    q, x = (combine(embed_manifest(embedders, m, WORKDIR / "cache", CPU, TTA(flip=True))) for m in (query, index))
    report = evaluate_embeddings(q, query.labels, x, index.labels, 5, query.domains)
    gflops, ms = cost(embedders)
    return {"model": name, "dim": int(q.shape[1]), "mP@5": round(report["mP@5"], 4),
            "recall@1": round(report["recall@1"], 4), "per_domain": report["per_domain"],
            "gflops_per_image": round(gflops, 2), "ms_per_image": round(ms, 1)}


def untrained(member: str, query, index) -> dict:
    cfg = load_member_cfg(ROOT / "members" / "cpu" / f"{member}.yaml")
    model = build_member_model(cfg)
    emb = model_embedder(model, f"{member}_untrained", f"untrained:{file_sha1(cfg.backbone.pretrained)}",
                         cfg.backbone.arch, "backbone", CPU, cfg.eval.image_size, cfg.backbone.channels_last)
    return row(f"{cfg.backbone.arch}, no training", [emb], lambda f: f[0], query, index)


def dataset_rows(data: str) -> list[dict]:
    for member in MEMBERS[data]:
        train_member(load_member_cfg(ROOT / "members" / "cpu" / f"{member}.yaml"), WORKDIR)
    cfg = load_data_cfg(ROOT / "configs" / "data" / f"{data}.yaml")
    query, index = read_manifest(cfg.query), read_manifest(cfg.index)
    rows = [untrained(MEMBERS[data][0], query, index)]
    for member in MEMBERS[data]:
        m = resolve_model(member, WORKDIR, "backbone")
        rows.append(row(f"member {member}", m.embedders, m.combine, query, index))
    concat = fuse(ensemble_cfg(WORKDIR, None, members=",".join(MEMBERS[data]), no_pca=True, features="backbone",
                               name=f"{data}_concat"), WORKDIR)
    rows.append(row("plain concatenation", concat.embedders, concat.combine, query, index))
    ens = fuse_or_reuse(ensemble_cfg(WORKDIR, str(ROOT / "configs" / "ensemble" / f"{data}_cpu.yaml")), WORKDIR)
    rows.append(row(f"fused ensemble (PCA-{ens.out_dim})", ens.embedders, ens.combine, query, index))
    student_cfg = load_student_cfg(ROOT / "distill" / "cpu" / f"{MEMBERS[data][0]}.yaml")
    distill(student_cfg, WORKDIR)
    student = resolve_model(f"student:{student_cfg.name}", WORKDIR)
    rows.append(row(f"student {student_cfg.name} (distilled)", student.embedders, student.combine, query, index))
    rows.append(exported_row(export_or_reuse(student_cfg.name, WORKDIR), student.embedders[0], query, index))
    return rows


def exported_row(path: Path, student_emb, query, index) -> dict:
    """The exported file's own embeddings (each image fed whole, uint8); cost as the student's, timed
    on the TorchScript module with uint8 inputs at the student's size (its resize is then a no-op)."""
    q, x = (embed_exported(path, m, WORKDIR / "cache", workers=2) for m in (query, index))
    report = evaluate_embeddings(q, query.labels, x, index.labels, 5, query.domains)
    gflops, _ = cost([student_emb])
    module, size = jit_load(path), student_emb.size_px
    xb = torch.randint(0, 256, (32, 3, size, size), dtype=torch.uint8)
    with torch.inference_mode():
        ms = median_seconds(lambda: module(xb)) / 32 * 1000
    return {"model": f"exported student ({path.name}, TorchScript)", "dim": int(q.shape[1]),
            "mP@5": round(report["mP@5"], 4), "recall@1": round(report["recall@1"], 4),
            "per_domain": report["per_domain"], "gflops_per_image": round(gflops, 2), "ms_per_image": round(ms, 1)}


def cross_domain_rows(data: str, other: str) -> list[dict]:
    """Models trained on `other` evaluated on `data` (a domain they never saw), at `data`'s image size,
    each beside the same backbone without training; the ensemble and student beside untrained MobileNet-v1."""
    cfg = load_data_cfg(ROOT / "configs" / "data" / f"{data}.yaml")
    query, index = read_manifest(cfg.query), read_manifest(cfg.index)
    size = load_member_cfg(ROOT / "members" / "cpu" / f"{MEMBERS[data][0]}.yaml").eval.image_size
    baselines = [untrained(member, query, index) for member in MEMBERS[data]]

    def at_size(embedders):
        return [replace(e, size_px=size) for e in embedders]

    rows = []
    for member, baseline in zip(MEMBERS[other], baselines, strict=True):
        m = resolve_model(member, WORKDIR, "backbone")
        rows.append({**row(f"member {member}", at_size(m.embedders), m.combine, query, index), "baseline": baseline})
    ens = ensemble_cfg(WORKDIR, str(ROOT / "configs" / "ensemble" / f"{other}_cpu.yaml"))
    ens = fuse_or_reuse(ens, WORKDIR)
    rows.append({**row(f"fused ensemble {ens.ensemble.name} (PCA-{ens.out_dim})", at_size(ens.embedders),
                       ens.combine, query, index), "baseline": baselines[0]})
    student = resolve_model(f"student:{load_student_cfg(ROOT / 'distill' / 'cpu' / f'{MEMBERS[other][0]}.yaml').name}",
                            WORKDIR)
    rows.append({**row(f"student {student.name}", at_size(student.embedders), student.combine, query, index),
                 "baseline": baselines[0]})
    return [{**r, "trained_on": other} for r in rows]


def cross_table(data: str, rows: list[dict]) -> str:
    lines = [f"**{data}**, models trained on {rows[0]['trained_on']} only", "",
             "| model | dim | mP@5 | recall@1 | untrained backbone (mP@5) | change in mP@5 |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        b = r["baseline"]
        lines.append(f"| {r['model']} | {r['dim']} | {r['mP@5']:.3f} | {r['recall@1']:.3f} | {b['model']} "
                     f"({b['mP@5']:.3f}) | {r['mP@5'] - b['mP@5']:+.3f} |")
    return "\n".join(lines)


def table(data: str, rows: list[dict]) -> str:
    domains = sorted({d for r in rows for d in r["per_domain"]})
    lines = [f"**{data}** ({len(domains)} domain(s))", "",
             "| model | dim | mP@5 | recall@1 | " + " | ".join(domains) + " | GFLOPs/img | ms/img |",
             "|---|---|---|---|" + "---|" * len(domains) + "---|---|"]
    for r in rows:
        per = " | ".join(f"{r['per_domain'][d]:.3f}" for d in domains)
        lines.append(f"| {r['model']} | {r['dim']} | {r['mP@5']:.3f} | {r['recall@1']:.3f} | {per} | "
                     f"{r['gflops_per_image']} | {r['ms_per_image']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", default=["grocery", "coil20"])
    args = parser.parse_args()
    torch.set_num_threads(2)
    results = {d: dataset_rows(d) for d in args.data}
    meta = {"command": "python bench/quality.py " + " ".join(sys.argv[1:]), "date": str(date.today()),
            "machine": machine()}
    publish("quality", "Retrieval quality", meta, results, [table(d, rows) for d, rows in results.items()],
            "Open-set query vs index, 224 px (coil20: 128 px), flip TTA; cost = all members x 2 flips for one "
            "image (median batch of 32 over >= 3 s; the exported row includes its resize). The exported row "
            "runs the TorchScript file on whole decoded images (no DCT draft decoding).")
    if len(args.data) == 2:  # each dataset's models on the other one: does training hurt unseen domains?
        cross = {d: cross_domain_rows(d, o) for d, o in (args.data, args.data[::-1])}
        publish("quality_cross_domain", "Domains not trained on", meta, cross,
                [cross_table(d, rows) for d, rows in cross.items()],
                "Open-set query vs index of one dataset, with models trained on the other; every model runs at "
                "the evaluated dataset's image size with flip TTA. Baseline: the same ImageNet backbone without "
                "training (MobileNet-v1 for the ensemble and the student).")


def publish(name: str, title: str, meta: dict, results: dict, tables: list[str], description: str) -> None:
    """Write bench/results/<name>.json and the BENCHMARKS.md section `title`, and print it."""
    body = "\n\n".join([f"Command: `{meta['command']}` — {meta['date']}, {meta['machine']}, one run. {description}",
                         *tables])
    record(name, {**meta, "results": results}, title, body)
    print(body)


if __name__ == "__main__":
    main()
