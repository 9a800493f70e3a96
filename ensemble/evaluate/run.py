"""`ens eval` / `ens embed`: resolve a MODEL string, embed manifests (cached), score, write reports."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config.load import load_data_cfg
from ..data.manifest import Manifest, check_unique, read_manifest
from ..device import pick_device
from ..distributed import device_for, world
from ..embed.cache import embed_manifest
from ..embed.extract import TTA, Embedder
from ..embed.models import load_member_embedder, load_student_embedder
from ..errors import EnsError
from ..train.checkpoint import atomic_write_bytes, atomic_write_text
from .metrics import evaluate_embeddings, knn
from .report import write_markdown, write_png

APPROX_ABOVE = 2_000_000  # index rows above which eval searches an IVF index (exact 2M x 5k: ~27 s here)


@dataclass
class ResolvedModel:
    """What a MODEL string names: the embedders to run and how their features become one embedding."""

    name: str
    kind: str  # member | ensemble | student | export
    embedders: list[Embedder]
    combine: Callable[[list[np.ndarray]], np.ndarray]
    tta: TTA
    data: str | None  # default data config
    # set for exported files: (manifest, workdir, workers) -> embeddings, bypassing the embedders
    embed_fn: Callable[[Manifest, Path, int], np.ndarray] | None = None


def resolve_model(spec: str | None, workdir: str | Path, features: str | None = None) -> ResolvedModel:
    """MODEL: a member name, `ensemble` / `ensemble:<name>` (default: newest ensemble),
    `student:<name>`, or an exported `.pt` file."""
    from ..fuse.ensemble import load_ensemble

    spec = spec or "ensemble"
    if spec == "ensemble" or spec.startswith("ensemble:"):
        ens = load_ensemble(workdir, spec.partition(":")[2] or None)
        if features and features != ens.description["features"]:
            raise EnsError(f"--features {features}: ensemble {ens.name!r} was fitted on "
                           f"{ens.description['features']} features")
        data = ens.embedders[0].info.get("data")
        return ResolvedModel(f"ensemble:{ens.name}", "ensemble", ens.embedders, ens.transform, ens.tta, data)
    if spec.startswith("student:"):
        if features and features != "neck":
            raise EnsError(f"--features {features}: a student has one output, its embedding")
        student = load_student_embedder(workdir, spec.partition(":")[2], pick_device("auto"))
        return ResolvedModel(spec, "student", [student], lambda feats: feats[0],
                             TTA(flip=student.info["flip_tta"]), student.info.get("data"))
    if spec.endswith(".pt"):
        from ..export import exported_model

        return exported_model(spec)
    member = load_member_embedder(workdir, spec, features, pick_device("auto"))
    return ResolvedModel(spec, "member", [member], lambda feats: feats[0], TTA(), member.info.get("data"))


def embed_with(model: ResolvedModel, manifest: Manifest, workdir, tta: TTA | None = None, workers: int = 2,
               batch_size: int = 64) -> np.ndarray:
    """The model's embedding of every manifest row (member features cached in the workspace)."""
    if model.embed_fn is not None:
        return model.embed_fn(manifest, Path(workdir), workers)
    device = device_for(world(), pick_device("auto"))
    feats = embed_manifest(model.embedders, manifest, workdir, device, tta or model.tta, batch_size, workers)
    return model.combine(feats).astype(np.float32)


def eval_manifests(data: str | None, query: str | None, index: str | None, default_data: str | None):
    """(query, index) manifests from --query/--index or a data config."""
    if query or index:
        if not (query and index):
            raise EnsError("--query and --index must be given together")
        return read_manifest(query), read_manifest(index)
    path = data or default_data
    if path is None:
        raise EnsError("no data: give --data CONFIG or --query CSV --index CSV")
    cfg = load_data_cfg(path)
    if cfg.query is None or cfg.index is None:
        raise EnsError(f"{path}: keys 'query' and 'index' are needed to evaluate")
    return read_manifest(cfg.query), read_manifest(cfg.index)


def evaluate(spec: str | None, workdir: str | Path, data: str | None = None, query: str | None = None,
             index: str | None = None, k: int = 5, out: str | Path | None = None, features: str | None = None,
             workers: int = 2, approx_above: int | None = APPROX_ABOVE) -> dict:
    """Score MODEL on query vs index; write JSON, Markdown and a PNG of example queries."""
    if k < 1:
        raise EnsError(f"--k {k}: expected a positive number of neighbours")
    model = resolve_model(spec, workdir, features)
    q_manifest, i_manifest = eval_manifests(data, query, index, model.data)
    check_unique(i_manifest)
    q = embed_with(model, q_manifest, workdir, workers=workers)
    x = embed_with(model, i_manifest, workdir, workers=workers)
    report = evaluate_embeddings(q, q_manifest.labels, x, i_manifest.labels, k, q_manifest.domains,
                                 approx_above=approx_above)
    report.update(model=model.name, kind=model.kind, dim=int(q.shape[1]), query=str(q_manifest.source),
                  index=str(i_manifest.source), k=k, tta=model.tta.describe())
    out = Path(out) if out else Path(workdir) / "reports" / f"{model.name.replace(':', '_')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(report, indent=2, allow_nan=False))
    write_markdown(out.with_suffix(".md"), [report], k)
    write_png(out.with_suffix(".png"), q_manifest, i_manifest, knn(q, x, k), title=model.name)
    report["files"] = [str(out), str(out.with_suffix(".md")), str(out.with_suffix(".png"))]
    return report


def embed_to_file(spec: str | None, workdir, manifest: str, out: str | Path, tta: bool = True,
                  features: str | None = None, workers: int = 2) -> dict:
    """`ens embed`: one L2-normalised float32 row per manifest row, plus a JSON naming model and manifest."""
    model = resolve_model(spec, workdir, features)
    rows = read_manifest(manifest, require_label=False)
    tta_used = model.tta if tta else TTA(flip=False)
    feats = embed_with(model, rows, workdir, tta_used, workers)  # sharded across ranks under torchrun
    out = Path(out)
    meta = {"model": model.name, "manifest": str(rows.source), "manifest_sha1": rows.sha1,
            "rows": int(feats.shape[0]), "dim": int(feats.shape[1]), "tta": tta_used.describe()}
    if not world().main:
        return meta
    buffer = io.BytesIO()
    np.save(buffer, feats)
    atomic_write_bytes(out, buffer.getvalue())
    atomic_write_text(out.with_suffix(".json"), json.dumps(meta, indent=2))
    return meta
