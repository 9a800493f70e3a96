"""The torch fusion graph is the one implementation: the numpy entry points give its numbers."""

import numpy as np
import pytest
import torch

from ensemble.fuse.combine import combine, fuse_features
from ensemble.fuse.graph import FusionHead, merge_groups
from ensemble.fuse.reducer import fit_pca


def features(rows=40, dims=(6, 6, 4), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((rows, d)).astype(np.float32) for d in dims]


def by_hand(feats, groups, reducer=None, power=1.0):
    """signed power -> merge -> concat -> PCA (whitened or not) -> L2, written out in numpy."""
    l2 = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    feats = [np.sign(f) * np.abs(f) ** power for f in feats]
    fused = np.concatenate([l2(np.mean([l2(feats[i]) for i in g], axis=0)) for g in groups], axis=1)
    if reducer is not None:
        fused = (fused - reducer.mean) @ reducer.components.T
        if reducer.whiten:
            fused = fused / np.sqrt(reducer.explained_variance)
    return l2(fused)


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("whiten", [False, True])
def test_head_equals_the_maths_written_out(whiten):
    feats, groups = features(), [[0, 1], [2]]
    reducer = fit_pca(combine(feats, groups), 5, whiten=whiten)
    head = FusionHead(groups, reducer)
    got = fuse_features(head, feats, [6, 6, 4], "t", chunk_rows=7)  # several chunks
    assert got.shape == (40, 5) and np.allclose(got, by_hand(feats, groups, reducer), atol=1e-5)
    assert np.allclose(got, reducer.transform(combine(feats, groups)), atol=1e-5)  # the reducer's own API agrees
    with torch.no_grad():
        traced = torch.jit.trace(head, ([torch.from_numpy(f) for f in feats],))
        assert np.allclose(traced([torch.from_numpy(f) for f in feats]).numpy(), got, atol=1e-5)


def test_merge_without_reducer_is_the_normalised_concatenation():
    feats = features(dims=(3, 3))
    merged = merge_groups([torch.from_numpy(f) for f in feats], [[0], [1]]).numpy()
    assert np.allclose(merged, np.concatenate([f / np.linalg.norm(f, axis=1, keepdims=True) for f in feats], 1),
                       atol=1e-6)
    got = fuse_features(FusionHead([[0], [1]]), feats, [3, 3], "c")
    assert np.allclose(got, by_hand(feats, [[0], [1]]), atol=1e-6)


def test_signed_power_is_applied_before_merging_and_traced():
    feats, groups = features(), [[0, 1], [2]]
    reducer = fit_pca(combine(feats, groups, power=0.5), 5)
    head = FusionHead(groups, reducer, power=0.5)
    got = fuse_features(head, feats, [6, 6, 4], "p")
    assert np.allclose(got, by_hand(feats, groups, reducer, power=0.5), atol=1e-5)
    assert not np.allclose(got, fuse_features(FusionHead(groups, reducer), feats, [6, 6, 4], "p"), atol=1e-3)
    with torch.no_grad():
        traced = torch.jit.trace(head, ([torch.from_numpy(f) for f in feats],))
        assert np.allclose(traced([torch.from_numpy(f) for f in feats]).numpy(), got, atol=1e-5)
