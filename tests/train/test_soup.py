import logging

import pytest
import torch

from ensemble.checkpoint import load_checkpoint, save_checkpoint
from ensemble.commands.show import show
from ensemble.config.load import load_student_cfg
from ensemble.data.manifest import read_manifest
from ensemble.errors import EnsError
from ensemble.train.student import distill
from ensemble.workspace import Workspace, resolve_model
from tests.conftest import STUDENT_SETS, tiny_recipe

SOUP_SETS = [*STUDENT_SETS, "backbone.init_from=vit_a"]  # one start for every seed: vit_a's backbone, lstsq neck


def soup_cfg(workspace, name: str, sets: list[str]):
    folder = workspace.parent
    return load_student_cfg(tiny_recipe(folder, folder / "data.yaml", name=name), [*SOUP_SETS, *sets])


def weights(workspace, name: str) -> dict:
    return load_checkpoint(Workspace(workspace).student_dir(name) / "best.pt", kind="student_model")


def neck_key(payload: dict, kind: str) -> str:
    """The state-dict key of the neck's Linear `kind` (weight / bias)."""
    return next(k for k in payload["model"] if k.startswith("neck.") and k.endswith(f".{kind}"))


def test_a_soup_is_the_mean_of_its_seeds_runs_and_embeds_as_one_student(distilled_workspace, caplog):
    with caplog.at_level(logging.INFO, logger="ensemble"):
        distill(soup_cfg(distilled_workspace, "soup", ["soup_seeds=[1]"]), distilled_workspace)
    assert caplog.text.count("neck init: reusing the fit") == 1  # seed 1 starts from seed 0's neck fit
    soup, one, two = (weights(distilled_workspace, n) for n in ("soup", "soup_seed0", "soup_seed1"))
    key = neck_key(one, "weight")
    assert not torch.allclose(one["model"][key], two["model"][key])  # the seeds' runs differ
    for name, value in soup["model"].items():
        if value.is_floating_point():
            assert torch.allclose(value, (one["model"][name] + two["model"][name]) / 2, atol=1e-6), name
    assert [(i["name"], i["seed"]) for i in soup["soup"]] == [("soup_seed0", 0), ("soup_seed1", 1)]
    assert soup["recipe_key"]["soup_seeds"] == [1] and one["recipe_key"]["seed"] == 0
    assert [i["seed"] for i in show("student:soup", distilled_workspace)["soup"]] == [0, 1]  # `ens show` names them
    query = read_manifest(distilled_workspace.parent / "query.csv")
    feats = resolve_model("student:soup", distilled_workspace).embed(query, Workspace(distilled_workspace), workers=0)
    assert feats.shape == (4, 8)


def test_a_soup_is_kept_until_an_ingredient_changes(distilled_workspace):
    cfg = soup_cfg(distilled_workspace, "kept", ["soup_seeds=[2]"])
    distill(cfg, distilled_workspace)
    path = Workspace(distilled_workspace).student_dir("kept") / "best.pt"
    first = path.stat().st_mtime_ns
    distill(cfg, distilled_workspace)
    assert path.stat().st_mtime_ns == first  # reused: nothing retrained or rewritten
    changed = weights(distilled_workspace, "kept_seed2")
    bias = neck_key(changed, "bias")
    changed["model"][bias] = changed["model"][bias] + 1.0
    save_checkpoint(Workspace(distilled_workspace).student_dir("kept_seed2") / "best.pt", changed)
    distill(cfg, distilled_workspace)
    expected = (weights(distilled_workspace, "kept_seed0")["model"][bias] + changed["model"][bias]) / 2
    assert torch.allclose(weights(distilled_workspace, "kept")["model"][bias], expected, atol=1e-6)


def test_a_plain_students_folder_refuses_a_soup_before_training(distilled_workspace):
    cfg = soup_cfg(distilled_workspace, "stu", ["soup_seeds=[1]"])  # `stu`: the fixture's one-seed student
    with pytest.raises(EnsError, match=r"different recipe \(.*soup_seeds: \[\] -> \[1\]"):
        distill(cfg, distilled_workspace)
    assert not Workspace(distilled_workspace).student_dir("stu_seed0").exists()


@pytest.mark.parametrize("sets, message", [
    (["soup_seeds=[0]"], r"soup_seeds: expected seeds other than `seed` \(0\), each once; got \[0\]"),
    (["soup_seeds=[1, 1]"], r"soup_seeds: expected seeds other than `seed` \(0\), each once"),
    (["soup_seeds=[1]", "backbone.init_from=null"], "soup_seeds: the runs averaged must share their starting"),
    (["soup_seeds=[1]", "neck_init=random"], "needs neck_init: lstsq"),
])
def test_a_soup_recipe_that_cannot_average_is_refused_on_load(tmp_path, coil_data, sets, message):
    recipe = tiny_recipe(tmp_path, coil_data, name="s")
    with pytest.raises(EnsError, match=message):
        load_student_cfg(recipe, [*SOUP_SETS, *sets])
