import numpy as np
import pytest
from sklearn.decomposition import PCA

from ensemble.errors import EnsError
from ensemble.fuse.reducer import PCAReducer, fit_pca


def decaying(n=4000, d=256, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, d)) * np.arange(1, d + 1) ** -0.7 + 0.3).astype(np.float32)


def test_streaming_pca_matches_sklearn_explained_variance_and_subspace():
    x = decaying()
    ours = fit_pca(x, 16, chunk_rows=500)
    ref = PCA(16).fit(x)
    assert abs(ours.explained_variance_ratio - ref.explained_variance_ratio_.sum()) < 1e-3
    # leading components agree up to sign
    cos = np.abs((ours.components[:4] * ref.components_[:4]).sum(1))
    assert (cos > 0.99).all()


def test_memmap_input_and_chunking_give_the_same_fit(tmp_path):
    x = decaying(1000, 64)
    path = tmp_path / "f.npy"
    np.save(path, x)
    mm = np.load(path, mmap_mode="r")
    a, b = fit_pca(mm, 8, chunk_rows=100), fit_pca(x, 8, chunk_rows=1000)
    assert np.allclose(a.transform(x), b.transform(x), atol=1e-4)


def test_transform_normalises_whitens_and_refuses_wrong_dims(tmp_path):
    x = decaying(500, 32)
    red = fit_pca(x, 4, whiten=True)
    y = red.transform(x, normalize=False)
    assert np.allclose(y.var(0, ddof=1), 1.0, atol=0.05)  # whitened
    assert np.allclose(np.linalg.norm(red.transform(x), axis=1), 1.0)
    with pytest.raises(EnsError, match=r"reducer expects 32-d features, got shape \(3, 31\)"):
        red.transform(np.zeros((3, 31), np.float32))
    red.save(tmp_path / "r.npz")
    again = PCAReducer.load(tmp_path / "r.npz")
    assert again.whiten and np.array_equal(again.transform(x), red.transform(x))


def test_more_dims_than_features_is_refused():
    with pytest.raises(EnsError, match="PCA to 40 dims needs at least that many rows and features; got 500 x 32"):
        fit_pca(decaying(500, 32), 40)
