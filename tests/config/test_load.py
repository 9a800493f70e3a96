import re

import pytest

from ensemble.config.load import apply_overrides, load_data_cfg, load_member_cfg
from ensemble.errors import EnsError


def recipe(tmp_path, body: str):
    (tmp_path / "data.yaml").write_text("{}\n")
    path = tmp_path / "m.yaml"
    path.write_text("data: data.yaml\n" + body)
    return path


def test_defaults_fill_and_name_from_stem(tmp_path):
    cfg = load_member_cfg(recipe(tmp_path, "optim: {lr: 0.5}\n"))
    assert cfg.name == "m"
    assert cfg.optim.lr == 0.5
    assert cfg.optim.backbone_lr_scale == 1e-3  # from the defaults
    assert cfg.data == (tmp_path / "data.yaml").resolve()
    assert [s.train for s in cfg.stages] == [["neck", "head"], ["backbone"]]


def test_unknown_key_names_file_and_key(tmp_path):
    path = recipe(tmp_path, "optim: {lrx: 1}\n")
    with pytest.raises(EnsError, match=r"m.yaml: unknown key 'optim.lrx'"):
        load_member_cfg(path)


def test_wrong_type_and_negative_epochs(tmp_path):
    with pytest.raises(EnsError, match=r"key 'optim.batch_size'.*got 'many'"):
        load_member_cfg(recipe(tmp_path, "optim: {batch_size: many}\n"))
    with pytest.raises(EnsError, match=r"key 'stages.0.epochs'.*greater than 0.*got -1"):
        load_member_cfg(recipe(tmp_path, "stages: [{train: [head], epochs: -1}]\n"))


def test_missing_data_config_and_weights_file(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("data: nowhere.yaml\n")
    with pytest.raises(EnsError, match=r"key 'data': data config not found"):
        load_member_cfg(path)
    with pytest.raises(EnsError, match=r"backbone.pretrained: weights file not found"):
        load_member_cfg(recipe(tmp_path, "backbone: {pretrained: ./w.safetensors}\n"))
    with pytest.raises(EnsError, match=r"missing.yaml: YAML file not found"):
        load_member_cfg(tmp_path / "missing.yaml")
    with pytest.raises(EnsError, match=r"^\S+: is a folder, expected a YAML file$"):
        load_member_cfg(tmp_path)


def test_set_overrides_parse_yaml_values(tmp_path):
    cfg = load_member_cfg(recipe(tmp_path, ""), ["optim.lr=2e-3", "neck.dims=[32,16]", "backbone.image_size=280"])
    assert cfg.optim.lr == 2e-3 and cfg.neck.dims == [32, 16] and cfg.backbone.image_size == 280
    with pytest.raises(EnsError, match="expected key.sub=value"):
        apply_overrides({}, ["optim.lr"])
    for item in ("=1", "optim..lr=1", "optim.=1", " .lr=1"):  # an empty key name: not a key '<root>' or 'optim.'
        with pytest.raises(EnsError, match=rf"^--set '{re.escape(item)}': expected key.sub=value$"):
            apply_overrides({}, [item])


def test_data_config_resolves_and_checks_manifests(tmp_path):
    (tmp_path / "t.csv").write_text("path,label\n")
    (tmp_path / "d.yaml").write_text("train: t.csv\nquery: q.csv\n")
    with pytest.raises(EnsError, match=r"d.yaml: key 'query': \S+q.csv: manifest not found"):
        load_data_cfg(tmp_path / "d.yaml")
    (tmp_path / "d.yaml").write_text("train: t.csv\n")
    assert load_data_cfg(tmp_path / "d.yaml").train == (tmp_path / "t.csv").resolve()


def test_base_rebases_inherited_weights_path_from_any_folder(tmp_path):
    """A base's relative `pretrained` file means the same from a recipe in another folder."""
    weights = tmp_path / "w" / "net.safetensors"
    weights.parent.mkdir()
    from safetensors.torch import save_file
    import torch

    save_file({"a": torch.zeros(2)}, str(weights))
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "data.yaml").write_text("{}\n")
    (tmp_path / "base" / "b.yaml").write_text("data: data.yaml\nbackbone: {source: timm, arch: mobilenetv1_100, "
                                              "pretrained: ../w/net.safetensors}\n")
    (tmp_path / "deep" / "er").mkdir(parents=True)
    child = tmp_path / "deep" / "er" / "c.yaml"
    child.write_text("base: ../../base/b.yaml\nseed: 3\n")
    cfg = load_member_cfg(child)
    assert cfg.backbone.pretrained == str(weights.resolve()) and cfg.seed == 3


