"""Parameter groups (backbone vs head lr, layer-wise decay), optimizers and lr schedules."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config.schema import OptimCfg, StageCfg
from ..models.backbone import Backbone


def _decay_split(named) -> tuple[list, list]:
    decay, no_decay = [], []
    for name, param in named:
        (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
    return decay, no_decay


def _groups(named, lr: float, weight_decay: float, tag: str) -> list[dict]:
    decay, no_decay = _decay_split(named)
    return [g for g in ({"params": decay, "lr": lr, "weight_decay": weight_decay, "tag": tag},
                        {"params": no_decay, "lr": lr, "weight_decay": 0.0, "tag": tag}) if g["params"]]


def param_groups(parts: dict[str, nn.Module], trainable: set[str], cfg: OptimCfg, stage: StageCfg) -> list[dict]:
    """Groups for the trainable parts: head/neck at lr, backbone at lr * backbone_lr_scale,
    optionally scaled by layer_decay ** (depth_max - depth)."""
    lr = stage.lr or cfg.lr
    scale = cfg.backbone_lr_scale if stage.backbone_lr_scale is None else stage.backbone_lr_scale
    groups = []
    for name in sorted(trainable):
        module = parts[name]
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        if name != "backbone":
            groups += _groups(named, lr, cfg.weight_decay, name)
        elif cfg.layer_decay is None or not isinstance(module, Backbone):
            groups += _groups(named, lr * scale, cfg.weight_decay, "backbone")
        else:
            groups += _layer_decay_groups(module, named, lr * scale, cfg)
    return groups


def _layer_decay_groups(backbone: Backbone, named, lr: float, cfg: OptimCfg) -> list[dict]:
    ids, depth = backbone.layer_ids()
    by_layer: dict[int, list] = {}
    for name, param in named:
        by_layer.setdefault(ids.get(name.removeprefix("tower."), depth - 1), []).append((name, param))
    groups = []
    for layer, members in sorted(by_layer.items()):
        groups += _groups(members, lr * cfg.layer_decay ** (depth - 1 - layer), cfg.weight_decay, f"backbone.{layer}")
    return groups


def build_optimizer(groups: list[dict], cfg: OptimCfg) -> torch.optim.Optimizer:
    """AdamW or SGD (momentum, nesterov) over prepared groups."""
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def lr_factor(step: int, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """Linear warmup, then cosine to zero (or constant)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(optimizer, cfg: OptimCfg, steps_per_epoch: int, epochs: int):
    """Per-step LambdaLR for one stage."""
    total = steps_per_epoch * epochs
    warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), total)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup, total, cfg.schedule))
