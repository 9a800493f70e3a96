import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from ensemble.config.schema import BuildCfg
from ensemble.data.build import build, load_build_cfg
from ensemble.data.manifest import read_manifest
from ensemble.errors import EnsError


def img(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4)).save(path)


def fake_sources(tmp_path):
    gld = tmp_path / "gld"
    ids = [f"{c}{i:03x}abc" for c in "ab" for i in range(5)]  # landmark 1: five images; landmark 2: five
    gld.mkdir()
    (gld / "train.csv").write_text("id,landmark_id\n" + "".join(f"{x},{1 if x[0] == 'a' else 2}\n" for x in ids))
    for x in ids:
        img(gld / "train" / x[0] / x[1] / x[2] / f"{x}.jpg")
    p10k = tmp_path / "p10k"
    p10k.mkdir()
    rows = [(f"{i}.jpg", "7" if i < 2 else "8") for i in range(6)]  # class 7 has 2 images (dropped)
    (p10k / "train.csv").write_text("name,class,group\n" + "".join(f"{n},{c},0\n" for n, c in rows))
    for n, _ in rows:
        img(p10k / "train" / n)
    for i in range(3):
        img(tmp_path / "art" / "mona" / f"{i}.png")
    return {"out": str(tmp_path / "out" / "train.csv"), "seed": 0,
            "balance": {"min_per_class": 3, "max_per_class": 4, "oversample_to": 4},
            "sources": [{"name": "gldv2", "kind": "gldv2", "csv": str(gld / "train.csv"), "images": str(gld / "train"),
                         "domain": "landmarks"},
                        {"name": "p10k", "kind": "products10k", "csv": str(p10k / "train.csv"),
                         "images": str(p10k / "train")},
                        {"name": "art", "kind": "folder", "images": str(tmp_path / "art"), "domain": "artwork"}]}


def test_build_merges_prefixes_and_balances(tmp_path):
    summary = build(BuildCfg.model_validate(fake_sources(tmp_path)))
    m = read_manifest(tmp_path / "out" / "train.csv")
    counts = {label: m.labels.count(label) for label in set(m.labels)}
    # gldv2 landmarks capped 5 -> 4; p10k class 7 (2 images) dropped, 8 (4) kept; art 3 -> oversampled to 4
    assert counts == {"gldv2:1": 4, "gldv2:2": 4, "p10k:8": 4, "art:mona": 4}
    assert all(p.endswith((".jpg", ".png")) for p in m.paths) and all(Path(p).is_file() for p in m.paths)
    assert summary["labels_dropped"] == 1 and summary["labels_capped"] == 2 and summary["rows_repeated"] == 1
    assert summary["per_source"]["p10k"] == {"rows": 4, "labels": 1, "images_found": 6, "labels_found": 2}
    assert set(summary["per_domain"]) == {"landmarks", "p10k", "artwork"}
    saved = json.loads((tmp_path / "out" / "train.summary.json").read_text())
    assert saved["rows"] == 16
    raw = list(csv.DictReader(open(tmp_path / "out" / "train.csv")))
    assert not raw[0]["path"].startswith("/")  # relative to the manifest, so the folder can move


def test_build_is_seeded(tmp_path):
    cfg = fake_sources(tmp_path)
    build(BuildCfg.model_validate(cfg))
    first = (tmp_path / "out" / "train.csv").read_text()
    build(BuildCfg.model_validate(cfg))
    assert (tmp_path / "out" / "train.csv").read_text() == first


def test_build_errors(tmp_path):
    cfg = fake_sources(tmp_path)
    (tmp_path / "gld" / "train.csv").write_text("image,landmark\nx,1\n")
    with pytest.raises(EnsError, match=r"gld/train.csv: expected columns \['id', 'landmark_id'\]"):
        build(BuildCfg.model_validate(cfg))
    bad = tmp_path / "b.yaml"
    bad.write_text("out: x.csv\nsources:\n  - {name: a, kind: gldv2, images: .}\n")
    with pytest.raises(EnsError, match="b.yaml: key 'sources.0': Value error, kind gldv2 needs `csv`"):
        load_build_cfg(bad)
    dup = {**cfg, "sources": [cfg["sources"][2], cfg["sources"][2]]}
    with pytest.raises(EnsError, match="names must be unique"):
        build(BuildCfg.model_validate(dup))


def test_build_refuses_to_write_over_a_source_csv(tmp_path):
    cfg = fake_sources(tmp_path)
    source = next(s for s in cfg["sources"] if s.get("csv"))
    before = Path(source["csv"]).read_bytes()
    with pytest.raises(EnsError, match=rf"^out: \S+ is source {source['name']}'s csv; writing there would replace"):
        build(BuildCfg.model_validate({**cfg, "out": f"{tmp_path}/./{Path(source['csv']).relative_to(tmp_path)}"}))
    assert Path(source["csv"]).read_bytes() == before
