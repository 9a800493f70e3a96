"""Embeddings cached in the workspace, keyed by model checkpoint content + manifest content and place + TTA.

Each cache file lists its image paths beside it (`<key>.paths`), so a new manifest that shares images
with cached ones (e.g. a distill set = train + index) extracts only the images not seen before. A long
extraction saves the rows it has extracted so far every PARTIAL_EVERY_S seconds as a partial entry
(`<key>.partial-<run>.*`, one per process and run, found by path like any other entry), so a killed run
resumes from its last save, and a killed resume from its own; the finished entry replaces them all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_write_npy, atomic_write_text, check_writable
from ..data.manifest import Manifest
from ..distributed import world
from ..hashing import file_sha1
from .extract import TTA, Embedder, extract_many

log = logging.getLogger("ensemble")
PARTIAL_EVERY_S = 300.0  # how often a running extraction saves its rows so far


def identity(emb: Embedder, tta: TTA) -> str:
    """What makes two cached features the same: checkpoint content + feature, preprocessing, TTA."""
    return f"{emb.key}|{emb.size_px}|{list(emb.mean)}|{list(emb.std)}|{tta.describe()}"


def cache_path(cache_dir: Path, emb: Embedder, manifest: Manifest, tta: TTA) -> Path:
    key = hashlib.sha1(f"{identity(emb, tta)}|{manifest.located_sha1}".encode()).hexdigest()[:20]
    return Path(cache_dir) / emb.name / f"{key}.npy"


def checked_meta(path: Path) -> dict | None:
    """The JSON that write_checked wrote beside the .npy at `path` (its npy_sha1 included), None if unreadable."""
    try:
        meta = json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _entry_sha1(path: Path) -> str | None:
    return (checked_meta(path) or {}).get("npy_sha1")


def load_checked(path: Path, rows: int, dim: int, mmap: bool = False,
                 expected: str | None = None) -> np.ndarray | None:
    """A cache entry whose bytes match the checksum stored beside it (`expected`, when its JSON is
    already read), else None (recomputed)."""
    if not path.is_file():
        return None
    expected = expected or _entry_sha1(path)
    if expected is None or file_sha1(path) != expected:
        why = "no checksum stored with it" if expected is None else "its content does not match its checksum"
        log.warning("ignoring cache file %s: %s", path, why)
        return None
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None)
    except (OSError, ValueError):
        log.warning("ignoring unreadable cache file %s", path)
        return None
    if arr.shape != (rows, dim):
        log.warning("ignoring cache file %s: shape %s, expected %s", path, arr.shape, (rows, dim))
        return None
    return arr if mmap else arr.astype(np.float32)


def write_checked(path: Path, array: np.ndarray, meta: dict) -> None:
    """`array` as an .npy, then `meta` with the file's SHA-1 in the JSON beside it (written last: it names a
    finished file), as load_checked reads it back."""
    data = atomic_write_npy(path, array)
    atomic_write_text(path.with_suffix(".json"), json.dumps({**meta, "npy_sha1": hashlib.sha1(data).hexdigest()},
                                                            indent=1))


def _store(path: Path, feats: np.ndarray, emb: Embedder, manifest: Manifest, tta: TTA,
           rows: np.ndarray | None = None) -> None:
    """An entry of `manifest`'s features; with `rows`, the features of only those rows (a partial entry)."""
    paths = manifest.paths if rows is None else [manifest.paths[i] for i in rows]
    atomic_write_text(path.with_suffix(".paths"), "\n".join(paths))
    write_checked(path, feats.astype(np.float16),  # half the disk
                  {"model": emb.name, "identity": identity(emb, tta), "manifest": str(manifest.source),
                   "manifest_sha1": manifest.sha1, "rows": len(paths), "dim": emb.out_dim,
                   "partial": rows is not None})


def partial_path(path: Path, run: str) -> Path:
    """Where one process of one run (`run`) keeps the rows it extracted for the entry at `path`."""
    return path.with_name(f"{path.stem}.partial-{run}.npy")


def _drop_partial(path: Path) -> None:
    """Every partial entry of `path` (each process's, each killed run's), the JSONs first: without its JSON
    an entry is not read."""
    for suffix in (".json", ".paths", ".npy"):
        for part in path.parent.glob(f"{path.stem}.partial*{suffix}"):
            part.unlink(missing_ok=True)


