"""Fitting an ensemble in a workspace: embed the fit set with every member (one decode per image,
cached), merge per architecture, concatenate, fit the reducer, save `ensemble.yaml` + `reducer.npz`."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from ..config.load import load_data_cfg
from ..config.schema import EnsembleCfg
from ..data.manifest import Manifest, read_manifest
from ..device import pick_device
from ..distributed import device_for, world
from ..embed.cache import embed_manifest
from ..embed.extract import TTA
from ..errors import EnsError
from ..workspace.artifacts import saved_ensemble_config, write_ensemble
from ..workspace.layout import Workspace
from ..workspace.resolve import Part, ResolvedModel, load_members, resolve_model
from .combine import combine_to_store, group_members
from .learned import fit_projection_soup, trained_on
from .reducer import PCAReducer, fit_pca

log = logging.getLogger("ensemble")


def fit_manifest(cfg: EnsembleCfg, data_path: Path) -> Manifest:
    """The manifest the reducer is fitted on: a split of the data config or a CSV path."""
    if cfg.fit_on in ("train", "query", "index", "distill"):
        data = load_data_cfg(data_path)
        path = getattr(data, cfg.fit_on) or (data.train if cfg.fit_on == "distill" else None)
        if path is None:
            raise EnsError(f"{data_path}: key '{cfg.fit_on}': needed to fit the ensemble (fit_on)")
        return read_manifest(path, require_label=False)
    return read_manifest(cfg.fit_on, require_label=False)


def check_same_training_set(parts: list[Part]) -> None:
    """Members fused together must have been trained on the same manifest."""
    seen = {p.file.train_manifest_sha1 for p in parts}
    if len(seen) > 1:
        desc = ", ".join(f"{p.embedder.name}: {str(p.file.train_manifest_sha1)[:10]}" for p in parts)
        raise EnsError(f"members were trained on different image sets (train manifest hashes {desc})")


def fuse(cfg: EnsembleCfg, workdir: str | Path | Workspace) -> ResolvedModel:
    """Fit and save the ensemble of `cfg`; returns it resolved (ready to embed)."""
    ws = Workspace.at(workdir)
    device = device_for(world(), pick_device(cfg.device))
    name = cfg.name or "default"
    parts = load_members(ws, cfg.members, cfg.features, device)
    check_same_training_set(parts)
    manifest = fit_manifest(cfg, Path(cfg.data or parts[0].file.data))
    tta = TTA(cfg.tta.flip, tuple(cfg.tta.extra_sizes))
    embedders = [p.embedder for p in parts]
    features = embed_manifest(embedders, manifest, ws.cache_dir, device, tta, cfg.batch_size, cfg.workers, mmap=True)
    groups = group_members([e.arch for e in embedders], cfg.merge)
    folder = ws.ensemble_dir(name)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        fused = combine_to_store(features, groups, Path(tmp) / "fit_features.npy", cfg.power)
        concat_dim = fused.shape[1]
        reducer = None
        if cfg.pca is not None:
            if cfg.pca > concat_dim:
                raise EnsError(f"pca: {cfg.pca} dims requested but the concatenated features have {concat_dim}")
            reducer = fit_pca(fused, cfg.pca, whiten=cfg.whiten)
            if cfg.projection == "learned":
                reducer = fit_projection_soup(fused, list(manifest.labels), reducer, cfg.learned)
        del fused
    write_ensemble(ws, describe(cfg, name, parts, groups, manifest, concat_dim, reducer), reducer)
    return resolve_model(f"ensemble:{name}", ws, device=device)


def describe(cfg: EnsembleCfg, name: str, parts: list[Part], groups, manifest: Manifest, concat_dim: int,
             reducer: PCAReducer | None) -> dict:
    """ensemble.yaml: everything that defines the ensemble's embedding."""
    return {
        "name": name,
        "config": cfg.model_dump(mode="json"),
        "members": [{"name": p.embedder.name, "arch": p.embedder.arch, "key": p.embedder.key,
                     "dim": p.embedder.out_dim, "size_px": p.embedder.size_px, "checkpoint": str(p.file.path)}
                    for p in parts],
        "features": cfg.features,
        "groups": groups,
        "power": cfg.power,
        "tta": {"flip": cfg.tta.flip, "extra_sizes": list(cfg.tta.extra_sizes)},
        "fit_on": {"manifest": str(manifest.source), "sha1": manifest.sha1, "rows": len(manifest)},
        "concat_dim": concat_dim,
        "out_dim": reducer.out_dim if reducer else concat_dim,
        "reducer": None if reducer is None else {
            "type": cfg.projection, "dims": reducer.out_dim, "whiten": reducer.whiten,
            **({"explained_variance_ratio": round(reducer.explained_variance_ratio, 6)} if cfg.projection == "pca"
               else {"trained_on": trained_on(cfg.learned)})},
    }


def fuse_or_reuse(cfg: EnsembleCfg, workdir: str | Path | Workspace) -> ResolvedModel:
    """The ensemble of `cfg`: reused when its saved config and member checkpoints are unchanged."""
    ws = Workspace.at(workdir)
    try:
        saved = saved_ensemble_config(ws, cfg.name)
    except EnsError as exc:  # a damaged ensemble.yaml: fitted again, as a damaged cache entry is computed again
        log.warning("refitting ensemble %s: %s", cfg.name, exc)
        saved = None
    if saved == cfg.model_dump(mode="json"):
        try:
            ens = resolve_model(f"ensemble:{cfg.name}", ws)
            log.info("ensemble %s is up to date; reusing it", cfg.name)
            return ens
        except EnsError as exc:
            log.info("refitting ensemble %s: %s", cfg.name, exc)
    return fuse(cfg, ws)
