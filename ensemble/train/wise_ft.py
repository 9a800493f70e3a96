"""WiSE-FT (Wortsman et al., 2022): the saved backbone interpolates its starting and fine-tuned weights.

A run with `backbone.wise_ft` trains exactly as the same recipe without it and interpolates at the
end. So where that run is already trained in the workspace, the interpolation alone writes the
same model file: a sweep over the weight costs seconds per value instead of a training run each.
Likewise a run whose recipe key equals a finished run's (another name, other eval settings such as
`eval.gem_p`) takes that run's weights as they are; for a WiSE-FT recipe that finished run is looked
for first, so a copy of an interpolated member needs neither training nor its fine-tuned run.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import yaml

from ..atomic import atomic_write_text
from ..checkpoint import load_checkpoint
from ..errors import EnsError
from ..workspace.layout import MODEL_FILE
from .loop import recipe_differences
from .recipe import defining

log = logging.getLogger("ensemble")


def interpolate(module: torch.nn.Module, start: dict, weight: float) -> None:
    """WiSE-FT: floating-point weights become (1 - weight) x start + weight x now (buffers' counts kept)."""
    state = module.state_dict()
    with torch.no_grad():
        for key, value in state.items():
            if value.is_floating_point():
                value.copy_(torch.lerp(start[key].to(value.device, value.dtype), value, weight))


def snapshot(module: torch.nn.Module) -> dict:
    """A copy of the module's weights as they are now: the start WiSE-FT interpolates from."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def fine_tuned_key(key: dict) -> dict:
    """The recipe key of the same run without WiSE-FT."""
    return {**key, "backbone": {**key["backbone"], "wise_ft": None}}


def find_source_run(job) -> tuple[Path, dict, float | None] | None:
    """(model file, its payload, the WiSE-FT weight still to apply) of another run in the workspace of
    `job` (a TrainJob) whose weights make the job's model: one trained by the job's own recipe (taken as
    it is: weight None), else, for a WiSE-FT job, one trained by its recipe without WiSE-FT (to
    interpolate); or None. Only model files whose config.yaml matches are loaded (a workspace may hold
    many large members)."""
    weight = job.cfg.backbone.wise_ft
    wanted = [(job.recipe_key, None)] + ([(fine_tuned_key(job.recipe_key), weight)] if weight else [])
    finished = finished_runs(job)
    for want, still in wanted:
        found = find_run(job, want, finished)
        if found:
            return (*found, still)
    return None


def finished_runs(job) -> list[tuple[Path, dict]]:
    """(model file, saved config) of every other run in the workspace of `job` that has a model file and a
    readable config.yaml."""
    runs = []
    for config in sorted(job.run_dir.parent.glob("*/config.yaml")):
        model = config.parent / MODEL_FILE
        if config.parent == job.run_dir or not model.is_file():
            continue
        try:
            saved = yaml.safe_load(config.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        if isinstance(saved, dict):
            runs.append((model, saved))
    return runs


def find_run(job, want: dict, finished: list[tuple[Path, dict]]) -> tuple[Path, dict] | None:
    """(model file, its payload) of the first of `finished` runs trained by recipe key `want`."""
    for model, saved in finished:
        if recipe_differences({**want, **defining(saved)}, want):
            continue
        try:
            payload = load_checkpoint(model, kind=f"{job.kind}_model")
        except EnsError:
            continue
        if not recipe_differences(payload["recipe_key"], want):
            return model, payload
    return None


def derive_from_run(job, source: Path, payload: dict, weight: float | None) -> torch.nn.Module:
    """The model of `job` (a TrainJob) built as training would build it (same seed, so the same
    starting weights), loaded with the weights of `source`, its backbone interpolated by WiSE-FT
    `weight` (None: `source`'s weights as they are)."""
    if weight:
        log.info("%s %s: WiSE-FT %s of %s (the same recipe without wise_ft, already trained); no training",
                 job.kind, job.cfg.name, weight, source)
    else:
        log.info("%s %s: the weights of %s (the same recipe, already trained); no training",
                 job.kind, job.cfg.name, source)
    torch.manual_seed(job.cfg.seed)
    model = job.build_task().model
    start = snapshot(model.backbone)
    model.load_state_dict(payload["model"])
    if weight:
        interpolate(model.backbone, start, weight)
    return model


def inherit_records(source: Path, run_dir: Path) -> None:
    """The derived run's training records are its source's (metrics.jsonl): that training made it."""
    records = source.parent / "metrics.jsonl"
    if records.is_file():
        atomic_write_text(run_dir / "metrics.jsonl", records.read_text())
