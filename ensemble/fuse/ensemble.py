"""`ens fuse`: member features -> merged per architecture -> concatenated -> PCA -> L2-normalised.

An ensemble on disk (runs/ensemble/<name>/) is `ensemble.yaml` (members with their checkpoint
hashes and dims, grouping, TTA, reducer facts) plus `reducer.npz`. Loading it checks that the
members still are the ones it was fitted on.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from ..config.load import load_data_cfg
from ..config.schema import EnsembleCfg
from ..data.manifest import Manifest, read_manifest
from ..device import pick_device
from ..embed.cache import embed_manifest
from ..embed.extract import TTA, Embedder
from ..embed.models import file_sha1, load_member_embedder
from ..errors import EnsError
from ..train.checkpoint import atomic_write_text
from .reducer import PCAReducer, fit_pca

log = logging.getLogger("ensemble")


def ensemble_dir(workdir: str | Path, name: str) -> Path:
    return Path(workdir) / "ensemble" / name


def group_members(embedders: list[Embedder], merge: str) -> list[list[int]]:
    """Member indices per group: one group per architecture ('mean') or per member ('concat')."""
    if merge == "concat":
        return [[i] for i in range(len(embedders))]
    groups: dict[str, list[int]] = {}
    for i, emb in enumerate(embedders):
        groups.setdefault(emb.arch, []).append(i)
    return list(groups.values())


def combine(features: list[np.ndarray], groups: list[list[int]]) -> np.ndarray:
    """Average the L2-normalised features inside each group, renormalise, concatenate the groups."""
    rows = {f.shape[0] for f in features}
    if len(rows) != 1:
        raise EnsError(f"member embeddings do not line up: row counts {sorted(rows)}")
    parts = []
    for group in groups:
        dims = {features[i].shape[1] for i in group}
        if len(dims) != 1:
            raise EnsError(f"members merged as one architecture have different dims {sorted(dims)}")
        merged = np.mean([_l2(features[i]) for i in group], axis=0)
        parts.append(_l2(merged))
    return np.concatenate(parts, axis=1)


def combine_to_store(features: list[np.ndarray], groups: list[list[int]], path: Path,
                     chunk_rows: int = 16384) -> np.ndarray:
    """`combine` chunk by chunk into a float32 .npy memmap at `path`, so the inputs can be memmaps
    larger than memory; returns the memmap."""
    rows = {f.shape[0] for f in features}
    if len(rows) != 1:
        raise EnsError(f"member embeddings do not line up: row counts {sorted(rows)}")
    n = rows.pop()
    width = sum(features[g[0]].shape[1] for g in groups)
    store = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, width))
    for start in range(0, n, chunk_rows):
        store[start:start + chunk_rows] = combine([np.asarray(f[start:start + chunk_rows], np.float32)
                                                   for f in features], groups)
    store.flush()
    return store


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def fit_manifest(cfg: EnsembleCfg, data_path: Path) -> Manifest:
    """The manifest the reducer is fitted on: a split of the data config or a CSV path."""
    if cfg.fit_on in ("train", "query", "index", "distill"):
        data = load_data_cfg(data_path)
        path = getattr(data, cfg.fit_on) or (data.train if cfg.fit_on == "distill" else None)
        if path is None:
            raise EnsError(f"{data_path}: key '{cfg.fit_on}': needed to fit the ensemble (fit_on)")
        return read_manifest(path, require_label=False)
    return read_manifest(cfg.fit_on, require_label=False)


def check_same_training_set(embedders: list[Embedder]) -> None:
    """Members fused together must have been trained on the same manifest."""
    seen = {e.info.get("train_manifest_sha1") for e in embedders}
    if len(seen) > 1:
        desc = ", ".join(f"{e.name}: {str(e.info.get('train_manifest_sha1'))[:10]}" for e in embedders)
        raise EnsError(f"members were trained on different image sets (train manifest hashes {desc})")


@dataclass
class Ensemble:
    """A fitted ensemble: member embedders, grouping and an optional PCA reducer."""

    name: str
    description: dict
    embedders: list[Embedder]
    reducer: PCAReducer | None

    @property
    def tta(self) -> TTA:
        return TTA(self.description["tta"]["flip"], tuple(self.description["tta"]["extra_sizes"]))

    def transform(self, features: list[np.ndarray]) -> np.ndarray:
        """Member features (in member order) -> the ensemble embedding."""
        expected = [m["dim"] for m in self.description["members"]]
        got = [f.shape[1] if f.ndim == 2 else None for f in features]
        if got != expected:
            raise EnsError(f"ensemble {self.name!r} expects member feature dims {expected}, got {got}")
        fused = combine(features, self.description["groups"])
        return self.reducer.transform(fused) if self.reducer else _l2(fused)


def fuse(cfg: EnsembleCfg, workdir: str | Path) -> Ensemble:
    """Embed the fit set with every member (decode once, cached), merge, concatenate, fit, save."""
    device = pick_device(cfg.device)
    name = cfg.name or "default"
    embedders = [load_member_embedder(workdir, m, cfg.features, device) for m in cfg.members]
    check_same_training_set(embedders)
    data_path = Path(cfg.data or embedders[0].info["data"])
    manifest = fit_manifest(cfg, data_path)
    tta = TTA(cfg.tta.flip, tuple(cfg.tta.extra_sizes))
    features = embed_manifest(embedders, manifest, workdir, device, tta, cfg.batch_size, cfg.workers, mmap=True)
    groups = group_members(embedders, cfg.merge)
    out = ensemble_dir(workdir, name)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        fused = combine_to_store(features, groups, Path(tmp) / "fit_features.npy")
        concat_dim = fused.shape[1]
        reducer = None
        if cfg.pca is not None:
            if cfg.pca > concat_dim:
                raise EnsError(f"pca: {cfg.pca} dims requested but the concatenated features have {concat_dim}")
            reducer = fit_pca(fused, cfg.pca, whiten=cfg.whiten)
        del fused
    description = describe(cfg, name, embedders, groups, manifest, concat_dim, reducer)
    if reducer is not None:
        reducer.save(out / "reducer.npz")
        # the yaml is written last and names the reducer's hash: a fuse killed in between is detected
        description["reducer"]["sha1"] = file_sha1(out / "reducer.npz")
    else:
        (out / "reducer.npz").unlink(missing_ok=True)
    atomic_write_text(out / "ensemble.yaml", yaml.safe_dump(description, sort_keys=False))
    return Ensemble(name, description, embedders, reducer)


def describe(cfg: EnsembleCfg, name: str, embedders, groups, manifest: Manifest, concat_dim: int,
             reducer: PCAReducer | None) -> dict:
    return {
        "name": name,
        "config": cfg.model_dump(mode="json"),
        "members": [{"name": e.name, "arch": e.arch, "key": e.key, "dim": e.out_dim, "size_px": e.size_px,
                     "checkpoint": e.info.get("checkpoint")} for e in embedders],
        "features": cfg.features,
        "groups": groups,
        "tta": {"flip": cfg.tta.flip, "extra_sizes": list(cfg.tta.extra_sizes)},
        "fit_on": {"manifest": str(manifest.source), "sha1": manifest.sha1, "rows": len(manifest)},
        "concat_dim": concat_dim,
        "out_dim": reducer.out_dim if reducer else concat_dim,
        "reducer": None if reducer is None else {
            "type": "pca", "dims": reducer.out_dim, "whiten": reducer.whiten,
            "explained_variance_ratio": round(reducer.explained_variance_ratio, 6)},
    }


def newest_ensemble(workdir: str | Path) -> str:
    found = sorted((p.stat().st_mtime, p.parent.name) for p in (Path(workdir) / "ensemble").glob("*/ensemble.yaml"))
    if not found:
        raise EnsError(f"no ensemble in {workdir}/ensemble (run `ens fuse` first)")
    return found[-1][1]


def load_ensemble(workdir: str | Path, name: str | None = None, device=None) -> Ensemble:
    """Load a fitted ensemble; refuses one whose members changed since it was fitted."""
    name = name or newest_ensemble(workdir)
    folder = ensemble_dir(workdir, name)
    if not (folder / "ensemble.yaml").is_file():
        raise EnsError(f"ensemble {name!r}: not found at {folder}")
    description = yaml.safe_load((folder / "ensemble.yaml").read_text())
    device = device or pick_device(description["config"]["device"])
    embedders = [load_member_embedder(workdir, m["name"], description["features"], device)
                 for m in description["members"]]
    for emb, member in zip(embedders, description["members"], strict=True):
        if emb.key != member["key"]:
            raise EnsError(f"ensemble {name!r}: member {emb.name!r} changed since the ensemble was fitted "
                           "(checkpoint hash differs); run `ens fuse` again")
    reducer = None
    if description["reducer"]:
        path = folder / "reducer.npz"
        if not path.is_file() or file_sha1(path) != description["reducer"].get("sha1"):
            raise EnsError(f"ensemble {name!r}: {path} does not match ensemble.yaml (interrupted fuse?); "
                           "run `ens fuse` again")
        reducer = PCAReducer.load(path)
    return Ensemble(name, description, embedders, reducer)
