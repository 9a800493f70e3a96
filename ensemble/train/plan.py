"""The dry run: parameter counts per stage and lr per group, from shapes only (no weights loaded)."""

from __future__ import annotations

import torch

from ..config.schema import MemberCfg, StudentCfg
from ..errors import EnsError
from ..losses.margin import build_head
from ..models.member import EmbeddingModel, build_member_model
from ..tasks.classify import ClassifyTask
from ..tasks.distill import DistillTask
from .data import train_data
from .optim import param_groups


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


def format_plan(p: dict, kind: str = "member") -> str:
    """The plan as the dry run prints it."""
    lines = [f"{kind} {p['name']}: {p['backbone']} @ {p['image_size']} px, feature {p['feature_dim']}-d "
             f"-> embedding {p['embedding_dim']}-d",
             "params: " + ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in p["params"].items())]
    for i, s in enumerate(p["stages"]):
        lrs = ", ".join(f"{k} {v}" for k, v in _collapse_layers(s["lr"]).items())
        lines.append(f"stage {i + 1}: train {'+'.join(s['train'])} for {s['epochs']} epochs, "
                     f"{s['trainable_params']:,} trainable; lr {lrs}")
    return "\n".join(lines)

