"""The training loop: stages of epochs over a task, with atomic per-epoch checkpoints and resume.

The loop knows nothing about members or students: it sees a `Task` (parts + loss), stages,
an optimizer config and a loader factory. Each epoch is seeded from (seed, global epoch), so a
run resumed from a checkpoint continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from timm.utils import ModelEmaV3
from tqdm import tqdm

from ..atomic import atomic_write_text
from ..checkpoint import load_checkpoint, save_checkpoint
from ..config.schema import OptimCfg, StageCfg
from ..device import autocast_dtype, memory_format
from ..distributed import barrier, device_for, world
from ..errors import EnsError
from ..progress import label
from ..tasks.base import Task
from .optim import build_optimizer, build_scheduler, param_groups

log = logging.getLogger("ensemble")


def seed_everything(seed: int, epoch: int) -> None:
    """Seed python, numpy and torch from (seed, epoch)."""
    mixed = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
    random.seed(mixed)
    np.random.seed(mixed)
    torch.manual_seed(mixed)


@dataclass
class RunSpec:
    """What the loop needs besides the task: where to write, what to save, how to load data."""

    run_dir: Path
    kind: str  # "member" or "student": checkpoints of one kind never load as the other
    config: dict  # resolved config, stored in every checkpoint
    recipe_key: dict  # the config keys that must match for a resume
    stages: list[StageCfg]
    optim: OptimCfg
    seed: int
    device: torch.device
    make_loader: Callable[[int], torch.utils.data.DataLoader]
    on_batch: Callable[[dict], None] = lambda batch: None
    nonfinite: str = "stop"
    channels_last: bool = False
    extra: dict = field(default_factory=dict)  # saved into checkpoints (labels, preprocessing, ...)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_same_recipe(path: Path, saved: dict, current: dict) -> None:
    """Refuse to resume from a checkpoint written by a different recipe. A key only one side has
    counts as the same when it is off there (null, false, 0, {}, []): an option added to the recipes
    after a run was trained, at its off default, does not orphan that run."""
    differ = recipe_differences(saved, current)
    if differ:
        a, b = _flat(saved), _flat(current)
        shown = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in differ[:3])
        raise EnsError(f"{path}: checkpoint was written by a different recipe ({shown}); "
                       "use another name or delete the run folder")


def recipe_differences(saved: dict, current: dict) -> list[str]:
    """Dotted keys where two recipe keys differ (a key only one side has, at its off value, does not)."""
    a, b = _flat(saved), _flat(current)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and not _added_off(k, a, b))


def _added_off(key: str, a: dict, b: dict) -> bool:
    if key in a and key in b:
        return False
    value = a.get(key, b.get(key))
    return value is None or value is False or value == 0 or value == {} or value == []


class Trainer:
    """Runs the stages of a `RunSpec` on a task; resumes from `run_dir/last.pt`."""

    def __init__(self, task: Task, spec: RunSpec):
        self.world = world()
        self.device = device_for(self.world, spec.device)
        self.fmt = memory_format(spec.channels_last)
        self.task, self.spec = task.to(self.device, memory_format=self.fmt), spec
        self.net: torch.nn.Module = self.task  # the task, or its DistributedDataParallel wrapper
        self.last_path = spec.run_dir / "last.pt"
        self.metrics_path = spec.run_dir / "metrics.jsonl"
        self.dtype = autocast_dtype(self.device, spec.optim.precision)
        self.history: list[dict] = []  # one record per finished epoch, saved inside the checkpoint
        self.ema, self.ema_step = self._build_ema(), 0

    def _build_ema(self) -> ModelEmaV3 | None:
        """The moving average of the task's model (optim.ema_decay), or None."""
        decay = self.spec.optim.ema_decay
        if not decay:
            return None
        return ModelEmaV3(self.task.model, decay=decay, use_warmup=True, warmup_power=0.75)

    def _resume_point(self) -> tuple[int, int, dict | None]:
        if not self.last_path.exists():
            return 0, 0, None
        ckpt = load_checkpoint(self.last_path, kind=self.spec.kind)
        check_same_recipe(self.last_path, ckpt["recipe_key"], self.spec.recipe_key)
        self.task.load_state_dict(ckpt["task"])
        self.history = list(ckpt.get("history", []))
        if self.ema is not None:
            self.ema.module.load_state_dict(ckpt["ema"]["model"])
            self.ema_step = ckpt["ema"]["step"]
        log.info("resuming %s from stage %d epoch %d", self.spec.run_dir.name, ckpt["stage"] + 1, ckpt["epoch"])
        return ckpt["stage"], ckpt["epoch"], ckpt

    def fit(self) -> None:
        start_stage, start_epoch, ckpt = self._resume_point()
        offsets = np.cumsum([0] + [s.epochs for s in self.spec.stages])
        for si, stage in enumerate(self.spec.stages):
            if si < start_stage or (si == start_stage and start_epoch >= stage.epochs):
                continue
            resume = ckpt if si == start_stage and start_epoch > 0 else None
            self._run_stage(si, stage, start_epoch if resume else 0, int(offsets[si]), resume)
        if self.ema is not None:  # the model the run saves is the average
            self.task.model.load_state_dict(self.ema.module.state_dict())

    def _wrap(self) -> None:
        """DDP over the parameters that learn in this stage (rebuilt per stage: the set changes)."""
        if self.world.size == 1:
            return
        ids = [self.device.index] if self.device.type == "cuda" else None
        # find_unused_parameters: a batch may leave a part unused (e.g. ArcFace on unlabelled rows)
        self.net = torch.nn.parallel.DistributedDataParallel(self.task, device_ids=ids, find_unused_parameters=True)

    def _run_stage(self, si: int, stage: StageCfg, first_epoch: int, offset: int, resume: dict | None) -> None:
        self.task.set_trainable(stage.train)
        self._wrap()
        optimizer = build_optimizer(param_groups(self.task.parts(), self.task.trainable, self.spec.optim, stage),
                                    self.spec.optim)
        steps = self._steps_per_epoch(offset)
        scheduler = build_scheduler(optimizer, self.spec.optim, steps, stage.epochs)
        scaler = torch.amp.GradScaler(self.spec.device.type, enabled=self.dtype == torch.float16)
        if resume is not None:
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
            scaler.load_state_dict(resume["scaler"])
        for epoch in range(first_epoch, stage.epochs):
            self.history.append(self._run_epoch(si, stage, epoch, offset + epoch, optimizer, scheduler, scaler))
            if self.world.main:
                self._save(si, epoch + 1, optimizer, scheduler, scaler)
                # rewritten from the checkpoint's history, so a kill never leaves a missing or doubled line
                atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in self.history))
            barrier(self.world)

    def _steps_per_epoch(self, global_epoch: int) -> int:
        steps = max(1, math.ceil(len(self.spec.make_loader(global_epoch)) / self.spec.optim.accum_steps))
        return min(steps, self.spec.optim.max_steps_per_epoch or steps)

    def _run_epoch(self, si, stage, epoch, global_epoch, optimizer, scheduler, scaler) -> dict:
        seed_everything(self.spec.seed, global_epoch)
        self.task.on_epoch_start(global_epoch)
        self.task.train()
        loader = self.spec.make_loader(global_epoch)
        desc = label(f"{self.spec.kind} {self.spec.run_dir.name} stage {si + 1}/{len(self.spec.stages)} "
                     f"[{'+'.join(stage.train)}] epoch {epoch + 1}/{stage.epochs}")
        bar = tqdm(loader, desc=desc, dynamic_ncols=True, leave=False, disable=not self.world.main)
        totals = {"loss": 0.0, "batches": 0, "images": 0, "skipped": 0, "steps": 0}
        lrs = {g["tag"]: g["lr"] for g in optimizer.param_groups}
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        accum = self.spec.optim.accum_steps
        max_batches = min(len(loader), (self.spec.optim.max_steps_per_epoch or len(loader)) * accum)
        for i, batch in enumerate(bar):
            if i >= max_batches:
                break
            self.spec.on_batch(batch)
            if batch["images"] is None:
                continue
            loss = self._step(batch, i, max_batches, optimizer, scheduler, scaler, (si, epoch))
            totals["skipped" if loss is None else "batches"] += 1
            totals["loss"] += 0.0 if loss is None else loss
            totals["images"] += len(batch["indices"])
            totals["steps"] += loss is not None and ((i + 1) % accum == 0 or i + 1 == max_batches)
            rate = totals["images"] / max(time.perf_counter() - started, 1e-9)
            bar.set_postfix(loss=f"{totals['loss'] / max(totals['batches'], 1):.4f}", img_s=f"{rate:.1f}")
        bar.close()
        seconds = time.perf_counter() - started
        record = {"stage": si, "epoch": epoch, "global_epoch": global_epoch, "train": stage.train,
                  "loss": totals["loss"] / max(totals["batches"], 1), "images": totals["images"],
                  "skipped_batches": totals["skipped"], "steps": int(totals["steps"]),
                  "img_per_s": totals["images"] / max(seconds, 1e-9),
                  "seconds": seconds, "lr": lrs,
                  "autocast": str(self.dtype).replace("torch.", "") if self.dtype else None,
                  **self._peak_memory(), **self.task.epoch_info()}
        log.info("%s: loss %.4f, %.1f img/s", desc, record["loss"], record["img_per_s"])
        return record

    def _peak_memory(self) -> dict:
        """The epoch's peak allocated GPU memory (CUDA only; the CPU has no such counter)."""
        if self.device.type != "cuda":
            return {}
        return {"peak_mem_gb": round(torch.cuda.max_memory_allocated(self.device) / 2**30, 2)}

    def _step(self, batch, i, n_batches, optimizer, scheduler, scaler, where) -> float | None:
        device, accum = self.device, self.spec.optim.accum_steps
        batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        batch["images"] = batch["images"].contiguous(memory_format=self.fmt)
        with torch.autocast(device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            loss = self.net(batch)
        if not self._all_finite(loss):
            return self._nonfinite(loss, i, optimizer, where)
        scaler.scale(loss / accum).backward()
        if (i + 1) % accum == 0 or i + 1 == n_batches:
            if self.spec.optim.grad_clip:
                scaler.unscale_(optimizer)
                params = [p for g in optimizer.param_groups for p in g["params"]]
                torch.nn.utils.clip_grad_norm_(params, self.spec.optim.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            if self.ema is not None:
                self.ema_step += 1
                self.ema.update(self.task.model, step=self.ema_step)
        return float(loss.detach())

    def _all_finite(self, loss: torch.Tensor) -> bool:
        """Every rank decides together: one rank's NaN stops (or skips the step on) all of them."""
        bad = (~torch.isfinite(loss.detach())).float()
        if self.world.size > 1:
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        return not bool(bad)

    def _nonfinite(self, loss, i, optimizer, where) -> None:
        message = f"non-finite loss ({float(loss.detach())}) at stage {where[0] + 1} epoch {where[1] + 1} step {i + 1}"
        if self.spec.nonfinite == "stop":
            raise EnsError(f"{message}; stopped, last good checkpoint kept at {self.last_path}")
        log.warning("%s; batch skipped", message)
        optimizer.zero_grad(set_to_none=True)

    def _save(self, stage: int, epoch: int, optimizer, scheduler, scaler) -> None:
        payload = {"ens_kind": self.spec.kind, "stage": stage, "epoch": epoch, "config": self.spec.config,
                   "recipe_key": self.spec.recipe_key, "task": self.task.state_dict(),
                   "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                   "scaler": scaler.state_dict(), "history": self.history, **self.spec.extra}
        if self.ema is not None:
            payload["ema"] = {"model": self.ema.module.state_dict(), "step": self.ema_step}
        save_checkpoint(self.last_path, payload)
