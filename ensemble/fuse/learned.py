"""A learned linear projection of the concatenated member features, the alternative to PCA.

It starts at the fitted PCA (same mean, same 64 directions), then a CosFace margin softmax on the fit
set's labels (weight `label_weight`) trains the projection with one class centre per label (the
centres start at the class means). The optional neighbour term (`neighbour_weight`) makes the
projected in-batch similarities reproduce the concatenation's nearest neighbours, so the label loss
cannot collapse what the training labels do not name (unseen classes, category-level domains);
unlabelled fit rows ('' labels) enter the neighbour term only, and with `label_weight: 0` it is the
only loss and the fit set needs no labels. The result keeps
PCA's form, y = normalize((x - mean) @ W^T), so the fusion graph, export and eval run it unchanged.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..config.schema import HeadCfg, ProjectionCfg
from ..errors import EnsError
from ..losses.margin import build_head
from ..progress import label
from .reducer import PCAReducer


def labelled_rows(labels: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(row indices with a label, their class index, class names); refuses fewer than 2 classes."""
    rows = np.array([i for i, name in enumerate(labels) if name], dtype=np.int64)
    classes = sorted({labels[i] for i in rows})
    if len(classes) < 2:
        raise EnsError(f"projection: learned needs labelled fit images of at least 2 classes, got {len(classes)} "
                       "(fit_on: train, or a manifest with labels; or learned.label_weight: 0 for unlabelled images)")
    index = {c: i for i, c in enumerate(classes)}
    return rows, np.array([index[labels[i]] for i in rows], dtype=np.int64), classes


def neighbour_loss(original: torch.Tensor, projected: torch.Tensor, tau_teacher: float, tau: float) -> torch.Tensor:
    """Cross-entropy from each row's softmax over its in-batch cosine similarities in `original` [b, d]
    (temperature tau_teacher, the target) to the same softmax in `projected` [b, k] (temperature tau);
    a row is never its own neighbour."""
    def similarities(rows: torch.Tensor) -> torch.Tensor:
        unit = F.normalize(rows, dim=-1)
        return (unit @ unit.T).fill_diagonal_(-1e4)  # exp(-1e4 / tau) == 0: no self-match

    with torch.no_grad():
        target = F.softmax(similarities(original) / tau_teacher, dim=-1)
    return -(target * F.log_softmax(similarities(projected) / tau, dim=-1)).sum(-1).mean()


def trained_on(cfg: ProjectionCfg) -> str:
    """What the projection's losses use (and how many fits it averages), for the ensemble's description."""
    losses = " and ".join(part for part, weight in (("the fit set's labels", cfg.label_weight),
                                                      ("neighbours", cfg.neighbour_weight)) if weight)
    return losses if len(cfg.seeds) == 1 else f"{losses}; mean of {len(cfg.seeds)} fits, seeds {cfg.seeds}"


def fit_projection_soup(features, labels: list[str], start: PCAReducer, cfg: ProjectionCfg) -> PCAReducer:
    """`fit_projection` once per seed of `cfg.seeds`, the matrices averaged (a uniform soup: every fit starts
    at `start`, so their mean is a map of the same form). One fit's batch order moves a small category-level
    domain by a few hundredths of mP@5; the mean of several moves it less. One seed: that fit itself."""
    return mean_of_fits([fit_projection(features, labels, start, cfg, seed=seed) for seed in cfg.seeds], start)


def mean_of_fits(fits: list[PCAReducer], start: PCAReducer) -> PCAReducer:
    """The projection whose matrix is the mean of the fits' (all trained from `start`); one fit: itself."""
    if len(fits) == 1:
        return fits[0]
    components = np.mean([f.components for f in fits], axis=0, dtype=np.float64).astype(np.float32)
    return PCAReducer(start.mean, components, np.ones(start.out_dim), start.total_variance, whiten=False)


def fit_projection(features, labels: list[str], start: PCAReducer, cfg: ProjectionCfg, seed: int = 0) -> PCAReducer:
    """Train W [out, d] from `start`'s components on `features` [n, d]: the label term on the labelled rows,
    the neighbour term on every row, so unlabelled rows ('' labels) shape the map through their neighbours;
    with `label_weight: 0` the fit set may be unlabelled throughout."""
    targets = np.full(len(labels), -1, np.int64)  # -1: unlabelled
    classes: list[str] = []
    if cfg.label_weight > 0:
        labelled, classes_of_rows, classes = labelled_rows(labels)
        targets[labelled] = classes_of_rows
    # without a neighbour term an unlabelled row contributes nothing: keep the labelled rows only
    labels_only = cfg.label_weight > 0 and cfg.neighbour_weight == 0
    rows = np.flatnonzero(targets >= 0) if labels_only else np.arange(len(labels))
    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(np.asarray(features[rows], np.float32) - start.mean)
    y = torch.from_numpy(targets[rows])
    proj = torch.nn.Parameter(torch.from_numpy(start.components.copy()))
    head = label_head(*_labelled(x, y), proj, classes, cfg) if classes else None
    opt = torch.optim.AdamW([proj, *(head.parameters() if head else [])], lr=cfg.lr, weight_decay=cfg.weight_decay)
    mean = torch.from_numpy(np.asarray(start.mean, np.float32))
    for _ in tqdm(range(cfg.epochs), desc=label(f"learn projection-{start.out_dim} ({len(rows):,} rows)"),
                  leave=False):
        for batch in torch.randperm(len(rows), generator=gen).split(cfg.batch_size):
            projected = x[batch] @ proj.T
            loss = torch.zeros(())
            if head is not None:  # a batch without labelled rows gives empty tensors: no label loss
                named, targets_of_named = _labelled(projected, y[batch])
                if len(targets_of_named):
                    loss = loss + cfg.label_weight * F.cross_entropy(head(named, targets_of_named), targets_of_named)
            if cfg.neighbour_weight > 0:
                loss = loss + cfg.neighbour_weight * neighbour_loss(x[batch] + mean, projected,
                                                                    cfg.neighbour_tau_teacher, cfg.neighbour_tau)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return PCAReducer(start.mean, proj.detach().numpy().astype(np.float32), np.ones(start.out_dim),
                      start.total_variance, whiten=False)


def _labelled(rows: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows with a label (y >= 0) and their labels. All labelled: the tensors themselves, not an
    indexed copy, whose extra autograd node reorders the gradient sums and moves the fit in the last
    bits (enough to move a student distilled from it)."""
    if bool((y >= 0).all()):
        return rows, y
    return rows[y >= 0], y[y >= 0]


def label_head(x: torch.Tensor, y: torch.Tensor, proj: torch.Tensor, classes: list[str],
               cfg: ProjectionCfg) -> torch.nn.Module:
    """The CosFace head of the label loss, one centre per class, started at the projected class means."""
    counts = np.bincount(y.numpy(), minlength=len(classes)).tolist()
    head = build_head(HeadCfg(type="cosface", scale=cfg.scale, margin_rad=cfg.margin), proj.shape[0], counts)
    with torch.no_grad():
        centres = torch.zeros(len(classes), proj.shape[0]).index_add_(0, y, F.normalize(x @ proj.T, dim=-1))
        head.weight.copy_(F.normalize(centres, dim=-1))
    return head
