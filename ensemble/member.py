"""`ens train-member`: build a member from its recipe, train it in stages, save and evaluate it."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from .config.load import dump_cfg, load_data_cfg
from .config.schema import MemberCfg, StudentCfg
from .data.augment import build_train_transform
from .data.dataset import FailureLog, ImageDataset, collate_skip
from .data.manifest import read_manifest
from .data.sampler import ClassBalancedSampler, kept_classes
from .device import limit_worker_threads, pick_device
from .distributed import ShardedSampler, per_rank_batch, world
from .embed.extract import TTA, extract_many
from .embed.models import model_embedder
from .errors import EnsError
from .evaluate.metrics import evaluate_embeddings
from .losses.margin import build_head
from .models.member import EmbeddingModel, build_member_model
from .models.preprocess import preprocess_record
from .tasks.classify import ClassifyTask
from .train.checkpoint import atomic_write_text, load_checkpoint, save_checkpoint
from .train.loop import RunSpec, Trainer, check_same_recipe
from .train.rundir import cached_result, check_resume_recipe, run_lock
from .train.optim import param_groups

log = logging.getLogger("ensemble")
MODEL_FILE = "best.pt"


def member_dir(workdir: str | Path, name: str) -> Path:
    return Path(workdir) / "members" / name


def recipe_key(cfg: MemberCfg, manifest_sha1: str) -> dict:
    """The parts of a recipe that define the trained weights (not loader/eval settings)."""
    key = cfg.model_dump(mode="json", exclude={"loader": True, "eval": True, "device": True, "name": True,
                                                "data": True, "backbone": {"channels_last"}})
    key["train_manifest_sha1"] = manifest_sha1
    return key


# ---------------------------------------------------------------- dry run


def plan(cfg: MemberCfg) -> dict:
    """Parameter counts per stage and lr per group, from shapes only (no weights are loaded)."""
    model = build_member_model(cfg, load_weights=False, device="meta")
    try:
        counts = train_data(cfg).counts
    except EnsError:  # manifests not built yet (e.g. GUIE data): plan without the head's class count
        counts = None
    task = _plan_task(cfg, model, counts)
    stages = []
    for stage in cfg.stages:
        task.set_trainable(stage.train)
        groups = param_groups(task.parts(), task.trainable, cfg.optim, stage)
        lrs: dict[str, float] = {}
        for g in groups:
            lrs[g["tag"]] = g["lr"]
        stages.append({"train": sorted(task.trainable), "epochs": stage.epochs,
                       "trainable_params": sum(p.numel() for g in groups for p in g["params"]), "lr": lrs})
    parts = {name: sum(p.numel() for p in m.parameters()) for name, m in task.parts().items()}
    if counts is None and "head" in parts:
        parts["head"] = f"{cfg.head.subcenters} x {model.out_dim} per class (train manifest not found)"
    return {"name": cfg.name, "backbone": f"{cfg.backbone.source}:{cfg.backbone.arch}",
            "image_size": model.backbone.image_size, "feature_dim": model.backbone.out_dim,
            "embedding_dim": model.out_dim, "params": parts, "stages": stages}


def _plan_task(cfg: MemberCfg, model: EmbeddingModel, counts: list[int] | None):
    from .tasks.distill import DistillTask

    with torch.device("meta"):
        head = build_head(cfg.head, model.out_dim, counts or [1])
        if isinstance(cfg, StudentCfg):
            return DistillTask(model, torch.empty(0, model.out_dim), cfg.loss, head if cfg.loss.arcface else None,
                               cfg.head)
    return ClassifyTask(model, head, cfg.head)


def _collapse_layers(lrs: dict[str, float]) -> dict[str, str]:
    """'backbone.0'..'backbone.25' -> one 'backbone.0-25' entry showing the lr range."""
    layered = {k: v for k, v in lrs.items() if k.startswith("backbone.")}
    out = {k: f"{v:.2e}" for k, v in lrs.items() if k not in layered}
    if layered:
        ids = sorted(int(k.split(".")[1]) for k in layered)
        out[f"backbone.{ids[0]}-{ids[-1]} (layer decay)"] = f"{min(layered.values()):.2e}..{max(layered.values()):.2e}"
    return dict(sorted(out.items()))


def format_plan(p: dict) -> str:
    lines = [f"member {p['name']}: {p['backbone']} @ {p['image_size']} px, feature {p['feature_dim']}-d "
             f"-> embedding {p['embedding_dim']}-d",
             "params: " + ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in p["params"].items())]
    for i, s in enumerate(p["stages"]):
        lrs = ", ".join(f"{k} {v}" for k, v in _collapse_layers(s["lr"]).items())
        lines.append(f"stage {i + 1}: train {'+'.join(s['train'])} for {s['epochs']} epochs, "
                     f"{s['trainable_params']:,} trainable; lr {lrs}")
    return "\n".join(lines)


# ---------------------------------------------------------------- loading


def save_model(path: Path, model: EmbeddingModel, cfg: MemberCfg, key: dict, kind: str = "member_model",
               **extra) -> None:
    """A self-describing model file: config to rebuild it, preprocessing, output dim (+ `extra`)."""
    bb = model.backbone
    save_checkpoint(path, {"ens_kind": kind, "config": cfg.model_dump(mode="json"), "recipe_key": key,
                           "model": model.state_dict(), **extra,
                           "preprocess": preprocess_record(bb.image_size, bb.mean, bb.std, cfg.augment.resize),
                           "describe": {**model.backbone.describe(), "arch": cfg.backbone.arch,
                                        "embedding_dim": model.out_dim}})


def load_member_model(path: str | Path, kind: str = "member_model") -> tuple[EmbeddingModel, dict]:
    """Rebuild a member (or student, kind='student_model') from its model file alone: architecture
    from the stored config (no download), preprocessing as recorded at training time (the weights'
    own mean/std, not the library's defaults for the architecture)."""
    payload = load_checkpoint(path, kind=kind)
    schema = StudentCfg if kind == "student_model" else MemberCfg
    cfg = schema.model_validate(payload["config"])
    cfg.backbone.pretrained = None
    model = build_member_model(cfg, load_weights=False)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as exc:
        raise EnsError(f"{path}: weights do not fit {cfg.backbone.arch} ({str(exc).splitlines()[0][:200]})") from None
    # files from before the `preprocess` record carry the same facts in `describe`
    record = payload.get("preprocess") or payload["describe"]
    model.backbone.mean, model.backbone.std = tuple(record["mean"]), tuple(record["std"])
    model.backbone.image_size = int(record.get("size_px", record.get("image_size")))
    return model.eval(), payload


def init_from_member(model: EmbeddingModel, workdir: Path, name: str) -> None:
    """Start from another member's weights, resampling the positional embedding if sizes differ."""
    path = member_dir(workdir, name) / MODEL_FILE
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


# ---------------------------------------------------------------- training


@dataclass
class TrainData:
    """The train manifest reduced to the kept classes."""

    paths: list[str]
    targets: list[int]
    classes: list[str]
    counts: list[int]
    sha1: str


def train_data(cfg: MemberCfg) -> TrainData:
    data = load_data_cfg(cfg.data)
    if data.train is None:
        raise EnsError(f"{cfg.data}: key 'train': a member needs a train manifest")
    manifest = read_manifest(data.train)
    classes = kept_classes(manifest.labels, cfg.sampler)
    if not classes:
        raise EnsError(f"{data.train}: no label has >= {cfg.sampler.min_per_class} images (sampler.min_per_class)")
    index = {c: i for i, c in enumerate(classes)}
    targets = [index.get(label, -1) for label in manifest.labels]
    counts = [targets.count(i) for i in range(len(classes))]
    return TrainData(list(manifest.paths), targets, classes, counts, manifest.sha1)


def loader_factory(cfg: MemberCfg, dataset: ImageDataset, sampler):
    """global epoch -> DataLoader, seeded so that a resumed epoch sees the same batches and augmentations.

    In a multi-process run each rank loads its shard of the epoch with batch_size / world size.
    """
    w = world()
    batch_size = per_rank_batch(cfg.optim.batch_size, w)
    if w.size > 1:
        sampler = ShardedSampler(sampler, w)

    def seed_worker(worker_id: int) -> None:
        limit_worker_threads(worker_id)
        dataset.transform.set_random_seed(torch.initial_seed() % 2**32)

    def make_loader(global_epoch: int) -> DataLoader:
        sampler.set_epoch(global_epoch)
        if cfg.loader.workers == 0:
            dataset.transform.set_random_seed(cfg.seed * 1000 + global_epoch)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=cfg.loader.workers,
                          collate_fn=collate_skip, worker_init_fn=seed_worker, drop_last=len(sampler) > batch_size,
                          generator=torch.Generator().manual_seed(cfg.seed * 1000 + global_epoch + 7919 * w.rank))

    return make_loader