def test_fallback_never_replaces_the_architecture(tmp_path):
    path = recipe(tmp_path, "backbone: {source: timm, arch: mobilenetv1_100, pretrained: gone.safetensors,\n"
                            "           fallback: {arch: mobilenetv2_100.ra_in1k, pretrained: hub}}\n")
    with pytest.raises(EnsError, match=r"fallback would replace arch 'mobilenetv1_100' with 'mobilenetv2_100"):
        load_member_cfg(path)
    ok = recipe(tmp_path, "backbone: {source: timm, arch: mobilenetv1_100, pretrained: gone.safetensors,\n"
                          "           fallback: {arch: mobilenetv1_100.ra4_e3600_r224_in1k, pretrained: hub}}\n")
    assert load_member_cfg(ok).backbone.arch == "mobilenetv1_100.ra4_e3600_r224_in1k"


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"hello, not tensors", "not a valid safetensors file"),
    ("truncated", "not a valid safetensors file"),
])
def test_bad_weights_file_fails_at_load_with_one_line(tmp_path, content, message):
    path = tmp_path / "w.safetensors"
    if content == "truncated":
        from safetensors.torch import save_file
        import torch

        save_file({"a": torch.zeros(1000)}, str(path))
        path.write_bytes(path.read_bytes()[:500])
    else:
        path.write_bytes(content)
    with pytest.raises(EnsError, match=message):
        load_member_cfg(recipe(tmp_path, "backbone: {source: timm, arch: mobilenetv1_100, "
                                         "pretrained: w.safetensors}\n"))


def test_bad_values_fail_with_one_line(tmp_path):
    with pytest.raises(EnsError, match=r"key 'backbone.image_size': Input should be less than or equal to 1024"):
        load_member_cfg(recipe(tmp_path, "backbone: {image_size: 10000}\n"))
    with pytest.raises(EnsError, match=r"key 'name': String should match pattern"):
        load_member_cfg(recipe(tmp_path, "name: ../../x\n"))
    with pytest.raises(EnsError, match=r"--set 'optim=\{lr: \[': value is not valid YAML"):
        apply_overrides({}, ["optim={lr: ["])


@pytest.mark.parametrize("body", ["seed: -1", "seed: 4294967296"])
def test_a_seed_outside_the_generators_range_fails_at_load(tmp_path, body):
    """`--set seed=-1` trained until numpy's SeedSequence raised a traceback; 2**64 overflowed torch's."""
    with pytest.raises(EnsError, match=r"m.yaml: key 'seed': Input should be (greater than or equal to 0|less "
                                       r"than 4294967296)"):
        load_member_cfg(recipe(tmp_path, body + "\n"))
    assert load_member_cfg(recipe(tmp_path, "seed: 4294967295\n")).seed == 2**32 - 1


def test_base_merges_mappings_but_an_empty_mapping_clears():
    from ensemble.config.load import deep_merge

    base = {"backbone": {"arch": "a", "model_kwargs": {"act_layer": "relu6", "pad_type": "same"}}}
    kept = deep_merge(base, {"backbone": {"arch": "b", "model_kwargs": {"pad_type": ""}}})
    assert kept["backbone"] == {"arch": "b", "model_kwargs": {"act_layer": "relu6", "pad_type": ""}}
    cleared = deep_merge(base, {"backbone": {"model_kwargs": {}}})
    assert cleared["backbone"] == {"arch": "a", "model_kwargs": {}}


