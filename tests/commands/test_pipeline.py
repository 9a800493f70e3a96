import json

import pytest
from click.testing import CliRunner

from ensemble.cli import main
from ensemble.commands.pipeline import load_pipeline_cfg, run_pipeline
from ensemble.errors import EnsError
from tests.conftest import tiny_recipe

ONE_EPOCH = "stages:\n  - {train: [all], epochs: 1}\n"


def write_pipeline(tmp_path, coil_data):
    a = tiny_recipe(tmp_path, coil_data, name="pa")
    b = tiny_recipe(tmp_path, coil_data, name="pb")
    for recipe, seed in ((a, 0), (b, 1)):
        text = recipe.read_text().split("stages:")[0].replace("seed: 0", f"seed: {seed}")
        recipe.write_text(text + ONE_EPOCH)
    (tmp_path / "ens.yaml").write_text("members: [pa, pb]\nfeatures: backbone\npca: 8\nworkers: 0\ndevice: cpu\n")
    student = tiny_recipe(tmp_path, coil_data, name="ps")
    student.write_text(student.read_text().split("stages:")[0] + "neck: {dims: [8], dropout: 0.0}\n"
                       "stages:\n  - {train: [neck], epochs: 1}\n  - {train: [all], epochs: 1}\n")
    pipe = tmp_path / "pipe.yaml"
    pipe.write_text("members: [pa.yaml, pb.yaml]\nensemble: ens.yaml\nstudent: ps.yaml\nmeasure_seconds: 0.2\n"
                    "workers: 0\n")
    return pipe


def test_pipeline_runs_every_step_and_a_rerun_reuses_them(tmp_path, coil_data):
    pipe = write_pipeline(tmp_path, coil_data)
    runs = tmp_path / "runs"
    result = CliRunner().invoke(main, ["pipeline", str(pipe), "--workdir", str(runs)])
    assert result.exit_code == 0, result.output
    summary = json.loads((runs / "reports" / "pipeline_pipe.json").read_text())
    models = [r["model"] for r in summary["rows"]]
    assert models == ["pa, untrained backbone", "pa", "pb", "ensemble:ens", "student:ps", "export:ps.pt"]
    reports = [json.loads(p.read_text()) for p in (runs / "reports" / "pipe").glob("*.json")]
    reports = {r["model"]: r for r in reports}
    for row in summary["rows"][1:]:  # each row is its model's report, with a cost
        assert row["mP@5"] == reports[row["model"]]["mP@5"] and row["recall@1"] == reports[row["model"]]["recall@1"]
        assert row["gflops_per_image"] > 0 and row["ms_per_image"] > 0
    student, exported = summary["rows"][-2:]
    # the exported file is the student (cosine >= 0.999 on every image, PNGs decoded alike): same neighbours
    assert exported["mP@5"] == student["mP@5"] and exported["recall@1"] == student["recall@1"]
    assert exported["gflops_per_image"] == student["gflops_per_image"]
    ens_row = summary["rows"][3]
    assert ens_row["gflops_per_image"] == pytest.approx(summary["rows"][1]["gflops_per_image"]
                                                        + summary["rows"][2]["gflops_per_image"], rel=0.01)
    assert "GFLOP/image" in result.output
    # the ensemble's PCA is fitted on the index (fit_on's default), so it and its student are transductive
    assert [bool(r.get("transductive")) for r in summary["rows"]] == [False, False, False, True, True, True]
    assert "| ensemble:ens (transductive) |" in result.output and "| pa |" in result.output
    assert "transductive: export:ps.pt was fitted on 20 of the query/index images (ensemble:ens reducer fit (20))" \
        in result.output
    page = (runs / "reports" / "pipeline_pipe.html").read_text()
    assert all(f"<h2>{m}</h2>" in page for m in models[1:]) and page.count("<tr>") == len(models) + 1
    steps = ["[1/6] member pa", "[2/6] member pb", "[3/6] ensemble ens", "[4/6] student ps", "[5/6] export ps",
             "[6/6] evaluate 5 models"]
    assert all(line in result.stderr for line in steps)  # each step announced, in order
    assert [result.stderr.index(line) for line in steps] == sorted(result.stderr.index(line) for line in steps)
    # the first member is embedded once for its row (no second, trained eval pass in its member step);
    # its untrained backbone is scored once and kept for reruns
    assert not (runs / "members/pa/eval.json").exists()
    untrained = json.loads((runs / "members/pa/untrained.json").read_text())["backbone"]
    assert summary["rows"][0]["mP@5"] == untrained["mP@5"] and untrained["queries"] > 0
    stamps = {p: p.stat().st_mtime_ns for p in [runs / "members/pa/best.pt", runs / "members/pb/best.pt",
                                                runs / "ensemble/ens/reducer.npz", runs / "students/ps/best.pt",
                                                runs / "exports/ps.pt", runs / "members/pa/untrained.json"]}
    again = run_pipeline(load_pipeline_cfg(pipe), runs)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing retrained, refitted or re-exported
    assert [r["mP@5"] for r in again["rows"]] == [r["mP@5"] for r in summary["rows"]]


