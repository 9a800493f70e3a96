"""GPU half of the benchmarks: ViT-H/14 image tower (random weights) at 224 and 280 px, bf16.

On a GPU machine (needs only torch + timm; timm's `vit_huge_patch14_clip_224` is the OpenCLIP
ViT-H-14 image tower):
    python bench/gpu.py --out gpu.json
Here, to record a result file into BENCHMARKS.md and bench/results/:
    python bench/gpu.py --record gpu.json

Measures: the bf16 matmul peak of the card (8192^3), extraction img/s at the largest tried batch,
its FLOP rate (FlopCounterMode) as a fraction of that peak, peak memory, and one training step
(AdamW, autocast bf16, gradient checkpointing) img/s at the largest batch that fits.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCH = "vit_huge_patch14_clip_224"


def timed(fn, warmup: int = 3, iters: int = 10) -> float:
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def matmul_peak_tflops() -> float:
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    return 2 * 8192**3 / timed(lambda: a @ b) / 1e12


def flops_per_image(model, size: int) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, 3, size, size, device="cuda", dtype=torch.bfloat16)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x)
    return counter.get_total_flops()


def extraction(size: int, batch: int, peak: float) -> dict:
    import timm
    import torch

    model = timm.create_model(ARCH, img_size=size, num_classes=0).cuda().eval().to(torch.bfloat16)
    x = torch.randn(batch, 3, size, size, device="cuda", dtype=torch.bfloat16)
    torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        seconds = timed(lambda: model(x))
    flops = flops_per_image(model, size)
    img_s = batch / seconds
    result = {"size_px": size, "batch": batch, "img_per_s": round(img_s, 1), "gflops_per_image": round(flops / 1e9, 1),
              "tflops": round(img_s * flops / 1e12, 1), "fraction_of_peak": round(img_s * flops / 1e12 / peak, 3),
              "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
    model = x = None  # free before the next size
    torch.cuda.empty_cache()
    return result


def train_step(size: int, batches: list[int]) -> dict:
    import timm
    import torch

    best = None
    for batch in batches:
        model = timm.create_model(ARCH, img_size=size, num_classes=0).cuda().train()
        model.set_grad_checkpointing(True)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
        x = torch.randn(batch, 3, size, size, device="cuda")

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(x).float().pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        try:
            torch.cuda.reset_peak_memory_stats()
            seconds = timed(step, warmup=2, iters=5)
            best = {"size_px": size, "batch": batch, "img_per_s": round(batch / seconds, 1),
                    "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
        except torch.OutOfMemoryError:
            break
        finally:
            model = opt = x = None  # free before the next batch size
            torch.cuda.empty_cache()
    return best


def measure() -> dict:
    import torch

    peak = matmul_peak_tflops()
    return {"date": str(date.today()), "device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "model": f"timm {ARCH} (OpenCLIP ViT-H-14 image tower), random weights",
            "matmul_peak_tflops": round(peak, 1),
            "extraction": [extraction(224, 256, peak), extraction(280, 256, peak)],
            "train_step": [train_step(224, [64, 128, 256, 384]), train_step(280, [64, 128, 192, 256])]}


def table(r: dict) -> str:
    lines = [f"Command: `python bench/gpu.py --out gpu.json` on {r['device']} (torch {r['torch']}), {r['date']}, "
             f"one run; {r['model']}. Measured bf16 matmul peak (8192^3): {r['matmul_peak_tflops']} TFLOP/s.", "",
             "| work | px | batch | img/s | GFLOPs/img | TFLOP/s | of peak | peak mem GB |", "|---|---|---|---|---|---|---|---|"]
    for e in r["extraction"]:
        lines.append(f"| extraction, bf16 weights | {e['size_px']} | {e['batch']} | {e['img_per_s']} | "
                     f"{e['gflops_per_image']} | {e['tflops']} | {e['fraction_of_peak']:.0%} | {e['peak_mem_gb']} |")
    for t in r["train_step"]:
        if t:
            lines.append(f"| train step, autocast bf16, grad ckpt, AdamW | {t['size_px']} | {t['batch']} | "
                         f"{t['img_per_s']} | | | | {t['peak_mem_gb']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="measure here (needs a GPU) and write this JSON")
    parser.add_argument("--record", help="a JSON written by --out: store it and update BENCHMARKS.md")
    args = parser.parse_args()
    if args.out:
        result = measure()
        sys.path.insert(0, str(ROOT))
        from ensemble.atomic import atomic_write_json

        atomic_write_json(args.out, result)
        print(table(result))
    if args.record:
        result = json.loads(Path(args.record).read_text())
        sys.path.insert(0, str(ROOT / "bench"))
        from update_benchmarks import record

        record("gpu", result, "GPU: ViT-H-14 throughput", table(result))
        print(table(result))


if __name__ == "__main__":
    main()
