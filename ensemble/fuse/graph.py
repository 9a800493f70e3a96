"""The fusion graph in torch: the one implementation of power -> merge -> concatenate -> PCA -> normalise.

`ens fuse`/`ens eval` run it on numpy features (zero-copy), `ens export` traces it with the member
branches in front. A member branch is uint8 images -> preprocessing -> `EmbeddingModel.embed` ->
flip average.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models.member import EmbeddingModel
from ..models.preprocess import Preprocess


def signed_power(x: torch.Tensor, power: float) -> torch.Tensor:
    """sign(x) * |x|^power ("power normalisation"; 0.5: signed square root): damps the few large
    coordinates of pooled CNN features so that many small ones count; power 1 returns x unchanged."""
    return x if power == 1.0 else torch.sign(x) * x.abs().pow(power)


def power_identity(power: float) -> dict:
    """The power's entry in a fingerprint: none at power 1, so fingerprints (galleries, teacher targets)
    computed before the option existed stay valid."""
    return {} if power == 1.0 else {"power": power}


def merge_groups(features: list[torch.Tensor], groups: list[list[int]], power: float = 1.0) -> torch.Tensor:
    """Signed power of every feature, average the L2-normalised features inside each group,
    renormalise, concatenate the groups."""
    parts = [F.normalize(torch.stack([F.normalize(signed_power(features[i].float(), power), dim=-1)
                                      for i in group]).mean(0), dim=-1)
             for group in groups]
    return torch.cat(parts, dim=1)


def pca_project(x: torch.Tensor, mean: torch.Tensor, components: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(x - mean) @ components^T / scale (scale: 1, or sqrt of the explained variance when whitening)."""
    return ((x - mean) @ components.T) / scale


def pca_scale(explained_variance: np.ndarray, whiten: bool) -> np.ndarray:
    return np.sqrt(explained_variance + 1e-12) if whiten else np.ones(len(explained_variance))


class FusionHead(nn.Module):
    """Member features -> signed power -> mean per group (architecture) -> concatenate -> optional PCA
    (or learned projection) -> L2-normalise."""

    def __init__(self, groups: list[list[int]], reducer=None, power: float = 1.0):
        super().__init__()
        self.groups = [list(g) for g in groups]
        self.power = float(power)
        self.has_pca = reducer is not None
        if reducer is not None:
            scale = pca_scale(np.asarray(reducer.explained_variance), reducer.whiten)
            self.register_buffer("pca_mean", torch.from_numpy(np.asarray(reducer.mean, np.float32)))
            self.register_buffer("pca_components", torch.from_numpy(np.asarray(reducer.components, np.float32)))
            self.register_buffer("pca_scale", torch.from_numpy(np.asarray(scale, np.float32)))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        fused = merge_groups(features, self.groups, self.power)
        if self.has_pca:
            fused = pca_project(fused, self.pca_mean, self.pca_components, self.pca_scale)
        return F.normalize(fused, dim=-1)


class MemberBranch(nn.Module):
    """uint8 images -> one model's L2-normalised feature (neck or pooled backbone), averaged over flips and
    over its sizes (multi-scale TTA: the first is its eval size), as extraction averages them.
    The model computes in its weights' dtype (`dtype`: float32, or half for a GPU deployment); resize,
    normalisation and the feature come out in float32."""

    def __init__(self, model: EmbeddingModel, features: str, sizes_px: list[int], mean, std, flip: bool,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.preprocess = nn.ModuleList(Preprocess(size, mean, std) for size in sizes_px)
        self.model, self.features, self.flip, self.dtype = model, features, flip, dtype

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        total = None
        for preprocess in self.preprocess:
            x = preprocess(images)
            if self.dtype != torch.float32:
                x = x.to(self.dtype)
            feats = self.model.embed(x, self.features)
            if self.flip:
                feats = feats + self.model.embed(x.flip(-1), self.features)
            total = feats if total is None else total + feats
        return F.normalize(total, dim=-1)


class EmbeddingGraph(nn.Module):
    """uint8 [B,3,H,W] -> every branch -> the fusion head: a whole model (member, student or ensemble)."""

    def __init__(self, branches: list[MemberBranch], head: FusionHead):
        super().__init__()
        self.branches, self.head = nn.ModuleList(branches), head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head([branch(images) for branch in self.branches])
