"""How a model's weights start besides its pretrained backbone: another member's weights
(`backbone.init_from`) or a neck fitted by ridge regression on the teacher's targets (`neck_init`).

A neck fit is kept in the workspace cache (`runs/cache/_neck_init/`), keyed by the backbone's starting
weights, the images, the targets, the preprocessing and the ridge: runs that start alike (a soup's
seeds, a variant of a recipe) reuse it instead of embedding every distill image again.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_write_bytes, atomic_write_json
from ..checkpoint import load_checkpoint
from ..config.schema import StudentCfg
from ..device import pick_device
from ..distributed import world
from ..embed.embedder import model_embedder
from ..embed.extract import TTA, extract_many
from ..errors import EnsError
from ..hashing import file_sha1
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


def neck_fit_key(model: EmbeddingModel, manifest_sha1: str, teacher: np.ndarray, cfg: StudentCfg) -> str:
    """What defines a neck fit: the backbone's starting weights (bytes) and its whole config (pooling,
    features and kwargs are not all in the weights), the preprocessing, the distill manifest, the
    targets and the ridge."""
    h = hashlib.sha1()
    for name, tensor in sorted(model.backbone.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    bb = model.backbone
    h.update(json.dumps([cfg.backbone.model_dump(mode="json"), bb.image_size, list(bb.mean), list(bb.std),
                         manifest_sha1, float(cfg.neck_init_ridge)], sort_keys=True).encode())
    h.update(np.ascontiguousarray(teacher, np.float32).tobytes())
    return h.hexdigest()[:20]


def _load_fit(path: Path, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray] | None:
    """A cached (weight, bias) whose bytes match the checksum beside it and whose shapes fit, else None."""
    meta = path.with_suffix(".json")
    try:
        if not (path.is_file() and meta.is_file()):
            return None
        if json.loads(meta.read_text()).get("npz_sha1") != file_sha1(path):
            raise ValueError("content does not match its checksum")
        with np.load(path) as npz:
            weight, bias = npz["weight"], npz["bias"]
        if weight.shape != shape or bias.shape != shape[:1]:
            raise ValueError(f"shapes {weight.shape}/{bias.shape}, expected {shape}/{shape[:1]}")
    except (OSError, ValueError, KeyError) as exc:
        log.warning("ignoring neck-init cache %s (%s); fitting again", path, exc)
        return None
    return weight, bias


def _store_fit(path: Path, weight: np.ndarray, bias: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, weight=weight, bias=bias)
    atomic_write_bytes(path, buffer.getvalue())
    atomic_write_json(path.with_suffix(".json"),  # written last: names a finished entry
                      {"npz_sha1": hashlib.sha1(buffer.getvalue()).hexdigest(), "shape": list(weight.shape)})


def fit_neck(model: EmbeddingModel, paths: list[str], teacher: np.ndarray, cfg: StudentCfg,
             cache_dir: Path | None = None, manifest_sha1: str = "") -> None:
    """Set the neck's Linear to the ridge fit of the targets on the backbone's raw pooled features
    (train image size, no augmentation); rows of unreadable images are left out. With `cache_dir`, a fit
    of the same start, images (`manifest_sha1`), targets and ridge is reused from there."""
    linear = model.neck[-1]
    path = cache_dir / "_neck_init" / f"{neck_fit_key(model, manifest_sha1, teacher, cfg)}.npz" if cache_dir else None
    fit = _load_fit(path, tuple(linear.weight.shape)) if path else None
    if fit is None:
        fit = _ridge_fit_on_backbone(model, paths, teacher, cfg)
        if path and world().main:
            _store_fit(path, *fit)
    else:
        log.info("neck init: reusing the fit in %s", path)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(fit[0]))
        linear.bias.copy_(torch.from_numpy(fit[1]))


def _ridge_fit_on_backbone(model: EmbeddingModel, paths: list[str], teacher: np.ndarray,
                           cfg: StudentCfg) -> tuple[np.ndarray, np.ndarray]:
    device = pick_device(cfg.device)
    emb = model_embedder(model, f"{cfg.name}-init", "init", cfg.backbone.arch, "backbone", device,
                         channels_last=cfg.backbone.channels_last, normalize=False)
    feats = extract_many([emb], paths, device, TTA(flip=False), cfg.eval.batch_size, cfg.loader.workers,
                         cfg.loader.max_fail_ratio, desc="neck init", normalize=False)[0]
    model.cpu()
    readable = np.abs(feats).sum(1) > 0
    return ridge_fit(feats[readable].astype(np.float64), teacher[readable].astype(np.float64), cfg.neck_init_ridge)
