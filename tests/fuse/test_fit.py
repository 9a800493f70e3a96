import numpy as np
import pytest
import yaml

from ensemble.config.schema import EnsembleCfg
from ensemble.data.manifest import read_manifest
from ensemble.errors import EnsError
from ensemble.fuse.combine import combine, combine_to_store
from ensemble.fuse.fit import fuse
from ensemble.workspace import Workspace, resolve_model


def load_ensemble(workdir, name):
    return resolve_model(f"ensemble:{name}", workdir)


def cfg(**kw):
    base = {"members": ["vit_a", "vit_b", "tvit"], "features": "backbone", "pca": 8, "fit_on": "index",
            "workers": 0, "device": "cpu"}
    return EnsembleCfg.model_validate({**base, **kw})


def test_fuse_merges_per_architecture_concatenates_and_reduces(trained_workspace):
    ens = fuse(cfg(name="t"), trained_workspace)
    d = ens.ensemble.description
    assert d["groups"] == [[0, 1], [2]]  # the two open_clip ViTs are averaged, the timm ViT kept apart
    assert d["concat_dim"] == 16 + ens.embedders[2].out_dim and d["out_dim"] == 8
    assert d["fit_on"]["rows"] == 20 and 0 < d["reducer"]["explained_variance_ratio"] <= 1
    saved = yaml.safe_load((trained_workspace / "ensemble" / "t" / "ensemble.yaml").read_text())
    assert [m["name"] for m in saved["members"]] == ["vit_a", "vit_b", "tvit"] and saved["tta"]["flip"] is True
    loaded = load_ensemble(trained_workspace, "t")
    feats = [np.random.default_rng(i).standard_normal((5, m["dim"])).astype(np.float32)
             for i, m in enumerate(d["members"])]
    out = loaded.combine(feats)
    assert out.shape == (5, 8) and np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_power_is_saved_and_used_by_the_loaded_ensemble(trained_workspace):
    ens = fuse(cfg(name="p", power=0.5, pca=None, merge="concat"), trained_workspace)
    assert ens.ensemble.description["power"] == 0.5
    loaded = load_ensemble(trained_workspace, "p")
    feats = [np.random.default_rng(i).standard_normal((3, m["dim"])).astype(np.float32)
             for i, m in enumerate(ens.ensemble.description["members"])]
    rooted = [np.sign(f) * np.sqrt(np.abs(f)) for f in feats]
    want = combine(rooted, [[0], [1], [2]]) / np.sqrt(3)  # three unit blocks, renormalised
    assert np.allclose(loaded.combine(feats), want, atol=1e-5)
    plain = fuse(cfg(name="p1", pca=None, merge="concat"), trained_workspace)
    assert loaded.identity()["power"] == 0.5 and "power" not in plain.identity()


def test_concat_without_pca_and_merge_concat(trained_workspace):
    ens = fuse(cfg(name="c", pca=None, merge="concat", features="neck"), trained_workspace)
    assert ens.ensemble.groups == [[0], [1], [2]] and ens.ensemble.out_dim == ens.out_dim == 24
    assert ens.ensemble.reducer is None and not (trained_workspace / "ensemble" / "c" / "reducer.npz").exists()


def test_combine_averages_normalised_features():
    a = np.array([[2.0, 0.0]])
    b = np.array([[0.0, 5.0]])
    out = combine([a, b], [[0, 1]])
    assert np.allclose(out, [[np.sqrt(0.5), np.sqrt(0.5)]])
    with pytest.raises(EnsError, match=r"member embeddings do not line up: row counts \[1, 2\]"):
        combine([a, np.zeros((2, 2))], [[0], [1]])


def test_refusals(trained_workspace):
    with pytest.raises(EnsError, match="pca: 500 dims requested but the concatenated features have"):
        fuse(cfg(name="big", pca=500), trained_workspace)
    ens = load_ensemble(trained_workspace, fuse(cfg(name="r"), trained_workspace).ensemble.name)
    with pytest.raises(EnsError, match=r"ensemble:r' expects member feature dims \[16, 16, 64\], got \[16, 15, 64\]"):
        ens.combine([np.zeros((2, 16)), np.zeros((2, 15)), np.zeros((2, 64))])


