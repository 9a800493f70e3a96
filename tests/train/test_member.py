import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ensemble.checkpoint import load_checkpoint
from ensemble.config.load import load_member_cfg
from ensemble.errors import EnsError
from ensemble.train import member as member_mod
from ensemble.train.data import train_data
from ensemble.train.loop import Trainer
from ensemble.train.member import build_member_task, evaluate_untrained, train_member
from ensemble.workspace import Workspace, load_model_file
from tests.conftest import tiny_recipe


def test_train_member_writes_self_describing_artifacts(tmp_path, coil_data):
    cfg = load_member_cfg(tiny_recipe(tmp_path, coil_data))
    result = train_member(cfg, tmp_path / "runs")
    run = tmp_path / "runs" / "members" / "tiny"
    files = {p.name for p in run.iterdir()}
    assert files == {"config.yaml", "last.pt", "best.pt", "metrics.jsonl", "eval.json", "untrained.json", ".lock"}
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in records] == [(0, 0), (1, 0), (1, 1)]
    assert set(records[0]["lr"]) == {"neck", "head"} and records[0]["images"] == 24
    file = load_model_file(run / "best.pt")
    assert file.describe["image_size"] == 32 and file.describe["embedding_dim"] == 8 and file.model.out_dim == 8
    assert len(file.extra["labels"]) == 4 and file.extra["labels"] == sorted(file.extra["labels"])
    trained = result["trained"]["neck"]
    assert trained["queries"] == 4 and "object" in trained["per_domain"]
    # training's own eval (both features in one pass) scores what `ens eval` scores
    from ensemble.evaluate.run import evaluate

    for features in ("neck", "backbone"):
        report = evaluate("tiny", tmp_path / "runs", features=features, workers=0, out=tmp_path / f"{features}.json")
        assert report["mP@5"] == pytest.approx(result["trained"][features]["mP@5"], abs=1e-9)
    assert result["untrained_backbone"]["queries"] == 4


def test_head_stage_leaves_backbone_frozen(tmp_path, coil_data, monkeypatch):
    cfg = load_member_cfg(tiny_recipe(tmp_path, coil_data), ["stages=[{train: [neck, head], epochs: 1}]"])
    torch.manual_seed(cfg.seed)
    before = build_member_task(cfg, train_data(cfg), Workspace(tmp_path)).model.backbone.state_dict()
    train_member(cfg, tmp_path / "runs")
    after = load_model_file(tmp_path / "runs" / "members" / "tiny" / "best.pt").model
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
    with pytest.raises(EnsError,
                       match=r"best.pt: checkpoint was written by a different recipe \(optim.lr: 0.01 -> 0.5\)"):
        train_member(load_member_cfg(recipe, ["optim.lr=0.5"]), tmp_path / "runs")


def test_init_from_resamples_position_embedding(tmp_path, coil_data):
    train_member(load_member_cfg(tiny_recipe(tmp_path, coil_data, "eval: {enabled: false}")), tmp_path / "runs")
    big = load_member_cfg(tiny_recipe(tmp_path, coil_data, name="big"),
                          ["backbone.image_size=48", "backbone.init_from=tiny"])
    task = build_member_task(big, train_data(big), tmp_path / "runs")
    small = load_model_file(tmp_path / "runs" / "members" / "tiny" / "best.pt").model
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
    with pytest.raises(EnsError, match=r"^1 of the job's 25 images unreadable already \(over max_fail_ratio 1.0%\); "
                                       r"first: .*broken.jpg"):
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


