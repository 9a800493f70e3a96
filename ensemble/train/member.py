"""Members: a backbone + neck + margin head trained in stages on labelled classes, then evaluated
against the same backbone untrained."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from ..config.load import load_data_cfg
from ..config.schema import MemberCfg
from ..data.manifest import read_eval_pair
from ..data.sampler import ClassBalancedSampler, class_domains
from ..distributed import world
from ..errors import EnsError
from ..evaluate.model import eval_key, evaluate_model, untrained_key
from ..evaluate.provenance import eval_overlap
from ..losses.margin import build_head
from ..models.member import build_member_model, pool_as_embedded
from ..tasks.classify import ClassifyTask
from ..workspace.artifacts import load_model_file
from ..workspace.layout import MODEL_FILE, Workspace
from .data import TrainData, train_data
from .recipe import recipe_key
from .run import TrainJob, run_training
from .rundir import cached_result, run_lock
from .warm_start import init_from_member


def build_member_task(cfg: MemberCfg, data: TrainData, ws: Workspace) -> ClassifyTask:
    """Model (pretrained, or started from another member) + margin head over the kept classes."""
    model = build_member_model(cfg)
    if cfg.backbone.init_from:
        init_from_member(model, ws, cfg.backbone.init_from)
    reference = copy.deepcopy(model.backbone) if cfg.backbone.feature_kd else None  # the starting weights
    return ClassifyTask(model, build_head(cfg.head, model.out_dim, data.counts), cfg.head,
                        domain_index(data) if cfg.head.per_domain else None, reference, cfg.backbone.feature_kd or 0.0)


def domain_index(data: TrainData) -> torch.Tensor:
    """Domain index (sorted domain names) of each kept class; a domain of one class is refused (its own
    head's softmax would have no other class: a constant loss, its images never learned from)."""
    of = class_domains(data.targets, data.domains)
    names = sorted(set(of.values()))
    lone = [name for name in names if list(of.values()).count(name) < 2]
    if lone:
        raise EnsError(f"head.per_domain: domain {lone[0]!r} has 1 kept class in the train manifest; its head needs "
                       "at least 2 (give it more classes, or train one merged head: head.per_domain: false)")
    return torch.tensor([names.index(of[c]) for c in range(len(data.classes))])


def member_job(cfg: MemberCfg, ws: Workspace) -> TrainJob:
    data = train_data(cfg)
    return TrainJob("member", cfg, ws.member_dir(cfg.name), recipe_key(cfg, train_manifest_sha1=data.sha1),
                    data.paths, data.targets, ClassBalancedSampler(data.targets, cfg.sampler, cfg.seed, data.domains),
                    lambda: build_member_task(cfg, data, ws), checkpoint_extra={"labels": data.classes},
                    model_extra={"labels": data.classes, "train_manifest_sha1": data.sha1})


def train_member(cfg: MemberCfg, workdir: str | Path | Workspace) -> dict:
    """Train (or resume, or reuse) the member of `cfg`; returns its summary with eval."""
    ws = Workspace.at(workdir)
    job = member_job(cfg, ws)
    with run_lock(job.run_dir, active=world().main):
        if not run_training(job):
            return {"name": cfg.name, "rank": world().rank}
        return evaluate_member(cfg, job.run_dir)


def evaluate_member(cfg: MemberCfg, run_dir: Path) -> dict:
    """Evaluate the trained member and the same backbone untrained (kept in eval.json while the
    eval settings, manifests and model file are unchanged)."""
    if not cfg.eval.enabled:
        return {"name": cfg.name}

    def compute() -> dict:
        file = load_model_file(run_dir / MODEL_FILE)
        result = {"name": cfg.name, "eval_image_size": cfg.eval.image_size or file.model.backbone.image_size,
                  "train_images_unreadable": len(file.failed_images),
                  "eval_extra_sizes": list(cfg.eval.extra_sizes),
                  "flip_tta": cfg.eval.flip_tta, "trained": evaluate_model(file.model, cfg)}
        result["untrained_backbone"] = evaluate_untrained(cfg, run_dir)
        if overlap := training_overlap(cfg):
            result["transductive"] = overlap
        return result

    return cached_result(run_dir / "eval.json", eval_key(cfg, run_dir / MODEL_FILE), compute)


def training_overlap(cfg: MemberCfg) -> dict | None:
    """How many of the query/index images the member was trained on (None: none, open-set as GUIE scores)."""
    data = load_data_cfg(cfg.data)
    if data.train is None:
        return None
    return eval_overlap({f"{cfg.name} training": str(data.train)}, *read_eval_pair(data.query, data.index))


def evaluate_untrained(cfg: MemberCfg, run_dir: Path) -> dict:
    """The recipe's backbone before training, pooled as the trained member embeds, scored with the
    member's eval settings (kept in untrained.json while those, the manifests and the weights are
    unchanged)."""

    def compute() -> dict:
        baseline = pool_as_embedded(build_member_model(cfg), cfg)
        return {"backbone": evaluate_model(baseline, cfg)["backbone"]}

    return cached_result(run_dir / "untrained.json", untrained_key(cfg), compute)["backbone"]
