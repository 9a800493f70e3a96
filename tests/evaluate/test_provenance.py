from ensemble.config.schema import EnsembleCfg
from ensemble.data.manifest import read_manifest
from ensemble.evaluate.provenance import eval_overlap, fit_sets
from ensemble.evaluate.report import markdown_table
from ensemble.evaluate.run import evaluate
from ensemble.fuse.fit import fuse
from ensemble.workspace import Workspace, resolve_model
from tests.conftest import write_manifest


def ensemble_fitted_on(workspace, split: str):
    cfg = EnsembleCfg.model_validate({"name": f"on_{split}", "members": ["vit_a", "tvit"], "features": "backbone",
                                      "pca": 4, "fit_on": split, "workers": 0, "device": "cpu"})
    return fuse(cfg, workspace)


def test_a_reducer_fitted_on_the_index_is_reported_transductive_and_one_fitted_on_train_is_not(trained_workspace,
                                                                                                  tmp_path):
    ws = Workspace(trained_workspace)
    on_index, on_train = (ensemble_fitted_on(trained_workspace, s) for s in ("index", "train"))
    sets = fit_sets(on_index, ws)
    assert set(sets) == {"vit_a training", "tvit training", "ensemble:on_index reducer fit"}
    assert sets["ensemble:on_index reducer fit"] == str(trained_workspace.parent / "index.csv")
    reports = [evaluate(m, ws, out=tmp_path / f"{m.name.replace(':', '_')}.json", workers=0)
               for m in (on_index, on_train, resolve_model("vit_a", ws))]
    assert reports[0]["transductive"] == {"eval_images": 20, "via": ["ensemble:on_index reducer fit (20)"]}
    assert "transductive" not in reports[1] and "transductive" not in reports[2]  # train is disjoint from both
    table = markdown_table(reports)
    assert "| ensemble:on_index (transductive) | 4 |" in table and "| ensemble:on_train | 4 |" in table
    from ensemble.evaluate.html import summary_table

    assert "<td>ensemble:on_index (transductive)</td>" in summary_table(reports, 5)
    assert table.rstrip().endswith("transductive: ensemble:on_index was fitted on 20 of the query/index images "
                                   "(ensemble:on_index reducer fit (20))")


def test_overlap_counts_each_scored_image_once_and_skips_a_missing_set(trained_workspace, tmp_path):
    query, index = (read_manifest(trained_workspace.parent / f"{s}.csv") for s in ("query", "index"))
    rows = [{"path": p, "label": "x", "domain": ""} for p in (*query.paths[:2], *index.paths[:3])]
    some = write_manifest(tmp_path / "some.csv", rows)
    sets = {"a training": str(some), "b distillation": str(some), "gone": str(tmp_path / "missing.csv")}
    assert eval_overlap(sets, query, index) == {"eval_images": 5, "via": ["a training (5)", "b distillation (5)"]}
    assert eval_overlap({"train": str(trained_workspace.parent / "train.csv")}, query, index) is None