def test_training_eval_and_export_prepare_images_identically(tmp_path, coil_data):
    """A member on weights whose mean/std (0.50196, from their JSON) differ from timm's defaults for
    the architecture: the model file records them, and training-time features == eval == export."""
    import timm

    from ensemble.config.schema import AugmentCfg
    from ensemble.data.augment import build_train_transform
    from ensemble.data.decode import decode_image
    from ensemble.data.manifest import read_manifest
    from ensemble.deploy.export import export
    from ensemble.deploy.torchscript import decoded_tensor, jit_load
    from ensemble.embed.extract import TTA, extract_many
    from ensemble.workspace.resolve import load_members
    from tests.conftest import SHARED, need_shared

    weights = need_shared(SHARED / "weights" / "mobilenetv2_100.coral_in1k.safetensors")
    assert timm.get_pretrained_cfg("mobilenetv2_100").mean[0] == pytest.approx(0.485)  # the library default
    sets = ["backbone.source=timm", "backbone.arch=mobilenetv2_100", f"backbone.pretrained={weights}",
            "backbone.image_size=64", "backbone.freeze_bn=true", "eval.enabled=false",
            "stages=[{train: [neck, head], epochs: 1}]"]
    cfg = load_member_cfg(tiny_recipe(tmp_path, coil_data, name="mnv2"), sets)
    train_member(cfg, tmp_path / "runs")
    file = load_model_file(tmp_path / "runs" / "members" / "mnv2" / "best.pt")
    model = file.model
    assert file.preprocess["mean"] == pytest.approx([0.50196] * 3, abs=1e-5)
    assert model.backbone.mean == pytest.approx((0.50196,) * 3, abs=1e-5) and model.backbone.image_size == 64

    paths = list(read_manifest(coil_data.parent / "query.csv").paths)
    train_pixels = build_train_transform(AugmentCfg(ops={}), 64, model.backbone.mean, model.backbone.std)
    with torch.no_grad():
        at_training = model.embed(torch.stack([train_pixels(decode_image(p)) for p in paths]))
    emb = load_members(Workspace(tmp_path / "runs"), ["mnv2"], "neck", torch.device("cpu"))[0].embedder
    at_eval = extract_many([emb], paths, torch.device("cpu"), TTA(flip=False), workers=0)[0]
    assert np.allclose(at_training.numpy(), at_eval, atol=1e-5)

    out = tmp_path / "mnv2.pt"
    export("mnv2", tmp_path / "runs", out, sample=2, verify_manifest=str(coil_data.parent / "query.csv"))
    flipped = extract_many([emb], paths, torch.device("cpu"), TTA(flip=True), workers=0)[0]
    with torch.no_grad():
        exported = np.stack([jit_load(out)(decoded_tensor(p))[0].numpy() for p in paths])
    assert np.sum(exported * flipped, axis=1).min() > 0.9999


