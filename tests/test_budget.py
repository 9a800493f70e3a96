from pathlib import Path

import pytest
from click.testing import CliRunner

from ensemble.budget import PEAK_TFLOPS, budget, count_gflops, project
from ensemble.cli import main
from ensemble.config.load import load_member_cfg
from ensemble.errors import EnsError

ROOT = Path(__file__).resolve().parents[1]


def test_projection_arithmetic():
    hours = project(gflops_per_image=100.0, images=1_000_000, utilization=0.5)
    # 1e6 images x 1e11 FLOP = 1e17 FLOP; H100 at half of 989 TFLOP/s -> 1e17 / 4.945e14 s
    assert hours["H100"] == pytest.approx(1e17 / (989e12 * 0.5) / 3600)
    assert hours["T4"] / hours["A100"] == pytest.approx(312 / 65)
    assert set(hours) == set(PEAK_TFLOPS) == {"T4", "P100", "A100", "H100"}


def test_vit_h14_flops_from_the_recipe_alone_match_the_cost_model():
    gflops, size = count_gflops(load_member_cfg(ROOT / "members" / "h14_224.yaml"))
    assert size == 224 and gflops == pytest.approx(335, rel=0.01)  # TARGETS.md: 335 GFLOPs at 224
    gflops_280, _ = count_gflops(load_member_cfg(ROOT / "members" / "h14_280.yaml"))
    assert gflops_280 == pytest.approx(532, rel=0.01)


def test_guie_ensemble_does_not_fit_a_t4_but_its_student_does():
    ens = budget(str(ROOT / "configs/ensemble/guie.yaml"), "runs", recipes=ROOT / "members")
    assert len(ens["branches"]) == 9 and all(b["passes"] == 2 for b in ens["branches"])
    assert ens["gflops_per_image"] == pytest.approx(2 * (4 * 335 + 532 + 4 * 382), rel=0.01)
    assert ens["fits"]["T4"] is False and ens["fits"]["H100"] is True and "measured" not in ens
    student = budget(str(ROOT / "distill/h14_student.yaml"), "runs")
    assert student["fits"]["T4"] is True
    assert student["projected_hours"]["T4"] == pytest.approx(1.17, abs=0.02)  # TARGETS.md: ~1.2 h
    assert ens["gflops_per_image"] / student["gflops_per_image"] == pytest.approx(10.2, abs=0.1)


def test_budget_measures_a_trained_model(distilled_workspace):
    result = budget("student:stu", distilled_workspace, images=1000, hours=1.0)
    m = result["measured"]
    assert m["img_per_s"] > 0 and m["hours"] == pytest.approx(1000 / m["img_per_s"] / 3600)
    assert result["gflops_per_image"] > 0


def test_budget_cli_errors_and_gpu_filter(tmp_path):
    out = CliRunner().invoke(main, ["budget", str(ROOT / "distill/h14_student.yaml"), "--gpu", "T4", "--hours", "1"])
    assert out.exit_code == 0 and "| T4 | 65 | 1.17 | no |" in out.output and "H100" not in out.output
    out = CliRunner().invoke(main, ["budget", str(ROOT / "configs/ensemble/guie.yaml"), "--recipes", str(tmp_path)])
    assert out.exit_code == 2 and "member 'h14_224': recipe not found" in out.output
    with pytest.raises(EnsError, match="--utilization 1.5"):
        budget(str(ROOT / "distill/h14_student.yaml"), "runs", utilization=1.5)
    out = CliRunner().invoke(main, ["budget", str(ROOT / "distill/h14_student.yaml"), "--utilization", "0"])
    assert out.exit_code == 2 and "--utilization 0.0: expected a fraction in (0, 1]" in out.output  # was 0.5
    for bad, message in (({"images": -5}, r"--images -5: expected a positive number"),  # was -2e-08 hours
                         ({"hours": 0.0}, r"--hours 0.0: expected a positive time budget")):
        with pytest.raises(EnsError, match=message):
            budget(str(ROOT / "distill/h14_student.yaml"), "runs", **bad)


def test_every_size_a_model_embeds_at_is_costed(tmp_path):
    """A member's eval.extra_sizes and an ensemble's tta.extra_sizes each add a pass at that size; a size
    already costed is not counted twice; a bad tta entry is one line naming the file."""
    recipes = tmp_path / "members"
    recipes.mkdir()
    (recipes / "cnn.yaml").write_text(f"data: {ROOT / 'configs/data/sample.yaml'}\nbackbone: {{source: timm, "
                                      "arch: mobilenetv1_100, pretrained: null, image_size: 160}\n"
                                      "eval: {extra_sizes: [192]}\n")
    cfg = tmp_path / "ens.yaml"
    cfg.write_text("members: [cnn]\ntta: {flip: false, extra_sizes: [192]}\n")
    one = budget(str(cfg), "runs", recipes=recipes)
    assert [(b["size_px"], b["passes"]) for b in one["branches"]] == [(160, 1), (192, 1)]
    cfg.write_text("members: [cnn]\ntta: {flip: true, extra_sizes: [224]}\n")
    three = budget(str(cfg), "runs", recipes=recipes)
    assert [(b["size_px"], b["passes"]) for b in three["branches"]] == [(160, 2), (192, 2), (224, 2)]
    per_pass = [b["gflops"] for b in three["branches"]]
    assert per_pass[0] < per_pass[1] < per_pass[2] and three["gflops_per_image"] == pytest.approx(2 * sum(per_pass))
    cfg.write_text("members: [cnn]\ntta: {extra_sizes: [-5]}\n")
    with pytest.raises(EnsError, match=r"ens.yaml: tta: key 'extra_sizes.0': Input should be greater than 0"):
        budget(str(cfg), "runs", recipes=recipes)
