import json

import numpy as np
import pytest
from click.testing import CliRunner

from ensemble.cli import main


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_eval_member_writes_json_markdown_and_png(trained_workspace, tmp_path):
    out = tmp_path / "rep" / "vit_a.json"
    text = run("eval", "vit_a", "--workdir", trained_workspace, "--out", out, "--workers", 0)
    assert "| vit_a | 8 |" in text
    report = json.loads(out.read_text())
    assert report["queries"] == 4 and "object" in report["per_domain"]
    # the report scores the embeddings `ens embed` writes: recomputed by hand from those files
    from ensemble.data.manifest import read_manifest
    from ensemble.evaluate.metrics import evaluate_embeddings

    manifests = {s: read_manifest(trained_workspace.parent / f"{s}.csv") for s in ("query", "index")}
    feats = {}
    for split, manifest in manifests.items():
        run("embed", "vit_a", "--manifest", manifest.source, "--out", tmp_path / f"{split}.npy", "--workdir",
            trained_workspace, "--workers", 0)
        feats[split] = np.load(tmp_path / f"{split}.npy")
    again = evaluate_embeddings(feats["query"], manifests["query"].labels, feats["index"], manifests["index"].labels, 5)
    assert report["mP@5"] == again["mP@5"] and report["recall@1"] == again["recall@1"]
    assert out.with_suffix(".md").read_text().startswith("| model | dim | mP@5 |")
    png = out.with_suffix(".png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_fuse_then_eval_and_embed_the_ensemble(trained_workspace, tmp_path):
    run("fuse", "--pca", 4, "--members", "vit_a,tvit", "--name", "cli", "--workdir", trained_workspace)
    text = run("eval", "ensemble:cli", "--workdir", trained_workspace, "--out", tmp_path / "e.json", "--workers", 0)
    assert "| ensemble:cli (transductive) | 4 |" in text  # PCA fitted on the index (fit_on's default)
    assert "transductive: ensemble:cli was fitted on 20 of the query/index images (ensemble:cli reducer fit (20))" \
        in text
    manifest = trained_workspace.parent / "query.csv"
    run("embed", "ensemble:cli", "--manifest", manifest, "--out", tmp_path / "q.npy", "--workdir", trained_workspace,
        "--workers", 0)
    feats = np.load(tmp_path / "q.npy")
    assert feats.shape == (4, 4) and feats.dtype == np.float32
    assert np.allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    assert json.loads((tmp_path / "q.json").read_text())["model"] == "ensemble:cli"


def test_eval_errors_are_one_line(trained_workspace):
    result = CliRunner().invoke(main, ["eval", "student:s", "--workdir", str(trained_workspace)])
    assert result.exit_code == 2 and result.output.startswith("error: student 's': no trained model at")
    result = CliRunner().invoke(main, ["eval", "nothing.pt", "--workdir", str(trained_workspace)])
    assert result.exit_code == 2 and result.output.startswith("error: MODEL nothing.pt: exported file not found")
    result = CliRunner().invoke(main, ["eval", "vit_a", "--query", "q.csv", "--workdir", str(trained_workspace)])
    assert result.exit_code == 2 and "--query and --index must be given together" in result.output
    both = ["eval", "vit_a", "--data", "d.yaml", "--query", "q.csv", "--index", "i.csv"]
    result = CliRunner().invoke(main, [*both, "--workdir", str(trained_workspace)])
    assert result.exit_code == 2 and result.output == "error: --data d.yaml and --query/--index: give one (a data " \
        "config, or the two manifests)\n"
    fuse = ["fuse", "--pca", "999", "--members", "vit_a"]
    result = CliRunner().invoke(main, [*fuse, "--workdir", str(trained_workspace)])
    assert result.exit_code == 2 and "pca: 999 dims requested" in result.output


def test_eval_refuses_duplicate_index_rows_and_bad_k(trained_workspace, tmp_path):
    index = trained_workspace.parent / "index.csv"
    lines = index.read_text().splitlines()
    doubled = tmp_path / "index.csv"
    doubled.write_text("\n".join([*lines, lines[1]]) + "\n")
    query = trained_workspace.parent / "query.csv"
    result = CliRunner().invoke(main, ["eval", "vit_a", "--query", str(query), "--index", str(doubled),
                                       "--workdir", str(trained_workspace), "--workers", "0"])
    assert result.exit_code == 2 and f"lines 2 and {len(lines) + 1} list the same image" in result.output
    result = CliRunner().invoke(main, ["eval", "vit_a", "--k", "-3", "--workdir", str(trained_workspace)])
    assert result.exit_code == 2 and "-3 is not in the range x>=1" in result.output


def test_eval_with_other_k_reports_that_k_in_valid_json(trained_workspace, tmp_path):
    out = tmp_path / "k3.json"
    text = run("eval", "vit_a", "--k", 3, "--workdir", trained_workspace, "--out", out, "--workers", 0)
    report = json.loads(out.read_text(), parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    assert report["k"] == 3 and "mP@3" in report and "| mP@3 |" in text
    assert out.with_suffix(".md").read_text().startswith("| model | dim | mP@3 |")


def test_embed_out_and_approx_above_are_checked_before_any_work(trained_workspace, tmp_path, monkeypatch):
    """`ens embed --out x.txt` wrote .npy bytes under that name (and x.json), `--out DIR` failed only after
    embedding everything; a negative --approx-above was taken. Each is now refused up front."""
    from ensemble.workspace.resolve import ResolvedModel

    monkeypatch.setattr(ResolvedModel, "embed", lambda *a, **k: pytest.fail("embedded before checking --out"))
    manifest = str(trained_workspace.parent / "query.csv")
    for out, why in ((tmp_path / "q.txt", "has another suffix"), (tmp_path, "is a folder")):
        result = CliRunner().invoke(main, ["embed", "vit_a", "--manifest", manifest, "--out", str(out),
                                           "--workdir", str(trained_workspace)])
        assert result.exit_code == 2 and f"--out {out}: {why}; expected a .npy file name" in result.output
    for out in (tmp_path / "r.txt", tmp_path):  # ens eval --out r.txt wrote r.txt as JSON beside r.md, r.png
        result = CliRunner().invoke(main, ["eval", "vit_a", "--out", str(out), "--workdir", str(trained_workspace)])
        assert result.exit_code == 2 and f"--out {out}: expected a .json file name" in result.output
    gallery = ["index", "build", "vit_a", "--manifest", manifest, "--out", str(tmp_path / "g")]
    for command in (["eval", "vit_a"], gallery):
        result = CliRunner().invoke(main, [*command, "--approx-above", "-1", "--workdir", str(trained_workspace)])
        assert result.exit_code == 2 and "-1 is not in the range x>=0" in result.output
