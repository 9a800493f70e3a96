"""Margin-softmax heads: a cosine classifier whose target logit gets a margin.

Subclasses override only `apply_margin` (ArcFace: angle + m; CosFace: cosine - m).
Sub-centers (k > 1) keep k prototypes per class and use the closest one.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config.schema import HeadCfg
from .precision import float32_loss


class MarginHead(nn.Module):
    """Cosine classifier with a margin on the target class; returns scaled logits."""

    def __init__(self, in_dim: int, num_classes: int, scale: float, margin_rad: float, subcenters: int = 1,
                 class_margins: torch.Tensor | None = None):
        super().__init__()
        self.num_classes, self.subcenters, self.scale, self.margin_rad = num_classes, subcenters, scale, margin_rad
        self.weight = nn.Parameter(torch.empty(num_classes * subcenters, in_dim))
        nn.init.xavier_uniform_(self.weight)
        self.register_buffer("class_margins", class_margins, persistent=True)

    def cosine(self, emb: torch.Tensor) -> torch.Tensor:
        cos = F.linear(F.normalize(emb.float(), dim=-1), F.normalize(self.weight.float(), dim=-1))
        return cos.view(-1, self.num_classes, self.subcenters).amax(dim=-1)

    def margins_for(self, targets: torch.Tensor) -> torch.Tensor:
        if self.class_margins is not None:
            return self.class_margins[targets]
        return torch.full(targets.shape, self.margin_rad, device=targets.device)

    def apply_margin(self, cos_target: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, emb: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self._logits(emb, targets)

    @float32_loss
    def _logits(self, emb: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        cos = self.cosine(emb)
        target_cos = cos.gather(1, targets[:, None]).squeeze(1)
        adjusted = self.apply_margin(target_cos, self.margins_for(targets))
        logits = cos.scatter(1, targets[:, None], adjusted[:, None])
        return logits * self.scale


class ArcFace(MarginHead):
    """Additive angular margin: cos(theta + m), with the usual fallback past pi - m."""

    def apply_margin(self, cos_target, margin):
        cos_target = cos_target.clamp(-1 + 1e-7, 1 - 1e-7)
        sin_target = torch.sqrt(1.0 - cos_target**2)
        phi = cos_target * torch.cos(margin) - sin_target * torch.sin(margin)
        # past theta > pi - m, cos(theta + m) stops decreasing; use a linear penalty there
        threshold = torch.cos(math.pi - margin)
        return torch.where(cos_target > threshold, phi, cos_target - torch.sin(math.pi - margin) * margin)


class CosFace(MarginHead):
    """Additive cosine margin: cos(theta) - m."""

    def apply_margin(self, cos_target, margin):
        return cos_target - margin


HEADS = {"arcface": ArcFace, "cosface": CosFace}


def margin_at_epoch(cfg: HeadCfg, epoch: int) -> float:
    """Scheduled margin: min(start + step * epoch, max); constant `margin_rad` without a schedule."""
    if cfg.margin_schedule is None:
        return cfg.margin_rad
    sched = cfg.margin_schedule
    return min(sched.start + sched.step * epoch, sched.max)


def adaptive_margins(counts: list[int], a: float, b: float) -> torch.Tensor:
    """Per-class margins a * minmax(n ** -1/4) + b: rarer classes get larger margins."""
    x = np.asarray(counts, dtype=np.float64) ** -0.25
    span = x.max() - x.min()
    norm = (x - x.min()) / span if span > 0 else np.zeros_like(x)
    return torch.tensor(a * norm + b, dtype=torch.float32)


def build_head(cfg: HeadCfg, in_dim: int, class_counts: list[int]) -> MarginHead:
    """The configured margin head for len(class_counts) classes."""
    margins = None
    if cfg.adaptive_margin is not None:
        margins = adaptive_margins(class_counts, cfg.adaptive_margin.a, cfg.adaptive_margin.b)
    return HEADS[cfg.type](in_dim, len(class_counts), cfg.scale, margin_at_epoch(cfg, 0), cfg.subcenters, margins)