def cached_rows(cache_dir: Path, emb: Embedder, manifest: Manifest,
                tta: TTA) -> tuple[np.ndarray | None, np.ndarray]:
    """(features, found): rows of `manifest` that other cache entries of the same model, size and TTA
    already hold (matched by image path); rows not found are zero. features is None when none is found."""
    feats, found = None, np.zeros(len(manifest), bool)
    row_of = {path: i for i, path in enumerate(manifest.paths)}  # canonical paths: one spelling per image
    for meta_path in sorted(Path(cache_dir, emb.name).glob("*.json")):
        try:
            meta = json.loads(meta_path.read_text())
            paths = meta_path.with_suffix(".paths").read_text().split("\n")
        except (OSError, ValueError):
            continue
        if meta.get("identity") != identity(emb, tta):
            continue
        pairs = [(row_of[p], j) for j, p in enumerate(paths) if p in row_of and not found[row_of[p]]]
        cached = (load_checked(meta_path.with_suffix(".npy"), len(paths), emb.out_dim, mmap=True,
                               expected=meta.get("npy_sha1")) if pairs and meta.get("npy_sha1") else None)
        if cached is not None:
            rows, source = (np.array(side) for side in zip(*pairs, strict=True))
            values = np.asarray(cached[source], np.float32)
            ok = values.any(axis=1)  # a zero row is an image that failed to decode: try it again, warn again
            feats = np.zeros((len(manifest), emb.out_dim), np.float32) if feats is None else feats
            feats[rows[ok]], found[rows[ok]] = values[ok], True
        if found.all():
            break
    return feats, found


def embed_manifest(embedders: list[Embedder], manifest: Manifest, cache_dir: Path, device: torch.device,
                   tta: TTA = TTA(), batch_size: int = 64, workers: int = 2, max_fail_ratio: float = 0.01,
                   use_cache: bool = True, mmap: bool = False) -> list[np.ndarray]:
    """Features of `manifest` for each embedder: cache hits are read; for the misses, rows cached
    under other manifests are reused and the remaining images run together (one decode per image
    for all of them); the result is stored.

    mmap: return the float16 cache files memory-mapped (for data larger than memory).
    """
    paths = [cache_path(cache_dir, e, manifest, tta) for e in embedders]
    found = [load_checked(p, len(manifest), e.out_dim, mmap) if use_cache else None
             for p, e in zip(paths, embedders, strict=True)]
    missing = [i for i, f in enumerate(found) if f is None]
    if missing and use_cache and world().main:
        for i in missing:
            check_writable(paths[i].parent)  # before extracting, not when storing the result
    if missing:
        computed = _extract_missing([embedders[i] for i in missing], [paths[i] for i in missing], manifest,
                                    cache_dir, device, tta, batch_size, workers, max_fail_ratio, use_cache)
        main = world().main
        for i, feats in zip(missing, computed, strict=True):
            if use_cache and main:  # every rank holds the gathered features; one writes them
                _store(paths[i], feats, embedders[i], manifest, tta)
                _drop_partial(paths[i])
            if use_cache and mmap and main:
                found[i] = load_checked(paths[i], len(manifest), embedders[i].out_dim, mmap=True)
            else:
                found[i] = feats.astype(np.float16).astype(np.float32)  # same values as a later cache hit
    return found


def _extract_missing(embedders: list[Embedder], entries: list[Path], manifest: Manifest, cache_dir: Path, device,
                     tta: TTA, batch_size: int, workers: int, max_fail_ratio: float,
                     use_cache: bool) -> list[np.ndarray]:
    """Features of every row for each embedder: rows cached under other manifests (or saved by an interrupted
    run), the rest extracted, saving partial entries (at `entries`) as it goes."""
    reused = [cached_rows(cache_dir, e, manifest, tta) for e in embedders] if use_cache else []
    todo = np.flatnonzero(~np.logical_and.reduce([found for _, found in reused])) if reused else None
    fresh = todo is None or len(todo) == len(manifest)  # nothing to reuse: no second full-size array
    if fresh:
        todo = np.arange(len(manifest))
    else:
        log.info("embed %s: %d of %d images found in the cache (other manifests, or an interrupted run)",
                 manifest.source.name, len(manifest) - len(todo), len(manifest))
        if not len(todo):
            return [feats for feats, _ in reused]
    save = _partial_saver(embedders, entries, manifest, tta, todo) if use_cache else None
    computed = extract_many(embedders, [manifest.paths[i] for i in todo], device, tta, batch_size, workers,
                            max_fail_ratio, desc=f"embed {manifest.source.name}",
                            readable_before=len(manifest) - len(todo), progress=save,
                            progress_every_s=PARTIAL_EVERY_S)
    if fresh:
        return computed
    for (feats, _), rows in zip(reused, computed, strict=True):
        feats[todo] = rows
    return [feats for feats, _ in reused]


def _partial_saver(embedders: list[Embedder], entries: list[Path], manifest: Manifest, tta: TTA,
                   todo: np.ndarray):
    """progress(rows, features) for extract_many: the rows this process has extracted (positions `rows` of
    `todo`) stored as its own partial entry of each of `entries`. Entries an earlier killed run saved stay
    beside it (this run reused their rows) until the finished entry replaces them all."""
    run = uuid.uuid4().hex[:12]  # per process: ranks and reruns never overwrite each other's rows

    def save(rows: np.ndarray, features: list[np.ndarray]) -> None:
        for emb, entry, feats in zip(embedders, entries, features, strict=True):
            _store(partial_path(entry, run), feats, emb, manifest, tta, rows=todo[rows])
    return save
