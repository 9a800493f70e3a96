import json

import numpy as np
import pytest
import torch

from ensemble.checkpoint import load_checkpoint
from ensemble.config.load import load_student_cfg
from ensemble.data.manifest import read_manifest
from ensemble.errors import EnsError
from ensemble.train.student import distill
from ensemble.workspace import Workspace, load_model_file, resolve_model
from tests.conftest import STUDENT_SETS, tiny_recipe


def test_student_learns_the_teacher_embedding_from_cached_targets(distilled_workspace):
    run = Workspace(distilled_workspace).student_dir("stu")
    meta = json.loads((run / "targets.json").read_text())
    targets = np.load(run / "targets.npy")
    assert meta["ensemble"] == "teach" and targets.shape == (meta["rows"], 8) == (24, 8)
    # the targets are the ensemble's embedding of the distill (= train) images
    train = read_manifest(distilled_workspace.parent / "train.csv")
    expected = resolve_model("ensemble:teach", distilled_workspace).embed(train, Workspace(distilled_workspace), workers=0)
    assert np.allclose(targets, expected, atol=1e-5)
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["train"] for h in history] == [["neck"], ["all"]]
    payload = load_checkpoint(run / "best.pt", kind="student_model")
    assert payload["describe"]["embedding_dim"] == 8 and payload["teacher"]["ensemble"] == "teach"


def test_student_resolves_as_a_model_and_embeds_to_64_like_dims(distilled_workspace):
    model = resolve_model("student:stu", distilled_workspace)
    assert model.kind == "student" and model.tta.flip is True
    query = read_manifest(distilled_workspace.parent / "query.csv")
    feats = model.embed(query, Workspace(distilled_workspace), workers=0)
    assert feats.shape == (4, 8) and np.allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-3)


