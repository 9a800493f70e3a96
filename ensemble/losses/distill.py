"""Distillation losses: match the teacher's embedding point by point and the batch's geometry.

All terms take the student output and the teacher target, both [B, D]; the student output is
L2-normalised here, the target is expected to be (the fused ensemble embedding is).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config.schema import DistillLossCfg
from .precision import float32_loss


def cosine_loss(student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - cos(student_i, target_i)."""
    return (1.0 - F.cosine_similarity(student, target, dim=-1)).mean()


def smooth_l1_loss(student: torch.Tensor, target: torch.Tensor, beta: float) -> torch.Tensor:
    """Huber loss on the normalised vectors, summed over dimensions, averaged over the batch."""
    return F.smooth_l1_loss(F.normalize(student, dim=-1), target, beta=beta, reduction="sum") / student.shape[0]


def _pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    """Off-diagonal Euclidean distances of the rows, each set divided by its mean (scale-free)."""
    n = x.shape[0]
    dist = torch.cdist(x, x).clamp_min(0)
    off = dist[~torch.eye(n, dtype=torch.bool, device=x.device)]
    return off / off.mean().clamp_min(1e-12)


def rkd_distance_loss(student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Relational KD, distance term (Park et al. 2019): Huber between normalised pairwise distances."""
    if student.shape[0] < 2:
        return student.sum() * 0.0
    with torch.no_grad():
        t = _pairwise_distances(target)
    return F.smooth_l1_loss(_pairwise_distances(F.normalize(student, dim=-1)), t)


def similarity_kl_loss(student: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of each row's softmax over cosine similarities to the rest of the batch."""
    n = student.shape[0]
    if n < 2:
        return student.sum() * 0.0
    mask = ~torch.eye(n, dtype=torch.bool, device=student.device)
    s = F.normalize(student, dim=-1)
    s_logits = (s @ s.T)[mask].view(n, n - 1) / temperature
    t_logits = (target @ target.T)[mask].view(n, n - 1) / temperature
    return F.kl_div(F.log_softmax(s_logits, dim=-1), F.log_softmax(t_logits, dim=-1), log_target=True,
                    reduction="batchmean")


@float32_loss
def distill_terms(student: torch.Tensor, target: torch.Tensor, cfg: DistillLossCfg,
                  relation: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The enabled terms, weighted (arcface is added by the task, which owns the head); sim_kl takes its
    teacher similarities from `relation` [B, any width] when given (loss.sim_kl_teacher: concat)."""
    terms = {}
    if cfg.cosine:
        terms["cosine"] = cfg.cosine * cosine_loss(student, target)
    if cfg.smooth_l1:
        terms["smooth_l1"] = cfg.smooth_l1 * smooth_l1_loss(student, target, cfg.smooth_l1_beta)
    if cfg.rkd:
        terms["rkd"] = cfg.rkd * rkd_distance_loss(student, target)
    if cfg.sim_kl:
        terms["sim_kl"] = cfg.sim_kl * similarity_kl_loss(
            student, target if relation is None else F.normalize(relation, dim=-1), cfg.temperature)
    return terms
