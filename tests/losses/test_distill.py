import math

import pytest
import torch
import torch.nn.functional as F

from ensemble.config.schema import DistillLossCfg
from ensemble.losses.distill import cosine_loss, distill_terms, rkd_distance_loss, similarity_kl_loss, smooth_l1_loss


def test_cosine_loss_hand_values():
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    same = torch.tensor([[3.0, 0.0], [0.0, 0.5]])  # same directions, any length
    assert cosine_loss(same, target).item() == pytest.approx(0.0, abs=1e-7)
    orth = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    assert cosine_loss(orth, target).item() == pytest.approx(1.0)
    opposite = -target
    assert cosine_loss(opposite, target).item() == pytest.approx(2.0)


def test_smooth_l1_is_quadratic_below_beta_and_linear_above():
    target = torch.tensor([[1.0, 0.0]])
    # student normalised to (cos t, sin t); per-dim errors below beta=1 -> 0.5 d^2 / beta
    t = 0.1
    student = torch.tensor([[math.cos(t), math.sin(t)]])
    d = torch.tensor([math.cos(t) - 1.0, math.sin(t)])
    assert smooth_l1_loss(student, target, beta=1.0).item() == pytest.approx(float((0.5 * d ** 2).sum()), rel=1e-5)
    # with a tiny beta the loss is |d| - beta/2 per dim
    beta = 1e-3
    assert smooth_l1_loss(student, target, beta).item() == pytest.approx(float((d.abs() - beta / 2).sum()), rel=1e-4)


def test_rkd_is_zero_for_a_scaled_copy_and_positive_for_a_different_geometry():
    target = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), dim=-1)
    assert rkd_distance_loss(target * 7.0, target).item() == pytest.approx(0.0, abs=1e-6)
    # student puts rows 0 and 1 together: distances (0, d, d) vs the teacher's equilateral triangle
    squashed = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), dim=-1)
    # normalised distances: teacher all 1; student 0 for the pair (x2 in the matrix), 1.5 for the others
    expected = (2 * 0.5 * 1.0 ** 2 + 4 * 0.5 * 0.5 ** 2) / 6
    assert rkd_distance_loss(squashed, target).item() == pytest.approx(expected, rel=1e-5)


def test_similarity_kl_zero_for_identical_and_matches_hand_kl():
    target = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=-1)
    assert similarity_kl_loss(target, target, 0.1).item() == pytest.approx(0.0, abs=1e-6)
    student = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    tau = 0.5
    t_sim = target @ target.T
    kl = 0.0
    for i in range(3):
        others = [j for j in range(3) if j != i]
        p = torch.softmax(t_sim[i, others] / tau, 0)
        q = torch.softmax(torch.ones(2) / tau, 0)  # the student sees every pair at cosine 1
        kl += float((p * (p / q).log()).sum())
    assert similarity_kl_loss(student, target, tau).item() == pytest.approx(kl / 3, rel=1e-5)


def test_distill_terms_weights_and_switches():
    target = F.normalize(torch.randn(6, 4, generator=torch.Generator().manual_seed(0)), dim=-1)
    student = target + 0.3 * torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    one = distill_terms(student, target, DistillLossCfg(cosine=1, smooth_l1=0, rkd=0, sim_kl=0))
    three = distill_terms(student, target, DistillLossCfg(cosine=3, smooth_l1=0, rkd=0, sim_kl=0))
    assert set(one) == {"cosine"} and three["cosine"].item() == pytest.approx(3 * one["cosine"].item())
    every = distill_terms(student, target, DistillLossCfg(sim_kl=1.0))
    assert set(every) == {"cosine", "smooth_l1", "rkd", "sim_kl"} and all(v.item() > 0 for v in every.values())
    # a batch of one has no pairs: relational terms are 0, not NaN
    single = distill_terms(student[:1], target[:1], DistillLossCfg(sim_kl=1.0))
    assert single["rkd"].item() == 0.0 and single["sim_kl"].item() == 0.0


def test_sim_kl_takes_its_teacher_from_the_relation_rows_when_given():
    gen = torch.Generator().manual_seed(0)
    target = F.normalize(torch.randn(5, 4, generator=gen), dim=-1)
    student = target + 0.3 * torch.randn(5, 4, generator=gen)
    concat = torch.randn(5, 12, generator=gen) * 3.0  # wider and not unit length: normalised for the cosines
    cfg = DistillLossCfg(sim_kl=2.0, sim_kl_teacher="concat")
    terms = distill_terms(student, target, cfg, relation=concat)
    assert terms["sim_kl"].item() == pytest.approx(2.0 * similarity_kl_loss(student, F.normalize(concat, dim=-1),
                                                                          0.05).item(), rel=1e-5)
    assert terms["sim_kl"].item() != pytest.approx(distill_terms(student, target, cfg)["sim_kl"].item(), rel=1e-3)
    # the point-wise terms still regress the fused target
    assert terms["cosine"].item() == pytest.approx(distill_terms(student, target, cfg)["cosine"].item())
