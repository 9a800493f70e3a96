"""`ens export`: one self-contained TorchScript file for a student, a member or the whole ensemble.

Contract (DESIGN.md): `torch.jit.load(FILE)` needs only torch; input uint8 [B,3,H,W] RGB of any size;
output float32 [B,D] L2-normalised. Resize, normalisation, flip TTA, the per-architecture merge and
the PCA all run inside. The module resizes first, so everything after the resize sees a fixed shape
and tracing is exact for every input size.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .atomic import atomic_write_bytes, atomic_write_text
from .data.augment import to_uint8_tensor
from .data.dataset import FailureLog, ImageDataset, collate_skip
from .data.decode import DecodeError, decode_image
from .data.manifest import Manifest, read_manifest
from .device import limit_worker_threads
from .embed.extract import TTA, Embedder, extract_many
from .embed.models import file_sha1
from .errors import EnsError
from .models.preprocess import Preprocess

log = logging.getLogger("ensemble")
FORMAT = "ens-export-1"
MIN_COSINE = 0.999


class MemberBranch(nn.Module):
    """uint8 images -> one model's L2-normalised feature (neck or pooled backbone), flip-averaged."""

    def __init__(self, model: nn.Module, features: str, size_px: int, mean, std, flip: bool):
        super().__init__()
        self.preprocess = Preprocess(size_px, mean, std)
        self.backbone, self.neck = model.backbone, model.neck
        self.use_neck, self.flip = features == "neck", flip

    def _feature(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)
        if self.use_neck:
            feats = self.neck(feats)
        return F.normalize(feats.float(), dim=-1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(images)
        feats = self._feature(x)
        if self.flip:
            feats = F.normalize(feats + self._feature(x.flip(-1)), dim=-1)
        return feats


class EnsembleModule(nn.Module):
    """Branches -> mean per group (architecture) -> concatenate -> PCA -> L2-normalise."""

    def __init__(self, branches: list[MemberBranch], groups: list[list[int]], reducer=None):
        super().__init__()
        self.branches, self.groups = nn.ModuleList(branches), [list(g) for g in groups]
        self.has_pca = reducer is not None
        if reducer is not None:
            scale = np.sqrt(reducer.explained_variance + 1e-12) if reducer.whiten else np.ones(reducer.out_dim)
            self.register_buffer("pca_mean", torch.from_numpy(np.asarray(reducer.mean, np.float32)))
            self.register_buffer("pca_components", torch.from_numpy(np.asarray(reducer.components, np.float32)))
            self.register_buffer("pca_scale", torch.from_numpy(np.asarray(scale, np.float32)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feats = [branch(images) for branch in self.branches]
        parts = [F.normalize(torch.stack([feats[i] for i in group]).mean(0), dim=-1) for group in self.groups]
        fused = torch.cat(parts, dim=1)
        if self.has_pca:
            fused = ((fused - self.pca_mean) @ self.pca_components.T) / self.pca_scale
        return F.normalize(fused, dim=-1)


class InputGuard(nn.Module):
    """Checks the input contract inside the exported file (scripted: a traced graph drops Python checks),
    so a float [0,1] batch, a grey or RGBA or NHWC tensor fails with a message instead of a wrong answer."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise ValueError("ens export: expected a uint8 tensor [B,3,H,W] (RGB, 0..255), got another dtype; "
                             "for float images in [0,1] pass (x * 255).round().to(torch.uint8)")
        if images.dim() != 4 or images.size(1) != 3:
            raise ValueError("ens export: expected shape [B,3,H,W] (RGB, channels first), got "
                             + str(images.shape) + "; for [B,H,W,3] pass images.permute(0, 3, 1, 2)")
        if images.size(0) == 0 or images.size(2) == 0 or images.size(3) == 0:
            raise ValueError("ens export: expected a non-empty batch of images, got shape " + str(images.shape))
        return self.inner(images)


def _branch(emb: Embedder, flip: bool) -> MemberBranch:
    return MemberBranch(emb.info["model"].cpu().float().eval(), emb.info["features"], emb.size_px, emb.mean, emb.std,
                        flip)


def build_module(spec: str | None, workdir: str | Path) -> tuple[nn.Module, dict]:
    """The nn.Module for MODEL (student, member or ensemble) and its description."""
    from .evaluate.run import resolve_model
    from .fuse.ensemble import load_ensemble

    spec = spec or "ensemble"
    cpu = torch.device("cpu")
    if spec == "ensemble" or spec.startswith("ensemble:"):
        ens = load_ensemble(workdir, spec.partition(":")[2] or None, device=cpu)
        if ens.tta.extra_sizes:
            raise EnsError(f"ensemble {ens.name!r}: export supports flip TTA only, not extra sizes "
                           f"{list(ens.tta.extra_sizes)}")
        module = EnsembleModule([_branch(e, ens.tta.flip) for e in ens.embedders], ens.description["groups"],
                                ens.reducer)
        return module, _describe(f"ensemble:{ens.name}", "ensemble", ens.embedders, ens.tta.flip,
                                 ens.description["out_dim"], ens.embedders[0].info.get("data"))
    if spec.endswith(".pt"):
        raise EnsError(f"MODEL {spec!r}: already an exported file")
    model = resolve_model(spec, workdir)
    emb = model.embedders[0]
    module = EnsembleModule([_branch(emb, model.tta.flip)], [[0]])
    return module, _describe(model.name, model.kind, [emb], model.tta.flip, emb.out_dim, model.data)


def _describe(name: str, kind: str, embedders: list[Embedder], flip: bool, out_dim: int, data) -> dict:
    return {"format": FORMAT, "model": name, "kind": kind, "output_dim": int(out_dim), "flip_tta": flip,
            "input": "uint8 [B,3,H,W] RGB, any H and W", "output": f"float32 [B,{out_dim}] L2-normalised",
            "resize": "bilinear, antialiased, to each member's square size",
            "members": [{"name": e.name, "arch": e.arch, "image_size": e.size_px, "mean": list(e.mean),
                         "std": list(e.std), "features": e.info["features"], "dim": e.out_dim,
                         "checkpoint": e.info.get("checkpoint"), "checkpoint_sha1": e.key.split(":")[0]}
                        for e in embedders],
            "data": str(data) if data else None}


def trace(module: nn.Module) -> torch.jit.ScriptModule:
    """Trace on a non-square uint8 example, behind a scripted `InputGuard`. Shapes after the resize
    are fixed, so the tracer's warnings about shape-dependent Python values (timm's padding,
    pos-embed checks) are safe."""
    example = torch.randint(0, 256, (2, 3, 97, 131), dtype=torch.uint8)
    module = module.eval().requires_grad_(False)  # users' calls should not build autograd graphs
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated", category=FutureWarning)
        return torch.jit.script(InputGuard(torch.jit.trace(module, example, check_trace=False)))


def jit_load(path: str | Path, **kwargs):
    """torch.jit.load without its deprecation notice (TorchScript is the export contract)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated", category=FutureWarning)
        return torch.jit.load(path if hasattr(path, "read") else str(path), map_location="cpu", **kwargs)


def decoded_tensor(path: str) -> torch.Tensor:
    """A file as the exported model's user would feed it: fully decoded RGB, uint8 [1,3,H,W]."""
    return to_uint8_tensor(decode_image(path))[None]


def verify(scripted, module_desc: dict, reference: np.ndarray, paths: list[str]) -> dict:
    """Embed `paths` with the exported module, one image at a time at its own size, and compare."""
    got = []
    with torch.no_grad():
        for path in paths:
            got.append(scripted(decoded_tensor(path))[0].numpy())
    cos = np.sum(np.stack(got) * reference, axis=1) / np.maximum(np.linalg.norm(reference, axis=1), 1e-12)
    result = {"images": len(paths), "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()),
              "threshold": MIN_COSINE}
    if cos.min() < MIN_COSINE:
        worst = paths[int(cos.argmin())]
        raise EnsError(f"export of {module_desc['model']}: cosine {cos.min():.5f} < {MIN_COSINE} against `ens` "
                       f"on {worst}; file not written")
    return result


def verify_sample(data: str | None, sample: int, manifest: str | None) -> list[str]:
    """Up to `sample` readable images from --verify-manifest, else the model's query (or index) split."""
    from .config.load import load_data_cfg

    if manifest is None:
        if data is None:
            raise EnsError("export: no data config known for this model; give --verify-manifest CSV")
        cfg = load_data_cfg(data)
        manifest = cfg.query or cfg.index or cfg.train
    rows = read_manifest(manifest, require_label=False)
    step = max(1, len(rows) // sample)
    paths = []
    for path in rows.paths[::step]:
        try:
            decode_image(path)
        except DecodeError:
            continue
        paths.append(path)
        if len(paths) == sample:
            break
    if not paths:
        raise EnsError(f"{manifest}: no readable image to verify the export with")
    return paths


def export(spec: str | None, workdir: str | Path, out: str | Path, sample: int = 16,
           verify_manifest: str | None = None) -> dict:
    """Trace MODEL into `out`, check it against the package's own embedding, write `out`.json."""
    from .evaluate.run import resolve_model

    out = Path(out)
    if out.suffix != ".pt":
        raise EnsError(f"--out {out}: expected a .pt file name")
    module, desc = build_module(spec, workdir)
    started = time.perf_counter()
    scripted = trace(module)
    paths = verify_sample(desc["data"], sample, verify_manifest)
    model = resolve_model(desc["model"], workdir)
    reference = model.combine(extract_many(model.embedders, paths, torch.device("cpu"), model.tta, workers=0,
                                           desc="export check", jpeg_draft=False))
    desc["verify"] = verify(scripted, desc, reference, paths)
    desc["torch"] = torch.__version__
    desc["export_seconds"] = round(time.perf_counter() - started, 1)
    buffer = io.BytesIO()  # serialised in memory: torch.jit.save aborts the process on a full disk
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated", category=FutureWarning)
        torch.jit.save(scripted, buffer, _extra_files={"ens.json": json.dumps(desc)})
    buffer.seek(0)
    verify(jit_load(buffer), desc, reference[:2], paths[:2])  # what users will load: check it once more
    atomic_write_bytes(out, buffer.getvalue())
    desc["sha1"] = file_sha1(out)
    atomic_write_text(out.with_suffix(".json"), json.dumps(desc, indent=2))
    return desc


# ---------------------------------------------------------------- using an exported file


def read_export_meta(path: str | Path) -> dict:
    """The description stored inside an exported file."""
    extra = {"ens.json": ""}
    try:
        jit_load(path, _extra_files=extra)
    except (RuntimeError, ValueError) as exc:
        raise EnsError(f"{path}: not a TorchScript file ({str(exc).splitlines()[0][:200]})") from None
    if not extra["ens.json"]:
        raise EnsError(f"{path}: TorchScript file without ens metadata (not written by `ens export`)")
    meta = json.loads(extra["ens.json"])
    if meta.get("format") != FORMAT:
        raise EnsError(f"{path}: export format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def embed_exported(path: str | Path, manifest: Manifest, workdir: Path, workers: int = 2) -> np.ndarray:
    """Embed every manifest row with an exported file, each image fed whole at its own size
    (cached in the workspace by file and manifest hash). Unreadable images give zero rows."""
    path = Path(path)
    key = hashlib.sha1(f"{file_sha1(path)}|{manifest.sha1}".encode()).hexdigest()[:20]
    cache = workdir / "cache" / f"export-{path.stem}" / f"{key}.npy"
    if cache.is_file():
        return np.load(cache)
    module = jit_load(path)
    dim = read_export_meta(path)["output_dim"]
    dataset = ImageDataset(manifest.paths, [0] * len(manifest), to_uint8_tensor)
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=workers, collate_fn=collate_skip,
                                         worker_init_fn=limit_worker_threads)
    fails = FailureLog(manifest.paths, 0.01)
    out = np.zeros((len(manifest), dim), np.float32)
    with torch.no_grad():
        for batch in loader:
            fails.update(batch)
            if batch["images"] is not None:
                out[batch["indices"].numpy()] = module(batch["images"]).numpy()
    fails.check(final=True)
    buffer = io.BytesIO()
    np.save(buffer, out)
    atomic_write_bytes(cache, buffer.getvalue())
    return out


def exported_model(path: str | Path):
    """A ResolvedModel for an exported .pt file (runs the file itself, not the package's models)."""
    from .evaluate.run import ResolvedModel

    path = Path(path)
    if not path.is_file():
        raise EnsError(f"MODEL {path}: exported file not found")
    meta = read_export_meta(path)
    return ResolvedModel(f"export:{path.name}", "export", [], lambda feats: feats[0], TTA(flip=meta["flip_tta"]),
                         meta.get("data"), embed_fn=lambda manifest, workdir, workers: embed_exported(
                             path, manifest, workdir, workers))
