"""Distillation task: the student's embedding regresses cached teacher targets (no teacher runs)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config.schema import DistillLossCfg, HeadCfg
from ..losses.distill import cosine_loss, distill_terms
from ..losses.margin import MarginHead, margin_at_epoch
from ..models.member import EmbeddingModel
from .base import Task


class DistillTask(Task):
    """Student embedding vs `targets[batch indices]`; optional margin-softmax on labelled rows.

    targets: [N, D] teacher embeddings of the distill manifest, row i for image i; member_targets (multi-teacher)
    and relation_targets (sim_kl's teacher, the ensemble's concatenation) are optional rows of the same images.
    """

    def __init__(self, model: EmbeddingModel, targets: torch.Tensor, loss_cfg: DistillLossCfg,
                 head: MarginHead | None = None, head_cfg: HeadCfg | None = None,
                 member_targets: list[torch.Tensor] | None = None, relation_targets: torch.Tensor | None = None):
        super().__init__()
        self.model, self.loss_cfg, self.head, self.head_cfg = model, loss_cfg, head, head_cfg
        self.register_buffer("targets", targets.float(), persistent=False)  # cached file, not checkpointed
        member_targets = member_targets or []
        self.projectors = nn.ModuleList(nn.Linear(model.backbone.out_dim, t.shape[1]) for t in member_targets)
        # kept on the CPU (each batch's rows move to the device): [rows, member dim] per member is GBs at GUIE scale
        self.member_targets = [t.float() for t in member_targets]
        # [rows, concat dim], CPU like the member targets: sim_kl's teacher when loss.sim_kl_teacher is concat
        self.relation_targets = None if relation_targets is None else relation_targets.float()
        self.last_terms: dict[str, float] = {}

    def parts(self) -> dict[str, nn.Module]:
        parts = {"backbone": self.model.backbone, "neck": self.model.neck}
        if self.head is not None:
            parts["head"] = self.head
        if len(self.projectors):
            parts["projectors"] = self.projectors
        return parts

    def set_trainable(self, names: list[str]) -> None:
        """As Task's; the member projectors learn whenever the backbone does (they only exist to shape it)."""
        if len(self.projectors) and ("backbone" in names or "all" in names):
            names = [*names, "projectors"]
        super().set_trainable(names)

    def on_epoch_start(self, epoch: int) -> None:
        if self.head is not None:
            self.head.margin_rad = margin_at_epoch(self.head_cfg, epoch)

    def epoch_info(self) -> dict:
        return {"margin_rad": float(self.head.margin_rad)} if self.head is not None else {}

    def loss(self, batch: dict) -> torch.Tensor:
        with torch.set_grad_enabled("backbone" in self.trainable and torch.is_grad_enabled()):
            feats = self.model.backbone(batch["images"])
        student = self.model.neck(feats)
        target = self.targets[batch["indices"].to(self.targets.device)]
        rows = batch["indices"].cpu()
        relation = None if self.relation_targets is None else self.relation_targets[rows].to(student.device)
        terms = distill_terms(student, target, self.loss_cfg, relation)
        if len(self.projectors) and self.loss_cfg.members and "backbone" in self.trainable:
            per = [cosine_loss(proj(feats).float(), t[rows].to(feats.device, non_blocking=True))
                   for proj, t in zip(self.projectors, self.member_targets)]
            terms["members"] = self.loss_cfg.members * torch.stack(per).mean()
        labelled = batch["targets"] >= 0
        if self.head is not None and self.loss_cfg.arcface and bool(labelled.any()):
            logits = self.head(student[labelled], batch["targets"][labelled])
            terms["arcface"] = self.loss_cfg.arcface * F.cross_entropy(logits, batch["targets"][labelled])
        self.last_terms = {k: float(v.detach()) for k, v in terms.items()}
        return sum(terms.values())
