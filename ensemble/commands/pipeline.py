"""`ens pipeline CONFIG`: train members, fuse, distil, export, evaluate everything, one table.

Every step reuses finished work: trained members and students are kept (their recipes are checked),
an ensemble whose config and members are unchanged is not refitted, the export is redone only when
the student changed, and embeddings come from the workspace cache.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..atomic import atomic_write_json, atomic_write_text
from ..budget import measure_img_per_s, model_branches, time_module
from ..config.load import read_yaml, validate
from ..config.schema import MemberCfg, PipelineCfg
from ..deploy.export import export_or_reuse
from ..deploy.exported import load_runner
from ..errors import EnsError, file_problem
from ..evaluate.html import write_html
from ..evaluate.report import model_label, score_text, transductive_notes
from ..evaluate.run import evaluate
from ..fuse.config import ensemble_cfg
from ..fuse.fit import fuse_or_reuse
from ..progress import announce, step
from ..train.member import evaluate_untrained, train_member
from ..train.recipe import load_recipe
from ..train.student import distill
from ..workspace.layout import Workspace
from ..workspace.resolve import ResolvedModel, resolve_model

log = logging.getLogger("ensemble")


def load_pipeline_cfg(path: str | Path) -> PipelineCfg:
    """Validate a pipeline config; its paths are relative to it and must exist."""
    path = Path(path)
    cfg = validate(PipelineCfg, read_yaml(path), path)
    base = path.resolve().parent

    def resolve(value: Path, key: str) -> Path:
        full = value if value.is_absolute() else base / value
        if problem := file_problem(full, "YAML file"):
            raise EnsError(f"{path}: key '{key}': {full}: {problem}")
        return full.resolve()

    cfg.members = [resolve(m, f"members.{i}") for i, m in enumerate(cfg.members)]
    cfg.ensemble = resolve(cfg.ensemble, "ensemble")
    if cfg.student is not None:
        cfg.student = resolve(cfg.student, "student")
    if cfg.data is not None:
        cfg.data = resolve(cfg.data, "data")
    cfg.name = cfg.name or path.stem
    return cfg


def _each_member_once(cfg: PipelineCfg, members: list[MemberCfg]) -> None:
    """Each member its own workspace folder: a recipe listed twice, or two recipes of one name, is refused
    before anything trains (the second would meet the first's checkpoint)."""
    first: dict[str, Path] = {}
    for path, member in zip(cfg.members, members, strict=True):
        if first.get(member.name) == path:
            raise EnsError(f"members: {path} is listed twice; list each recipe once")
        if member.name in first:
            raise EnsError(f"members: {path} and {first[member.name]} are both member '{member.name}' (one "
                           "workspace folder); give each recipe its own `name`")
        first[member.name] = path


def cost(model: ResolvedModel, seconds: float, exported: str | None = None) -> dict:
    """GFLOPs per image (from the model files' recipes) and measured ms per image here; for an exported
    file the FLOPs are its student's and the time is the TorchScript file's own."""
    if exported:
        img_s, device = time_module(load_runner(exported), torch.device("cpu"), seconds=seconds)
    else:
        img_s, device = measure_img_per_s(model, seconds=seconds)
    return {"gflops_per_image": sum(b.gflops_per_image for b in model_branches(model)), "ms_per_image": 1000 / img_s,
            "device": device}


def run_pipeline(cfg: PipelineCfg, workdir: str | Path) -> dict:
    """Run every step (reusing finished work) and return the table's rows."""
    ws = Workspace.at(workdir)
    members = [load_recipe(path) for path in cfg.members]
    _each_member_once(cfg, members)
    ens_cfg = ensemble_cfg(ws, str(cfg.ensemble))
    missing = sorted(set(ens_cfg.members) - {m.name for m in members})
    if missing:
        raise EnsError(f"{cfg.ensemble}: members {missing} are not trained by this pipeline's `members`")
    student = load_recipe(cfg.student, student=True) if cfg.student is not None else None
    steps = Steps(len(members) + 2 + (student is not None) * (1 + cfg.export))
    baseline = members[0] if members[0].eval.enabled else None  # its untrained backbone: the first row
    for member in members:
        member.eval.enabled = False  # every member is scored below with the others
        with steps.next(f"member {member.name}"):
            train_member(member, ws)
    with steps.next(f"ensemble {ens_cfg.name}"):
        ensemble = fuse_or_reuse(ens_cfg, ws)
    data = str(cfg.data or members[0].data)
    features = ensemble.ensemble.features
    models = [(m, features) for m in ens_cfg.members] + [(ensemble.name, None)]
    if student is not None:
        if student.teacher is None:
            student.teacher = ensemble.ensemble.name
        student.eval.enabled = False  # evaluated below with the others (eval keys are not in the recipe key)
        with steps.next(f"student {student.name}"):
            distill(student, ws)
        models.append((f"student:{student.name}", None))
        if cfg.export:
            with steps.next(f"export {student.name}"):
                models.append((str(export_or_reuse(student.name, ws)), None))
    with steps.next(f"evaluate {len(models)} models"):
        rows, reports = _evaluate_all(cfg, ws, data, models, ensemble, student, baseline)
    summary = {"pipeline": cfg.name, "data": data, "rows": rows}
    out = ws.reports_dir / f"pipeline_{cfg.name}.json"
    atomic_write_json(out, summary)
    atomic_write_text(out.with_suffix(".md"), format_table(summary) + "\n")
    write_html(out.with_suffix(".html"), f"ens pipeline {cfg.name} (query vs index of {data})", rows, reports)
    summary["files"] = [str(out.with_suffix(s)) for s in (".json", ".md", ".html")]
    return summary


class Steps:
    """Numbered pipeline steps: each is announced with its name; its number labels the progress bars
    inside it (which name their model themselves)."""

    def __init__(self, total: int):
        self.total, self.done = total, 0

    def next(self, name: str):
        self.done += 1
        announce(f"[{self.done}/{self.total}] {name}")
        return step(f"[{self.done}/{self.total}]")


def _evaluate_all(cfg: PipelineCfg, ws: Workspace, data: str, models: list, ensemble: ResolvedModel,
                  student, baseline: MemberCfg | None) -> tuple[list[dict], list[dict]]:
    """(rows, reports): one row per model, the `baseline` member's untrained backbone first, each with
    its cost; the models' eval reports."""
    rows, reports = [], []
    if baseline is not None:
        untrained = evaluate_untrained(baseline, ws.member_dir(baseline.name))
        rows.append({"model": f"{baseline.name}, untrained backbone", **_scores(untrained)})
    resolved = {ensemble.name: ensemble}  # each model file is loaded (and hashed) once
    for spec, feats in models:
        if spec not in resolved:
            resolved[spec] = resolve_model(spec, ws, feats)
        model = resolved[spec]
        report = evaluate(model, ws, data, workers=cfg.workers,
                          out=ws.reports_dir / cfg.name / f"{Path(spec).name.replace(':', '_')}.json")
        exported = spec if model.kind == "export" else None
        costed = resolved[f"student:{student.name}"] if exported else model  # an export costs as its student
        rows.append({"model": report["model"], "dim": report["dim"], **_scores(report),
                     **cost(costed, cfg.measure_seconds, exported),
                     **({"transductive": report["transductive"]} if "transductive" in report else {})})
        reports.append(report)
    return rows, reports


def _scores(report: dict) -> dict:
    scores = {"mP@5": report["mP@5"], "recall@1": report["recall@1"], "per_domain": report.get("per_domain", {})}
    if "macro_mP@5" in report:
        scores["macro_mP@5"] = report["macro_mP@5"]
    return scores


def format_table(summary: dict) -> str:
    rows = summary["rows"]
    domains = sorted({d for r in rows for d in r["per_domain"]})
    macro = ["macro_mP@5"] if any("macro_mP@5" in r for r in rows) else []
    columns = [c.replace("_", " ") for c in macro] + domains
    lines = [f"pipeline {summary['pipeline']} (query vs index of {summary['data']})",
             "| model | mP@5 | recall@1 | " + " | ".join(columns) + " | GFLOP/image | ms/image |",
             "|---|---|---|" + "---|" * len(columns) + "---|---|"]
    for r in rows:
        per = " | ".join(score_text(v) for v in [r.get(c) for c in macro] + [r["per_domain"].get(d) for d in domains])
        flops = f"{r['gflops_per_image']:.2f}" if "gflops_per_image" in r else "-"
        ms = f"{r['ms_per_image']:.1f}" if "ms_per_image" in r else "-"
        lines.append(f"| {model_label(r)} | {r['mP@5']:.3f} | {r['recall@1']:.3f} | {per} | {flops} | {ms} |")
    device = next((r["device"] for r in rows if "device" in r), None)
    if device:
        lines.append(f"cost: FLOPs per image including flip TTA; ms/image measured on {device}, "
                     "uint8 640x480 batches of 8, resize included")
    return "\n".join(lines + transductive_notes(rows))


def run(config: str, workdir: str) -> str:
    summary = run_pipeline(load_pipeline_cfg(config), workdir)
    return format_table(summary) + "\nwrote " + ", ".join(summary["files"])
