"""Embeddings cached in the workspace, keyed by model checkpoint content + manifest content + TTA."""

from __future__ import annotations

import hashlib
import io
import json
import logging
from pathlib import Path

import numpy as np
import torch

from ..data.manifest import Manifest
from ..distributed import world
from ..train.checkpoint import atomic_write_bytes, atomic_write_text
from .extract import TTA, Embedder, extract_many

log = logging.getLogger("ensemble")


def cache_path(workdir: str | Path, emb: Embedder, manifest: Manifest, tta: TTA) -> Path:
    key = hashlib.sha1(f"{emb.key}|{manifest.sha1}|{emb.size_px}|{tta.describe()}".encode()).hexdigest()[:20]
    return Path(workdir) / "cache" / emb.name / f"{key}.npy"


def _load(path: Path, rows: int, dim: int, mmap: bool = False) -> np.ndarray | None:
    if not path.is_file():
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


def _store(path: Path, feats: np.ndarray, emb: Embedder, manifest: Manifest, tta: TTA) -> None:
    buffer = io.BytesIO()
    np.save(buffer, feats.astype(np.float16))  # half the disk; cosine error ~1e-4
    atomic_write_bytes(path, buffer.getvalue())
    atomic_write_text(path.with_suffix(".json"), json.dumps(
        {"model": emb.name, "model_key": emb.key, "manifest": str(manifest.source), "manifest_sha1": manifest.sha1,
         "rows": len(manifest), "dim": emb.out_dim, "size_px": emb.size_px, "tta": tta.describe()}, indent=1))


def embed_manifest(embedders: list[Embedder], manifest: Manifest, workdir: str | Path, device: torch.device,
                   tta: TTA = TTA(), batch_size: int = 64, workers: int = 2, max_fail_ratio: float = 0.01,
                   use_cache: bool = True, mmap: bool = False) -> list[np.ndarray]:
    """Features of `manifest` for each embedder: cache hits are read, the misses run together
    (one decode per image for all of them) and are stored.

    mmap: return the float16 cache files memory-mapped (for data larger than memory).
    """
    paths = [cache_path(workdir, e, manifest, tta) for e in embedders]
    found = [_load(p, len(manifest), e.out_dim, mmap) if use_cache else None
             for p, e in zip(paths, embedders, strict=True)]
    missing = [i for i, f in enumerate(found) if f is None]
    if missing:
        computed = extract_many([embedders[i] for i in missing], manifest.paths, device, tta, batch_size, workers,
                                max_fail_ratio, desc=f"embed {manifest.source.name}")
        main = world().main
        for i, feats in zip(missing, computed, strict=True):
            if use_cache and main:  # every rank holds the gathered features; one writes them
                _store(paths[i], feats, embedders[i], manifest, tta)
            if use_cache and mmap and main:
                found[i] = _load(paths[i], len(manifest), embedders[i].out_dim, mmap=True)
            else:
                found[i] = feats.astype(np.float16).astype(np.float32)  # same values as a later cache hit
    return found
