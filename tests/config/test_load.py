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
    with pytest.raises(EnsError, match=r"missing.yaml: file not found"):
        load_member_cfg(tmp_path / "missing.yaml")


def test_set_overrides_parse_yaml_values(tmp_path):
    cfg = load_member_cfg(recipe(tmp_path, ""), ["optim.lr=2e-3", "neck.dims=[32,16]", "backbone.image_size=280"])
    assert cfg.optim.lr == 2e-3 and cfg.neck.dims == [32, 16] and cfg.backbone.image_size == 280
    with pytest.raises(EnsError, match="expected key.sub=value"):
        apply_overrides({}, ["optim.lr"])


def test_data_config_resolves_and_checks_manifests(tmp_path):
    (tmp_path / "t.csv").write_text("path,label\n")
    (tmp_path / "d.yaml").write_text("train: t.csv\nquery: q.csv\n")
    with pytest.raises(EnsError, match=r"d.yaml: key 'query': manifest not found"):
        load_data_cfg(tmp_path / "d.yaml")
    (tmp_path / "d.yaml").write_text("train: t.csv\n")
    assert load_data_cfg(tmp_path / "d.yaml").train == (tmp_path / "t.csv").resolve()
