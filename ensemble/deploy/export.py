"""Exporting a MODEL of a workspace as one self-contained file (TorchScript `.pt` or ONNX `.onnx`),
verified before it is written.

The verification embeds sample images with the package along the path `ens eval` runs (JPEG draft
decoding, batched) and with the exported module, one image at a time at its own size, fed the same
decoded pixels; every cosine must reach MIN_COSINE (DESIGN.md: 0.999). The module is also run on fully
decoded images, as the file's users feed it: that cosine is reported, not gated, because it measures
JPEG draft decoding (eval's shortcut), not the export -- on 256 px JPEGs and a 160 px model it is ~0.9987.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_write_bytes, atomic_write_json
from ..config.load import load_data_cfg
from ..data.decode import DecodeError, decode_image
from ..data.manifest import read_manifest
from ..embed.extract import draft_px, extract_many
from ..errors import EnsError
from ..evaluate.provenance import fit_sets
from ..hashing import file_sha1
from ..progress import announce
from ..workspace.layout import MODEL_FILE, Workspace
from ..workspace.resolve import ResolvedModel, resolve_model
from .onnx import OnnxRunner, refuse_oversized, to_onnx_bytes, with_onnx_meta
from .torchscript import FORMAT, jit_load, serialize, to_uint8_tensor, trace

MIN_COSINE = 0.999


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def describe(model: ResolvedModel, fmt: str, dtype: torch.dtype = torch.float32) -> dict:
    """The metadata stored inside the exported file (and beside it as .json)."""
    out_dim = model.out_dim
    return {"format": FORMAT, "file_format": fmt, "model": model.name, "kind": model.kind,
            "output_dim": int(out_dim),
            "flip_tta": model.tta.flip, "feature_power": model.head.power if model.head is not None else 1.0,
            "input": "uint8 [B,3,H,W] RGB, any H and W",
            "output": f"float32 [B,{out_dim}] L2-normalised", "compute_dtype": str(dtype).removeprefix("torch."),
            "resize": "bilinear, antialiased, to each of a member's square sizes (tta_sizes; features averaged)",
            "members": [{"name": p.embedder.name, "arch": p.embedder.arch, "image_size": p.embedder.size_px,
                         "tta_sizes": p.embedder.sizes(list(model.tta.extra_sizes)),
                         "mean": list(p.embedder.mean), "std": list(p.embedder.std), "features": p.features,
                         "dim": p.embedder.out_dim, "checkpoint": str(p.file.path), "checkpoint_sha1": p.file.sha1}
                        for p in model.parts],
            "data": model.data}


def reference_embeddings(model: ResolvedModel, paths: list[str]) -> np.ndarray:
    """What `ens eval` computes for `paths`: JPEG draft decoding, batched, the model's TTA; in fp32, as
    the file computes (a recipe's eval.precision is the package's speed setting, not the file's)."""
    embedders = [replace(e, autocast=None) for e in model.embedders]
    feats = extract_many(embedders, paths, torch.device("cpu"), model.tta, workers=0, desc="export check")
    return model.combine(feats)


def _cosines(module, reference: np.ndarray, paths: list[str], draft_px: int | None) -> np.ndarray:
    with torch.no_grad():
        got = np.stack([module(to_uint8_tensor(decode_image(path, draft_px))[None])[0].numpy() for path in paths])
    return np.sum(got * reference, axis=1) / np.maximum(np.linalg.norm(reference, axis=1), 1e-12)


def verify(module, name: str, reference: np.ndarray, paths: list[str], draft_px: int) -> dict:
    """Embed `paths` with the exported module, one image at a time at its own size, on the pixels `ens eval`
    decodes (gated) and on fully decoded ones (reported)."""
    cos = _cosines(module, reference, paths, draft_px)
    if cos.min() < MIN_COSINE:
        raise EnsError(f"export of {name}: cosine {cos.min():.5f} < {MIN_COSINE} against `ens eval` "
                       f"on {paths[int(cos.argmin())]}; file not written")
    full = _cosines(module, reference, paths, None)
    return {"images": len(paths), "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()),
            "threshold": MIN_COSINE, "reference": "ens eval decoding (JPEG draft, batched)",
            "full_decode_min_cosine": float(full.min()), "full_decode_mean_cosine": float(full.mean())}


def verify_sample(data: str | None, sample: int, manifest: str | None) -> list[str]:
    """Up to `sample` readable images from --verify-manifest, else the model's query (or index) split."""
    if manifest is None:
        if data is None:
            raise EnsError("export: no data config known for this model; give --verify-manifest CSV")
        cfg = load_data_cfg(data)
        manifest = cfg.query or cfg.index or cfg.train
    if sample < 1:
        raise EnsError(f"export: sample {sample}: expected at least 1 image to verify the file with")
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


def output_format(out: Path, fmt: str | None) -> str:
    """The export format: --format, else the file name's suffix; the two must agree."""
    suffixes = {"torchscript": ".pt", "onnx": ".onnx"}
    fmt = fmt or {v: k for k, v in suffixes.items()}.get(out.suffix)
    if fmt not in suffixes or out.suffix != suffixes[fmt]:
        raise EnsError(f"--out {out}: expected a .pt file name (TorchScript) or .onnx (ONNX)"
                       + (f"; --format {fmt} writes {suffixes[fmt]}" if fmt in suffixes else ""))
    return fmt


def export(spec: str | None, workdir: str | Path | Workspace, out: str | Path, sample: int = 16,
           verify_manifest: str | None = None, fmt: str | None = None, dtype: str = "fp32") -> dict:
    """Trace MODEL into `out`, check it against the package's own fp32 embedding, write `out` and
    `out`.json. dtype fp16 / bf16: the members' weights and compute in half precision (half the file;
    for GPUs where fp32 is slow, e.g. a T4), still checked at cosine 0.999."""
    out = Path(out)
    fmt = output_format(out, fmt)
    if dtype not in DTYPES:
        raise EnsError(f"--dtype {dtype}: expected one of {', '.join(DTYPES)}")
    if fmt == "onnx" and dtype != "fp32":  # onnxruntime's CPU session crashed on the half-precision graph
        raise EnsError(f"--dtype {dtype}: ONNX files are exported in fp32 only; write a .pt (TorchScript) file "
                       "for half precision")
    model = resolve_model(spec, workdir, device=torch.device("cpu"))
    desc = describe(model, fmt, DTYPES[dtype])
    desc["fit_sets"] = fit_sets(model, Workspace.at(workdir))  # so a scoring of the file can tell transductive
    if fmt == "onnx":
        refuse_oversized(model.graph(), model.name)
    started = time.perf_counter()
    paths = verify_sample(desc["data"], sample, verify_manifest)
    reference = reference_embeddings(model, paths)
    announce(f"export {model.name}: {fmt}, {len(model.parts) or 1} model(s); verifying on {len(paths)} images")
    if fmt == "onnx":
        graph = to_onnx_bytes(model.graph())
        runner = OnnxRunner(graph)
    else:
        runner = scripted = trace(model.graph(DTYPES[dtype]))
    draft = draft_px(model.embedders, model.tta)  # what `ens eval` decodes JPEGs at for this model
    desc["verify"] = verify(runner, model.name, reference, paths, draft)
    desc["torch"] = torch.__version__
    desc["export_seconds"] = round(time.perf_counter() - started, 1)
    data = with_onnx_meta(graph, desc) if fmt == "onnx" else serialize(scripted, desc)
    check = OnnxRunner(data) if fmt == "onnx" else jit_load(io.BytesIO(data))
    verify(check, model.name, reference[:2], paths[:2], draft)  # what users will load: check it once more
    atomic_write_bytes(out, data)
    desc["sha1"] = file_sha1(out)
    atomic_write_json(out.with_suffix(".json"), desc)
    return desc


def export_or_reuse(student: str, workdir: str | Path | Workspace) -> Path:
    """runs/exports/<student>.pt, re-exported when the student's model file changed."""
    ws = Workspace.at(workdir)
    out = ws.exports_dir / f"{student}.pt"
    meta = out.with_suffix(".json")
    current = file_sha1(ws.student_dir(student) / MODEL_FILE)
    if out.is_file() and meta.is_file():
        try:
            described = json.loads(meta.read_text())
            same = (bool(described.get("sha1")) and described["members"][0]["checkpoint_sha1"] == current
                    and "fit_sets" in described)  # files exported before fit sets were recorded: again
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            same = False  # a damaged description: export again
        if same:
            return out
    export(f"student:{student}", ws, out)
    return out
