"""Member training task: embedding model + margin-softmax head + cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config.schema import HeadCfg
from ..losses.margin import MarginHead, margin_at_epoch
from ..models.member import EmbeddingModel
from .base import Task


class ClassifyTask(Task):
    """Cross-entropy over margin logits of the neck embedding.

    class_domains: domain index per class; given, each sample's softmax runs over its own domain's
    classes only (one head per domain over the shared neck, as UnED / UDON train).
    """

    def __init__(self, model: EmbeddingModel, head: MarginHead, head_cfg: HeadCfg,
                 class_domains: torch.Tensor | None = None):
        super().__init__()
        self.model, self.head, self.head_cfg = model, head, head_cfg
        self.register_buffer("class_domains", class_domains, persistent=False)

    def parts(self) -> dict[str, nn.Module]:
        return {"backbone": self.model.backbone, "neck": self.model.neck, "head": self.head}

    def on_epoch_start(self, epoch: int) -> None:
        self.head.margin_rad = margin_at_epoch(self.head_cfg, epoch)

    def epoch_info(self) -> dict:
        return {"margin_rad": float(self.head.margin_rad)}

    def loss(self, batch: dict) -> torch.Tensor:
        if "backbone" in self.trainable:
            feats = self.model.backbone(batch["images"])
        else:
            with torch.no_grad():
                feats = self.model.backbone(batch["images"])
        logits = self.head(self.model.neck(feats), batch["targets"])
        if self.class_domains is not None:
            other = self.class_domains[None, :] != self.class_domains[batch["targets"]][:, None]
            logits = logits.masked_fill(other, float("-inf"))
        return F.cross_entropy(logits, batch["targets"])
