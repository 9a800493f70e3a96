import csv

import pytest
from PIL import Image

from ensemble.config.load import load_data_cfg
from ensemble.data import fetch as fetch_mod
from ensemble.data.fetch import fetch
from ensemble.errors import EnsError


def fake_grocery(root):
    files = ["train/Fruit/Apple/Pink-Lady/a.jpg", "test/Fruit/Apple/Pink-Lady/b.jpg",
             "train/Fruit/Apple/Granny-Smith/c.jpg", "val/Vegetables/Carrots/d.jpg",
             "test/Fruit/Apple/Granny-Smith/e.jpg", "iconic-images-and-descriptions/Fruit/Apple/Granny-Smith/f.jpg"]
    for f in files:
        path = root / "images" / "dataset" / f
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(path)


def test_fetch_writes_the_open_set_split_and_points_the_config_at_it(tmp_path, monkeypatch):
    dest = tmp_path / "data" / "grocery"
    monkeypatch.setattr(fetch_mod, "download_grocery", lambda d: fake_grocery(d))
    config = tmp_path / "configs" / "grocery.yaml"
    fetch("grocery", dest, tmp_path / "no-shared", config)
    rows = {s: list(csv.DictReader(open(dest / f"{s}.csv"))) for s in ("train", "query", "index")}
    assert [(r["label"], r["domain"]) for r in rows["train"]] == [("Pink-Lady", "fruit")] * 2  # all its photos
    assert [r["path"].split("/")[-1] for r in rows["query"]] == ["e.jpg"]  # eval class, test photos
    assert sorted(r["path"].split("/")[-1] for r in rows["index"]) == ["c.jpg", "d.jpg", "f.jpg"]
    assert {r["domain"] for r in rows["index"]} == {"fruit", "vegetables"}
    cfg = load_data_cfg(config)  # the rewritten data config resolves to the new manifests
    assert cfg.query == (dest / "query.csv").resolve()


def test_fetch_uses_the_shared_copy_without_downloading(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "train.csv").write_text("path,label\n")
    monkeypatch.setattr(fetch_mod, "download_grocery", lambda d: pytest.fail("downloaded"))
    assert fetch("grocery", tmp_path / "d", shared, tmp_path / "c.yaml") == shared
    assert not (tmp_path / "c.yaml").exists()


def test_fetch_errors(tmp_path, monkeypatch):
    with pytest.raises(EnsError, match="unknown dataset"):
        fetch("imagenet", tmp_path, tmp_path, tmp_path / "c.yaml")

    def offline(url, timeout):
        raise OSError("no network")

    monkeypatch.setattr(fetch_mod.urllib.request, "urlopen", offline)
    with pytest.raises(EnsError, match="cannot download .*no internet"):
        fetch("grocery", tmp_path / "d", tmp_path / "none", tmp_path / "c.yaml")
