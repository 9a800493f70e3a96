import json

import pytest

from ensemble.config.load import load_member_cfg
from ensemble.errors import EnsError
from ensemble.train.member import train_member
from ensemble.train.rundir import run_lock
from ensemble.workspace import Workspace
from tests.conftest import tiny_recipe


def test_a_second_run_of_one_recipe_is_refused_while_the_first_holds_the_folder(tmp_path, coil_data):
    cfg = load_member_cfg(tiny_recipe(tmp_path, coil_data, "eval: {enabled: false}"))
    run_dir = Workspace(tmp_path / "runs").member_dir(cfg.name)
    with run_lock(run_dir):  # what a concurrently running `ens train-member` holds
        with pytest.raises(EnsError, match=r"members/tiny: in use by another ens process \(pid \d+\)"):
            train_member(cfg, tmp_path / "runs")
    assert not (run_dir / "config.yaml").exists() and not (run_dir / "last.pt").exists()
    train_member(cfg, tmp_path / "runs")  # released: the same command now trains
    assert (run_dir / "best.pt").exists()


def test_a_refused_recipe_leaves_the_run_folder_as_it_was(tmp_path, coil_data):
    recipe = tiny_recipe(tmp_path, coil_data, "eval: {enabled: false}")
    train_member(load_member_cfg(recipe), tmp_path / "runs")
    run_dir = Workspace(tmp_path / "runs").member_dir("tiny")
    (run_dir / "best.pt").unlink()  # as if killed before the end: last.pt remains to resume from
    before = (run_dir / "config.yaml").read_text()
    with pytest.raises(EnsError, match=r"last.pt: checkpoint was written by a different recipe \(optim.lr"):
        train_member(load_member_cfg(recipe, ["optim.lr=0.5"]), tmp_path / "runs")
    assert (run_dir / "config.yaml").read_text() == before


def test_eval_json_is_recomputed_when_eval_settings_change(tmp_path, coil_data):
    recipe = tiny_recipe(tmp_path, coil_data, "stages: [{train: [neck, head], epochs: 1}]")
    first = train_member(load_member_cfg(recipe), tmp_path / "runs")
    again = train_member(load_member_cfg(recipe), tmp_path / "runs")
    assert again == first  # unchanged settings: the stored result
    other = train_member(load_member_cfg(recipe, ["eval.flip_tta=false"]), tmp_path / "runs")
    assert first["flip_tta"] is True and other["flip_tta"] is False
    stored = json.loads((Workspace(tmp_path / "runs").member_dir("tiny") / "eval.json").read_text())
    assert stored["eval_key"]["eval"]["flip_tta"] is False and stored["trained"] == other["trained"]
    # the sizes it embeds at are the model file's, for every consumer: another size needs another name
    with pytest.raises(EnsError, match=r"member tiny: its model file embeds with eval.image_size None, the recipe "
                                       r"asks for 48; use another name"):
        train_member(load_member_cfg(recipe, ["eval.image_size=48"]), tmp_path / "runs")
    with pytest.raises(EnsError, match=r"eval.image_size 48 px, but this ViT takes only its training size 32 px"):
        train_member(load_member_cfg(recipe, ["eval.image_size=48", "name=tiny48"]), tmp_path / "runs")


def test_an_option_added_later_at_its_off_default_keeps_older_runs_usable():
    from pathlib import Path

    from ensemble.train.loop import check_same_recipe

    old = {"backbone": {"arch": "a", "wise_ft": None}, "optim": {"lr": 0.1}}
    new = {"backbone": {"arch": "a", "wise_ft": None, "feature_kd": None}, "optim": {"lr": 0.1},
           "loss": {"members": 0.0}, "head": {"per_domain": False}}
    check_same_recipe(Path("best.pt"), old, new)  # the new keys are off: the same recipe
    with pytest.raises(EnsError, match=r"different recipe \(backbone.feature_kd: None -> 10\)"):
        check_same_recipe(Path("best.pt"), old, {**new, "backbone": {**new["backbone"], "feature_kd": 10}})
    with pytest.raises(EnsError, match=r"different recipe \(backbone.wise_ft: None -> 0.5\)"):
        check_same_recipe(Path("best.pt"), old, {**old, "backbone": {"arch": "a", "wise_ft": 0.5}})


@pytest.mark.parametrize("damaged", ["{", "[]", '"text"'])
def test_a_damaged_stored_result_is_computed_again(tmp_path, damaged):
    from ensemble.train.rundir import cached_result

    path = tmp_path / "eval.json"
    path.write_text(damaged)
    assert cached_result(path, {"k": 1}, lambda: {"mP@5": 0.5}) == {"mP@5": 0.5, "eval_key": {"k": 1}}
    assert cached_result(path, {"k": 1}, lambda: {"mP@5": 0.0})["mP@5"] == 0.5  # and stored: reused next time