def test_members_from_different_training_sets_are_refused(trained_workspace, tmp_path):
    import shutil

    import torch

    other = tmp_path / "runs"
    shutil.copytree(trained_workspace / "members", other / "members")
    path = other / "members" / "vit_b" / "best.pt"
    payload = torch.load(path, weights_only=False)
    payload["train_manifest_sha1"] = "0" * 40
    torch.save(payload, path)
    with pytest.raises(EnsError, match="members were trained on different image sets"):
        fuse(cfg(name="x"), other)


def test_changed_member_invalidates_the_ensemble(trained_workspace, tmp_path):
    import shutil

    import torch

    other = tmp_path / "runs"
    shutil.copytree(trained_workspace / "members", other / "members")
    fuse(cfg(name="e", members=["vit_a"], pca=4), other)
    path = other / "members" / "vit_a" / "best.pt"
    payload = torch.load(path, weights_only=False)
    payload["model"]["neck.1.bias"] += 1
    torch.save(payload, path)
    with pytest.raises(EnsError, match="member 'vit_a' changed since the ensemble was fitted"):
        load_ensemble(other, "e")


def test_chunked_store_equals_in_memory_combine(tmp_path):
    rng = np.random.default_rng(0)
    feats = [rng.standard_normal((50, 6)).astype(np.float16), rng.standard_normal((50, 6)).astype(np.float16),
             rng.standard_normal((50, 3)).astype(np.float16)]
    store = combine_to_store(feats, [[0, 1], [2]], tmp_path / "s.npy", chunk_rows=7)
    assert store.shape == (50, 9)
    assert np.allclose(store, combine([f.astype(np.float32) for f in feats], [[0, 1], [2]]), atol=1e-6)


def test_reducer_not_matching_its_yaml_is_refused(trained_workspace, tmp_path):
    import shutil

    other = tmp_path / "runs"
    shutil.copytree(trained_workspace / "members", other / "members")
    fuse(cfg(name="k", members=["vit_a"], pca=4), other)
    fuse(cfg(name="k2", members=["vit_a"], pca=3), other)
    # as if `ens fuse` had been killed after writing a new reducer but before its ensemble.yaml
    shutil.copy(other / "ensemble" / "k2" / "reducer.npz", other / "ensemble" / "k" / "reducer.npz")
    with pytest.raises(EnsError, match=r"reducer.npz does not match ensemble.yaml \(interrupted fuse\?\)"):
        load_ensemble(other, "k")


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("reducer"), r"missing key 'reducer'"),
    (lambda d: d.update(out_dim="4"), r"key 'out_dim': expected an integer, got str"),
    (lambda d: d["members"].__setitem__(0, "vit_a"), r"key 'members.0': expected a member entry with name and key"),
])
def test_a_hand_edited_ensemble_yaml_is_one_line_error(trained_workspace, tmp_path, edit, message):
    import shutil

    import yaml

    other = tmp_path / "runs"
    shutil.copytree(trained_workspace / "members", other / "members")
    fuse(cfg(name="k", members=["vit_a"], pca=4), other)
    path = other / "ensemble" / "k" / "ensemble.yaml"
    description = yaml.safe_load(path.read_text())
    edit(description)
    path.write_text(yaml.safe_dump(description))
    with pytest.raises(EnsError, match=rf"^\S+ensemble.yaml: {message} \(written by `ens fuse`; run it again\)$"):
        load_ensemble(other, "k")
    path.write_text("- a list\n")
    with pytest.raises(EnsError, match=r"ensemble.yaml: expected a mapping of keys"):
        load_ensemble(other, "k")


def test_an_ensemble_yaml_edited_after_fuse_is_refused_and_the_pipeline_refits_it(trained_workspace, tmp_path):
    import shutil

    from ensemble.fuse.fit import fuse_or_reuse

    other = tmp_path / "runs"
    shutil.copytree(trained_workspace / "members", other / "members")
    query, ws = read_manifest(trained_workspace.parent / "query.csv"), Workspace(other)
    fitted = fuse(cfg(name="k", members=["vit_a", "tvit"], pca=4), other).embed(query, ws, workers=0)
    path = other / "ensemble" / "k" / "ensemble.yaml"
    written = path.read_text()
    path.write_text(written.replace("power: 1.0", "power: 0.5"))  # a valid file that would embed differently
    with pytest.raises(EnsError, match=r"^\S+ensemble.yaml: content does not match its description_sha1: edited or "
                                       r"damaged since it was written by `ens fuse`; run it again$"):
        load_ensemble(other, "k")
    path.write_text(written.replace("- - 1\n", "- - 0\n"))
    with pytest.raises(EnsError, match=r"key 'groups': expected each member index 0-1 in exactly one group, got "
                                       r"\[\[0\], \[0\]\]"):
        load_ensemble(other, "k")
    path.write_text(written.replace("power: 1.0", "power: 0.5"))
    again = fuse_or_reuse(cfg(name="k", members=["vit_a", "tvit"], pca=4), other)  # refitted, not refused
    assert np.allclose(again.embed(query, ws, workers=0), fitted, atol=1e-5)
    legacy = yaml.safe_load(written)
    legacy.pop("description_sha1")  # files written before the checksum still load
    path.write_text(yaml.safe_dump(legacy, sort_keys=False))
    assert load_ensemble(other, "k").ensemble.power == 1.0


