"""`ens distill`: train one student to reproduce the fused ensemble's embedding.

The teacher (a saved ensemble) embeds the distill images once, with its TTA; the targets are cached
in the student's folder and the members never run during student training. The student is a member
model (backbone + neck, the neck's last width = the ensemble's output dim) trained by the same loop.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config.load import dump_cfg, load_data_cfg
from .config.schema import StudentCfg
from .data.augment import build_train_transform
from .data.dataset import FailureLog, ImageDataset
from .data.manifest import Manifest, read_manifest
from .data.sampler import ShuffleSampler
from .device import pick_device
from .distributed import barrier, world
from .errors import EnsError
from .losses.margin import build_head
from .member import (MODEL_FILE, eval_key, evaluate_model, init_from_member, load_member_model, loader_factory,
                     save_model)
from .models.member import build_member_model
from .tasks.distill import DistillTask
from .train.checkpoint import atomic_write_bytes, atomic_write_text, load_checkpoint
from .train.loop import RunSpec, Trainer, check_same_recipe
from .train.rundir import cached_result, check_resume_recipe, run_lock

log = logging.getLogger("ensemble")


def student_dir(workdir: str | Path, name: str) -> Path:
    return Path(workdir) / "students" / name


@dataclass
class DistillData:
    """The distill manifest, with class indices (-1 for unlabelled rows) and the teacher's targets."""

    manifest: Manifest
    targets: list[int]
    classes: list[str]
    teacher: np.ndarray  # [rows, dim], L2-normalised ensemble embeddings
    teacher_info: dict


def distill_manifest(cfg: StudentCfg) -> Manifest:
    """The data config's `distill:` manifest, else its `train:` one; labels optional."""
    data = load_data_cfg(cfg.data)
    path = data.distill or data.train
    if path is None:
        raise EnsError(f"{cfg.data}: keys 'distill'/'train': a student needs images to distil on")
    return read_manifest(path, require_label=False)


def teacher_fingerprint(workdir: str | Path, teacher: str | None) -> tuple[str, str]:
    """(ensemble name, sha1 of what defines its embedding): member checkpoint hashes, grouping,
    features, TTA and the reducer's hash -- not paths, so a refit of the same ensemble keeps it."""
    import yaml

    from .fuse.ensemble import ensemble_dir, newest_ensemble

    name = teacher or newest_ensemble(workdir)
    path = ensemble_dir(workdir, name) / "ensemble.yaml"
    if not path.is_file():
        raise EnsError(f"teacher: ensemble {name!r} not found at {path} (run `ens fuse` first)")
    d = yaml.safe_load(path.read_text())
    defining = {"members": [m["key"] for m in d["members"]], "groups": d["groups"], "features": d["features"],
                "tta": d["tta"], "out_dim": d["out_dim"], "reducer": (d["reducer"] or {}).get("sha1")}
    return name, hashlib.sha1(json.dumps(defining, sort_keys=True).encode()).hexdigest()


def teacher_targets(cfg: StudentCfg, workdir: str | Path, manifest: Manifest, run_dir: Path) -> tuple[np.ndarray, dict]:
    """The ensemble's embedding of every distill row, computed once and kept in run_dir/targets.npy."""
    from .evaluate.run import embed_with, resolve_model

    name, sha1 = teacher_fingerprint(workdir, cfg.teacher)
    info = {"ensemble": name, "ensemble_sha1": sha1, "manifest": str(manifest.source),
            "manifest_sha1": manifest.sha1, "rows": len(manifest)}
    path, meta_path = run_dir / "targets.npy", run_dir / "targets.json"
    if path.is_file() and meta_path.is_file() and json.loads(meta_path.read_text()) == info:
        return np.load(path), info
    log.info("computing teacher targets with ensemble %s on %d images", name, len(manifest))
    model = resolve_model(f"ensemble:{name}", workdir)
    targets = embed_with(model, manifest, workdir, workers=cfg.loader.workers)  # sharded across ranks
    w = world()
    if w.main:
        buffer = io.BytesIO()
        np.save(buffer, targets)
        atomic_write_bytes(path, buffer.getvalue())
        atomic_write_text(meta_path, json.dumps(info))  # written last: names the finished targets
    barrier(w)
    return targets, info


def distill_data(cfg: StudentCfg, workdir: str | Path, run_dir: Path) -> DistillData:
    manifest = distill_manifest(cfg)
    labelled = sorted({label for label in manifest.labels if label})
    if cfg.loss.arcface and not labelled:
        raise EnsError(f"{manifest.source}: loss.arcface > 0 needs labels, but the distill manifest has none")
    index = {c: i for i, c in enumerate(labelled)}
    targets = [index.get(label, -1) for label in manifest.labels]
    teacher, info = teacher_targets(cfg, workdir, manifest, run_dir)
    return DistillData(manifest, targets, labelled, teacher, info)


def recipe_key(cfg: StudentCfg, data: DistillData) -> dict:
    """What defines the student's weights: its recipe (no loader/eval keys), the images, the teacher."""
    key = cfg.model_dump(mode="json", exclude={"loader": True, "eval": True, "device": True, "name": True,
                                                "data": True, "teacher": True, "backbone": {"channels_last"}})
    key["distill_manifest_sha1"] = data.manifest.sha1
    key["teacher_sha1"] = data.teacher_info["ensemble_sha1"]
    return key


