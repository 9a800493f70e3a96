import logging

import numpy as np
import pytest
import torch

from ensemble.config.load import load_student_cfg
from ensemble.data.manifest import read_manifest
from ensemble.models.member import build_member_model
from ensemble.train import warm_start
from ensemble.train.warm_start import fit_neck
from tests.conftest import STUDENT_SETS, tiny_recipe


@pytest.fixture
def neck_case(distilled_workspace):
    folder = distilled_workspace.parent
    cfg = load_student_cfg(tiny_recipe(folder, folder / "data.yaml", name="neckfit"), STUDENT_SETS)
    train = read_manifest(folder / "train.csv")
    teacher = np.load(distilled_workspace / "students" / "stu" / "targets.npy")
    return cfg, train, teacher


def _fitted(cfg, train, teacher, cache_dir):
    torch.manual_seed(cfg.seed)  # the same starting backbone each call
    model = build_member_model(cfg)
    fit_neck(model, train.paths, teacher, cfg, cache_dir, train.sha1)
    return model.neck[-1].weight.detach().clone(), model.neck[-1].bias.detach().clone()


def _no_extraction(*args, **kwargs):
    raise AssertionError("the neck fit embedded the images again instead of reusing the cached fit")


def test_a_second_run_with_the_same_start_reuses_the_fit_without_embedding(neck_case, tmp_path, monkeypatch):
    cfg, train, teacher = neck_case
    weight, bias = _fitted(cfg, train, teacher, tmp_path)
    assert weight.shape == (8, 16) and weight.abs().sum() > 0
    monkeypatch.setattr(warm_start, "extract_many", _no_extraction)
    again_w, again_b = _fitted(cfg, train, teacher, tmp_path)
    assert torch.equal(again_w, weight) and torch.equal(again_b, bias)
    with pytest.raises(AssertionError, match="embedded the images again"):  # another ridge is another fit
        _fitted(cfg.model_copy(update={"neck_init_ridge": 1.0}), train, teacher, tmp_path)
    with pytest.raises(AssertionError, match="embedded the images again"):  # other targets too
        _fitted(cfg, train, teacher[::-1].copy(), tmp_path)
    gem = cfg.model_copy(update={"backbone": cfg.backbone.model_copy(update={"gem_p": 3.0})})
    with pytest.raises(AssertionError, match="embedded the images again"):  # other pooling, same weights
        _fitted(gem, train, teacher, tmp_path)


def test_a_corrupt_cached_fit_is_ignored_and_fitted_again(neck_case, tmp_path, caplog):
    cfg, train, teacher = neck_case
    weight, _ = _fitted(cfg, train, teacher, tmp_path)
    entry = next((tmp_path / "_neck_init").glob("*.npz"))
    entry.write_bytes(entry.read_bytes()[:-8] + b"garbage!")
    with caplog.at_level(logging.WARNING, logger="ensemble"):
        again, _ = _fitted(cfg, train, teacher, tmp_path)
    assert "does not match its checksum); fitting again" in caplog.text
    assert torch.allclose(again, weight, atol=1e-6)
