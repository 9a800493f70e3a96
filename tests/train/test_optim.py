import pytest
import torch

from ensemble.config.schema import BackboneCfg, OptimCfg, StageCfg
from ensemble.models.backbone import build_backbone
from ensemble.train.optim import build_optimizer, lr_factor, param_groups
from tests.conftest import TINY_VIT


def parts():
    return {"backbone": build_backbone(BackboneCfg(arch=TINY_VIT)), "head": torch.nn.Linear(4, 2)}


def test_backbone_lr_is_scaled_and_bias_has_no_decay():
    groups = param_groups(parts(), {"backbone", "head"}, OptimCfg(lr=1e-3, backbone_lr_scale=0.1, weight_decay=0.05),
                          StageCfg(train=["all"], epochs=1))
    lrs = {(g["tag"], g["weight_decay"]): g["lr"] for g in groups}
    assert lrs[("backbone", 0.05)] == pytest.approx(1e-4) and lrs[("head", 0.0)] == pytest.approx(1e-3)
    head_bias = [g for g in groups if g["tag"] == "head" and g["weight_decay"] == 0.0][0]
    assert [p.shape for p in head_bias["params"]] == [torch.Size([2])]


def test_stage_overrides_and_only_trainable_parts():
    groups = param_groups(parts(), {"head"}, OptimCfg(lr=1e-3), StageCfg(train=["head"], epochs=1, lr=5e-2))
    assert {g["tag"] for g in groups} == {"head"} and all(g["lr"] == 5e-2 for g in groups)


def test_layer_decay_scales_by_depth():
    cfg = OptimCfg(lr=1.0, backbone_lr_scale=1.0, layer_decay=0.5)
    groups = param_groups(parts(), {"backbone"}, cfg, StageCfg(train=["backbone"], epochs=1))
    by_tag = {g["tag"]: g["lr"] for g in groups}
    assert by_tag == {"backbone.0": 0.125, "backbone.1": 0.25, "backbone.2": 0.5, "backbone.3": 1.0}
    assert isinstance(build_optimizer(groups, OptimCfg(name="sgd")), torch.optim.SGD)


def test_warmup_then_cosine():
    assert [lr_factor(s, 2, 10, "cosine") for s in (0, 1)] == [0.5, 1.0]
    assert lr_factor(2, 2, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(6, 2, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(10, 2, 10, "cosine") == pytest.approx(0.0)
    assert lr_factor(9, 2, 10, "constant") == 1.0
