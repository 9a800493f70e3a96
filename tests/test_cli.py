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
    shown = CliRunner().invoke(main, ["show", "tiny", "--workdir", str(tmp_path / "runs")])
    assert '"embedding_dim": 8' in shown.output and '"image_size": 32' in shown.output
