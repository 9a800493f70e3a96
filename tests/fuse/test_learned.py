"""The learned projection: starts at PCA, learns the label-bearing directions PCA misses; its
neighbour term keeps the structure the labels do not name."""

import numpy as np
import pytest
import torch

from ensemble.config.schema import EnsembleCfg, ProjectionCfg
from ensemble.errors import EnsError
from ensemble.evaluate.metrics import evaluate_embeddings
from ensemble.fuse.learned import fit_projection, fit_projection_soup, neighbour_loss, trained_on
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
    with pytest.raises(EnsError, match="projection: learned needs labelled fit images of at least 2 classes, got 0 "
                                       r"\(.*or learned.label_weight: 0 for unlabelled images\)"):
        fit_projection(x, [""] * len(x), fit_pca(x, 2), ProjectionCfg())
    with pytest.raises(ValueError, match="projection: learned needs `pca` dims and whiten: false"):
        EnsembleCfg(members=["a"], projection="learned", whiten=True)
    with pytest.raises(ValueError, match="projection: learned needs `pca` dims"):
        EnsembleCfg(members=["a"], projection="learned", pca=None)


def test_neighbour_loss_is_the_cross_entropy_between_neighbour_softmaxes():
    original = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    projected = torch.tensor([[1.0], [-1.0], [2.0]])
    cos_orig = np.array([[0, 0, 2 ** -0.5], [0, 0, 2 ** -0.5], [2 ** -0.5, 2 ** -0.5, 0]])
    cos_proj = np.array([[0, -1, 1], [-1, 0, -1], [1, -1, 0]])
    want = 0.0
    for i in range(3):
        others = [j for j in range(3) if j != i]
        target = np.exp(cos_orig[i, others] / 0.5) / np.exp(cos_orig[i, others] / 0.5).sum()
        log_p = cos_proj[i, others] / 0.25 - np.log(np.exp(cos_proj[i, others] / 0.25).sum())
        want -= (target * log_p).sum() / 3
    assert neighbour_loss(original, projected, tau_teacher=0.5, tau=0.25).item() == pytest.approx(want, rel=1e-5)


def kinds_and_classes(n: int, seed: int) -> tuple[np.ndarray, list[str], list[str]]:
    """16-d rows: dims 0-3 the labelled class (20), dims 4-7 one of 8 kinds no label names."""
    rng = np.random.default_rng(seed)
    classes, kinds = rng.integers(0, 20, n), rng.integers(0, 8, n)
    class_centres = np.random.default_rng(100).standard_normal((20, 4))
    kind_centres = np.random.default_rng(101).standard_normal((8, 4))
    x = np.concatenate([class_centres[classes], kind_centres[kinds], np.zeros((n, 8))], 1)
    x += 0.15 * rng.standard_normal((n, 16))
    return x.astype(np.float32), [f"c{c}" for c in classes], [f"k{k}" for k in kinds]


def test_neighbour_term_keeps_what_the_labels_do_not_name():
    train, train_classes, _ = kinds_and_classes(600, seed=0)
    test, test_classes, test_kinds = kinds_and_classes(400, seed=1)
    pca = fit_pca(train, 4)
    labels_only, with_neighbours = (
        fit_projection(train, train_classes, pca, ProjectionCfg(epochs=40, batch_size=64, lr=1e-2, neighbour_weight=w))
        for w in (0.0, 1.0))
    # the label loss alone spends all 4 dims on the labelled classes and loses the kinds PCA kept
    assert mp5(labels_only, test, test_kinds) < mp5(pca, test, test_kinds) - 0.4
    # with the neighbour term the kinds survive and the classes still gain over PCA
    assert mp5(with_neighbours, test, test_kinds) > mp5(labels_only, test, test_kinds) + 0.15
    assert mp5(with_neighbours, test, test_classes) > mp5(pca, test, test_classes) + 0.15


def test_label_weight_zero_trains_on_the_neighbour_term_alone():
    train, train_classes, _ = kinds_and_classes(300, seed=0)
    pca = fit_pca(train, 4)
    shuffled = list(np.random.default_rng(0).permutation(train_classes))

    def fit(labels: list[str], label_weight: float):
        cfg = ProjectionCfg(epochs=5, batch_size=64, lr=1e-2, label_weight=label_weight, neighbour_weight=1.0)
        return fit_projection(train, labels, pca, cfg).components

    # without the label loss the labels cannot matter, not even their absence; with it they do
    assert np.allclose(fit(train_classes, 0.0), fit(shuffled, 0.0), atol=1e-6)
    assert np.allclose(fit(train_classes, 0.0), fit([""] * len(train), 0.0), atol=1e-6)
    assert not np.allclose(fit(train_classes, 1.0), fit(shuffled, 1.0), atol=1e-3)
    assert not np.allclose(fit(train_classes, 0.0), pca.components, atol=1e-3)  # it did train
    assert trained_on(ProjectionCfg(label_weight=0, neighbour_weight=1)) == "neighbours"
    assert trained_on(ProjectionCfg()) == "the fit set's labels"
    with pytest.raises(ValueError, match="label_weight and neighbour_weight are both 0: the projection would not"):
        ProjectionCfg(label_weight=0)


