"""How a model's weights start besides its pretrained backbone: another member's weights
(`backbone.init_from`) or a neck fitted by ridge regression on the teacher's targets (`neck_init`)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import load_checkpoint
from ..config.schema import StudentCfg
from ..device import pick_device
from ..embed.embedder import model_embedder
from ..embed.extract import TTA, extract_many
from ..errors import EnsError
from ..models.member import EmbeddingModel
from ..workspace.layout import MODEL_FILE, Workspace

log = logging.getLogger("ensemble")


def init_from_member(model: EmbeddingModel, workdir: Workspace | Path | str, name: str) -> None:
    """Start from another member's weights, resampling the positional embedding if sizes differ."""
    path = Workspace.at(workdir).member_dir(name) / MODEL_FILE
    if not path.is_file():
        raise EnsError(f"backbone.init_from: member {name!r} has no trained model at {path}")
    state = load_checkpoint(path, kind="member_model")["model"]
    model.backbone.resample_pos_embed(state, prefix="backbone.tower.")
    own = model.state_dict()
    # a neck of another width (e.g. a 32-d student from a 64-d member) starts fresh; the backbone must fit
    skipped = [k for k in state if k.startswith("neck.") and k in own and state[k].shape != own[k].shape]
    if skipped:
        log.info("init_from %s: neck shapes differ, neck not loaded (%s)", name, ", ".join(skipped))
        state = {k: v for k, v in state.items() if not k.startswith("neck.")}
    bad = [k for k in state if k in own and state[k].shape != own[k].shape]
    missing, unexpected = model.load_state_dict({k: v for k, v in state.items() if k not in bad}, strict=False)
    missing = [k for k in missing if not (skipped and k.startswith("neck."))]
    if unexpected or missing or bad:
        raise EnsError(f"backbone.init_from: {name!r} does not fit this architecture "
                       f"(missing {missing[:2]}, unexpected {unexpected[:2]}, other shapes {bad[:2]})")


def ridge_fit(feats: np.ndarray, targets: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """(W [out, in], b [out]) minimising |feats W^T + b - targets|^2 + lam |W|^2, bias not penalised;
    lam = ridge x the mean per-dimension feature energy, so `ridge` does not depend on feature scale."""
    mean_x, mean_y = feats.mean(0), targets.mean(0)
    xc, yc = feats - mean_x, targets - mean_y
    gram = xc.T @ xc
    lam = ridge * np.trace(gram) / gram.shape[0]
    w = np.linalg.solve(gram + lam * np.eye(gram.shape[0]), xc.T @ yc)
    return w.T.astype(np.float32), (mean_y - mean_x @ w).astype(np.float32)


def fit_neck(model: EmbeddingModel, paths: list[str], teacher: np.ndarray, cfg: StudentCfg) -> None:
    """Set the neck's Linear to the ridge fit of the targets on the backbone's raw pooled features
    (train image size, no augmentation); rows of unreadable images are left out."""
    device = pick_device(cfg.device)
    emb = model_embedder(model, f"{cfg.name}-init", "init", cfg.backbone.arch, "backbone", device,
                         channels_last=cfg.backbone.channels_last, normalize=False)
    feats = extract_many([emb], paths, device, TTA(flip=False), cfg.eval.batch_size, cfg.loader.workers,
                         cfg.loader.max_fail_ratio, desc="neck init", normalize=False)[0]
    readable = np.abs(feats).sum(1) > 0
    weight, bias = ridge_fit(feats[readable].astype(np.float64), teacher[readable].astype(np.float64),
                             cfg.neck_init_ridge)
    linear = model.neck[-1]
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(weight))
        linear.bias.copy_(torch.from_numpy(bias))
    model.cpu()