def test_distill_loss_falls_when_training_longer(distilled_workspace, tmp_path):
    folder = distilled_workspace.parent
    sets = [s for s in STUDENT_SETS if not s.startswith("stages")]
    cfg = load_student_cfg(tiny_recipe(folder, folder / "data.yaml", name="longer"),
                           [*sets, "stages=[{train: [all], epochs: 6}]", "optim.lr=3e-3"])
    distill(cfg, distilled_workspace)
    losses = [json.loads(line)["loss"] for line in
              (Workspace(distilled_workspace).student_dir("longer") / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.8 * losses[0]


def test_student_refuses_a_width_other_than_the_teachers(distilled_workspace):
    folder = distilled_workspace.parent
    cfg = load_student_cfg(tiny_recipe(folder, folder / "data.yaml", name="wide"),
                           [*STUDENT_SETS, "neck.dims=[16]"])
    with pytest.raises(EnsError, match="student ends at 16 dims but teacher 'teach' embeds to 8"):
        distill(cfg, distilled_workspace)


def test_student_recipe_errors_are_one_line(tmp_path, coil_data):
    recipe = tiny_recipe(tmp_path, coil_data, name="s")
    with pytest.raises(EnsError, match="a 'head' stage needs loss.arcface > 0"):
        load_student_cfg(recipe)  # tiny_recipe trains [neck, head] first
    with pytest.raises(EnsError, match="unknown key 'loss.cosin'"):
        load_student_cfg(recipe, ["loss.cosin=1", "stages=[{train: [all], epochs: 1}]"])
    cfg = load_student_cfg(recipe, ["teacher=nope", "stages=[{train: [all], epochs: 1}]"])
    with pytest.raises(EnsError, match="teacher: ensemble 'nope': not found at"):
        distill(cfg, tmp_path / "runs")


def test_arcface_term_needs_labels(distilled_workspace, tmp_path):
    folder = distilled_workspace.parent
    unlabelled = tmp_path / "unlabelled.csv"
    rows = (folder / "train.csv").read_text().splitlines()
    unlabelled.write_text("path\n" + "\n".join(r.split(",")[0] for r in rows[1:]) + "\n")
    data = tmp_path / "data.yaml"
    data.write_text(f"distill: {unlabelled}\nquery: {folder / 'query.csv'}\nindex: {folder / 'index.csv'}\n")
    cfg = load_student_cfg(tiny_recipe(tmp_path, data, name="arc"), [*STUDENT_SETS, "loss.arcface=1.0"])
    with pytest.raises(EnsError, match="loss.arcface > 0 needs labels"):
        distill(cfg, distilled_workspace)
    # unlabelled images are fine without the arcface term
    cfg = load_student_cfg(tiny_recipe(tmp_path, data, name="unl"), STUDENT_SETS)
    distill(cfg, distilled_workspace)
    assert (Workspace(distilled_workspace).student_dir("unl") / "best.pt").is_file()


def test_arcface_term_uses_only_labelled_rows():
    from ensemble.config.schema import DistillLossCfg, HeadCfg
    from ensemble.losses.margin import build_head
    from ensemble.models.member import EmbeddingModel
    from ensemble.tasks.distill import DistillTask

    torch.manual_seed(0)
    model = EmbeddingModel(torch.nn.Identity(), torch.nn.Sequential(torch.nn.Linear(4, 4)))
    model.backbone.out_dim = 4
    targets = torch.nn.functional.normalize(torch.randn(6, 4), dim=-1)
    head = build_head(HeadCfg(), 4, [2, 2])
    task = DistillTask(model, targets, DistillLossCfg(arcface=2.0), head, HeadCfg())
    task.set_trainable(["all"])
    batch = {"images": torch.randn(3, 4), "indices": torch.tensor([0, 4, 5]), "targets": torch.tensor([0, -1, 1])}
    loss = task.loss(batch)
    assert set(task.last_terms) == {"cosine", "smooth_l1", "rkd", "arcface"}
    assert loss.item() == pytest.approx(sum(task.last_terms.values()), rel=1e-5)
    unlabelled = {**batch, "targets": torch.tensor([-1, -1, -1])}
    task.loss(unlabelled)
    assert "arcface" not in task.last_terms


def test_init_from_a_member_with_another_neck_width_loads_the_backbone_only(distilled_workspace, tmp_path):
    from ensemble.models.member import build_member_model
    from ensemble.train.warm_start import init_from_member

    folder = distilled_workspace.parent
    cfg = load_student_cfg(tiny_recipe(folder, folder / "data.yaml", name="narrow"), [*STUDENT_SETS, "neck.dims=[4]"])
    model = build_member_model(cfg)
    init_from_member(model, distilled_workspace, "vit_a")
    member = load_model_file(distilled_workspace / "members" / "vit_a" / "best.pt").model
    ours, theirs = model.state_dict(), member.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs if k.startswith("backbone."))
    assert ours["neck.1.weight"].shape == (4, 16)
    with pytest.raises(EnsError, match="'tvit' does not fit this architecture"):
        init_from_member(build_member_model(cfg), distilled_workspace, "tvit")


def test_teacher_identity_survives_a_refit_but_not_a_new_reducer(distilled_workspace, tmp_path):
    import shutil

    from ensemble.config.schema import EnsembleCfg
    from ensemble.fuse.fit import fuse
    from ensemble.train.student import teacher_fingerprint

    runs = tmp_path / "runs"
    shutil.copytree(distilled_workspace / "members", runs / "members")
    cfg = {"name": "teach", "members": ["vit_a", "tvit"], "features": "backbone", "power": 0.5, "pca": 8,
           "fit_on": "index", "workers": 0, "device": "cpu"}
    fuse(EnsembleCfg.model_validate(cfg), runs)  # same ensemble, another workspace path
    assert teacher_fingerprint(runs, "teach") == teacher_fingerprint(distilled_workspace, "teach")
    fuse(EnsembleCfg.model_validate({**cfg, "pca": 6}), runs)
    assert teacher_fingerprint(runs, "teach")[1] != teacher_fingerprint(distilled_workspace, "teach")[1]
    concat = {**cfg, "name": "cat", "pca": None}
    fuse(EnsembleCfg.model_validate(concat), runs)  # no reducer hash: the power alone tells them apart
    rooted = teacher_fingerprint(runs, "cat")[1]
    fuse(EnsembleCfg.model_validate({**concat, "power": 1.0}), runs)
    assert teacher_fingerprint(runs, "cat")[1] != rooted


def test_damaged_teacher_targets_are_computed_again_not_trained_on(distilled_workspace, tmp_path):
    import shutil

    from ensemble.train.data import distill_manifest
    from ensemble.train.student import teacher_targets

    cfg = load_student_cfg(tiny_recipe(tmp_path, distilled_workspace.parent / "data.yaml", name="stu"), STUDENT_SETS)
    ws, saved = Workspace(distilled_workspace), distilled_workspace / "students" / "stu"
    good = np.load(saved / "targets.npy")
    for damage in (lambda b: b[:100], lambda b: b[:-8 * 4 * 3]):  # truncated header; three rows short
        run = tmp_path / "run"
        shutil.rmtree(run, ignore_errors=True)
        run.mkdir()
        for name in ("targets.npy", "targets.json"):
            shutil.copy(saved / name, run / name)
        (run / "targets.npy").write_bytes(damage((run / "targets.npy").read_bytes()))
        targets, info = teacher_targets(cfg, ws, distill_manifest(cfg), run)
        assert targets.shape == good.shape and np.allclose(targets, good, atol=1e-5) and info["rows"] == 24
        assert np.array_equal(np.load(run / "targets.npy"), targets)  # and written again whole


def test_member_term_is_the_mean_cosine_distance_of_each_projector_to_its_member():
    from ensemble.config.schema import DistillLossCfg
    from ensemble.models.member import EmbeddingModel
    from ensemble.tasks.distill import DistillTask

    torch.manual_seed(0)
    model = EmbeddingModel(torch.nn.Identity(), torch.nn.Sequential(torch.nn.Linear(4, 4)))
    model.backbone.out_dim = 4
    targets = torch.nn.functional.normalize(torch.randn(6, 4), dim=-1)
    members = [torch.randn(6, 5), torch.randn(6, 3)]
    task = DistillTask(model, targets, DistillLossCfg(members=3.0), member_targets=members)
    assert [tuple(p.weight.shape) for p in task.projectors] == [(5, 4), (3, 4)]
    task.set_trainable(["backbone", "neck"])
    assert task.trainable == {"backbone", "neck", "projectors"}  # projectors learn with the backbone
    batch = {"images": torch.randn(3, 4), "indices": torch.tensor([0, 4, 5]), "targets": torch.tensor([-1] * 3)}
    task.loss(batch)
    cos = [torch.nn.functional.cosine_similarity(p(batch["images"]), t[batch["indices"]], dim=-1)
           for p, t in zip(task.projectors, members)]
    by_hand = 3.0 * torch.stack([(1 - c).mean() for c in cos]).mean()
    assert task.last_terms["members"] == pytest.approx(float(by_hand.detach()), rel=1e-5)
    task.set_trainable(["neck"])  # frozen backbone: the member term would teach nothing
    task.loss(batch)
    assert "members" not in task.last_terms and task.trainable == {"neck"}


def test_multi_teacher_student_trains_on_the_members_cached_features(distilled_workspace):
    folder = distilled_workspace.parent
    cfg = load_student_cfg(tiny_recipe(folder, folder / "data.yaml", name="multi"),
                           [*STUDENT_SETS, "loss.members=1.0"])
    distill(cfg, distilled_workspace)
    run = Workspace(distilled_workspace).student_dir("multi")
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["train"] for h in history] == [["neck"], ["all"]] and all(np.isfinite(h["loss"]) for h in history)
    state = load_checkpoint(run / "last.pt", kind="student")["task"]
    assert {k.split(".")[1] for k in state if k.startswith("projectors.")} == {"0", "1"}  # one per member
    model = load_model_file(run / "best.pt", kind="student_model").model  # the saved student has no projector
    assert not any("projector" in k for k in model.state_dict())
    plain = load_model_file(Workspace(distilled_workspace).student_dir("stu") / "best.pt", kind="student_model")
    assert set(model.state_dict()) == set(plain.model.state_dict())


