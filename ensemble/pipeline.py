"""`ens pipeline CONFIG`: train members, fuse, distil, export, evaluate everything, one table.

Every step reuses finished work: trained members and students are kept (their recipes are checked),
an ensemble whose config and members are unchanged is not refitted, the export is redone only when
the student changed, and embeddings come from the workspace cache.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .config.load import load_member_cfg, load_student_cfg, read_yaml, validate
from .config.schema import EnsembleCfg, PipelineCfg
from .errors import EnsError
from .train.checkpoint import atomic_write_text

log = logging.getLogger("ensemble")


def load_pipeline_cfg(path: str | Path) -> PipelineCfg:
    """Validate a pipeline config; its paths are relative to it and must exist."""
    path = Path(path)
    cfg = validate(PipelineCfg, read_yaml(path), path)
    base = path.resolve().parent

    def resolve(value: Path, key: str) -> Path:
        full = value if value.is_absolute() else base / value
        if not full.is_file():
            raise EnsError(f"{path}: key '{key}': file not found: {full}")
        return full.resolve()

    cfg.members = [resolve(m, f"members.{i}") for i, m in enumerate(cfg.members)]
    cfg.ensemble = resolve(cfg.ensemble, "ensemble")
    if cfg.student is not None:
        cfg.student = resolve(cfg.student, "student")
    if cfg.data is not None:
        cfg.data = resolve(cfg.data, "data")
    cfg.name = cfg.name or path.stem
    return cfg


def fuse_or_reuse(cfg: EnsembleCfg, workdir: Path):
    """The ensemble of `cfg`: reused when its saved config and member checkpoints are unchanged."""
    import yaml

    from .fuse.ensemble import ensemble_dir, fuse, load_ensemble

    saved = ensemble_dir(workdir, cfg.name) / "ensemble.yaml"
    if saved.is_file() and yaml.safe_load(saved.read_text())["config"] == cfg.model_dump(mode="json"):
        try:
            ens = load_ensemble(workdir, cfg.name)
            log.info("ensemble %s is up to date; reusing it", cfg.name)
            return ens
        except EnsError as exc:
            log.info("refitting ensemble %s: %s", cfg.name, exc)
    return fuse(cfg, workdir)


def export_or_reuse(student: str, workdir: Path) -> Path:
    """runs/exports/<student>.pt, re-exported when the student's checkpoint changed."""
    from .embed.models import file_sha1
    from .export import export
    from .member import MODEL_FILE
    from .student import student_dir

    out = workdir / "exports" / f"{student}.pt"
    meta = out.with_suffix(".json")
    current = file_sha1(student_dir(workdir, student) / MODEL_FILE)
    if out.is_file() and meta.is_file():
        described = json.loads(meta.read_text())
        if described.get("sha1") and described["members"][0]["checkpoint_sha1"] == current:
            return out
    export(f"student:{student}", workdir, out)
    return out


def cost(spec: str, workdir: Path, seconds: float, exported: str | None = None) -> dict:
    """GFLOPs per image (from the model's recipes) and measured ms per image here; for an exported
    file the FLOPs are its student's and the time is the TorchScript file's own."""
    from .budget import branches_for, measure_img_per_s

    _, branches = branches_for(spec, workdir)
    if exported:
        ms, device = _exported_ms(exported, seconds)
    else:
        img_s, device = measure_img_per_s(spec, workdir, seconds=seconds)
        ms = 1000 / img_s
    return {"gflops_per_image": sum(b.gflops_per_image for b in branches), "ms_per_image": ms, "device": device}


def run_pipeline(cfg: PipelineCfg, workdir: str | Path) -> dict:
    """Run every step (reusing finished work) and return the table's rows."""
    from .evaluate.run import evaluate
    from .fuse.config import ensemble_cfg
    from .member import train_member
    from .student import distill

    workdir = Path(workdir)
    members = [load_member_cfg(path) for path in cfg.members]
    ens_cfg = ensemble_cfg(workdir, str(cfg.ensemble))
    missing = sorted(set(ens_cfg.members) - {m.name for m in members})
    if missing:
        raise EnsError(f"{cfg.ensemble}: members {missing} are not trained by this pipeline's `members`")
    student = load_student_cfg(cfg.student) if cfg.student is not None else None
    results = [train_member(member, workdir) for member in members]
    ensemble = fuse_or_reuse(ens_cfg, workdir)
    data = str(cfg.data or members[0].data)
    models = [(m, ensemble.description["features"]) for m in ens_cfg.members] + [(f"ensemble:{ensemble.name}", None)]
    if student is not None:
        if student.teacher is None:
            student.teacher = ensemble.name
        student.eval.enabled = False  # evaluated below with the others (eval keys are not in the recipe key)
        distill(student, workdir)
        models.append((f"student:{student.name}", None))
        if cfg.export:
            models.append((str(export_or_reuse(student.name, workdir)), None))
    rows = []
    untrained = results[0].get("untrained_backbone")
    if untrained:
        rows.append({"model": f"{members[0].name}, untrained backbone", **_scores(untrained)})
    for spec, features in models:
        report = evaluate(spec, workdir, data, features=features, workers=cfg.workers,
                          out=workdir / "reports" / cfg.name / f"{Path(spec).name.replace(':', '_')}.json")
        exported = spec if spec.endswith(".pt") else None
        costed = f"student:{student.name}" if exported else spec
        rows.append({"model": report["model"], **_scores(report),
                     **cost(costed, workdir, cfg.measure_seconds, exported)})
    summary = {"pipeline": cfg.name, "data": data, "rows": rows}
    out = workdir / "reports" / f"pipeline_{cfg.name}.json"
    atomic_write_text(out, json.dumps(summary, indent=2))
    atomic_write_text(out.with_suffix(".md"), format_table(summary) + "\n")
    summary["files"] = [str(out), str(out.with_suffix(".md"))]
    return summary


def _scores(report: dict) -> dict:
    return {"mP@5": report["mP@5"], "recall@1": report["recall@1"], "per_domain": report.get("per_domain", {})}


def _exported_ms(path: str, seconds: float) -> tuple[float, str]:
    """ms per image of the TorchScript file itself on uint8 640x480 batches of 8 (CPU)."""
    import torch

    from .budget import time_module
    from .export import jit_load

    img_s, device = time_module(jit_load(path), torch.device("cpu"), seconds=seconds)
    return 1000 / img_s, device


def format_table(summary: dict) -> str:
    rows = summary["rows"]
    domains = sorted({d for r in rows for d in r["per_domain"]})
    lines = [f"pipeline {summary['pipeline']} (query vs index of {summary['data']})",
             "| model | mP@5 | recall@1 | " + " | ".join(domains) + " | GFLOP/image | ms/image |",
             "|---|---|---|" + "---|" * len(domains) + "---|---|"]
    for r in rows:
        per = " | ".join(f"{r['per_domain'].get(d, float('nan')):.3f}" for d in domains)
        flops = f"{r['gflops_per_image']:.2f}" if "gflops_per_image" in r else "-"
        ms = f"{r['ms_per_image']:.1f}" if "ms_per_image" in r else "-"
        lines.append(f"| {r['model']} | {r['mP@5']:.3f} | {r['recall@1']:.3f} | {per} | {flops} | {ms} |")
    device = next((r["device"] for r in rows if "device" in r), None)
    if device:
        lines.append(f"cost: FLOPs per image including flip TTA; ms/image measured on {device}, "
                     "uint8 640x480 batches of 8, resize included")
    return "\n".join(lines)
