"""PCA to N dims fitted in chunks: never holds more than one chunk of the features in memory.

Randomized subspace iteration on the covariance (Halko et al. 2011): each pass streams the rows
once and accumulates Xc^T (Xc Q) for a d x (N + oversample) block Q, so memory is O(d * N) plus
one chunk, whatever the number of rows (a memory-mapped feature store works as input).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..atomic import atomic_file
from ..errors import EnsError
from ..progress import label
from .graph import pca_project, pca_scale


def _chunks(features, chunk_rows: int):
    for start in range(0, features.shape[0], chunk_rows):
        yield np.asarray(features[start:start + chunk_rows], dtype=np.float32)


def _mean_and_total_var(features, chunk_rows: int) -> tuple[np.ndarray, float]:
    total = np.zeros(features.shape[1], np.float64)
    sq = 0.0
    for chunk in _chunks(features, chunk_rows):
        total += chunk.sum(0, dtype=np.float64)
        sq += float(np.einsum("ij,ij->", chunk, chunk, dtype=np.float64))
    n = features.shape[0]
    mean = total / n
    return mean, (sq - n * float(mean @ mean)) / max(n - 1, 1)


def _cov_times(features, mean: np.ndarray, block: np.ndarray, chunk_rows: int) -> np.ndarray:
    """(Xc^T Xc) @ block in one streaming pass, Xc = X - mean."""
    out = np.zeros(block.shape, np.float64)
    mean32, block32 = mean.astype(np.float32), block.astype(np.float32)
    for chunk in _chunks(features, chunk_rows):
        centered = chunk - mean32
        out += centered.T @ (centered @ block32)
    return out


@dataclass
class PCAReducer:
    """Fitted PCA: y = normalize(((x - mean) @ components.T) / scale)."""

    mean: np.ndarray  # [d]
    components: np.ndarray  # [n, d]
    explained_variance: np.ndarray  # [n]
    total_variance: float
    whiten: bool = False

    @property
    def in_dim(self) -> int:
        return self.components.shape[1]

    @property
    def out_dim(self) -> int:
        return self.components.shape[0]

    @property
    def explained_variance_ratio(self) -> float:
        return float(self.explained_variance.sum() / self.total_variance)

    def transform(self, features: np.ndarray, normalize: bool = True) -> np.ndarray:
        """Project rows; refuses a feature width other than the one fitted."""
        if features.ndim != 2 or features.shape[1] != self.in_dim:
            raise EnsError(f"reducer expects {self.in_dim}-d features, got shape {tuple(features.shape)}")
        with torch.no_grad():
            out = pca_project(*(torch.from_numpy(np.asarray(a, np.float32)) for a in (
                features, self.mean, self.components, pca_scale(self.explained_variance, self.whiten)))).numpy()
        if normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    def save(self, path: str | Path) -> None:
        with atomic_file(path) as handle:
            np.savez(handle, mean=self.mean, components=self.components, explained_variance=self.explained_variance,
                     total_variance=self.total_variance, whiten=self.whiten)

    @classmethod
    def load(cls, path: str | Path) -> PCAReducer:
        with np.load(path) as data:
            return cls(data["mean"], data["components"], data["explained_variance"], float(data["total_variance"]),
                       bool(data["whiten"]))


def fit_pca(features, n_components: int, whiten: bool = False, power_iters: int = 4, oversample: int = 16,
            chunk_rows: int = 8192, seed: int = 0) -> PCAReducer:
    """Fit PCA on an [n, d] array-like (numpy array or memmap), streaming `chunk_rows` rows at a time."""
    n, d = features.shape
    if n_components > min(n, d):
        raise EnsError(f"PCA to {n_components} dims needs at least that many rows and features; got {n} x {d}")
    mean, total_var = _mean_and_total_var(features, chunk_rows)
    width = min(n_components + oversample, d)
    block = np.random.default_rng(seed).standard_normal((d, width))
    for _ in tqdm(range(power_iters), desc=label(f"fit PCA-{n_components} ({n:,} x {d})"), leave=False,
                  disable=n * d < 10_000_000):  # only where a pass takes a while
        block, _ = np.linalg.qr(_cov_times(features, mean, block, chunk_rows))
    projected = block.T @ _cov_times(features, mean, block, chunk_rows)  # Q^T C Q, small
    eigvals, eigvecs = np.linalg.eigh((projected + projected.T) / 2)
    order = np.argsort(eigvals)[::-1][:n_components]
    components = (block @ eigvecs[:, order]).T
    components = _fix_signs(components)
    return PCAReducer(mean.astype(np.float32), components.astype(np.float32),
                      (eigvals[order] / max(n - 1, 1)).astype(np.float64), total_var, whiten)


def _fix_signs(components: np.ndarray) -> np.ndarray:
    """Deterministic signs: the largest-magnitude entry of each component is positive."""
    signs = np.sign(components[np.arange(len(components)), np.abs(components).argmax(1)])
    return components * signs[:, None]
