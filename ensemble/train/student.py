"""Students: one model trained to reproduce a fused ensemble's embedding.

The teacher (a saved ensemble) embeds the distill images once, with its TTA; the targets are cached
in the student's folder and the members never run during student training. The student is a member
model (backbone + neck, the neck's last width = the ensemble's output dim) trained by the same loop.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config.schema import StudentCfg
from ..data.manifest import Manifest
from ..data.sampler import ShuffleSampler
from ..distributed import barrier, world
from ..embed.cache import checked_meta, load_checked, write_checked
from ..errors import EnsError
from ..evaluate.model import eval_key, evaluate_model
from ..fuse.combine import combine
from ..fuse.graph import power_identity
from ..losses.margin import build_head
from ..models.member import build_member_model
from ..tasks.distill import DistillTask
from ..workspace.artifacts import load_model_file, read_ensemble
from ..workspace.layout import MODEL_FILE, Workspace
from ..workspace.resolve import ResolvedModel, resolve_model
from .data import distill_manifest
from .recipe import recipe_key
from .run import TrainJob, run_training
from .rundir import cached_result, check_recipe, run_lock
from .soup import ingredient_cfgs, save_soup
from .warm_start import fit_neck, init_from_member

log = logging.getLogger("ensemble")


@dataclass
class DistillData:
    """The distill manifest, with class indices (-1 for unlabelled rows) and the teacher's targets."""

    manifest: Manifest
    targets: list[int]
    classes: list[str]
    teacher: np.ndarray  # [rows, dim], L2-normalised ensemble embeddings
    teacher_info: dict
    members: list[np.ndarray] = field(default_factory=list)  # each member's feature (loss.members > 0)
    concat: np.ndarray | None = None  # the ensemble's concatenation before its reducer (sim_kl_teacher: concat)


def teacher_fingerprint(workdir: str | Path | Workspace, teacher: str | None) -> tuple[str, str, int]:
    """(ensemble name, sha1 of what defines its embedding, its output dim): the sha1 covers member checkpoint
    hashes, grouping, feature power, features, TTA and the reducer's hash -- not paths, so a refit of the same
    ensemble keeps it."""
    try:
        ens = read_ensemble(Workspace.at(workdir), teacher)
    except EnsError as exc:
        raise EnsError(f"teacher: {exc}") from None
    d = ens.description
    defining = {"members": ens.member_keys, "groups": ens.groups, "features": ens.features, "tta": d["tta"],
                "out_dim": d["out_dim"], "reducer": (d["reducer"] or {}).get("sha1"),
                **power_identity(ens.power)}
    return ens.name, hashlib.sha1(json.dumps(defining, sort_keys=True).encode()).hexdigest(), d["out_dim"]


def teacher_targets(cfg: StudentCfg, ws: Workspace, manifest: Manifest, run_dir: Path) -> tuple[np.ndarray, dict]:
    """The ensemble's embedding of every distill row, computed once and kept in run_dir/targets.npy (its
    checksum in targets.json beside it: damaged targets are computed again, not trained on)."""
    name, sha1, dim = teacher_fingerprint(ws, cfg.teacher)
    info = {"ensemble": name, "ensemble_sha1": sha1, "manifest": str(manifest.source),
            "manifest_sha1": manifest.sha1, "rows": len(manifest)}
    path = run_dir / "targets.npy"
    saved = checked_meta(path) or {}
    if {k: v for k, v in saved.items() if k != "npy_sha1"} == info:
        cached = load_checked(path, len(manifest), dim, expected=saved.get("npy_sha1"))
        if cached is not None:
            return cached, info
    log.info("computing teacher targets with ensemble %s on %d images", name, len(manifest))
    targets = resolve_model(f"ensemble:{name}", ws).embed(manifest, ws, workers=cfg.loader.workers)  # sharded
    w = world()
    if w.main:
        write_checked(path, targets, info)  # its JSON written last: names the finished targets
    barrier(w)
    return targets, info


def distill_data(cfg: StudentCfg, ws: Workspace, run_dir: Path) -> DistillData:
    manifest = distill_manifest(cfg)
    labelled = sorted({label for label in manifest.labels if label})
    if cfg.loss.arcface and not labelled:
        raise EnsError(f"{manifest.source}: loss.arcface > 0 needs labels, but the distill manifest has none")
    index = {c: i for i, c in enumerate(labelled)}
    targets = [index.get(label, -1) for label in manifest.labels]
    teacher, info = teacher_targets(cfg, ws, manifest, run_dir)
    concat = cfg.loss.sim_kl_teacher == "concat"
    if not (cfg.loss.members or concat):
        return DistillData(manifest, targets, labelled, teacher, info)
    ens = resolve_model(f"ensemble:{info['ensemble']}", ws)
    parts = member_targets(ens, ws, manifest, cfg.loader.workers)
    return DistillData(manifest, targets, labelled, teacher, info, parts if cfg.loss.members else [],
                       concat_targets(ens, parts) if concat else None)


