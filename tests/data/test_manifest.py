import pytest

from ensemble.data.manifest import read_manifest
from ensemble.errors import EnsError


def test_paths_are_relative_to_the_csv_and_domain_defaults(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "m.csv").write_text("path,label\nimg/a.jpg,x\n/abs/b.jpg,y\n")
    m = read_manifest(tmp_path / "sub" / "m.csv")
    assert m.paths == (str(tmp_path / "sub" / "img" / "a.jpg"), "/abs/b.jpg")
    assert m.labels == ("x", "y") and m.domains == ("all", "all") and len(m.sha1) == 40


def test_missing_columns_is_one_line_error(tmp_path):
    (tmp_path / "m.csv").write_text("file,label\na.jpg,x\n")
    with pytest.raises(EnsError, match=r"m.csv: manifest needs columns \['label', 'path'\]; missing \['path'\]"):
        read_manifest(tmp_path / "m.csv")
    with pytest.raises(EnsError, match="none.csv: manifest not found"):
        read_manifest(tmp_path / "none.csv")
    with pytest.raises(EnsError, match=r": is a folder, expected a manifest$"):
        read_manifest(tmp_path)


def test_one_image_has_one_spelling_through_dotdot_and_linked_folders(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "images")
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "m.csv").write_text("path,label\n../images/a.jpg,x\n../link/a.jpg,x\n"
                                              f"{tmp_path}/lists/../images/a.jpg,x\n")
    paths = read_manifest(tmp_path / "lists" / "m.csv").paths
    assert set(paths) == {str((tmp_path / "images" / "a.jpg").resolve())}


@pytest.mark.parametrize("content, message", [
    ("path,label\na.jpg,caf\xe9\n".encode("latin-1"), r"m.csv: not UTF-8 text \(byte 0xe9 at offset 20\)"),
    (b"path,label,domain\n", r"m.csv: manifest has a header but no rows"),
    (b"", r"m.csv: empty file"),
    (b"path,label\na.jpg,x\nb.jpg,\n", r"m.csv: line 3: empty label"),
    (b"path,label\n,x\n", r"m.csv: line 2: empty path"),
    (b"file,label\na.jpg,x\n", r"m.csv: manifest needs columns \['label', 'path'\]; missing \['path'\]"),
])
def test_bad_manifests_are_one_line_errors(tmp_path, content, message):
    (tmp_path / "m.csv").write_bytes(content)
    with pytest.raises(EnsError, match=message):
        read_manifest(tmp_path / "m.csv")


def test_unlabelled_rows_are_allowed_where_labels_are_optional(tmp_path):
    (tmp_path / "m.csv").write_text("path,label\na.jpg,x\nb.jpg,\n")
    assert read_manifest(tmp_path / "m.csv", require_label=False).labels == ("x", "")


def test_an_eval_pair_lists_each_image_once_and_keeps_query_and_index_apart(tmp_path):
    """A query also in the index found itself at distance 0 (query = index scored recall@1 1.000); a query
    listed twice was weighted twice. Both are refused, naming the file and line."""
    from ensemble.data.manifest import read_eval_pair

    for name in "abcd":
        (tmp_path / f"{name}.jpg").write_bytes(b"")
    (tmp_path / "q.csv").write_text("path,label\na.jpg,x\nb.jpg,y\n")
    (tmp_path / "i.csv").write_text("path,label\nc.jpg,x\nd.jpg,y\n")
    (tmp_path / "shared.csv").write_text("path,label\nc.jpg,x\nb.jpg,y\n")
    (tmp_path / "twice.csv").write_text("path,label\na.jpg,x\nb.jpg,y\na.jpg,x\n")
    query, index = read_eval_pair(tmp_path / "q.csv", tmp_path / "i.csv")
    assert len(query) == len(index) == 2
    with pytest.raises(EnsError, match=r"q.csv: 1 query image\(s\) also in the index \S+shared.csv \(first: line 3, "
                                       r"\S+b.jpg\); a query would find itself"):
        read_eval_pair(tmp_path / "q.csv", tmp_path / "shared.csv")
    with pytest.raises(EnsError, match=r"twice.csv: lines 2 and 4 list the same image \S+a.jpg; each query image"):
        read_eval_pair(tmp_path / "twice.csv", tmp_path / "i.csv")
