import json

import pytest
import torch

from ensemble.config.load import load_member_cfg
from ensemble.errors import EnsError
from ensemble.member import build_member_task, load_member_model, train_data, train_member
from ensemble.train.checkpoint import load_checkpoint
from ensemble.train.loop import Trainer
from tests.conftest import tiny_recipe


def test_train_member_writes_self_describing_artifacts(tmp_path, coil_data):
    cfg = load_member_cfg(tiny_recipe(tmp_path, coil_data))
    result = train_member(cfg, tmp_path / "runs")
    run = tmp_path / "runs" / "members" / "tiny"
    assert {p.name for p in run.iterdir()} == {"config.yaml", "last.pt", "best.pt", "metrics.jsonl", "eval.json", ".lock"}
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in records] == [(0, 0), (1, 0), (1, 1)]
    assert set(records[0]["lr"]) == {"neck", "head"} and records[0]["images"] == 24
    model, payload = load_member_model(run / "best.pt")
    assert payload["describe"]["image_size"] == 32 and payload["describe"]["embedding_dim"] == 8
    assert len(payload["labels"]) == 4 and payload["labels"] == sorted(payload["labels"])
    trained = result["trained"]["neck"]
    assert trained["queries"] == 4 and 0.0 <= trained["mP@5"] <= 1.0 and "object" in trained["per_domain"]
    assert "mP@5" in result["untrained_backbone"]


def test_head_stage_leaves_backbone_frozen(tmp_path, coil_data, monkeypatch):
    cfg = load_member_cfg(tiny_recipe(tmp_path, coil_data), ["stages=[{train: [neck, head], epochs: 1}]"])
    torch.manual_seed(cfg.seed)
    before = build_member_task(cfg, train_data(cfg), tmp_path).model.backbone.state_dict()
    train_member(cfg, tmp_path / "runs")
    after, _ = load_member_model(tmp_path / "runs" / "members" / "tiny" / "best.pt")
    assert all(torch.equal(before[k], v) for k, v in after.backbone.state_dict().items())


class Killed(Exception):
    pass


def test_killed_run_resumes_and_matches_uninterrupted(tmp_path, coil_data, monkeypatch):
    recipe = tiny_recipe(tmp_path, coil_data, "eval: {enabled: false}")
    train_member(load_member_cfg(recipe), tmp_path / "a")
    original_save, saves = Trainer._save, []

    def save_then_die(self, *args):
        original_save(self, *args)
        saves.append(args[:2])
        if len(saves) == 2:
            raise Killed  # as if SIGKILL arrived right after the 2nd epoch's checkpoint

    monkeypatch.setattr(Trainer, "_save", save_then_die)
    with pytest.raises(Killed):
        train_member(load_member_cfg(recipe), tmp_path / "b")
    assert load_checkpoint(tmp_path / "b" / "members" / "tiny" / "last.pt")["stage"] == 1
    monkeypatch.setattr(Trainer, "_save", original_save)
    train_member(load_member_cfg(recipe), tmp_path / "b")
    lines = (tmp_path / "b" / "members" / "tiny" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3  # resumed: the two finished epochs were not run again
    a = load_checkpoint(tmp_path / "a" / "members" / "tiny" / "best.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "members" / "tiny" / "best.pt")["model"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_rerun_with_another_recipe_is_refused(tmp_path, coil_data):
    recipe = tiny_recipe(tmp_path, coil_data, "eval: {enabled: false}")
    train_member(load_member_cfg(recipe), tmp_path / "runs")
    with pytest.raises(EnsError, match=r"best.pt: checkpoint was written by a different recipe \(optim.lr: 0.01 -> 0.5\)"):
        train_member(load_member_cfg(recipe, ["optim.lr=0.5"]), tmp_path / "runs")


def test_init_from_resamples_position_embedding(tmp_path, coil_data):
    train_member(load_member_cfg(tiny_recipe(tmp_path, coil_data, "eval: {enabled: false}")), tmp_path / "runs")
    big = load_member_cfg(tiny_recipe(tmp_path, coil_data, name="big"),
                          ["backbone.image_size=48", "backbone.init_from=tiny"])
    task = build_member_task(big, train_data(big), tmp_path / "runs")
    small, _ = load_member_model(tmp_path / "runs" / "members" / "tiny" / "best.pt")
    assert task.model.backbone.tower.positional_embedding.shape == (37, 32)
    assert torch.equal(task.model.backbone.tower.conv1.weight, small.backbone.tower.conv1.weight)
    assert torch.equal(task.model.neck[1].weight, small.neck[1].weight)
    missing = load_member_cfg(tiny_recipe(tmp_path, coil_data, name="x"), ["backbone.init_from=nobody"])
    with pytest.raises(EnsError, match="backbone.init_from: member 'nobody' has no trained model"):
        build_member_task(missing, train_data(missing), tmp_path / "runs")


def _add_broken_image(data_cfg):
    broken = data_cfg.parent / "broken.jpg"
    broken.write_bytes(b"")
    train = data_cfg.parent / "train.csv"
    label = train.read_text().splitlines()[1].split(",")[1]
    train.write_text(train.read_text() + f"{broken},{label},object\n")
    return broken


def test_unreadable_training_image_is_skipped_and_counted(tmp_path, coil_data, caplog):
    broken = _add_broken_image(coil_data)
    recipe = tiny_recipe(tmp_path, coil_data, "loader: {workers: 0, max_fail_ratio: 0.1}")
    result = train_member(load_member_cfg(recipe, ["stages=[{train: [all], epochs: 1}]"]), tmp_path / "runs")
    assert f"skipped unreadable image {broken}" in caplog.text
    assert result["train_images_unreadable"] == 1
    assert list(json.loads((tmp_path / "runs/members/tiny/failed_images.json").read_text())) == [str(broken)]


def test_too_many_unreadable_images_stop_the_run(tmp_path, coil_data):
    _add_broken_image(coil_data)
    recipe = tiny_recipe(tmp_path, coil_data, "eval: {enabled: false}")
    with pytest.raises(EnsError, match=r"1 of \d+ images unreadable .* > max_fail_ratio 1.0%\); first: .*broken.jpg"):
        train_member(load_member_cfg(recipe, ["stages=[{train: [all], epochs: 1}]"]), tmp_path / "runs")
    assert not (tmp_path / "runs/members/tiny/best.pt").exists()


def test_nonfinite_loss_stops_naming_the_step_or_skips(tmp_path, coil_data, monkeypatch):
    from ensemble.tasks.classify import ClassifyTask

    real_loss = ClassifyTask.loss

    def nan_in_stage_2(self, batch):
        loss = real_loss(self, batch)
        return loss * float("nan") if "backbone" in self.trainable else loss

    monkeypatch.setattr(ClassifyTask, "loss", nan_in_stage_2)
    recipe = tiny_recipe(tmp_path, coil_data, "eval: {enabled: false}")
    with pytest.raises(EnsError, match=r"non-finite loss \(nan\) at stage 2 epoch 1 step 1; stopped"):
        train_member(load_member_cfg(recipe), tmp_path / "runs")
    assert load_checkpoint(tmp_path / "runs/members/tiny/last.pt")["stage"] == 0  # the good checkpoint is intact
    train_member(load_member_cfg(recipe, ["loader.nonfinite=skip"]), tmp_path / "skip")
    records = [json.loads(x) for x in (tmp_path / "skip/members/tiny/metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_batches"] for r in records] == [0, 3, 3]
