"""Embedding throughput: `ens` extraction vs a bare forward pass, decode cost, decodes per image,
and the effect of libjpeg's DCT-domain downscaling ("draft") on mP@5.

    .venv/bin/python bench/embed.py [--device cuda]   # needs runs/members/mnv1_grocery, mnv2_grocery

Writes bench/results/embed.json and the "Embedding throughput" table of BENCHMARKS.md.

A shipped recipe's model with random weights, on the grocery sample in sample/ (nothing else needed,
so it runs on a GPU machine as it is), in fp32 and in the recipe's eval.precision:
    python bench/embed.py --recipe members/h14_224.yaml --device cuda --out embed_recipe.json
    python bench/embed.py --record embed_recipe.json   # here: store it and update BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from dataclasses import replace
from datetime import date
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from quality import median_seconds

import ensemble.data.dataset as dataset_module
from ensemble.atomic import atomic_write_json
from ensemble.data.decode import decode_image
from ensemble.data.manifest import read_manifest
from ensemble.embed.extract import TTA, MultiTransform, extract_many
from ensemble.evaluate.metrics import evaluate_embeddings
from ensemble.workspace import Workspace
from ensemble.workspace.resolve import load_members

GROCERY = ROOT.parent / "shared" / "data" / "grocery"
WORKDIR = ROOT / "runs"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pipeline_vs_bare(emb, paths, device: torch.device, workers: tuple[int, ...] = (0, 1, 2), batch: int = 64,
                     rounds: int = 3) -> dict:
    """img/s of extract_many (decode + preprocess + forward, per worker count) vs forward on ready tensors.

    One warm-up of each, then `rounds` rounds that time every variant once, in turn, so that drift in
    the machine's speed hits all of them alike; each figure is the median over rounds.
    """
    transform = MultiTransform(emb.views())
    tensors = torch.stack([transform(decode_image(p, emb.size_px))[0] for p in paths])
    tensors = tensors.contiguous(memory_format=torch.channels_last).to(device)

    def bare():
        with torch.inference_mode():
            for i in range(0, len(tensors), batch):
                emb(tensors[i:i + batch])
        _sync(device)

    variants = {"bare": bare}
    for n in workers:
        variants[f"workers_{n}"] = lambda n=n: extract_many([emb], paths, device, TTA(flip=False), batch, workers=n)
    seconds = {name: [] for name in variants}
    for name, fn in variants.items():
        fn()  # warm-up: allocator, oneDNN/cuDNN kernel choice
    for _ in range(rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - start)
    median = {name: float(np.median(s)) for name, s in seconds.items()}
    img_s = {name: round(len(paths) / s, 1) for name, s in median.items()}
    return {"images": len(paths), "batch": batch, "rounds": rounds, "img_s": img_s,
            "ratio": {name: round(median["bare"] / s, 3) for name, s in median.items() if name != "bare"},
            "seconds": {name: [round(x, 2) for x in s] for name, s in seconds.items()}}


def decode_cost(paths, size_px: int) -> dict:
    """ms per image: plain PIL full decode, `ens` full decode, `ens` with the DCT draft for size_px;
    and the short sides (full -> draft) that occur."""
    from PIL import Image

    def plain(path):
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))

    out = {"size_px": size_px}
    for name, fn in (("pil_full_decode", plain), ("ens_decode_draft", lambda p: decode_image(p, size_px)),
                     ("ens_decode_no_draft", decode_image)):
        out[f"{name}_ms"] = round(1000 * median_seconds(lambda fn=fn: [fn(p) for p in paths]) / len(paths), 2)
    sides = [(min(decode_image(p).shape[:2]), min(decode_image(p, size_px).shape[:2])) for p in paths]
    out["short_side_px_full_to_draft"] = sorted(f"{a}->{b}" for a, b in Counter(sides))
    return out


def decodes_per_image(embedders, paths, device: torch.device) -> float:
    calls = []
    real = dataset_module.decode_image
    dataset_module.decode_image = lambda path, draft_px=None: (calls.append(path), real(path, draft_px))[1]
    try:
        extract_many(embedders, paths, device, TTA(flip=True), workers=0)
    finally:
        dataset_module.decode_image = real
    return len(calls) / len(paths)


def draft_effect(emb, size_px: int, device: torch.device) -> dict:
    """mP@5 / recall@1 of `emb` run at size_px with and without DCT draft decoding, and how close the features are."""
    emb = replace(emb, size_px=size_px)
    query, index = read_manifest(GROCERY / "query.csv"), read_manifest(GROCERY / "index.csv")
    out, feats = {"size_px": size_px}, {}
    for draft in (True, False):
        q, x = (extract_many([emb], m.paths, device, TTA(flip=True), workers=2, jpeg_draft=draft)[0]
                for m in (query, index))
        report = evaluate_embeddings(q, query.labels, x, index.labels, 5)
        name = "draft" if draft else "full_decode"
        feats[name] = np.concatenate([q, x])
        out[name] = {"mP@5": round(report["mP@5"], 4), "recall@1": round(report["recall@1"], 4)}
    cosine = (feats["draft"] * feats["full_decode"]).sum(1)  # rows are unit vectors
    out["feature_cosine_min"] = round(float(cosine.min()), 4)
    out["feature_cosine_mean"] = round(float(cosine.mean()), 4)
    return out


def table(result: dict) -> str:
    t, q = result["throughput"], result["jpeg_draft"]
    ratio = t["ratio"]
    lines = [f"Command: `{result['command']}` — {result['date']}, {result['machine']}, one run; {result['model']}; "
             f"grocery index photos ({t['images']} images; JPEG, short side 198 or 348 px). "
             "Throughput: one warm-up, then "
             f"{t['rounds']} rounds timing each variant in turn; median per variant.", "",
             "| measure | value |", "|---|---|",
             f"| bare forward on pre-decoded tensors (batch {t['batch']}) | {t['img_s']['bare']} img/s |"]
    lines += [f"| `ens` extraction, decode + preprocess in {n[8:]} worker(s) + forward | {v} img/s "
              f"(ratio {ratio[n]}) |" for n, v in t["img_s"].items() if n != "bare"]
    lines.append(f"| decodes per image, 2 members x 2 flips | {result['decodes_per_image_2_members_flip']} |")
    for d in result["decode"]:
        lines += [f"| decode per image for {d['size_px']} px: plain PIL full / `ens` full / `ens` DCT draft "
                  f"(short side {', '.join(d['short_side_px_full_to_draft'])} px) | {d['pil_full_decode_ms']} / "
                  f"{d['ens_decode_no_draft_ms']} / {d['ens_decode_draft_ms']} ms |"]
    for d in q:
        lines += [f"| mP@5 / recall@1 at {d['size_px']} px: DCT draft vs full decode | {d['draft']['mP@5']} / "
                  f"{d['draft']['recall@1']} vs {d['full_decode']['mP@5']} / {d['full_decode']['recall@1']} |",
                  f"| feature cosine draft vs full decode at {d['size_px']} px (min / mean) | "
                  f"{d['feature_cosine_min']} / {d['feature_cosine_mean']} |"]
    return "\n".join(lines)


SAMPLE = ROOT / "sample" / "grocery"
RECIPE_TITLE = "Embedding throughput: a shipped recipe's model, fp32 vs its eval.precision"


def recipe_embedders(recipe: str, device: torch.device) -> tuple[dict, dict]:
    """The recipe's model with random weights (backbone.pretrained null), as extraction runs it:
    one Embedder per precision (fp32 and the recipe's eval.precision)."""
    from ensemble.config.load import load_member_cfg
    from ensemble.embed.embedder import model_embedder
    from ensemble.models.member import build_member_model

    cfg = load_member_cfg(recipe, ["backbone.pretrained=null", f"data={ROOT / 'configs' / 'data' / 'sample.yaml'}"])
    model = build_member_model(cfg)
    model.backbone.set_grad_checkpointing(False)  # embedding only, as a loaded model file does
    embedders = {p: model_embedder(model, f"{cfg.name}-{p}", "bench", cfg.backbone.arch, cfg.eval.features, device,
                                   cfg.eval.image_size, cfg.backbone.channels_last, precision=p)
                 for p in dict.fromkeys(["fp32", cfg.eval.precision])}
    facts = {"recipe": recipe, "arch": f"{cfg.backbone.source}:{cfg.backbone.arch}",
             "size_px": model.backbone.image_size, "features": cfg.eval.features, "batch": cfg.eval.batch_size}
    return embedders, facts


def sample_paths(images: int) -> list[str]:
    """The grocery sample's images (sample/, MIT), repeated up to `images` paths."""
    paths = [p for split in ("train", "query", "index") for p in read_manifest(SAMPLE / f"{split}.csv").paths]
    return [paths[i % len(paths)] for i in range(images)]


def measure_recipe(recipe: str, device: torch.device, images: int, workers: tuple[int, ...]) -> dict:
    from update_benchmarks import machine

    embedders, facts = recipe_embedders(recipe, device)
    paths = sample_paths(images)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU"
    return {"command": "python bench/embed.py " + " ".join(sys.argv[1:]), "date": str(date.today()),
            "machine": machine(gpu), "torch": torch.__version__, **facts,
            "precisions": {p: pipeline_vs_bare(emb, paths, device, workers, facts["batch"])
                           for p, emb in embedders.items()}}


def recipe_table(result: dict) -> str:
    lines = [f"Command: `{result['command']}` — {result['date']}, {result['machine']} (torch {result['torch']}), "
             f"one run; {result['recipe']} ({result['arch']}, {result['size_px']} px, {result['features']} "
             f"feature, random weights), the grocery sample's JPEGs repeated to "
             f"{result['precisions']['fp32']['images']} paths, batch {result['batch']}, no flip. One warm-up, "
             "then rounds timing each variant in turn; medians.",
             "", "| precision | variant | img/s | ratio to bare |", "|---|---|---|---|"]
    for precision, t in result["precisions"].items():
        for name, img_s in t["img_s"].items():
            variant = "bare forward on decoded tensors" if name == "bare" else \
                f"`ens` extraction, {name[8:]} loader worker(s)"
            lines.append(f"| {precision} | {variant} | {img_s} | {t['ratio'].get(name, 1.0)} |")
    return "\n".join(lines)


def main() -> None:
    from update_benchmarks import machine, record

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ... (the models and forward passes run there)")
    parser.add_argument("--images", type=int, default=512, help="index images timed per throughput variant")
    parser.add_argument("--draft-sizes", type=int, nargs="+", default=[224, 160])
    parser.add_argument("--recipe", help="time this recipe's model (random weights) on the shipped sample instead")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="loader workers tried")
    parser.add_argument("--out", help="with --recipe: write the result here (record it with --record)")
    parser.add_argument("--record", help="a JSON written by --recipe --out: store it and update BENCHMARKS.md")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    if args.record:
        result = json.loads(Path(args.record).read_text())
        record("embed_recipe", result, RECIPE_TITLE, recipe_table(result))
        return print(recipe_table(result))
    if args.recipe:
        result = measure_recipe(args.recipe, device, args.images, tuple(args.workers))
        if args.out:
            atomic_write_json(Path(args.out), result, indent=1)
        return print(recipe_table(result))
    v1, v2 = (p.embedder for p in load_members(Workspace(WORKDIR), ["mnv1_grocery", "mnv2_grocery"], "backbone",
                                                device))
    paths = list(read_manifest(GROCERY / "index.csv").paths)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU"
    result = {"command": "python bench/embed.py " + " ".join(sys.argv[1:]), "date": str(date.today()),
              "machine": machine(gpu),
              "model": "mnv1_grocery (MobileNet-v1, 224 px, backbone feature, channels_last)",
              "throughput": pipeline_vs_bare(v1, paths[:args.images], device, tuple(args.workers)),
              "decode": [decode_cost(paths[:300], s) for s in args.draft_sizes],
              "decodes_per_image_2_members_flip": decodes_per_image([v1, v2], paths[:128], device),
              "jpeg_draft": [draft_effect(v1, s, device) for s in args.draft_sizes]}
    body = table(result)
    record("embed", result, "Embedding throughput", body)
    print(body)


if __name__ == "__main__":
    main()
