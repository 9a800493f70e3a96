"""Embedding throughput: `ens` extraction vs a bare forward pass, decode cost, decodes per image,
and the effect of libjpeg's DCT-domain downscaling ("draft") on mP@5.

    .venv/bin/python bench/embed.py      # needs runs/members/mnv1_grocery and mnv2_grocery (trained)

Writes bench/results/embed.json and the "Embedding throughput" table of BENCHMARKS.md.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import ensemble.data.dataset as dataset_module  # noqa: E402
from ensemble.data.decode import decode_image  # noqa: E402
from ensemble.data.manifest import read_manifest  # noqa: E402
from ensemble.embed.extract import TTA, MultiTransform, extract_many  # noqa: E402
from ensemble.embed.models import load_member_embedder  # noqa: E402
from ensemble.evaluate.metrics import evaluate_embeddings  # noqa: E402

GROCERY = ROOT.parent / "shared" / "data" / "grocery"
WORKDIR = ROOT / "runs"
CPU = torch.device("cpu")


def pipeline_vs_bare(emb, paths, batch: int = 64) -> dict:
    """img/s of extract_many (decode + preprocess in 2 workers + forward) vs forward on ready tensors."""
    start = time.perf_counter()
    extract_many([emb], paths, CPU, TTA(flip=False), batch, workers=2)
    pipeline_s = time.perf_counter() - start
    transform = MultiTransform(emb.views())
    tensors = torch.stack([transform(decode_image(p, emb.size_px))[0] for p in paths])
    tensors = tensors.contiguous(memory_format=torch.channels_last)
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(tensors), batch):
            emb.fn(tensors[i:i + batch])
    bare_s = time.perf_counter() - start
    return {"images": len(paths), "pipeline_img_s": round(len(paths) / pipeline_s, 1),
            "bare_forward_img_s": round(len(paths) / bare_s, 1), "ratio": round(bare_s / pipeline_s, 3)}


def decode_cost(paths, size_px: int) -> dict:
    from PIL import Image

    def plain(path):
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))

    out = {}
    for name, fn in (("pil_full_decode", plain), ("ens_decode_draft", lambda p: decode_image(p, size_px)),
                     ("ens_decode_no_draft", decode_image)):
        start = time.perf_counter()
        for p in paths:
            fn(p)
        out[f"{name}_ms"] = round(1000 * (time.perf_counter() - start) / len(paths), 2)
    return out


def decodes_per_image(embedders, paths) -> float:
    calls = []
    real = dataset_module.decode_image
    dataset_module.decode_image = lambda path, draft_px=None: (calls.append(path), real(path, draft_px))[1]
    try:
        extract_many(embedders, paths, CPU, TTA(flip=True), workers=0)
    finally:
        dataset_module.decode_image = real
    return len(calls) / len(paths)


def draft_effect(emb) -> dict:
    query, index = read_manifest(GROCERY / "query.csv"), read_manifest(GROCERY / "index.csv")
    out = {}
    for draft in (True, False):
        q, x = (extract_many([emb], m.paths, CPU, TTA(flip=True), workers=2, jpeg_draft=draft)[0] for m in (query, index))
        report = evaluate_embeddings(q, query.labels, x, index.labels, 5)
        out["draft" if draft else "full_decode"] = {"mP@5": round(report["mP@5"], 4),
                                                    "recall@1": round(report["recall@1"], 4)}
    return out


def main() -> None:
    from update_benchmarks import record

    torch.set_num_threads(2)
    v1 = load_member_embedder(WORKDIR, "mnv1_grocery", "backbone", CPU)
    v2 = load_member_embedder(WORKDIR, "mnv2_grocery", "backbone", CPU)
    paths = list(read_manifest(GROCERY / "index.csv").paths)
    result = {"command": "python bench/embed.py", "date": str(date.today()),
              "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, no GPU",
              "model": "mnv1_grocery (MobileNet-v1, 224 px, backbone feature), batch 64",
              "throughput": pipeline_vs_bare(v1, paths),
              "decode": decode_cost(paths[:300], v1.size_px),
              "decodes_per_image_2_members_flip": decodes_per_image([v1, v2], paths[:128]),
              "jpeg_draft_mP5": draft_effect(v1)}
    t, d, q = result["throughput"], result["decode"], result["jpeg_draft_mP5"]
    lines = [f"Command: `{result['command']}` — {result['date']}, {result['machine']}, one run; {result['model']}; "
             f"grocery index photos ({t['images']} images, 348x348 to 348x464 JPEG).", "",
             "| measure | value |", "|---|---|",
             f"| `ens` extraction (decode + preprocess in 2 workers + forward) | {t['pipeline_img_s']} img/s |",
             f"| bare forward on pre-decoded tensors | {t['bare_forward_img_s']} img/s |",
             f"| extraction / bare forward | {t['ratio']} |",
             f"| decode per image: plain PIL full decode | {d['pil_full_decode_ms']} ms |",
             f"| decode per image: `ens` (EXIF, mode conversion), full | {d['ens_decode_no_draft_ms']} ms |",
             f"| decode per image: `ens` with DCT draft to >= 224 px | {d['ens_decode_draft_ms']} ms |",
             f"| decodes per image, 2 members x 2 flips | {result['decodes_per_image_2_members_flip']} |",
             f"| mP@5 / recall@1 with DCT draft | {q['draft']['mP@5']} / {q['draft']['recall@1']} |",
             f"| mP@5 / recall@1 with full decode | {q['full_decode']['mP@5']} / {q['full_decode']['recall@1']} |"]
    record("embed", result, "Embedding throughput", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