def member_targets(ens: ResolvedModel, ws: Workspace, manifest: Manifest, workers: int) -> list[np.ndarray]:
    """The multi-teacher targets: every member's own feature of each distill row (from the workspace's
    embedding cache, which the ensemble's targets filled)."""
    return [np.asarray(p, np.float32) for p in ens.part_features(manifest, ws, workers=workers)]


def concat_targets(ens: ResolvedModel, parts: list[np.ndarray]) -> np.ndarray:
    """The ensemble's fused features before its reducer (merged per group, signed power, L2 per group,
    concatenated) of its member features `parts`; [rows, concat dim], unit length per row."""
    fused = combine(parts, ens.head.groups, ens.head.power)
    return fused / np.linalg.norm(fused, axis=1, keepdims=True).clip(1e-12)


def build_distill_task(cfg: StudentCfg, data: DistillData, ws: Workspace) -> DistillTask:
    """Student model (optionally started from a member, neck fitted to the targets) + distill losses."""
    model = build_member_model(cfg)
    if model.out_dim != data.teacher.shape[1]:
        raise EnsError(f"neck.dims: the student ends at {model.out_dim} dims but teacher "
                       f"{data.teacher_info['ensemble']!r} embeds to {data.teacher.shape[1]}")
    if cfg.backbone.init_from:
        init_from_member(model, ws, cfg.backbone.init_from)
    if cfg.neck_init == "lstsq":
        fit_neck(model, data.manifest.paths, data.teacher, cfg, ws.cache_dir, data.manifest.sha1)
    head = None
    if cfg.loss.arcface:
        counts = [data.targets.count(i) for i in range(len(data.classes))]
        head = build_head(cfg.head, model.out_dim, counts)
    return DistillTask(model, torch.from_numpy(data.teacher), cfg.loss, head, cfg.head,
                       [torch.from_numpy(m) for m in data.members],
                       None if data.concat is None else torch.from_numpy(data.concat))


def distill(cfg: StudentCfg, workdir: str | Path | Workspace) -> dict:
    """Train (or resume, or reuse) the student of `cfg`; returns its summary with eval."""
    ws = Workspace.at(workdir)
    if cfg.soup_seeds:
        return distill_soup(cfg, ws)
    run_dir = ws.student_dir(cfg.name)
    with run_lock(run_dir, active=world().main):
        data = distill_data(cfg, ws, run_dir)
        key = recipe_key(cfg, distill_manifest_sha1=data.manifest.sha1,
                         teacher_sha1=data.teacher_info["ensemble_sha1"])
        job = TrainJob("student", cfg, run_dir, key, list(data.manifest.paths), data.targets,
                       ShuffleSampler(len(data.manifest), cfg.seed), lambda: build_distill_task(cfg, data, ws),
                       checkpoint_extra={"teacher": data.teacher_info},
                       model_extra={"teacher": data.teacher_info, "distill_manifest_sha1": data.manifest.sha1})
        if not run_training(job):
            return {"name": cfg.name, "rank": world().rank}
        return evaluate_student(cfg, run_dir)


def distill_soup(cfg: StudentCfg, ws: Workspace) -> dict:
    """A student that is the mean of the weights of its recipe's runs, one per seed (train/soup.py)."""
    run_dir = ws.student_dir(cfg.name)
    _, teacher_sha1, _ = teacher_fingerprint(ws, cfg.teacher)
    key = recipe_key(cfg, distill_manifest_sha1=distill_manifest(cfg).sha1, teacher_sha1=teacher_sha1)
    check_recipe(run_dir / MODEL_FILE, "student_model", key)  # before hours of training, not after
    ingredients = ingredient_cfgs(cfg)
    for one in ingredients:
        log.info("student %s: ingredient %s (seed %d)", cfg.name, one.name, one.seed)
        distill(one, ws)
    w = world()
    if w.main:
        with run_lock(run_dir):
            save_soup(cfg, key, ws, ingredients)
    barrier(w)
    return evaluate_student(cfg, run_dir) if w.main else {"name": cfg.name, "rank": w.rank}


def evaluate_student(cfg: StudentCfg, run_dir: Path) -> dict:
    """mP@5 of the student's embedding (kept in eval.json while its inputs are unchanged)."""
    if not cfg.eval.enabled:
        return {"name": cfg.name}

    def compute() -> dict:
        file = load_model_file(run_dir / MODEL_FILE, kind="student_model")
        return {"name": cfg.name, "teacher": file.extra["teacher"]["ensemble"],
                "eval_image_size": cfg.eval.image_size or file.model.backbone.image_size,
                "eval_extra_sizes": list(cfg.eval.extra_sizes),
                "flip_tta": cfg.eval.flip_tta, "student": evaluate_model(file.model, cfg)["neck"]}

    return cached_result(run_dir / "eval.json", eval_key(cfg, run_dir / MODEL_FILE), compute)
