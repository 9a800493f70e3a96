"""Galleries of a workspace's models: build one, add images, search it with images."""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from pathlib import Path

import numpy as np

from ..data.decode import DecodeError, decode_image
from ..data.manifest import Manifest, check_unique, folder_manifest, read_manifest, write_path_manifest
from ..errors import EnsError
from ..workspace.layout import Workspace
from ..workspace.resolve import ResolvedModel, resolve_model
from .store import APPROX_ABOVE, Gallery, build_faiss, load, manifest_rows, save

log = logging.getLogger("ensemble")


def gallery_images(manifest: str | None, folder: str | None, scratch: Path) -> Manifest:
    """The images to index: a manifest CSV (labels optional) or every image below a folder."""
    if (manifest is None) == (folder is None):
        raise EnsError("give exactly one of --manifest CSV and --folder DIR")
    rows = read_manifest(manifest, require_label=False) if manifest else folder_manifest(folder, scratch / "f.csv")
    check_unique(rows)
    return rows


def readable_rows(rows: Manifest, vectors: np.ndarray) -> tuple[Manifest, np.ndarray]:
    """The images that embedded: extraction leaves an unreadable image (within max_fail_ratio, warned about)
    as a zero row, which a gallery would return as a neighbour of every query at distance 1."""
    keep = vectors.any(axis=1)
    if keep.all():
        return rows, vectors
    log.warning("left %d unreadable image(s) out of the gallery (named above); fix them and `ens index add` them",
                int((~keep).sum()))
    kept = np.flatnonzero(keep)
    columns = {name: tuple(getattr(rows, name)[i] for i in kept) for name in ("paths", "labels", "domains")}
    return dataclasses.replace(rows, **columns), vectors[keep]


def build_gallery(spec: str | None, workdir, out: str | Path, manifest: str | None = None,
                  folder: str | None = None, approx_above: int = APPROX_ABOVE, workers: int = 2) -> Gallery:
    """Embed the gallery images with MODEL and save them as a searchable index at `out`."""
    ws, out = Workspace.at(workdir), Path(out)
    if (out / "gallery.json").exists():
        raise EnsError(f"--out {out}: a gallery is already there; add images with `ens index add` or pick "
                       "another folder")
    model = resolve_model(spec, ws)
    with tempfile.TemporaryDirectory() as scratch:
        rows = gallery_images(manifest, folder, Path(scratch))
        rows, vectors = readable_rows(rows, model.embed(rows, ws, workers=workers))
    index, facts = build_faiss(vectors, approx_above)
    spec = str(model.exported.resolve()) if model.exported is not None else model.name  # to resolve it again
    meta = {"model": model.name, "spec": spec, "identity": model.identity(), "dim": int(vectors.shape[1]),
            "index": facts,
            "metric": "euclidean (L2-normalised embeddings)", "workdir": str(ws.root)}
    gallery = Gallery(out, index, manifest_rows(rows), meta)
    save(gallery)
    return gallery


def gallery_model(gallery: Gallery, ws: Workspace, spec: str | None = None) -> ResolvedModel:
    """The model that embedded the gallery (or `spec`), refused if it would embed differently now."""
    model = resolve_model(spec or gallery.meta["spec"], ws)
    if model.identity() != gallery.meta["identity"]:
        raise EnsError(f"{gallery.folder}: the gallery was embedded by {gallery.meta['model']} as it was then; "
                       f"{model.name} now embeds differently (other weights, features, fusion or TTA): "
                       "rebuild the gallery or pass the original model")
    return model


def add_to_gallery(folder: str | Path, workdir, manifest: str | None = None, images_folder: str | None = None,
                   workers: int = 2) -> Gallery:
    """Embed more images with the gallery's model and append them."""
    ws, gallery = Workspace.at(workdir), load(folder)
    model = gallery_model(gallery, ws)
    with tempfile.TemporaryDirectory() as scratch:
        rows = gallery_images(manifest, images_folder, Path(scratch))
        gallery.refuse_known(rows.paths, manifest or f"--folder {images_folder}")  # before embedding them all
        rows, vectors = readable_rows(rows, model.embed(rows, ws, workers=workers))
        gallery.add(vectors, rows)
    save(gallery)
    return gallery


def check_queries(images: list[str]) -> None:
    """Every query image decodes: a query the user names is never skipped (its zero row would still get
    neighbours), and one bad image is named as such, not as a failure ratio."""
    for path in images:
        if not Path(path).is_file():
            raise EnsError(f"{path}: image not found")
        try:
            decode_image(path)
        except DecodeError as exc:
            raise EnsError(f"{path}: unreadable image ({exc})") from None


def search_gallery(folder: str | Path, workdir, images: list[str], k: int = 10,
                   spec: str | None = None) -> list[dict]:
    """For each query image, its k nearest gallery images with Euclidean distances."""
    ws, gallery = Workspace.at(workdir), load(folder)
    model = gallery_model(gallery, ws, spec)
    check_queries(images)
    with tempfile.TemporaryDirectory() as scratch:
        queries = write_path_manifest(images, Path(scratch) / "q.csv")
        vectors = model.embed(queries, ws, workers=0, cache=False)
    distances, rows = gallery.search(vectors, k)
    return [{"query": path, "neighbours": [{**gallery.rows[j], "distance": float(d)}
                                           for d, j in zip(dist, idx, strict=True) if j >= 0]}
            for path, dist, idx in zip(queries.paths, distances, rows, strict=True)]
