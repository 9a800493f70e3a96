"""Member training task: embedding model + margin-softmax head + cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config.schema import HeadCfg
from ..losses.distill import cosine_loss
from ..losses.margin import MarginHead, margin_at_epoch
from ..models.member import EmbeddingModel
from .base import Task


class ClassifyTask(Task):
    """Cross-entropy over margin logits of the neck embedding.

    class_domains: domain index per class; given, each sample's softmax runs over its own domain's
    classes only (one head per domain over the shared neck, as UnED / UDON train).
    """

    def __init__(self, model: EmbeddingModel, head: MarginHead, head_cfg: HeadCfg,
                 class_domains: torch.Tensor | None = None, reference: nn.Module | None = None,
                 feature_kd: float = 0.0):
        super().__init__()
        self.model, self.head, self.head_cfg = model, head, head_cfg
        self.register_buffer("class_domains", class_domains, persistent=False)
        # the frozen starting backbone for the retention term: not a registered child, so it stays
        # out of checkpoints (rebuilt from the recipe on resume) and out of the optimizer
        frozen = reference.eval().requires_grad_(False) if reference is not None else None
        object.__setattr__(self, "_reference", frozen)  # nn.Module.__setattr__ would register it
        self.feature_kd = feature_kd
        self.last_terms: dict[str, float] = {}

    def _apply(self, fn, *args, **kwargs):  # .to() / .float() reach the unregistered reference too
        super()._apply(fn, *args, **kwargs)
        if self._reference is not None:
            self._reference._apply(fn, *args, **kwargs)
        return self

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
        terms = {"margin_softmax": F.cross_entropy(logits, batch["targets"])}
        if self._reference is not None and "backbone" in self.trainable:
            with torch.no_grad():
                start = self._reference(batch["images"])
            terms["feature_kd"] = self.feature_kd * cosine_loss(feats.float(), start.float())
        self.last_terms = {k: float(v.detach()) for k, v in terms.items()}
        return sum(terms.values())