def build_distill_task(cfg: StudentCfg, data: DistillData, workdir: Path) -> DistillTask:
    model = build_member_model(cfg)
    if model.out_dim != data.teacher.shape[1]:
        raise EnsError(f"neck.dims: the student ends at {model.out_dim} dims but teacher "
                       f"{data.teacher_info['ensemble']!r} embeds to {data.teacher.shape[1]}")
    if cfg.backbone.init_from:
        init_from_member(model, workdir, cfg.backbone.init_from)
    if cfg.neck_init == "lstsq":
        fit_neck(model, data, cfg)
    head = None
    if cfg.loss.arcface:
        counts = [data.targets.count(i) for i in range(len(data.classes))]
        head = build_head(cfg.head, model.out_dim, counts)
    return DistillTask(model, torch.from_numpy(data.teacher), cfg.loss, head, cfg.head)


def ridge_fit(feats: np.ndarray, targets: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """(W [out, in], b [out]) minimising |feats W^T + b - targets|^2 + lam |W|^2, bias not penalised;
    lam = ridge x the mean per-dimension feature energy, so `ridge` does not depend on feature scale."""
    mean_x, mean_y = feats.mean(0), targets.mean(0)
    xc, yc = feats - mean_x, targets - mean_y
    gram = xc.T @ xc
    lam = ridge * np.trace(gram) / gram.shape[0]
    w = np.linalg.solve(gram + lam * np.eye(gram.shape[0]), xc.T @ yc)
    return w.T.astype(np.float32), (mean_y - mean_x @ w).astype(np.float32)


def fit_neck(model, data: DistillData, cfg: StudentCfg) -> None:
    """Set the neck's Linear to the ridge fit of the targets on the backbone's pooled features
    (train image size, no augmentation); rows of unreadable images are left out."""
    from .embed.extract import TTA, extract_many
    from .embed.models import model_embedder

    device = pick_device(cfg.device)
    emb = model_embedder(model, f"{cfg.name}-init", "init", cfg.backbone.arch, "backbone", device,
                         channels_last=cfg.backbone.channels_last)
    feats = extract_many([emb], data.manifest.paths, device, TTA(flip=False), cfg.eval.batch_size, cfg.loader.workers,
                         cfg.loader.max_fail_ratio, desc="neck init", normalize=False)[0]
    readable = np.abs(feats).sum(1) > 0
    weight, bias = ridge_fit(feats[readable].astype(np.float64), data.teacher[readable].astype(np.float64),
                             cfg.neck_init_ridge)
    linear = model.neck[-1]
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(weight))
        linear.bias.copy_(torch.from_numpy(bias))
    model.cpu()


def distill(cfg: StudentCfg, workdir: str | Path) -> dict:
    """Train (or resume, or reuse) the student of `cfg`; returns its summary with eval."""
    run_dir = student_dir(workdir, cfg.name)
    with run_lock(run_dir, active=world().main):
        return _distill(cfg, workdir)


def _distill(cfg, workdir) -> dict:
    workdir, run_dir = Path(workdir), student_dir(workdir, cfg.name)
    w = world()
    run_dir.mkdir(parents=True, exist_ok=True)
    data = distill_data(cfg, workdir, run_dir)
    key = recipe_key(cfg, data)
    model_path = run_dir / MODEL_FILE
    if model_path.exists():
        check_same_recipe(model_path, load_checkpoint(model_path, kind="student_model")["recipe_key"], key)
        log.info("student %s is already trained; reusing %s", cfg.name, model_path)
        return evaluate_student(cfg, run_dir)
    check_resume_recipe(run_dir, "student", key)  # before config.yaml is overwritten
    if w.main:
        atomic_write_text(run_dir / "config.yaml", dump_cfg(cfg))
    torch.manual_seed(cfg.seed)
    task = build_distill_task(cfg, data, workdir)
    size = task.model.backbone.image_size
    transform = build_train_transform(cfg.augment, size, task.model.backbone.mean, task.model.backbone.std)
    paths = list(data.manifest.paths)
    dataset = ImageDataset(paths, data.targets, transform, draft_px=size if cfg.loader.jpeg_draft else None)
    fails = FailureLog(paths, cfg.loader.max_fail_ratio)
    spec = RunSpec(run_dir=run_dir, kind="student", config=cfg.model_dump(mode="json"), recipe_key=key,
                   stages=cfg.stages, optim=cfg.optim, seed=cfg.seed, device=pick_device(cfg.device),
                   make_loader=loader_factory(cfg, dataset, ShuffleSampler(len(paths), cfg.seed)),
                   on_batch=fails.update, nonfinite=cfg.loader.nonfinite, channels_last=cfg.backbone.channels_last,
                   extra={"teacher": data.teacher_info})
    Trainer(task, spec).fit()
    fails.check(final=True)
    if not w.main:  # rank 0 saves and evaluates
        return {"name": cfg.name, "rank": w.rank}
    task.model.cpu()
    save_model(model_path, task.model, cfg, key, kind="student_model", teacher=data.teacher_info,
               distill_manifest_sha1=data.manifest.sha1, failed_images=fails.failed)
    return evaluate_student(cfg, run_dir)


def evaluate_student(cfg: StudentCfg, run_dir: Path) -> dict:
    """mP@5 of the student's embedding (kept in eval.json while its inputs are unchanged)."""
    if not cfg.eval.enabled:
        return {"name": cfg.name}

    def compute() -> dict:
        model, payload = load_member_model(run_dir / MODEL_FILE, kind="student_model")
        return {"name": cfg.name, "teacher": payload["teacher"]["ensemble"],
                "eval_image_size": cfg.eval.image_size or model.backbone.image_size, "flip_tta": cfg.eval.flip_tta,
                "student": evaluate_model(model, cfg)["neck"]}

    return cached_result(run_dir / "eval.json", eval_key(cfg, run_dir / MODEL_FILE), compute)
