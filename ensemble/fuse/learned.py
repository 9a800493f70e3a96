"""A learned linear projection of the concatenated member features, the alternative to PCA.

It starts at the fitted PCA (same mean, same 64 directions), then a CosFace margin softmax on the fit
set's labels trains the projection with one class centre per label (the centres start at the
class means). The result keeps PCA's form, y = normalize((x - mean) @ W^T), so the fusion graph,
export and eval run it unchanged.
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
                       "(fit_on: train, or a manifest with labels)")
    index = {c: i for i, c in enumerate(classes)}
    return rows, np.array([index[labels[i]] for i in rows], dtype=np.int64), classes


def fit_projection(features, labels: list[str], start: PCAReducer, cfg: ProjectionCfg, seed: int = 0) -> PCAReducer:
    """Train W [out, d] from `start`'s components on the labelled rows of `features` [n, d]."""
    rows, targets, classes = labelled_rows(labels)
    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(np.asarray(features[rows], np.float32) - start.mean)
    y = torch.from_numpy(targets)
    proj = torch.nn.Parameter(torch.from_numpy(start.components.copy()))
    counts = np.bincount(targets, minlength=len(classes)).tolist()
    head = build_head(HeadCfg(type="cosface", scale=cfg.scale, margin_rad=cfg.margin), start.out_dim, counts)
    with torch.no_grad():
        centres = torch.zeros(len(classes), start.out_dim).index_add_(0, y, F.normalize(x @ proj.T, dim=-1))
        head.weight.copy_(F.normalize(centres, dim=-1))
    opt = torch.optim.AdamW([proj, *head.parameters()], lr=cfg.lr, weight_decay=cfg.weight_decay)
    for _ in tqdm(range(cfg.epochs), desc=label(f"learn projection-{start.out_dim} ({len(rows):,} rows)"),
                  leave=False):
        for batch in torch.randperm(len(rows), generator=gen).split(cfg.batch_size):
            loss = F.cross_entropy(head(x[batch] @ proj.T, y[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return PCAReducer(start.mean, proj.detach().numpy().astype(np.float32), np.ones(start.out_dim),
                      start.total_variance, whiten=False)