def test_pipeline_config_errors(tmp_path, coil_data):
    pipe = write_pipeline(tmp_path, coil_data)
    bad = tmp_path / "bad.yaml"
    bad.write_text(pipe.read_text().replace("pb.yaml", "missing.yaml"))
    with pytest.raises(EnsError, match=r"bad.yaml: key 'members.1': \S+missing.yaml: YAML file not found"):
        load_pipeline_cfg(bad)
    bad.write_text(pipe.read_text() + "extra: 1\n")
    with pytest.raises(EnsError, match="unknown key 'extra'"):
        load_pipeline_cfg(bad)
    (tmp_path / "ens.yaml").write_text("members: [pa, other]\npca: 8\n")
    with pytest.raises(EnsError, match=r"members \['other'\] are not trained by this pipeline"):
        run_pipeline(load_pipeline_cfg(pipe), tmp_path / "runs")


def test_a_pipeline_trains_each_member_once_and_refuses_two_of_one_name(tmp_path, coil_data):
    pipe = write_pipeline(tmp_path, coil_data)
    twice = tmp_path / "twice.yaml"
    twice.write_text(pipe.read_text().replace("members: [pa.yaml, pb.yaml]", "members: [pa.yaml, pb.yaml, pa.yaml]"))
    with pytest.raises(EnsError, match=r"^members: \S+/pa.yaml is listed twice; list each recipe once$"):
        run_pipeline(load_pipeline_cfg(twice), tmp_path / "runs")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "pa.yaml").write_text((tmp_path / "pb.yaml").read_text())  # another recipe, same stem
    clash = tmp_path / "clash.yaml"
    clash.write_text(pipe.read_text().replace("members: [pa.yaml, pb.yaml]", "members: [pa.yaml, other/pa.yaml]"))
    with pytest.raises(EnsError, match=r"^members: \S+/other/pa.yaml and \S+/pa.yaml are both member 'pa' \(one "
                                       r"workspace folder\); give each recipe its own `name`$"):
        run_pipeline(load_pipeline_cfg(clash), tmp_path / "runs")
    assert not (tmp_path / "runs" / "members").exists()  # refused before anything trained


def test_a_bad_augmentation_in_a_later_recipe_stops_the_pipeline_before_the_first_trains(tmp_path, coil_data):
    pipe = write_pipeline(tmp_path, coil_data)
    (tmp_path / "pb.yaml").write_text((tmp_path / "pb.yaml").read_text() + "augment: {ops: {hflip: {p: 2}}}\n")
    with pytest.raises(EnsError, match=r"pb.yaml: augment.ops.hflip \{'p': 2\}: albumentations refused p"):
        run_pipeline(load_pipeline_cfg(pipe), tmp_path / "runs")
    assert not (tmp_path / "runs" / "members").exists()