def test_learned_projection_through_fuse(trained_workspace):
    from ensemble.commands import fuse as fuse_command

    text = fuse_command.run(trained_workspace, None, ["projection=learned", "learned.epochs=2", "workers=0",
                                                     "device=cpu", "features=backbone"],
                            members="vit_a,vit_b,tvit", name="lp", pca=8, fit_on="train")
    assert "learned projection 80 -> 8 (from PCA, trained on the fit set's labels), fitted on 24 images" in text
    ens = load_ensemble(trained_workspace, "lp")
    d = ens.ensemble.description
    assert d["reducer"]["type"] == "learned" and d["out_dim"] == 8 and "explained_variance_ratio" not in d["reducer"]
    pca = fuse(cfg(name="lp_pca", fit_on="train"), trained_workspace).ensemble.reducer
    learned = load_ensemble(trained_workspace, "lp").ensemble.reducer
    assert np.array_equal(pca.mean, learned.mean)  # same start, then trained on the labels
    text = fuse_command.run(trained_workspace, None, ["projection=learned", "learned.epochs=2", "workers=0",
                                                     "device=cpu", "features=backbone", "learned.neighbour_weight=1"],
                            members="vit_a,vit_b,tvit", name="lpn", pca=8, fit_on="train")
    assert "learned projection 80 -> 8 (from PCA, trained on the fit set's labels and neighbours)" in text
    with_neighbours = load_ensemble(trained_workspace, "lpn").ensemble.reducer
    assert not np.allclose(with_neighbours.components, learned.components, atol=1e-4)
    assert not np.allclose(pca.components, learned.components, atol=1e-4)
    soups = {}
    for seeds in ("[0]", "[0,1]"):  # batches of 8 of the 24 rows: the seed's batch order matters
        text = fuse_command.run(trained_workspace, None, ["projection=learned", "learned.epochs=2", "workers=0",
                                                         "device=cpu", "features=backbone", "learned.batch_size=8",
                                                         f"learned.seeds={seeds}"],
                                members="vit_a,vit_b,tvit", name=f"lps{len(seeds)}", pca=8, fit_on="train")
        soups[seeds] = load_ensemble(trained_workspace, f"lps{len(seeds)}").ensemble
    assert "(from PCA, trained on the fit set's labels; mean of 2 fits, seeds [0, 1])" in text
    assert soups["[0,1]"].description["config"]["learned"]["seeds"] == [0, 1]
    assert not np.allclose(soups["[0,1]"].reducer.components, soups["[0]"].reducer.components, atol=1e-4)
    with pytest.raises(EnsError, match="projection: learned needs labelled fit images"):
        fuse(cfg(name="lq", projection="learned", fit_on="index", learned={"epochs": 1},
                 data=str(_unlabelled_data(trained_workspace))), trained_workspace)
    # without the label loss the same unlabelled images are enough
    unlabelled = fuse(cfg(name="lu", projection="learned", fit_on="index",
                          data=str(_unlabelled_data(trained_workspace)),
                          learned={"epochs": 1, "label_weight": 0, "neighbour_weight": 1}), trained_workspace)
    d = unlabelled.ensemble.description
    assert d["reducer"]["trained_on"] == "neighbours" and d["fit_on"]["rows"] == 24 and d["out_dim"] == 8


def _unlabelled_data(workdir):
    """A data config whose index manifest has the train images without labels."""
    import csv

    folder = workdir.parent
    rows = list(csv.DictReader(open(folder / "train.csv")))
    with open(folder / "unlabelled.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path"], *[[str((folder / r["path"]).resolve())] for r in rows]])
    (folder / "unlabelled.yaml").write_text("index: unlabelled.csv\n")
    return folder / "unlabelled.yaml"
