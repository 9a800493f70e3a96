"""The orchestration members and students share: claim the run folder, check the recipe, train
(resuming) or, for a WiSE-FT variant of a finished run or the same recipe under another name or other
eval settings, derive the model from that run (train/wise_ft.py), save
the self-describing model file, record unreadable images.

What differs between them is data: a `TrainJob` names the images, targets, sampler, task and the
records to keep; `train_member` and `distill` only build one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..atomic import atomic_write_json, atomic_write_text
from ..config.load import dump_cfg
from ..config.schema import EvalCfg, MemberCfg
from ..data.augment import build_train_transform
from ..data.dataset import FailureLog, ImageDataset
from ..device import pick_device
from ..distributed import world
from ..errors import EnsError
from ..tasks.base import Task
from ..workspace.artifacts import save_model
from ..workspace.layout import MODEL_FILE
from .data import loader_factory
from .loop import RunSpec, Trainer
from .rundir import check_recipe, check_resume_recipe
from .wise_ft import derive_from_run, find_source_run, inherit_records, interpolate, snapshot

log = logging.getLogger("ensemble")


@dataclass
class TrainJob:
    """One member or student run, as the shared orchestration sees it."""

    kind: str  # member | student: checkpoints and model files of one kind never load as the other
    cfg: MemberCfg
    run_dir: Path
    recipe_key: dict
    paths: list[str]
    targets: list[int]
    sampler: object
    build_task: Callable[[], Task]  # called after seeding, so neck/head initialisation is reproducible
    checkpoint_extra: dict = field(default_factory=dict)  # kept in last.pt
    model_extra: dict = field(default_factory=dict)  # kept in best.pt

    @property
    def model_path(self) -> Path:
        return self.run_dir / MODEL_FILE


EMBEDS_WITH = ("image_size", "extra_sizes", "gem_p", "precision")  # eval keys the model file fixes for every consumer


def reuse_trained(job: TrainJob) -> bool:
    """True when the job's model file exists (refused if another recipe wrote it, or if it embeds
    with other `eval` sizes, `gem_p` or `precision`: the model file keeps what every consumer uses)."""
    payload = check_recipe(job.model_path, f"{job.kind}_model", job.recipe_key)
    if payload is None:
        return False
    for key in EMBEDS_WITH:  # a file saved before the key existed embeds with its default
        saved = payload["config"]["eval"].get(key, EvalCfg.model_fields[key].get_default(call_default_factory=True))
        asked = getattr(job.cfg.eval, key)
        if saved != asked:
            raise EnsError(f"{job.kind} {job.cfg.name}: its model file embeds with eval.{key} {saved}, the recipe "
                           f"asks for {asked}; use another name (--set name=...) to derive that copy in seconds")
    log.info("%s %s is already trained; reusing %s", job.kind, job.cfg.name, job.model_path)
    return True


def run_training(job: TrainJob) -> bool:
    """Train (or resume, or reuse) the job's model; True where the model file is there to evaluate
    (every rank when reused, rank 0 after training)."""
    if reuse_trained(job):
        return True
    cfg, w = job.cfg, world()
    job.run_dir.mkdir(parents=True, exist_ok=True)
    check_resume_recipe(job.run_dir, job.kind, job.recipe_key)  # before config.yaml is overwritten
    if w.main:
        atomic_write_text(job.run_dir / "config.yaml", dump_cfg(cfg))
    found = find_source_run(job)
    if found:
        model = derive_from_run(job, *found)
        if w.main:
            inherit_records(found[0], job.run_dir)
        return save_trained(job, model, found[1].get("failed_images") or {})
    torch.manual_seed(cfg.seed)
    task = job.build_task()
    bb = task.model.backbone
    transform = build_train_transform(cfg.augment, bb.image_size, bb.mean, bb.std)
    dataset = ImageDataset(job.paths, job.targets, transform, draft_px=bb.image_size if cfg.loader.jpeg_draft else None)
    fails = FailureLog(job.paths, cfg.loader.max_fail_ratio)
    spec = RunSpec(run_dir=job.run_dir, kind=job.kind, config=cfg.model_dump(mode="json"), recipe_key=job.recipe_key,
                   stages=cfg.stages, optim=cfg.optim, seed=cfg.seed, device=pick_device(cfg.device),
                   make_loader=loader_factory(cfg, dataset, job.sampler), on_batch=fails.update,
                   nonfinite=cfg.loader.nonfinite, channels_last=cfg.backbone.channels_last,
                   extra=job.checkpoint_extra)
    start = snapshot(bb) if cfg.backbone.wise_ft else None
    Trainer(task, spec).fit()
    fails.check(final=True)
    if start is not None:
        interpolate(bb, start, cfg.backbone.wise_ft)
    return save_trained(job, task.model, fails.failed)


def save_trained(job: TrainJob, model: torch.nn.Module, failed_images: dict) -> bool:
    """Rank 0 writes the model file (and the unreadable train images); True there."""
    if not world().main:  # rank 0 saves and evaluates
        return False
    model.cpu()
    save_model(job.model_path, model, job.cfg, job.recipe_key, kind=f"{job.kind}_model", **job.model_extra,
               failed_images=failed_images)
    if failed_images:
        atomic_write_json(job.run_dir / "failed_images.json", failed_images)
    return True
