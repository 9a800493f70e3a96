"""The learned projection: starts at PCA, learns the label-bearing directions PCA misses."""

import numpy as np
import pytest

from ensemble.config.schema import EnsembleCfg, ProjectionCfg
from ensemble.errors import EnsError
from ensemble.evaluate.metrics import evaluate_embeddings
from ensemble.fuse.learned import fit_projection
from ensemble.fuse.reducer import fit_pca


def blobs(classes: int, per_class: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """20-d rows: dims 0-3 carry large noise (what PCA keeps), dims 4-7 small class centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, 4))
    rows = []
    for c in range(classes):
        x = np.zeros((per_class, 20))
        x[:, :4] = 3.0 * rng.standard_normal((per_class, 4))
        x[:, 4:8] = centres[c] + 0.1 * rng.standard_normal((per_class, 4))
        x[:, 8:] = 0.05 * rng.standard_normal((per_class, 12))
        rows.append(x)
    return np.concatenate(rows).astype(np.float32), [f"s{seed}c{c}" for c in range(classes) for _ in range(per_class)]


def mp5(reducer, x, labels) -> float:
    emb = reducer.transform(x)
    return evaluate_embeddings(emb[::2], labels[::2], emb[1::2], labels[1::2], k=5)["mP@5"]


def test_learned_projection_beats_pca_on_unseen_classes_and_keeps_its_form():
    train, train_labels = blobs(30, 12, seed=0)
    test, test_labels = blobs(20, 12, seed=1)  # other classes: the open-set case
    pca = fit_pca(train, 4)
    learned = fit_projection(train, train_labels, pca, ProjectionCfg(epochs=60, batch_size=32, lr=1e-2))
    assert np.array_equal(learned.mean, pca.mean) and learned.components.shape == (4, 20) and not learned.whiten
    before, after = mp5(pca, test, test_labels), mp5(learned, test, test_labels)
    assert before < 0.5 and after > before + 0.3, (before, after)
    # the saved form is PCA's: y = normalize((x - mean) @ W^T)
    by_hand = (test - learned.mean) @ learned.components.T
    assert np.allclose(learned.transform(test), by_hand / np.linalg.norm(by_hand, axis=1, keepdims=True), atol=1e-5)


def test_learned_projection_needs_labels_and_no_whitening():
    x, _ = blobs(3, 4, seed=0)
    with pytest.raises(EnsError, match="projection: learned needs labelled fit images of at least 2 classes, got 0"):
        fit_projection(x, [""] * len(x), fit_pca(x, 2), ProjectionCfg())
    with pytest.raises(ValueError, match="projection: learned needs `pca` dims and whiten: false"):
        EnsembleCfg(members=["a"], projection="learned", whiten=True)
    with pytest.raises(ValueError, match="projection: learned needs `pca` dims"):
        EnsembleCfg(members=["a"], projection="learned", pca=None)
