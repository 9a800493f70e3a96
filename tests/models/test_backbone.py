import open_clip
import pytest
import timm
import torch

from ensemble.config.load import load_member_cfg
from ensemble.config.schema import BackboneCfg, NeckCfg
from ensemble.errors import EnsError
from ensemble.models.backbone import build_backbone
from ensemble.models.member import build_member_model
from ensemble.models.neck import build_neck
from tests.conftest import MOBILENET_V1, TINY_VIT, need_shared


def test_open_clip_tower_image_size_and_drop_proj():
    bb = build_backbone(BackboneCfg(arch=TINY_VIT, image_size=48))
    assert bb.tower.positional_embedding.shape == (6 * 6 + 1, 32)
    assert bb.out_dim == 16 and bb(torch.zeros(2, 3, 48, 48)).shape == (2, 16)
    assert bb.mean == pytest.approx(open_clip.OPENAI_DATASET_MEAN)
    no_proj = build_backbone(BackboneCfg(arch=TINY_VIT, drop_proj=True, grad_checkpointing=True))
    assert no_proj.out_dim == 32 and no_proj(torch.zeros(1, 3, 32, 32)).shape == (1, 32)
    assert no_proj.tower.transformer.grad_checkpointing is True


def test_open_clip_local_file_loads_and_resamples_pos_embed(tmp_path):
    torch.manual_seed(1)
    clip = open_clip.create_model(TINY_VIT)
    path = tmp_path / "tiny.pt"
    torch.save(clip.state_dict(), path)
    bb = build_backbone(BackboneCfg(arch=TINY_VIT, pretrained=str(path), image_size=48))
    assert torch.equal(bb.tower.conv1.weight, clip.visual.conv1.weight)
    assert bb.tower.positional_embedding.shape == (37, 32)
    assert torch.equal(bb.tower.positional_embedding[0], clip.visual.positional_embedding[0])  # class token kept


def test_layer_ids_for_open_clip_vit():
    bb = build_backbone(BackboneCfg(arch=TINY_VIT))
    ids, depth = bb.layer_ids()
    assert depth == 4
    assert ids["conv1.weight"] == 0 and ids["transformer.resblocks.1.mlp.c_fc.weight"] == 2 and ids["ln_post.weight"] == 3


def test_timm_local_weights_match_the_documented_loading():
    need_shared(MOBILENET_V1)
    cfg = BackboneCfg(source="timm", arch="mobilenetv1_100", pretrained=str(MOBILENET_V1),
                      model_kwargs={"act_layer": "relu6", "pad_type": "same"}, freeze_bn=True)
    bb = build_backbone(cfg)
    ref = timm.create_model("mobilenetv1_100", pretrained=True, num_classes=0, act_layer="relu6", pad_type="same",
                            pretrained_cfg_overlay=dict(file=str(MOBILENET_V1), num_classes=0)).eval()
    x = torch.randn(2, 3, 64, 64)
    bb.train()  # frozen BN: train mode must not switch BatchNorm to batch statistics
    assert torch.allclose(bb(x), ref(x), atol=1e-5)
    assert bb.out_dim == 1024 and bb.mean == pytest.approx((0.50196,) * 3, abs=1e-4)


def test_a_damaged_weights_sidecar_is_one_line_error(tmp_path):
    need_shared(MOBILENET_V1)
    weights = tmp_path / "w.safetensors"
    weights.symlink_to(MOBILENET_V1)
    cfg = BackboneCfg(source="timm", arch="mobilenetv1_100", pretrained=str(weights))
    for damaged, message in (("{", r"w.json: not valid JSON"),
                             ('{"pretrained_cfg_overlay": 3}', "expected a JSON")):
        (tmp_path / "w.json").write_text(damaged)
        with pytest.raises(EnsError, match=message):
            build_backbone(cfg)


def test_timm_vit_image_size_and_layer_ids():
    bb = build_backbone(BackboneCfg(source="timm", arch="test_vit", image_size=64))
    assert bb.image_size == 64 and bb(torch.zeros(1, 3, 64, 64)).shape == (1, bb.out_dim)
    ids, depth = bb.layer_ids()
    assert depth > 2 and min(ids.values()) == 0


def test_unknown_architectures_are_one_line_errors():
    with pytest.raises(EnsError, match="backbone.arch: unknown open_clip model 'ViT-Q-99'"):
        build_backbone(BackboneCfg(arch="ViT-Q-99"))
    with pytest.raises(EnsError, match="backbone.arch: unknown timm model 'nonet'"):
        build_backbone(BackboneCfg(source="timm", arch="nonet"))


def test_meta_build_loads_nothing_and_counts_vit_h():
    bb = build_backbone(BackboneCfg(arch="ViT-H-14", pretrained="laion2b_s32b_b79k", image_size=280), load_weights=False,
                        device="meta")
    assert sum(p.numel() for p in bb.parameters()) == 632_261_120  # image tower incl. proj
    assert bb.tower.positional_embedding.shape == (401, 1280) and bb.out_dim == 1024


def test_neck_layers():
    neck = build_neck(NeckCfg(dims=[32, 8], dropout=0.1, batchnorm=True), 16)
    names = [type(m).__name__ for m in neck]
    assert names == ["Dropout", "Linear", "BatchNorm1d", "PReLU", "Dropout", "Linear", "BatchNorm1d"]
    assert neck.eval()(torch.zeros(3, 16)).shape == (3, 8)


def test_gem_pooling_is_the_average_at_p1_and_above_it_for_larger_p():
    torch.manual_seed(0)  # MobileNet-v1 ends in a ReLU, like every tower GeM is meant for: no negative activations
    avg = build_backbone(BackboneCfg(source="timm", arch="mobilenetv1_100")).eval()
    gem = build_backbone(BackboneCfg(source="timm", arch="mobilenetv1_100", gem_p=1)).eval()
    gem.load_state_dict(avg.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(gem(x), avg(x), atol=1e-5)  # p = 1: the tower's own average pool
        gem.gem_p = 3.0
        pooled, fmap = gem(x), gem.tower.forward_features(x)
    assert pooled.shape == (2, gem.out_dim)
    want = fmap.clamp(min=1e-6).pow(3).mean((2, 3)).pow(1 / 3)
    assert torch.allclose(pooled, want, atol=1e-5) and (pooled >= avg(x).detach() - 1e-5).all()
    assert gem.describe()["pool"] == "gem p=3" and avg.describe()["pool"] == "the tower's own"


def test_gem_pooling_refuses_towers_without_a_feature_map(tmp_path):
    with pytest.raises(EnsError, match="backbone.gem_p: test_vit ends in tokens, not a feature map"):
        build_backbone(BackboneCfg(source="timm", arch="test_vit", gem_p=3))
    (tmp_path / "data.yaml").write_text("{}\n")
    vit = tmp_path / "vit.yaml"
    vit.write_text("data: data.yaml\nbackbone: {source: timm, arch: test_vit}\neval: {gem_p: 3}\n")
    with pytest.raises(EnsError, match="eval.gem_p: test_vit ends in tokens, not a feature map"):
        build_member_model(load_member_cfg(vit))  # before training, not at the first load of its model file
    (tmp_path / "m.yaml").write_text("data: data.yaml\nbackbone: {arch: ViT-B-32, gem_p: 3}\n")
    with pytest.raises(EnsError, match="m.yaml: key 'backbone'.*gem_p pools a convolutional feature map: "
                                       "source timm only, got open_clip"):
        load_member_cfg(tmp_path / "m.yaml")