def test_unlabelled_rows_join_the_neighbour_term_only():
    train, train_classes, _ = kinds_and_classes(300, seed=0)
    pca = fit_pca(train, 4)
    named = np.arange(len(train)) % 2 == 0  # every second row labelled
    partial = [c if keep else "" for c, keep in zip(train_classes, named)]

    def fit(x, labels, neighbour_weight: float):
        cfg = ProjectionCfg(epochs=5, batch_size=64, lr=1e-2, neighbour_weight=neighbour_weight)
        return fit_projection(x, labels, pca, cfg).components

    labelled_only = [c for c, keep in zip(train_classes, named) if keep]
    # with the neighbour term the unlabelled rows change the fit; without it they are left out exactly
    assert not np.allclose(fit(train, partial, 1.0), fit(train[named], labelled_only, 1.0), atol=1e-3)
    assert np.allclose(fit(train, partial, 0.0), fit(train[named], labelled_only, 0.0), atol=1e-6)


def _fit_before_unlabelled_rows(features, labels, start, cfg, seed=0):
    """The fit as it was before unlabelled rows were supported (8e4ae12): every row labelled, the label
    loss on the projected batch itself. A reference, so fully labelled fits stay bit for bit the same."""
    from ensemble.fuse.learned import label_head, labelled_rows

    _, targets, classes = labelled_rows(labels)
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.from_numpy(np.asarray(features, np.float32) - start.mean), torch.from_numpy(targets)
    proj = torch.nn.Parameter(torch.from_numpy(start.components.copy()))
    head = label_head(x, y, proj, classes, cfg)
    opt = torch.optim.AdamW([proj, *head.parameters()], lr=cfg.lr, weight_decay=cfg.weight_decay)
    mean = torch.from_numpy(np.asarray(start.mean, np.float32))
    for _ in range(cfg.epochs):
        for batch in torch.randperm(len(x), generator=gen).split(cfg.batch_size):
            projected = x[batch] @ proj.T
            loss = cfg.label_weight * torch.nn.functional.cross_entropy(head(projected, y[batch]), y[batch])
            loss = loss + cfg.neighbour_weight * neighbour_loss(x[batch] + mean, projected, cfg.neighbour_tau_teacher,
                                                                cfg.neighbour_tau)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return proj.detach().numpy()


def test_a_fully_labelled_fit_is_bit_identical_to_the_plain_label_loss():
    # a masked copy of the batch in the label loss moved the main job's components by 1.9e-6 and the
    # student distilled from them by 0.6 points of its ratio (2026-12-04)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((700, 96)).astype(np.float32)
    labels = [f"c{i % 37}" for i in range(700)]
    start = fit_pca(x, 16)
    cfg = ProjectionCfg(neighbour_weight=1.0, neighbour_tau_teacher=0.05, lr=3e-4, epochs=1)
    learned = fit_projection(x, labels, start, cfg)
    assert np.array_equal(learned.components, _fit_before_unlabelled_rows(x, labels, start, cfg))


def test_a_soup_of_seeds_is_the_mean_of_each_seeds_fit():
    """`learned.seeds`: one fit per batch order from the same PCA start, their matrices averaged; one seed is
    that fit unchanged (the default, so an existing ensemble fits as before)."""
    x, labels = blobs(12, 10, seed=0)
    start = fit_pca(x, 4)
    one = {seed: fit_projection(x, labels, start, ProjectionCfg(epochs=3, batch_size=32), seed=seed)
           for seed in (0, 1, 2)}
    assert not np.allclose(one[0].components, one[1].components, atol=1e-4)  # batch order matters
    alone = fit_projection_soup(x, labels, start, ProjectionCfg(epochs=3, batch_size=32))
    assert np.array_equal(alone.components, one[0].components)
    soup = fit_projection_soup(x, labels, start, ProjectionCfg(epochs=3, batch_size=32, seeds=[2, 0, 1]))
    mean = np.mean([one[s].components for s in (0, 1, 2)], axis=0)
    assert np.allclose(soup.components, mean, atol=1e-6) and np.array_equal(soup.mean, start.mean)
    assert soup.components.dtype == np.float32 and not soup.whiten
    assert trained_on(ProjectionCfg(seeds=[2, 0, 1])) == "the fit set's labels; mean of 3 fits, seeds [2, 0, 1]"


def test_soup_seeds_are_each_given_once():
    with pytest.raises(ValueError, match=r"seeds\n.*expected each seed once, got \[0, 1, 0\]"):
        ProjectionCfg(seeds=[0, 1, 0])
    with pytest.raises(ValueError, match=r"seeds\n.*at least 1 item"):
        ProjectionCfg(seeds=[])
    with pytest.raises(ValueError, match=r"seeds.1\n.*greater than or equal to 0"):
        ProjectionCfg(seeds=[0, -1])
