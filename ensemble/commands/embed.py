"""`ens embed`: one L2-normalised float32 row per manifest row, plus a JSON naming model and manifest."""

from __future__ import annotations

from pathlib import Path

from ..atomic import atomic_write_json, atomic_write_npy
from ..data.manifest import read_manifest
from ..distributed import world
from ..embed.extract import TTA
from ..errors import EnsError
from ..workspace.layout import Workspace
from ..workspace.resolve import resolve_model


def embed_to_file(spec: str | None, workdir, manifest: str, out: str | Path, tta: bool = True,
                  features: str | None = None, workers: int = 2) -> dict:
    """Embed `manifest` with MODEL into `out` (.npy) and `out`.json; returns the JSON's content."""
    out = Path(out)
    if out.suffix != ".npy" or out.is_dir():  # checked before embedding, not when writing the result
        what = "is a folder" if out.is_dir() else "has another suffix"
        raise EnsError(f"--out {out}: {what}; expected a .npy file name (one float32 row per manifest row)")
    ws = Workspace.at(workdir)
    model = resolve_model(spec, ws, features)
    rows = read_manifest(manifest, require_label=False)
    tta_used = model.tta if tta else TTA(flip=False)
    feats = model.embed(rows, ws, tta_used, workers)  # sharded across ranks under torchrun
    meta = {"model": model.name, "manifest": str(rows.source), "manifest_sha1": rows.sha1,
            "rows": int(feats.shape[0]), "dim": int(feats.shape[1]), "tta": tta_used.describe()}
    if world().main:
        atomic_write_npy(out, feats)
        atomic_write_json(out.with_suffix(".json"), meta)
    return meta


def run(spec, workdir, manifest, out, tta, features, workers) -> str:
    meta = embed_to_file(spec, workdir, manifest, out, tta, features, workers)
    if not world().main:
        return ""
    return f"wrote {out}: {meta['rows']} x {meta['dim']} ({meta['model']}, tta {meta['tta']})"
