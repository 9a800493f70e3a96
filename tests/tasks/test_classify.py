"""Per-domain softmax: a sample competes only with its own domain's classes."""

import torch
import torch.nn.functional as F

from ensemble.config.schema import HeadCfg
from ensemble.losses.margin import build_head
from ensemble.models.member import EmbeddingModel
from ensemble.tasks.classify import ClassifyTask


class Flat(torch.nn.Module):
    out_dim = 6

    def forward(self, x):
        return x.flatten(1)


def task(class_domains):
    torch.manual_seed(0)
    model = EmbeddingModel(Flat(), torch.nn.Sequential(torch.nn.Linear(6, 4)))
    cfg = HeadCfg(type="cosface", scale=10.0, margin_rad=0.2)
    out = ClassifyTask(model, build_head(cfg, 4, [2, 2, 2, 2, 2]), cfg, class_domains)
    out.set_trainable(["all"])
    return out


def test_per_domain_loss_is_the_softmax_over_the_own_domains_classes():
    batch = {"images": torch.randn(4, 1, 2, 3), "targets": torch.tensor([0, 1, 3, 4])}
    domains = torch.tensor([0, 0, 1, 1, 1])  # classes 0-1: domain 0; classes 2-4: domain 1
    shared, split = task(None), task(domains)
    logits = shared.head(shared.model(batch["images"]), batch["targets"])
    by_hand = torch.stack([F.cross_entropy(logits[i:i + 1, cols], torch.tensor([t - cols[0]]))
                           for i, (t, cols) in enumerate([(0, [0, 1]), (1, [0, 1]), (3, [2, 3, 4]), (4, [2, 3, 4])])])
    assert torch.allclose(split.loss(batch), by_hand.mean(), atol=1e-6)
    assert not torch.allclose(shared.loss(batch), by_hand.mean(), atol=1e-3)  # one softmax differs
    split.loss(batch).backward()
    weights = split.head.weight.grad.reshape(5, -1)
    assert weights[2].abs().sum() > 0  # a domain-1 class no sample targets still learns from domain 1's samples
    one = {"images": batch["images"][:2], "targets": torch.tensor([0, 1])}
    split.zero_grad()
    split.loss(one).backward()
    assert split.head.weight.grad.reshape(5, -1)[2:].abs().sum() == 0  # domain-0 samples never touch domain 1


class Scaled(torch.nn.Module):
    """A learnable 'backbone' with one weight: features = x.flatten(1) * w."""

    out_dim = 6

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(6))

    def forward(self, x):
        return x.flatten(1) * self.w


def test_feature_kd_adds_the_cosine_distance_to_the_frozen_start_only_while_the_backbone_learns():
    import copy

    torch.manual_seed(0)
    model = EmbeddingModel(Scaled(), torch.nn.Sequential(torch.nn.Linear(6, 4)))
    cfg = HeadCfg(type="cosface", scale=10.0, margin_rad=0.2)
    kd = ClassifyTask(model, build_head(cfg, 4, [2, 2]), cfg, None, copy.deepcopy(model.backbone), feature_kd=2.0)
    plain = ClassifyTask(model, kd.head, cfg)
    batch = {"images": torch.randn(3, 1, 2, 3), "targets": torch.tensor([0, 1, 0])}
    with torch.no_grad():
        model.backbone.w.mul_(torch.tensor([1.0, -1.0, 2.0, 1.0, 0.5, 1.0]))  # the backbone has moved
    kd.set_trainable(["all"]), plain.set_trainable(["all"])
    x = batch["images"].flatten(1)
    by_hand = 2.0 * (1 - F.cosine_similarity(model.backbone(batch["images"]), x, dim=-1)).mean()
    assert torch.allclose(kd.loss(batch) - plain.loss(batch), by_hand, atol=1e-6) and by_hand > 0.1
    assert kd.last_terms["feature_kd"] == float(by_hand.detach())
    kd.set_trainable(["neck", "head"])  # frozen backbone: nothing to retain, no extra forward
    plain.set_trainable(["neck", "head"])
    assert torch.allclose(kd.loss(batch), plain.loss(batch)) and "feature_kd" not in kd.last_terms
    # the frozen start is neither checkpointed nor trained, yet follows the task's device/dtype moves
    assert not any(k.startswith("_reference") for k in kd.state_dict())
    assert all(p is not kd._reference.w for p in kd.parameters())
    kd.double()
    assert kd._reference.w.dtype == torch.float64 and not kd._reference.training