def build_member_task(cfg: MemberCfg, data: TrainData, workdir: Path) -> ClassifyTask:
    model = build_member_model(cfg)
    if cfg.backbone.init_from:
        init_from_member(model, workdir, cfg.backbone.init_from)
    head = build_head(cfg.head, model.out_dim, data.counts)
    return ClassifyTask(model, head, cfg.head)


def train_member(cfg: MemberCfg, workdir: str | Path) -> dict:
    """Train (or resume, or reuse) the member of `cfg` in `workdir`; returns its summary with eval."""
    run_dir = member_dir(workdir, cfg.name)
    with run_lock(run_dir, active=world().main):
        return _train_member(cfg, workdir)


def _train_member(cfg, workdir) -> dict:
    workdir, run_dir = Path(workdir), member_dir(workdir, cfg.name)
    data = train_data(cfg)
    key = recipe_key(cfg, data.sha1)
    model_path = run_dir / MODEL_FILE
    if model_path.exists():
        check_same_recipe(model_path, load_checkpoint(model_path, kind="member_model")["recipe_key"], key)
        log.info("member %s is already trained; reusing %s", cfg.name, model_path)
        return evaluate_member(cfg, run_dir)
    w = world()
    run_dir.mkdir(parents=True, exist_ok=True)
    check_resume_recipe(run_dir, "member", key)  # before config.yaml is overwritten
    if w.main:
        atomic_write_text(run_dir / "config.yaml", dump_cfg(cfg))
    torch.manual_seed(cfg.seed)  # neck/head initialisation is part of the seeded run
    task = build_member_task(cfg, data, workdir)
    size = task.model.backbone.image_size
    transform = build_train_transform(cfg.augment, size, task.model.backbone.mean, task.model.backbone.std)
    dataset = ImageDataset(data.paths, data.targets, transform, draft_px=size if cfg.loader.jpeg_draft else None)
    sampler = ClassBalancedSampler(data.targets, cfg.sampler, cfg.seed)
    fails = FailureLog(data.paths, cfg.loader.max_fail_ratio)
    spec = RunSpec(run_dir=run_dir, kind="member", config=cfg.model_dump(mode="json"), recipe_key=key,
                   stages=cfg.stages, optim=cfg.optim, seed=cfg.seed, device=pick_device(cfg.device),
                   make_loader=loader_factory(cfg, dataset, sampler), on_batch=fails.update,
                   nonfinite=cfg.loader.nonfinite, channels_last=cfg.backbone.channels_last,
                   extra={"labels": data.classes})
    Trainer(task, spec).fit()
    fails.check(final=True)
    if not w.main:  # rank 0 saves and evaluates
        return {"name": cfg.name, "rank": w.rank}
    task.model.cpu()
    save_model(model_path, task.model, cfg, key, labels=data.classes, train_manifest_sha1=data.sha1,
               failed_images=fails.failed)
    if fails.failed:
        atomic_write_text(run_dir / "failed_images.json", json.dumps(fails.failed, indent=2))
    return evaluate_member(cfg, run_dir)


