"""A member: backbone + neck. The model returns embeddings; heads live with the loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config.schema import MemberCfg
from .backbone import Backbone, build_backbone
from .neck import build_neck


class EmbeddingModel(nn.Module):
    """backbone -> neck. `forward` gives the neck embedding (not normalised)."""

    def __init__(self, backbone: Backbone, neck: nn.Module):
        super().__init__()
        self.backbone, self.neck = backbone, neck

    @property
    def out_dim(self) -> int:
        return self.neck[-1].num_features if isinstance(self.neck[-1], nn.BatchNorm1d) else self.neck[-1].out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(self.backbone(x))

    def features(self, x: torch.Tensor, which: str = "neck") -> torch.Tensor:
        """L2-normalised `neck` embedding or pooled `backbone` feature."""
        feats = self.backbone(x)
        if which == "neck":
            feats = self.neck(feats)
        return F.normalize(feats.float(), dim=-1)


def build_member_model(cfg: MemberCfg, load_weights: bool = True, device: str | None = None) -> EmbeddingModel:
    """Backbone + neck from a member (or student) recipe."""
    backbone = build_backbone(cfg.backbone, load_weights=load_weights, device=device)
    if device == "meta":
        with torch.device("meta"):
            neck = build_neck(cfg.neck, backbone.out_dim)
    else:
        neck = build_neck(cfg.neck, backbone.out_dim)
    return EmbeddingModel(backbone, neck)