def test_shipped_lite0_member_builds_without_mobilenet_v1_kwargs():
    from pathlib import Path

    cfg = load_member_cfg(Path(__file__).resolve().parents[2] / "members" / "cpu" / "lite0_multi.yaml")
    assert cfg.backbone.arch == "tf_efficientnet_lite0" and cfg.backbone.model_kwargs == {}
    assert cfg.sampler.domain_alpha == 0.5 and cfg.backbone.image_size == 128


def test_an_ensemble_lists_each_member_once(tmp_path):
    """`--members a,a` fused a model with itself ('2 members in 1 groups'); a typo, refused naming it."""
    from ensemble.fuse.config import ensemble_cfg

    assert ensemble_cfg(tmp_path, members="a,b").members == ["a", "b"]
    with pytest.raises(EnsError, match=r"^ens fuse: key 'members': Value error, a listed twice; each member once"):
        ensemble_cfg(tmp_path, members="a,b,a")


def test_a_sampler_floor_above_its_cap_fails_at_load(tmp_path):
    path = recipe(tmp_path, "sampler: {max_per_class: 2}\n")  # oversample_to keeps its default, 20
    with pytest.raises(EnsError, match=r"^\S+m.yaml: key 'sampler': Value error, oversample_to 20 > max_per_class 2"):
        load_member_cfg(path)
    assert load_member_cfg(path, ["sampler.oversample_to=2"]).sampler.max_per_class == 2


def test_an_ensemble_refuses_whitening_without_pca_and_both_pca_flags(tmp_path):
    from ensemble.fuse.config import ensemble_cfg

    assert ensemble_cfg(tmp_path, members="a", no_pca=True).pca is None
    with pytest.raises(EnsError, match=r"^ens fuse: key '<root>': Value error, whiten: true needs `pca` dims"):
        ensemble_cfg(tmp_path, members="a", no_pca=True, whiten=True)
    with pytest.raises(EnsError, match=r"^--pca 32 and --no-pca: give one"):
        ensemble_cfg(tmp_path, members="a", pca=32, no_pca=True)


@pytest.mark.parametrize("head, key", [
    ("{margin_rad: 4}", "head.margin_rad"),  # radians: a typo for 0.4
    ("{margin_rad: -0.1}", "head.margin_rad"),
    ("{margin_schedule: {start: 0.1, step: -0.1, max: 0.5}}", "head.margin_schedule.step"),
    ("{margin_schedule: {start: 0.1, step: 0.1, max: 3}}", "head.margin_schedule.max"),
    ("{adaptive_margin: {a: -0.4, b: 0.05}}", "head.adaptive_margin.a"),
])
def test_margins_outside_zero_to_half_pi_fail_at_load(tmp_path, head, key):
    with pytest.raises(EnsError, match=rf"m.yaml: key '{key}': Input should be (greater|less) than or equal to"):
        load_member_cfg(recipe(tmp_path, f"head: {head}\n"))


def test_an_adaptive_margins_largest_value_is_bounded_too(tmp_path):
    with pytest.raises(EnsError, match=r"key 'head.adaptive_margin': Value error, a \+ b = 1.6: the rarest class"):
        load_member_cfg(recipe(tmp_path, "head: {adaptive_margin: {a: 1.5, b: 0.1}}\n"))
    assert load_member_cfg(recipe(tmp_path, "head: {margin_rad: 0.8}\n")).head.margin_rad == 0.8


def test_a_student_with_every_loss_term_off_fails_at_load(tmp_path):
    from ensemble.config.load import load_student_cfg

    path = recipe(tmp_path, "loss: {cosine: 0, smooth_l1: 0, rkd: 0}\n")
    with pytest.raises(EnsError, match=r"m.yaml: key 'loss': Value error, every term's weight is 0, nothing to train"):
        load_student_cfg(path)
    assert load_student_cfg(path, ["loss.rkd=0.5"]).loss.rkd == 0.5