# ---------------------------------------------------------------- evaluation


def evaluate_model(model: EmbeddingModel, cfg: MemberCfg) -> dict:
    """mP@5 / recall@1 / per-domain of the neck and the backbone features on the query vs index split.

    One pass per image computes both features (each flip-averaged and L2-normalised on its own).
    """
    data = load_data_cfg(cfg.data)
    if data.query is None or data.index is None:
        raise EnsError(f"{cfg.data}: keys 'query' and 'index' are needed to evaluate")
    query, index = read_manifest(data.query), read_manifest(data.index)
    device = pick_device(cfg.device)
    emb = model_embedder(model, cfg.name, "eval", cfg.backbone.arch, "both", device, cfg.eval.image_size,
                         cfg.backbone.channels_last)
    blocks = {emb.name: [model.out_dim, model.backbone.out_dim]}
    q, i = (extract_many([emb], m.paths, device, TTA(flip=cfg.eval.flip_tta), cfg.eval.batch_size,
                         cfg.loader.workers, cfg.loader.max_fail_ratio, f"embed {name}", blocks)[0]
            for name, m in (("query", query), ("index", index)))
    dim = model.out_dim
    return {feat: evaluate_embeddings(qf, query.labels, xf, index.labels, 5, query.domains)
            for feat, (qf, xf) in (("neck", (q[:, :dim], i[:, :dim])), ("backbone", (q[:, dim:], i[:, dim:])))}


def eval_key(cfg: MemberCfg, model_path: Path) -> dict:
    """What an eval result depends on: eval settings, the query/index manifests, the model file."""
    from .embed.models import file_sha1

    data = load_data_cfg(cfg.data)
    manifests = {k: read_manifest(getattr(data, k)).sha1 if getattr(data, k) else None for k in ("query", "index")}
    return {"eval": cfg.eval.model_dump(mode="json"), "data": str(cfg.data), **manifests,
            "model_sha1": file_sha1(model_path)}


def evaluate_member(cfg: MemberCfg, run_dir: Path) -> dict:
    """Evaluate the trained member and the same backbone untrained (kept in eval.json while the
    eval settings, manifests and model file are unchanged)."""
    if not cfg.eval.enabled:
        return {"name": cfg.name}

    def compute() -> dict:
        model, payload = load_member_model(run_dir / MODEL_FILE)
        result = {"name": cfg.name, "eval_image_size": cfg.eval.image_size or model.backbone.image_size,
                  "train_images_unreadable": len(payload.get("failed_images", {})),
                  "flip_tta": cfg.eval.flip_tta, "trained": evaluate_model(model, cfg)}
        baseline = build_member_model(cfg)  # the same backbone with its pretrained weights, untrained
        result["untrained_backbone"] = evaluate_model(baseline, cfg)["backbone"]
        return result

    return cached_result(run_dir / "eval.json", eval_key(cfg, run_dir / MODEL_FILE), compute)
