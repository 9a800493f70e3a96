"""A member: backbone + neck. The model returns embeddings; heads live with the loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config.schema import MemberCfg
from ..errors import EnsError
from .backbone import Backbone, build_backbone, fixed_size_error
from .neck import build_neck

FEATURES = ("neck", "backbone", "both")


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

    def embed(self, x: torch.Tensor, features: str = "neck", normalize: bool = True) -> torch.Tensor:
        """The one backbone -> neck -> normalise path: the `neck` embedding, the pooled `backbone`
        feature, or `both` (each L2-normalised, concatenated); float32."""
        if features not in FEATURES:
            raise ValueError(f"features: expected one of {FEATURES}, got {features!r}")
        pooled = self.backbone(x)
        if features == "backbone":
            return F.normalize(pooled.float(), dim=-1) if normalize else pooled.float()
        neck = self.neck(pooled)
        if features == "neck":
            return F.normalize(neck.float(), dim=-1) if normalize else neck.float()
        return torch.cat([F.normalize(neck.float(), dim=-1), F.normalize(pooled.float(), dim=-1)], dim=1)


def build_member_model(cfg: MemberCfg, load_weights: bool = True, device: str | None = None) -> EmbeddingModel:
    """Backbone + neck from a member (or student) recipe."""
    backbone = build_backbone(cfg.backbone, load_weights=load_weights, device=device)
    if cfg.eval.gem_p is not None:  # refused here, before training, not when the model file is first loaded
        backbone.check_gem("eval.gem_p", cfg.backbone.arch)
    check_extra_sizes(cfg, backbone)
    if device == "meta":
        with torch.device("meta"):
            neck = build_neck(cfg.neck, backbone.out_dim)
    else:
        neck = build_neck(cfg.neck, backbone.out_dim)
    return EmbeddingModel(backbone, neck)


def check_extra_sizes(cfg: MemberCfg, backbone: Backbone) -> None:
    """eval.extra_sizes refused before training (not after it, at eval): a size listed twice, or any extra
    size for a ViT whose positional embedding takes only its training size."""
    extra, size_px = cfg.eval.extra_sizes, cfg.eval.image_size or backbone.image_size
    if len(set(extra) | {size_px}) != len(extra) + 1:
        raise EnsError(f"{cfg.name}: eval.extra_sizes {extra} repeats a size (the eval size is {size_px} px); "
                       "each size is embedded once")
    if extra and backbone.fixed_size:
        raise fixed_size_error(cfg.name, f"eval.extra_sizes {extra}", backbone.image_size,
                               "leave eval.extra_sizes empty")


def pool_as_embedded(model: EmbeddingModel, cfg: MemberCfg) -> EmbeddingModel:
    """`model` pooled as its recipe embeds: by GeM `eval.gem_p` where set, whatever pooled in training."""
    if cfg.eval.gem_p:
        model.backbone.gem_p = cfg.eval.gem_p
    return model
