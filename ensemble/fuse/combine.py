"""Member features as numpy arrays -> one fused array, through the torch fusion graph (`graph.py`).

The maths exists once: `combine` and `fuse_features` run `merge_groups` / `FusionHead` on the arrays
(zero-copy), chunk by chunk, so memory-mapped inputs larger than memory work.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import EnsError
from .graph import FusionHead, merge_groups


def group_members(archs: list[str], merge: str) -> list[list[int]]:
    """Member indices per group: one group per architecture ('mean') or per member ('concat')."""
    if merge == "concat":
        return [[i] for i in range(len(archs))]
    groups: dict[str, list[int]] = {}
    for i, arch in enumerate(archs):
        groups.setdefault(arch, []).append(i)
    return list(groups.values())


def _check_rows(features: list[np.ndarray]) -> int:
    rows = {f.shape[0] for f in features}
    if len(rows) != 1:
        raise EnsError(f"member embeddings do not line up: row counts {sorted(rows)}")
    return rows.pop()


def _check_groups(features: list[np.ndarray], groups: list[list[int]]) -> None:
    for group in groups:
        dims = {features[i].shape[1] for i in group}
        if len(dims) != 1:
            raise EnsError(f"members merged as one architecture have different dims {sorted(dims)}")


def _tensors(features: list[np.ndarray], start: int, stop: int) -> list[torch.Tensor]:
    return [torch.from_numpy(np.ascontiguousarray(f[start:stop], np.float32)) for f in features]


def combine(features: list[np.ndarray], groups: list[list[int]], power: float = 1.0) -> np.ndarray:
    """Signed power of every feature, average the L2-normalised features inside each group,
    renormalise, concatenate the groups."""
    _check_rows(features)
    _check_groups(features, groups)
    with torch.no_grad():
        return merge_groups(_tensors(features, 0, None), groups, power).numpy()


def combine_to_store(features: list[np.ndarray], groups: list[list[int]], path: Path, power: float = 1.0,
                     chunk_rows: int = 16384) -> np.ndarray:
    """`combine` chunk by chunk into a float32 .npy memmap at `path` (a scratch file for fitting the
    reducer); returns the memmap."""
    n = _check_rows(features)
    _check_groups(features, groups)
    width = sum(features[g[0]].shape[1] for g in groups)
    store = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, width))
    for start in range(0, n, chunk_rows):
        store[start:start + chunk_rows] = combine([f[start:start + chunk_rows] for f in features], groups, power)
    store.flush()
    return store


def fuse_features(head: FusionHead, features: list[np.ndarray], dims: list[int], name: str,
                  chunk_rows: int = 16384) -> np.ndarray:
    """Member features (member order, widths `dims`) -> the fused, L2-normalised embedding."""
    got = [f.shape[1] if f.ndim == 2 else None for f in features]
    if got != dims:
        raise EnsError(f"ensemble {name!r} expects member feature dims {dims}, got {got}")
    n = _check_rows(features)
    with torch.no_grad():
        parts = [head(_tensors(features, s, s + chunk_rows)).numpy() for s in range(0, max(n, 1), chunk_rows)]
    return np.concatenate(parts).astype(np.float32)
