"""The faiss gallery on disk: exact or IVF with measured recall, hashes checked on load."""

import numpy as np
import pytest

from ensemble.errors import EnsError
from ensemble.gallery.store import Gallery, build_faiss, load, save


def vectors(n, dim=16, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_exact_below_the_threshold_and_ivf_above_it_with_its_recall():
    x = vectors(3000)
    exact, facts = build_faiss(x, approx_above=5000)
    assert facts == {"type": "exact"} and exact.ntotal == 3000
    _, facts = build_faiss(x, approx_above=1000)
    assert facts["type"] == "ivf_flat" and facts["nlist"] == 54 and 0.5 < facts["recall_at_10_vs_exact"] <= 1.0


def test_saved_gallery_searches_like_brute_force_and_refuses_damage(tmp_path):
    x = vectors(50)
    index, facts = build_faiss(x)
    rows = [{"path": f"/img/{i}.jpg", "label": str(i % 5), "domain": "d"} for i in range(50)]
    save(Gallery(tmp_path, index, rows, {"model": "m", "dim": 16, "index": facts}))
    gallery = load(tmp_path)
    distances, found = gallery.search(x[:3], 4)
    brute = np.argsort(((x[:3, None] - x[None]) ** 2).sum(-1), axis=1)[:, :4]
    assert found.tolist() == brute.tolist() and np.allclose(distances[:, 0], 0, atol=1e-3)
    assert gallery.rows[found[1, 0]]["path"] == "/img/1.jpg"
    with pytest.raises(EnsError, match="holds 16-d vectors, got queries of shape"):
        gallery.search(np.zeros((1, 8), np.float32), 3)
    (tmp_path / "rows.csv").write_text("path,label,domain\n")
    with pytest.raises(EnsError, match=r"rows.csv: does not match gallery.json"):
        load(tmp_path)
    for damaged, message in (("{", r"gallery.json: unreadable \(Expecting"), ("[]", "expected a JSON object")):
        (tmp_path / "gallery.json").write_text(damaged)
        with pytest.raises(EnsError, match=message):
            load(tmp_path)
    with pytest.raises(EnsError, match="not a gallery"):
        load(tmp_path / "nothing")
