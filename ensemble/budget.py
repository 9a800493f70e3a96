"""`ens budget`: FLOPs per image, measured images/s here, and projected time on competition GPUs.

FLOPs are counted by torch's FlopCounterMode on the meta device (2 FLOPs per multiply-add), so the
GUIE recipes (9 ViT members, a ViT-H-14 student) are costed from their architectures alone, without
weights. Projection: images x FLOPs / (peak x utilisation).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from .config.load import load_member_cfg, load_student_cfg, read_yaml, validate
from .config.schema import TTACfg
from .device import pick_device
from .embed.extract import embed_sizes
from .errors import EnsError
from .models.backbone import fixed_size_error
from .models.member import build_member_model
from .workspace.resolve import ModelRef, ResolvedModel, resolve_model

# dense fp16/bf16 tensor-core peaks, TFLOP/s (DOMAIN.md)
PEAK_TFLOPS = {"T4": 65.0, "P100": 18.7, "A100": 312.0, "H100": 989.0}
# assumed fraction of peak: bench/gpu.py measured 0.46 of the H100's 989 TFLOP/s for ViT-H-14 bf16
# extraction (1367.5 img/s x 334.6 GFLOP); TARGETS.md costs at 0.5
DEFAULT_UTILIZATION = 0.5


@dataclass
class Branch:
    """One network pass per image in the costed model: a member or the student."""

    name: str
    arch: str
    size_px: int
    passes: int  # 2 with flip TTA
    gflops: float  # per pass

    @property
    def gflops_per_image(self) -> float:
        return self.gflops * self.passes


def count_gflops(cfg, size_px: int | None = None) -> tuple[float, int]:
    """(GFLOPs of one forward pass, image size) of a member/student recipe, built on the meta device."""
    model = build_member_model(cfg, load_weights=False, device="meta").eval()
    size = size_px or cfg.eval.image_size or model.backbone.image_size
    return pass_gflops(model, size, cfg.name), size


def pass_gflops(model, size_px: int, name: str) -> float:
    """GFLOPs of one forward pass of `model` (on the meta device) at `size_px`."""
    if size_px != model.backbone.image_size and model.backbone.fixed_size:
        raise fixed_size_error(name, f"{size_px} px", model.backbone.image_size)
    x = torch.empty(1, 3, size_px, size_px, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() / 1e9


def branches_of(cfg, extra_sizes_px: list[int] | None = None) -> list[Branch]:
    """One branch per size a member/student recipe embeds at: its eval size, its eval.extra_sizes, then
    `extra_sizes_px` (an ensemble's TTA sizes), each once."""
    model = build_member_model(cfg, load_weights=False, device="meta").eval()
    sizes = embed_sizes(cfg.eval.image_size or model.backbone.image_size, cfg.eval.extra_sizes, extra_sizes_px)
    arch, passes = f"{cfg.backbone.source}:{cfg.backbone.arch}", 2 if cfg.eval.flip_tta else 1
    return [Branch(cfg.name, arch, size, passes, pass_gflops(model, size, cfg.name)) for size in sizes]


def recipe_branches(spec: str, recipes: str | Path = "members") -> tuple[str, list[Branch]]:
    """What a recipe or ensemble config runs per image (no weights needed)."""
    raw = read_yaml(spec)
    if "members" in raw:  # an ensemble config: members are recipe names under `recipes`
        tta = validate(TTACfg, raw.get("tta") or {}, f"{spec}: tta")
        out = []
        for name in raw["members"]:
            path = Path(recipes) / f"{name}.yaml"
            if not path.is_file():
                raise EnsError(f"{spec}: member {name!r}: recipe not found at {path} (see --recipes)")
            cfg = load_member_cfg(path)
            cfg.eval.flip_tta = tta.flip
            out.extend(branches_of(cfg, tta.extra_sizes))
        return Path(spec).stem, out
    loader = load_student_cfg if "teacher" in raw or "loss" in raw else load_member_cfg
    cfg = loader(spec)
    return cfg.name, branches_of(cfg)


def model_branches(model: ResolvedModel) -> list[Branch]:
    """One branch per model file of a resolved MODEL and size it embeds at, as its file says."""
    out = []
    for part in model.parts:
        cfg = part.file.cfg.model_copy(deep=True)
        cfg.eval.flip_tta = model.tta.flip
        cfg.eval.image_size = part.embedder.size_px
        out.extend(branches_of(cfg, list(model.tta.extra_sizes)))
    return out


def time_module(module, device: torch.device, batch: int = 8, seconds: float = 10.0) -> tuple[float, str]:
    """(images/s, device name) of `module` on uint8 640x480 batches, after one warm-up call."""
    x = torch.randint(0, 256, (batch, 3, 480, 640), dtype=torch.uint8, device=device)
    with torch.inference_mode():
        module(x)  # warm-up
        done, started = 0, time.perf_counter()
        while done == 0 or time.perf_counter() - started < seconds:
            module(x)
            done += batch
        if device.type == "cuda":
            torch.cuda.synchronize()
    cpu_name = f"{device.type} ({torch.get_num_threads()} threads)"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name
    return done / (time.perf_counter() - started), name


def measure_img_per_s(model: ResolvedModel, batch: int = 8, seconds: float = 10.0) -> tuple[float, str]:
    """Images/s of the exported-form graph (resize + flips + merge + PCA) on uint8 640x480 inputs."""
    device = pick_device("auto")
    return time_module(model.graph().to(device).eval(), device, batch, seconds)


def project(gflops_per_image: float, images: int, utilization: float) -> dict[str, float]:
    """Hours per GPU for `images` at `utilization` of each card's peak."""
    return {gpu: images * gflops_per_image * 1e9 / (peak * 1e12 * utilization) / 3600
            for gpu, peak in PEAK_TFLOPS.items()}


def budget(spec: str | None, workdir: str | Path, images: int = 205_000, hours: float = 9.0,
           utilization: float = DEFAULT_UTILIZATION, measure: bool | None = None,
           recipes: str | Path = "members") -> dict:
    """FLOPs, measured speed (for trained models, or with measure=True) and per-GPU projections."""
    if not 0 < utilization <= 1:
        raise EnsError(f"--utilization {utilization}: expected a fraction in (0, 1]")
    if images < 1:
        raise EnsError(f"--images {images}: expected a positive number of images")
    if not hours > 0:
        raise EnsError(f"--hours {hours}: expected a positive time budget")
    recipe_only = (spec or "").endswith((".yaml", ".yml"))
    if ModelRef.parse(spec).kind == "export":
        raise EnsError(f"MODEL {spec}: budget counts FLOPs from recipes; give the student or ensemble it came from")
    model = None if recipe_only else resolve_model(spec, workdir, device=torch.device("cpu"))
    name, branches = recipe_branches(spec, recipes) if recipe_only else (model.name, model_branches(model))
    gflops = sum(b.gflops_per_image for b in branches)
    result = {"model": name, "images": images, "hours_allowed": hours, "utilization": utilization,
              "gflops_per_image": gflops, "branches": [b.__dict__ | {"gflops_per_image": b.gflops_per_image}
                                                       for b in branches],
              "projected_hours": project(gflops, images, utilization)}
    if measure if measure is not None else not recipe_only:
        if recipe_only:
            raise EnsError("--measure needs a trained model (member, ensemble, student:<name>), not a recipe")
        img_s, device = measure_img_per_s(model)
        result["measured"] = {"device": device, "img_per_s": img_s, "ms_per_image": 1000 / img_s,
                              "hours": images / img_s / 3600}
    result["fits"] = {gpu: h <= hours for gpu, h in result["projected_hours"].items()}
    return result


def format_budget(r: dict) -> str:
    parts = " + ".join(f"{b['name']} {b['arch']} @{b['size_px']}px x{b['passes']}" for b in r["branches"])
    lines = [f"{r['model']}: {r['gflops_per_image']:.1f} GFLOP per image ({parts})"]
    if "measured" in r:
        m = r["measured"]
        lines.append(f"measured here ({m['device']}): {m['img_per_s']:.1f} img/s, {m['ms_per_image']:.1f} ms/image "
                     f"-> {r['images']:,} images in {m['hours']:.2f} h")
    lines.append(f"projected for {r['images']:,} images at {r['utilization']:.0%} of peak "
                 f"(budget {r['hours_allowed']:g} h):")
    lines.append("| GPU | peak TFLOP/s | hours | fits |")
    lines.append("|---|---|---|---|")
    for gpu, h in r["projected_hours"].items():
        lines.append(f"| {gpu} | {PEAK_TFLOPS[gpu]:g} | {h:.3g} | {'yes' if r['fits'][gpu] else 'no'} |")
    return "\n".join(lines)
