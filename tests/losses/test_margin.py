import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ensemble.config.schema import HeadCfg
from ensemble.losses.margin import ArcFace, CosFace, adaptive_margins, build_head, margin_at_epoch


def reference_arcface_loss(emb, weight, targets, scale, margin):
    """ArcFace written out per sample: angle + margin on the target, softmax cross-entropy."""
    total = 0.0
    for x, y in zip(emb, targets, strict=True):
        x = x / np.linalg.norm(x)
        logits = []
        for j, w in enumerate(weight):
            cos = float(x @ (w / np.linalg.norm(w)))
            if j == y:
                theta = math.acos(max(-1.0, min(1.0, cos)))
                cos = math.cos(theta + margin) if theta + margin < math.pi else cos - math.sin(math.pi - margin) * margin
            logits.append(scale * cos)
        logits = np.array(logits)
        total += -(logits[y] - np.log(np.exp(logits - logits.max()).sum()) - logits.max())
    return total / len(targets)


def test_arcface_matches_hand_written_reference():
    torch.manual_seed(0)
    head = ArcFace(in_dim=6, num_classes=5, scale=30.0, margin_rad=0.5)
    emb, targets = torch.randn(8, 6), torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    loss = F.cross_entropy(head(emb, targets), targets)
    expected = reference_arcface_loss(emb.numpy(), head.weight.detach().numpy(), targets.numpy(), 30.0, 0.5)
    assert math.isclose(loss.item(), expected, rel_tol=1e-4)


def test_arcface_fallback_past_pi_minus_margin():
    head = ArcFace(in_dim=2, num_classes=2, scale=1.0, margin_rad=0.5)
    cos = torch.tensor([-0.99])  # theta ~ 3.0 rad > pi - 0.5
    out = head.apply_margin(cos, torch.tensor([0.5]))
    assert math.isclose(float(out), -0.99 - math.sin(math.pi - 0.5) * 0.5, rel_tol=1e-5)


def test_cosface_subtracts_margin_only_on_target():
    head = CosFace(in_dim=2, num_classes=2, scale=10.0, margin_rad=0.25)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    logits = head(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    assert torch.allclose(logits, torch.tensor([[10.0 * (1 - 0.25), 0.0]]), atol=1e-5)


def test_subcenters_take_the_closest_center():
    head = CosFace(in_dim=2, num_classes=2, scale=1.0, margin_rad=0.0, subcenters=2)
    with torch.no_grad():  # class 0: centers (1,0) and (0,1); class 1: (-1,0) twice
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [-1.0, 0.0]]))
    cos = head.cosine(torch.tensor([[0.0, 2.0]]))
    assert torch.allclose(cos, torch.tensor([[1.0, 0.0]]), atol=1e-6)


def test_margin_schedule_and_adaptive_margins():
    cfg = HeadCfg(margin_rad=0.5, margin_schedule={"start": 0.1, "step": 0.1, "max": 0.35})
    assert [round(margin_at_epoch(cfg, e), 6) for e in range(5)] == [0.1, 0.2, 0.3, 0.35, 0.35]
    assert margin_at_epoch(HeadCfg(margin_rad=0.4), 7) == 0.4
    margins = adaptive_margins([1, 16, 10000], a=0.45, b=0.05)
    assert margins[0] == pytest.approx(0.5) and margins[2] == pytest.approx(0.05)
    assert margins[0] > margins[1] > margins[2]
    head = build_head(HeadCfg(adaptive_margin={"a": 0.45, "b": 0.05}), 4, [1, 16, 10000])
    assert torch.allclose(head.margins_for(torch.tensor([2, 0])), torch.tensor([0.05, 0.5]))


@pytest.mark.parametrize("head_type", ["arcface", "cosface"])
def test_heads_train_under_bf16_autocast_in_float32(head_type):
    """Under autocast the neck's output is bf16; the head computes in float32 and equals the fp32 head."""
    torch.manual_seed(0)
    neck = torch.nn.Linear(12, 8)
    head = build_head(HeadCfg(type=head_type, subcenters=2), 8, [3, 4, 5, 6])
    images, targets = torch.randn(6, 12), torch.tensor([0, 1, 2, 3, 0, 1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb = neck(images)
        assert emb.dtype == torch.bfloat16
        logits = head(emb, targets)
    assert logits.dtype == torch.float32
    F.cross_entropy(logits, targets).backward()
    assert head.weight.grad is not None and torch.isfinite(head.weight.grad).all()
    assert torch.allclose(logits, head(emb.detach().float(), targets), atol=1e-5)
