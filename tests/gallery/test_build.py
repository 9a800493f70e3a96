"""ens index build / add and ens search on a workspace's models."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ensemble.cli import main
from ensemble.data.manifest import read_manifest
from ensemble.workspace.resolve import ResolvedModel


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_build_search_add_and_a_changed_model_is_refused(distilled_workspace, tmp_path):
    data = distilled_workspace.parent
    out = tmp_path / "gallery"
    text = run("index", "build", "student:stu", "--manifest", data / "index.csv", "--out", out, "--workers", 0,
               "--workdir", distilled_workspace)
    assert "20 images x 8-d" in text and "exact" in text
    index = read_manifest(data / "index.csv")
    # an index image finds itself first, at distance ~0
    found = json.loads(run("search", out, index.paths[3], "--k", 3, "--json", "--workdir", distilled_workspace))
    first = found[0]["neighbours"][0]
    assert first["path"] == index.paths[3] and first["distance"] < 1e-3 and len(found[0]["neighbours"]) == 3
    assert first["label"] == index.labels[3]
    text = run("index", "add", out, "--manifest", data / "query.csv", "--workers", 0, "--workdir", distilled_workspace)
    assert "24 images" in text
    query = read_manifest(data / "query.csv")
    found = json.loads(run("search", out, query.paths[0], "--k", 1, "--json", "--workdir", distilled_workspace))
    assert found[0]["neighbours"][0]["path"] == query.paths[0]
    again = CliRunner().invoke(main, ["index", "add", str(out), "--manifest", str(data / "query.csv"),
                                      "--workdir", str(distilled_workspace)])
    assert again.exit_code == 2 and "already in the gallery" in again.output
    other = CliRunner().invoke(main, ["search", str(out), query.paths[0], "--model", "vit_a",
                                      "--workdir", str(distilled_workspace)])
    assert other.exit_code == 2 and "embeds differently" in other.output


def test_folder_galleries_are_labelled_by_folder(distilled_workspace, tmp_path, monkeypatch):
    import shutil

    from ensemble.gallery.build import build_gallery

    index = read_manifest(distilled_workspace.parent / "index.csv")
    for i, (path, label) in enumerate(zip(index.paths[:6], index.labels[:6], strict=True)):
        (tmp_path / "imgs" / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, tmp_path / "imgs" / label / f"{i}.png")
    gallery = build_gallery("vit_a", distilled_workspace, tmp_path / "g", folder=str(tmp_path / "imgs"), workers=0)
    assert gallery.index.ntotal == 6 and sorted({r["label"] for r in gallery.rows}) == sorted(set(index.labels[:6]))
    from ensemble.errors import EnsError

    with pytest.raises(EnsError, match="give exactly one of --manifest CSV and --folder DIR"):
        build_gallery("vit_a", distilled_workspace, tmp_path / "h")
    with pytest.raises(EnsError, match="a gallery is already there"):
        build_gallery("vit_a", distilled_workspace, tmp_path / "g", folder=str(tmp_path / "imgs"))
    from ensemble.gallery.build import add_to_gallery

    embedded = []
    monkeypatch.setattr(ResolvedModel, "embed", lambda self, *a, **k: embedded.append(1))
    with pytest.raises(EnsError, match=r"^--folder \S+imgs: 6 image\(s\) already in the gallery"):
        add_to_gallery(tmp_path / "g", distilled_workspace, images_folder=str(tmp_path / "imgs"), workers=0)
    assert not embedded  # refused before any image is embedded


def test_a_gallery_of_an_exported_file_is_searched_with_that_file(distilled_workspace, tmp_path):
    from ensemble.deploy.export import export
    from ensemble.gallery.build import build_gallery, search_gallery

    data = distilled_workspace.parent
    exported = tmp_path / "stu.onnx"
    export("student:stu", distilled_workspace, exported, sample=2)
    build_gallery(str(exported), distilled_workspace, tmp_path / "g", manifest=str(data / "index.csv"), workers=0)
    index = read_manifest(data / "index.csv")
    found = search_gallery(tmp_path / "g", distilled_workspace, [index.paths[5]], k=1)
    assert found[0]["neighbours"][0]["path"] == index.paths[5]


def test_an_unreadable_query_image_is_named_not_counted(distilled_workspace, tmp_path):
    """A query the user names is never skipped as a zero row: one bad image among good ones is an error
    naming it (it was '1 of 2 images unreadable (50.0% > max_fail_ratio 1.0%)')."""
    from ensemble.errors import EnsError
    from ensemble.gallery.build import build_gallery, search_gallery

    data = distilled_workspace.parent
    build_gallery("student:stu", distilled_workspace, tmp_path / "g", manifest=str(data / "index.csv"), workers=0)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    good = read_manifest(data / "index.csv").paths[0]
    with pytest.raises(EnsError, match=rf"^{broken}: unreadable image \(cannot identify image file"):
        search_gallery(tmp_path / "g", distilled_workspace, [good, str(broken)], k=1)
    with pytest.raises(EnsError, match=rf"^{tmp_path / 'gone.jpg'}: image not found$"):
        search_gallery(tmp_path / "g", distilled_workspace, [str(tmp_path / "gone.jpg")], k=1)


def test_an_unreadable_gallery_image_is_left_out_not_indexed_as_a_zero_row(distilled_workspace, tmp_path, caplog):
    """1 bad image in 101 is within max_fail_ratio (1%): extraction gives it a zero row, which the gallery
    would return to every query at distance 1; it is left out, with a warning, by build and by add."""
    import shutil

    from ensemble.gallery.build import add_to_gallery, build_gallery

    good = read_manifest(distilled_workspace.parent / "index.csv").paths
    for folder in ("a", "b"):
        for i in range(100):
            (tmp_path / folder / f"c{i % 4}").mkdir(parents=True, exist_ok=True)
            shutil.copy(good[i % len(good)], tmp_path / folder / f"c{i % 4}" / f"{i}{Path(good[0]).suffix}")
        (tmp_path / folder / "c0" / "broken.png").write_bytes(b"\x89PNG not a png")
    gallery = build_gallery("student:stu", distilled_workspace, tmp_path / "g", folder=str(tmp_path / "a"),
                            workers=0)
    assert gallery.index.ntotal == len(gallery.rows) == 100
    gallery = add_to_gallery(tmp_path / "g", distilled_workspace, images_folder=str(tmp_path / "b"), workers=0)
    assert gallery.index.ntotal == len(gallery.rows) == 200
    assert not [r for r in gallery.rows if r["path"].endswith("broken.png")]
    assert "left 1 unreadable image(s) out of the gallery" in caplog.text
