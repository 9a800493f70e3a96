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