def test_concat_relation_student_takes_sim_kl_from_the_ensembles_concatenation(distilled_workspace):
    from ensemble.fuse.combine import combine
    from ensemble.train.student import distill_data

    folder = distilled_workspace.parent
    with pytest.raises(EnsError, match="sim_kl_teacher: concat needs sim_kl > 0"):
        load_student_cfg(tiny_recipe(folder, folder / "data.yaml", name="cat"),
                         [*STUDENT_SETS, "loss.sim_kl=0", "loss.sim_kl_teacher=concat"])
    cfg = load_student_cfg(tiny_recipe(folder, folder / "data.yaml", name="cat"),
                           [*STUDENT_SETS, "loss.sim_kl_teacher=concat"])
    ws = Workspace(distilled_workspace)
    data = distill_data(cfg, ws, ws.student_dir("cat"))
    ens = resolve_model("ensemble:teach", distilled_workspace)
    fused = combine(ens.part_features(data.manifest, ws, workers=0), ens.head.groups, ens.head.power)
    assert data.members == [] and data.concat.shape == (24, ens.ensemble.description["concat_dim"])
    assert np.allclose(data.concat, fused / np.linalg.norm(fused, axis=1, keepdims=True), atol=1e-5)
    distill(cfg, distilled_workspace)
    history = [json.loads(line) for line in (ws.student_dir("cat") / "metrics.jsonl").read_text().splitlines()]
    assert [h["train"] for h in history] == [["neck"], ["all"]] and all(np.isfinite(h["loss"]) for h in history)