def test_a_read_only_workspace_is_a_one_line_error(trained_workspace, tmp_path, monkeypatch):
    import errno
    import tempfile

    from click.testing import CliRunner

    from ensemble.cli import main

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", kwargs.get("dir"))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    out = trained_workspace / "reports" / "read_only.json"  # in the workspace like the cache: the same hint
    result = CliRunner().invoke(main, ["eval", "vit_a", "--out", str(out), "--workers", "0",
                                       "--workdir", str(trained_workspace)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    # the first write fails: a cache entry, or the report when the features are cached already
    assert result.output.count("error: ") == 1 and ("error: " + str(trained_workspace) + "/cache/" in result.output
                                                    or f"error: {out}" in result.output)
    assert ": Read-only file system (the workspace is on a read-only file system; give a writable --workdir)" \
        in result.output


def test_a_trained_member_beats_its_untrained_backbone_on_real_images(tmp_path):
    """The shipped quickstart member (MobileNet-v2, ImageNet weights) on the shipped grocery photos,
    at 96 px to stay quick: 6 epochs lift the open-set mP@5 of its neck well above the untrained
    backbone's (measured here: 0.775 -> 0.842, 24 queries of classes never trained on)."""
    from tests.conftest import ROOT, SHARED, need_shared

    need_shared(SHARED / "weights" / "mobilenetv2_100.coral_in1k.safetensors")
    sets = ["backbone.image_size=96", "eval.image_size=null", "loader.workers=0", "device=cpu",
            "stages=[{train: [neck, head], epochs: 2}, {train: [all], epochs: 4}]"]
    cfg = load_member_cfg(ROOT / "members" / "quickstart" / "sample_mnv2.yaml", sets)
    result = train_member(cfg, tmp_path / "runs")
    assert result["trained"]["neck"]["queries"] == 24
    assert result["trained"]["neck"]["mP@5"] > result["untrained_backbone"]["mP@5"] + 0.03


def test_wise_ft_saves_the_interpolation_of_start_and_fine_tuned_backbones(tmp_path, coil_data):
    sets = ["eval.enabled=false", "stages=[{train: [all], epochs: 1}]"]
    plain = load_member_cfg(tiny_recipe(tmp_path, coil_data), sets)
    wise = load_member_cfg(tiny_recipe(tmp_path, coil_data), [*sets, "backbone.wise_ft=0.25"])
    torch.manual_seed(plain.seed)
    start = build_member_task(plain, train_data(plain), Workspace(tmp_path)).model.backbone.state_dict()
    train_member(plain, tmp_path / "a")
    train_member(wise, tmp_path / "b")
    tuned = load_model_file(tmp_path / "a" / "members" / "tiny" / "best.pt").model
    mixed = load_model_file(tmp_path / "b" / "members" / "tiny" / "best.pt").model
    for key, value in mixed.backbone.state_dict().items():
        assert torch.allclose(value, 0.75 * start[key] + 0.25 * tuned.backbone.state_dict()[key], atol=1e-6), key
    assert torch.equal(mixed.neck[1].weight, tuned.neck[1].weight)  # the neck keeps its fine-tuned weights
    assert not torch.allclose(mixed.backbone.tower.conv1.weight, tuned.backbone.tower.conv1.weight)


def test_wise_ft_of_an_already_trained_run_interpolates_it_without_training(tmp_path, coil_data, monkeypatch):
    sets = ["eval.enabled=false", "stages=[{train: [all], epochs: 1}]"]
    recipe = tiny_recipe(tmp_path, coil_data)
    wise = load_member_cfg(recipe, [*sets, "backbone.wise_ft=0.25", "name=tiny_wise"])
    train_member(wise, tmp_path / "b")  # trained with wise_ft: nothing to reuse in this workspace
    train_member(load_member_cfg(recipe, sets), tmp_path / "a")

    def no_training(self):
        raise Killed("trained")

    monkeypatch.setattr(Trainer, "fit", no_training)
    train_member(wise, tmp_path / "a")  # the same recipe without wise_ft is trained there: derived from it
    derived = load_model_file(tmp_path / "a" / "members" / "tiny_wise" / "best.pt")
    trained = load_model_file(tmp_path / "b" / "members" / "tiny_wise" / "best.pt")
    assert derived.recipe_key == trained.recipe_key and derived.extra["labels"] == trained.extra["labels"]
    for key, value in trained.model.state_dict().items():
        assert torch.equal(derived.model.state_dict()[key], value), key
    assert (tmp_path / "a" / "members" / "tiny_wise" / "config.yaml").is_file()
    records = (tmp_path / "a" / "members" / "tiny_wise" / "metrics.jsonl").read_text()
    assert records and records == (tmp_path / "a" / "members" / "tiny" / "metrics.jsonl").read_text()
    copy = load_member_cfg(recipe, [*sets, "backbone.wise_ft=0.25", "name=tiny_wise_copy"])
    train_member(copy, tmp_path / "b")  # no fine-tuned run there, but the interpolated run of this recipe
    copied = load_model_file(tmp_path / "b" / "members" / "tiny_wise_copy" / "best.pt")
    for key, value in trained.model.state_dict().items():  # its weights as they are, not interpolated again
        assert torch.equal(copied.model.state_dict()[key], value), key
    other = load_member_cfg(recipe, [*sets, "backbone.wise_ft=0.25", "optim.lr=0.5", "name=tiny_wise_lr"])
    with pytest.raises(Killed):  # another recipe underneath: no fine-tuned run to reuse, so it trains
        train_member(other, tmp_path / "a")


def test_multi_domain_options_train_through_the_real_path(tmp_path, coil_data):
    """head.per_domain and sampler.domain_alpha on a train set with two domains."""
    import csv

    from tests.conftest import write_manifest

    rows = list(csv.DictReader(open(coil_data.parent / "train.csv")))
    first = sorted({r["label"] for r in rows})[:2]  # two classes: a domain's head needs another class
    for r in rows:
        r["domain"] = "toys" if r["label"] in first else "objects"
    write_manifest(coil_data.parent / "train.csv", rows)
    sets = ["eval.enabled=false", "stages=[{train: [all], epochs: 1}]", "head.per_domain=true",
            "sampler.domain_alpha=0"]
    cfg = load_member_cfg(tiny_recipe(tmp_path, coil_data), sets)
    task = build_member_task(cfg, train_data(cfg), Workspace(tmp_path))
    assert task.class_domains.tolist() == [1, 1, 0, 0]  # sorted domains: objects = 0, toys = 1
    train_member(cfg, tmp_path / "runs")
    records = [json.loads(x) for x in (tmp_path / "runs/members/tiny/metrics.jsonl").read_text().splitlines()]
    assert records[0]["steps"] >= 1 and np.isfinite(records[0]["loss"])


def test_feature_kd_keeps_the_trained_backbone_closer_to_its_start(tmp_path, coil_data):
    """backbone.feature_kd through the real member path: the same training with the retention term
    moves the backbone's features less from the starting ones than without it."""
    from ensemble.data.decode import decode_image

    sets = ["eval.enabled=false", "stages=[{train: [all], epochs: 2}]", "optim.backbone_lr_scale=1.0"]
    plain = load_member_cfg(tiny_recipe(tmp_path, coil_data), sets)
    kd = load_member_cfg(tiny_recipe(tmp_path, coil_data), [*sets, "backbone.feature_kd=20"])
    torch.manual_seed(plain.seed)
    start = build_member_task(plain, train_data(plain), Workspace(tmp_path)).model
    train_member(plain, tmp_path / "a")
    train_member(kd, tmp_path / "b")
    paths = train_data(plain).paths[:16]
    images = torch.nn.functional.interpolate(torch.stack(
        [torch.from_numpy(np.array(decode_image(p))).permute(2, 0, 1).float() / 255 for p in paths]), size=(32, 32))

    def drift(model) -> float:
        with torch.no_grad():
            return float((1 - torch.nn.functional.cosine_similarity(
                model.eval().backbone(images), start.eval().backbone(images))).mean())

    tuned = drift(load_model_file(tmp_path / "a" / "members" / "tiny" / "best.pt").model)
    kept = drift(load_model_file(tmp_path / "b" / "members" / "tiny" / "best.pt").model)
    assert kept < 0.5 * tuned, (kept, tuned)
    assert load_member_cfg(tiny_recipe(tmp_path, coil_data), sets).backbone.feature_kd is None


def test_a_gem_pooled_member_trains_records_its_pooling_and_exports(tmp_path, coil_data):
    """backbone.gem_p: the member trains with GeM pooling, its model file says so, and both export
    formats reproduce its embedding (export checks each file against the package's own)."""
    from ensemble.deploy.export import export

    sets = ["backbone.source=timm", "backbone.arch=mobilenetv1_100", "backbone.image_size=32", "backbone.gem_p=3",
            "eval.enabled=false", "stages=[{train: [all], epochs: 1}]"]
    train_member(load_member_cfg(tiny_recipe(tmp_path, coil_data, name="gem"), sets), tmp_path / "runs")
    file = load_model_file(tmp_path / "runs" / "members" / "gem" / "best.pt")
    payload = load_checkpoint(tmp_path / "runs" / "members" / "gem" / "best.pt", kind="member_model")
    assert file.model.backbone.gem_p == 3 and payload["describe"]["pool"] == "gem p=3"
    for suffix in (".pt", ".onnx"):
        meta = export("gem", tmp_path / "runs", tmp_path / f"gem{suffix}", sample=2,
                      verify_manifest=str(coil_data.parent / "query.csv"))
        assert meta["output_dim"] == 8


def test_eval_gem_p_reuses_the_trained_weights_and_pools_them_by_gem(tmp_path, coil_data, monkeypatch):
    """eval.gem_p is not part of the recipe: the same recipe with it (under another name) takes the
    trained run's weights without training, and its model file embeds them pooled by GeM."""
    sets = ["backbone.source=timm", "backbone.arch=mobilenetv1_100", "backbone.image_size=32", "eval.enabled=false",
            "stages=[{train: [all], epochs: 1}]"]
    recipe = tiny_recipe(tmp_path, coil_data, name="avg")
    train_member(load_member_cfg(recipe, sets), tmp_path / "runs")

    def no_training(self):
        raise Killed("trained")

    monkeypatch.setattr(Trainer, "fit", no_training)
    train_member(load_member_cfg(recipe, [*sets, "eval.gem_p=3", "name=gem_eval"]), tmp_path / "runs")
    avg = load_model_file(tmp_path / "runs" / "members" / "avg" / "best.pt")
    gem = load_model_file(tmp_path / "runs" / "members" / "gem_eval" / "best.pt")
    for key, value in avg.model.state_dict().items():
        assert torch.equal(gem.model.state_dict()[key], value), key
    assert gem.describe["pool"] == "gem p=3" and gem.describe["pool_in_training"] == "the tower's own"
    assert avg.model.backbone.gem_p is None and gem.model.backbone.gem_p == 3
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        want = avg.model.backbone.tower.forward_features(x).clamp(min=1e-6).pow(3).mean((2, 3)).pow(1 / 3)
        assert torch.allclose(gem.model.embed(x, "backbone"), F.normalize(want, dim=-1), atol=1e-5)
    pooled = []
    monkeypatch.setattr(member_mod, "evaluate_model", lambda model, cfg: pooled.append(model.backbone.gem_p) or
                        {"backbone": {}})
    member_mod.evaluate_member(load_member_cfg(recipe, [*sets, "eval.gem_p=3", "name=gem_eval", "eval.enabled=true"]),
                               tmp_path / "runs" / "members" / "gem_eval")
    assert pooled == [3, 3]  # the trained model and its untrained baseline, pooled alike
    with pytest.raises(EnsError, match="member avg: its model file embeds with eval.gem_p None, the recipe asks for "
                                       r"3.0; use another name \(--set name=...\) to derive that copy"):
        train_member(load_member_cfg(recipe, [*sets, "eval.gem_p=3"]), tmp_path / "runs")  # same name: refused
    with pytest.raises(EnsError, match="member avg: its model file embeds with eval.precision fp32, the recipe asks "
                                       "for bf16; use another name"):
        train_member(load_member_cfg(recipe, [*sets, "eval.precision=bf16"]), tmp_path / "runs")
    with pytest.raises(EnsError, match="eval.gem_p pools a convolutional feature map: backbone.source timm only"):
        load_member_cfg(recipe, ["eval.gem_p=3"])  # the tiny recipe's open_clip ViT


def test_untrained_score_is_kept_until_its_inputs_change(tmp_path, coil_data, monkeypatch):
    cfg = load_member_cfg(tiny_recipe(tmp_path, coil_data))
    first = evaluate_untrained(cfg, tmp_path)
    assert first["queries"] == 4 and (tmp_path / "untrained.json").is_file()
    calls = []
    monkeypatch.setattr(member_mod, "evaluate_model", lambda *a: calls.append(1) or {"backbone": {"mP@5": -1.0}})
    cfg.eval.enabled = False  # whether training evaluates is not an input of the score (`ens pipeline` turns it off)
    assert evaluate_untrained(cfg, tmp_path) == first and not calls
    cfg.eval.flip_tta = not cfg.eval.flip_tta
    assert evaluate_untrained(cfg, tmp_path) == {"mP@5": -1.0} and calls == [1]


def test_multi_scale_eval_reuses_the_weights_embeds_at_every_size_and_exports_it(tmp_path, coil_data, monkeypatch):
    """eval.extra_sizes is not part of the recipe: a copy under another name takes the trained weights;
    every consumer embeds at each size (ens eval, the budget's branches, the exported file, which export
    checks against the package), and the same name with other sizes is refused."""
    from ensemble.budget import model_branches
    from ensemble.data.manifest import read_manifest
    from ensemble.deploy.export import export
    from ensemble.embed.extract import TTA
    from ensemble.workspace import resolve_model

    sets = ["backbone.source=timm", "backbone.arch=mobilenetv1_100", "backbone.image_size=32", "eval.enabled=false",
            "stages=[{train: [all], epochs: 1}]"]
    recipe = tiny_recipe(tmp_path, coil_data, name="one")
    runs = tmp_path / "runs"
    train_member(load_member_cfg(recipe, sets), runs)
    monkeypatch.setattr(Trainer, "fit", lambda self: (_ for _ in ()).throw(Killed("trained")))
    train_member(load_member_cfg(recipe, [*sets, "eval.extra_sizes=[48]", "name=multi"]), runs)
    train_member(load_member_cfg(recipe, [*sets, "eval.image_size=48", "name=big"]), runs)
    query, ws = read_manifest(coil_data.parent / "query.csv"), Workspace(runs)
    one, multi, big = (resolve_model(name, runs) for name in ("one", "multi", "big"))
    at_32, both, at_48 = (m.embed(query, ws, TTA(flip=False), workers=0, cache=False) for m in (one, multi, big))
    assert np.abs(at_32 - at_48).max() > 1e-2  # 48 px embeds otherwise
    # (each call's convolutions differ by up to about 2e-4 here: oneDNN picks kernels by batch and size)
    assert np.allclose(both, (at_32 + at_48) / np.linalg.norm(at_32 + at_48, axis=1, keepdims=True), atol=1e-3)
    assert [(br.size_px, br.passes) for br in model_branches(multi)] == [(32, 2), (48, 2)]
    small, large = model_branches(multi)
    assert 2 < large.gflops / small.gflops < 3  # about (48 / 32) ** 2
    meta = export("multi", runs, tmp_path / "multi.pt", sample=2, verify_manifest=str(coil_data.parent / "query.csv"))
    assert meta["verify"]["min_cosine"] >= 0.999 and meta["members"][0]["tta_sizes"] == [32, 48]
    from_file, multi_flip, one_flip = (resolve_model(str(m), runs).embed(query, ws, workers=0, cache=False)
                                       for m in (tmp_path / "multi.pt", "multi", "one"))
    assert np.abs(from_file - multi_flip).max() < 1e-3  # the file embeds at both sizes, as the package does
    assert np.abs(from_file - one_flip).max() > 1e-2  # and not at 32 px alone
    with pytest.raises(EnsError, match=r"member one: its model file embeds with eval.extra_sizes \[\], the recipe "
                                       r"asks for \[48\]; use another name"):
        train_member(load_member_cfg(recipe, [*sets, "eval.extra_sizes=[48]"]), runs)


def test_extra_sizes_a_vit_cannot_take_or_listed_twice_are_refused_before_training(tmp_path, coil_data, monkeypatch):
    monkeypatch.setattr(Trainer, "fit", lambda self: (_ for _ in ()).throw(Killed("trained")))
    recipe = tiny_recipe(tmp_path, coil_data)  # the tiny open_clip ViT at 32 px
    with pytest.raises(EnsError, match=r"tiny: eval.extra_sizes \[32\] repeats a size \(the eval size is 32 px\)"):
        train_member(load_member_cfg(recipe, ["eval.extra_sizes=[32]"]), tmp_path / "runs")
    with pytest.raises(EnsError, match=r"tiny: eval.extra_sizes \[48\], but this ViT takes only its training size "
                                       r"32 px \(positional embedding\); leave eval.extra_sizes empty"):
        train_member(load_member_cfg(recipe, ["eval.extra_sizes=[48]"]), tmp_path / "runs")


def test_one_class_or_a_one_class_domain_head_is_refused_before_training(tmp_path, coil_data):
    """A margin head over one class (or, with head.per_domain, a domain of one class) has a constant loss:
    training ran and learned nothing from those images; now refused, naming the manifest or domain."""
    from ensemble.data.manifest import read_manifest
    from ensemble.train.member import domain_index
    from tests.conftest import write_manifest

    train = read_manifest(coil_data.parent / "train.csv")
    first = train.labels[0]
    rows = [{"path": p, "label": label, "domain": "lone" if label == first else "object"}
            for p, label in zip(train.paths, train.labels, strict=True)]
    write_manifest(coil_data.parent / "train.csv", [r for r in rows if r["label"] == first])
    recipe = tiny_recipe(tmp_path, coil_data)
    with pytest.raises(EnsError, match=r"train.csv: 1 label\(s\) with >= \d+ images \(sampler.min_per_class\); a "
                                       r"margin head needs at least 2 classes"):
        train_data(load_member_cfg(recipe))
    write_manifest(coil_data.parent / "train.csv", rows)
    data = train_data(load_member_cfg(recipe))
    with pytest.raises(EnsError, match=r"^head.per_domain: domain 'lone' has 1 kept class in the train manifest"):
        domain_index(data)
    write_manifest(coil_data.parent / "train.csv", [{**r, "domain": "object"} for r in rows])
    assert domain_index(train_data(load_member_cfg(recipe))).tolist() == [0, 0, 0, 0]
