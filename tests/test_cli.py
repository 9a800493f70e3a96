from pathlib import Path

import pytest
from click.testing import CliRunner

from ensemble.cli import main
from tests.conftest import MOBILENET_V1, need_shared, tiny_recipe

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("recipe", sorted(p.name for p in (ROOT / "members").glob("*.yaml")))
def test_every_gpu_recipe_passes_dry_run_without_weights(recipe):
    result = CliRunner().invoke(main, ["train-member", "--cfg", str(ROOT / "members" / recipe), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "ViT-" in result.output and "stage 1:" in result.output and "embedding 64-d" in result.output


def test_cpu_recipe_dry_run_counts_mobilenet():
    need_shared(MOBILENET_V1)
    result = CliRunner().invoke(main, ["train-member", "--cfg", str(ROOT / "members/cpu/mnv1_grocery.yaml"),
                                       "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "params: backbone 3,206,976, neck 65,600" in result.output
    assert "stage 2: train backbone+head+neck for 2 epochs" in result.output and "backbone 1.00e-04" in result.output


def test_bad_input_is_one_line_exit_2(tmp_path, coil_data):
    recipe = tiny_recipe(tmp_path, coil_data, "bogus: 1")
    result = CliRunner().invoke(main, ["train-member", "--cfg", str(recipe)])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {recipe}: unknown key 'bogus'"
    result = CliRunner().invoke(main, ["train-member", "--cfg", str(recipe), "--set", "optim.lr"])
    assert result.exit_code == 2 and "Traceback" not in result.output and result.output.count("\n") == 1


def test_train_member_command_trains_and_prints_table(tmp_path, coil_data):
    recipe = tiny_recipe(tmp_path, coil_data)
    args = ["train-member", "--cfg", str(recipe), "--workdir", str(tmp_path / "runs"),
            "--set", "stages=[{train: [all], epochs: 1}]"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "| untrained backbone |" in result.output and "| trained, neck |" in result.output
    assert "transductive" not in result.output  # coil20's train classes are not in query or index
    shown = CliRunner().invoke(main, ["show", "tiny", "--workdir", str(tmp_path / "runs")])
    assert '"embedding_dim": 8' in shown.output and '"image_size": 32' in shown.output
    folder = coil_data.parent
    leaky = tmp_path / "leaky.yaml"  # trains on the index images it is then scored against
    leaky.write_text(f"train: {folder}/index.csv\nquery: {folder}/query.csv\nindex: {folder}/index.csv\n")
    result = CliRunner().invoke(main, [*args, "--set", f"data={leaky}", "--set", "name=leaky"])
    assert result.exit_code == 0, result.output
    assert result.output.rstrip().endswith("transductive: trained on 20 of the query/index images")


@pytest.mark.parametrize("recipe", ["distill/h14_student.yaml", "distill/cpu/mnv1_grocery.yaml",
                                    "distill/cpu/mnv1_coil20.yaml", "distill/quickstart/sample_student.yaml"])
def test_every_student_recipe_passes_dry_run(recipe):
    if "cpu" in recipe:
        need_shared(MOBILENET_V1)
    result = CliRunner().invoke(main, ["distill", "--cfg", str(ROOT / recipe), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("student ") and "-> embedding" in result.output and "head" not in result.output


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs" / "pipelines").glob("*.yaml")))
def test_pipeline_configs_and_their_recipes_load(config):
    from ensemble.commands.pipeline import load_pipeline_cfg
    from ensemble.config.load import load_member_cfg, load_student_cfg
    from ensemble.fuse.config import ensemble_cfg

    if config != "quickstart.yaml":
        need_shared(MOBILENET_V1)
    cfg = load_pipeline_cfg(ROOT / "configs" / "pipelines" / config)
    members = [load_member_cfg(m) for m in cfg.members]
    ensemble = ensemble_cfg("runs", str(cfg.ensemble))
    assert set(ensemble.members) == {m.name for m in members}
    student = load_student_cfg(cfg.student)
    assert student.backbone.init_from in {m.name for m in members} and student.teacher in (None, ensemble.name)
    assert len({m.data for m in members} | {student.data}) == 1  # one training set for the whole pipeline


def test_quickstart_data_is_shipped_small_and_licensed():
    sample = ROOT / "sample" / "grocery"
    size_mb = sum(p.stat().st_size for p in sample.rglob("*") if p.is_file()) / 1e6
    assert size_mb <= 5 and "MIT License" in (sample / "LICENSE").read_text()
    from ensemble.config.load import load_data_cfg
    from ensemble.data.manifest import read_manifest

    cfg = load_data_cfg(ROOT / "configs" / "data" / "sample.yaml")
    train, query = read_manifest(cfg.train), read_manifest(cfg.query)
    assert all(Path(p).is_file() for p in train.paths + query.paths)
    assert not set(train.labels) & set(query.labels)  # open set, like GUIE


def test_names_cannot_leave_the_workspace(tmp_path, coil_data):
    result = CliRunner().invoke(main, ["fuse", "--pca", "4", "--members", "a", "--name", "../../x",
                                       "--workdir", str(tmp_path / "runs")])
    assert result.exit_code == 2 and "key 'name': String should match pattern" in result.output
    recipe = tiny_recipe(tmp_path, coil_data, "name: ../../x")
    result = CliRunner().invoke(main, ["train-member", "--cfg", str(recipe), "--workdir", str(tmp_path / "runs")])
    assert result.exit_code == 2 and "key 'name': String should match pattern" in result.output
    assert not (tmp_path / "x").exists() and not (tmp_path.parent / "x").exists()


@pytest.mark.parametrize("command, option, value, bound", [
    (["embed", "m", "--manifest", "q.csv", "--out", "e.npy"], "--workers", "-1", "x>=0"),
    (["eval", "m"], "--workers", "-1", "x>=0"),
    (["index", "build", "m", "--manifest", "q.csv", "--out", "g"], "--workers", "-1", "x>=0"),
    (["index", "add", "g", "--manifest", "q.csv"], "--workers", "-2", "x>=0"),
    (["embed", "m", "--manifest", "q.csv", "--out", "e.npy"], "--nproc", "0", "x>=1"),
    (["train-member", "--cfg", "m.yaml"], "--nproc", "-2", "x>=1"),
    (["export", "m", "--out", "m.pt"], "--sample", "0", "x>=1"),
])
def test_counts_below_their_range_are_refused_before_any_work(command, option, value, bound):
    """`ens export --sample 0` raised ZeroDivisionError; `--sample -3` verified on every image; `--workers -1`
    and `--nproc 0` were taken silently. Each is a one-line usage error now, before anything is loaded."""
    result = CliRunner().invoke(main, [*command, option, value])
    assert result.exit_code == 2
    assert f"Invalid value for '{option}': {value} is not in the range {bound}" in result.output


def test_export_library_refuses_an_empty_verification_sample(tmp_path):
    from ensemble.deploy.export import verify_sample
    from ensemble.errors import EnsError

    with pytest.raises(EnsError, match=r"^export: sample 0: expected at least 1 image to verify the file with$"):
        verify_sample(None, 0, str(tmp_path / "never_read.csv"))


@pytest.mark.parametrize("code, in_workspace, hint", [
    ("EROFS", True, "the workspace is on a read-only file system; give a writable --workdir"),
    ("EROFS", False, "write it to another folder"),
    ("EACCES", True, "permission denied; give a writable --workdir or fix the folder's permissions"),
    ("EACCES", False, "permission denied; write it to another folder or fix the folder's permissions"),
    ("ENOSPC", True, "no space left on the device; free some or give another --workdir"),
    ("ENOSPC", False, "no space left on the device; free some or write it to another folder"),
])
def test_a_failed_write_suggests_another_workdir_only_for_files_in_the_workspace(tmp_path, code, in_workspace, hint):
    import errno
    import os

    from ensemble.cli import describe_os_error

    target = tmp_path / ("runs/cache/x.npy" if in_workspace else "out/x.npy")
    line = describe_os_error(OSError(getattr(errno, code), os.strerror(getattr(errno, code)), str(target)),
                             workdir=str(tmp_path / "runs"))
    assert line == f"{target}: {os.strerror(getattr(errno, code))} ({hint})"
