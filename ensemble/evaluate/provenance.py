"""Which image sets fitted a model, and whether a scoring evaluates on any of their images (transductive).

GUIE scores open-set: nothing (member weights, the fusion's reducer, the student) is fitted on the query or
index images unless the result says "transductive". A model's fit sets are read from its own files: a
member's and a student's data config (training / distillation manifest; a student's teacher targets name
theirs), an ensemble's `fit_on` manifest, and, through a student's teacher, that ensemble's. An exported
file carries them in its description.
"""

from __future__ import annotations

import logging

from ..config.load import load_data_cfg, read_yaml
from ..data.manifest import Manifest, read_manifest
from ..errors import EnsError
from ..workspace.artifacts import EnsembleFile, ModelFile, read_ensemble
from ..workspace.layout import Workspace
from ..workspace.resolve import ResolvedModel

log = logging.getLogger("ensemble")


def fit_sets(model: ResolvedModel, ws: Workspace) -> dict[str, str]:
    """What fitted `model`: '<model> <what>' -> manifest path (training, distillation, reducer fit)."""
    if model.exported is not None:
        from ..deploy.exported import read_meta

        return dict(read_meta(model.exported).get("fit_sets") or {})
    sets: dict[str, str] = {}
    for part in model.parts:
        sets.update(_file_sets(part.file, ws))
    if model.ensemble is not None:
        sets.update(_ensemble_sets(model.ensemble))
    return sets


def _file_sets(file: ModelFile, ws: Workspace) -> dict[str, str]:
    if file.kind == "student_model":
        teacher = file.extra.get("teacher") or {}
        sets = {f"student:{file.cfg.name} distillation": teacher["manifest"]} if teacher.get("manifest") else {}
        if teacher.get("ensemble"):  # the targets came through the teacher's reducer and its members
            try:
                ens = read_ensemble(ws, teacher["ensemble"])
            except EnsError as exc:
                log.info("fit sets of %s: teacher ensemble unreadable (%s)", file.path, exc)
                return sets
            sets.update(_ensemble_sets(ens))
            for name in ens.member_names:
                sets.update(_training_set(name, _saved_data_config(ws, name)))
        return sets
    return _training_set(file.cfg.name, file.cfg.data)


def _saved_data_config(ws: Workspace, member: str) -> str | None:
    """The data config in a member's saved recipe (runs/members/<name>/config.yaml), without loading its weights."""
    try:
        return read_yaml(ws.member_dir(member) / "config.yaml").get("data")
    except EnsError:
        return None


def _training_set(name: str, data_config) -> dict[str, str]:
    if data_config is None:
        return {}
    try:
        train = load_data_cfg(data_config).train
    except EnsError as exc:
        log.info("training set of %s not known (%s)", name, exc)
        return {}
    return {f"{name} training": str(train)} if train else {}


def _ensemble_sets(ens: EnsembleFile) -> dict[str, str]:
    fit_on = ens.description.get("fit_on") or {}
    return {f"ensemble:{ens.name} reducer fit": fit_on["manifest"]} if fit_on.get("manifest") else {}


def eval_overlap(sets: dict[str, str], query: Manifest, index: Manifest) -> dict | None:
    """How many query and index images the fit sets hold, and which sets (None: none, open-set). A set whose
    manifest is gone is left out (logged)."""
    scored = set(query.paths) | set(index.paths)
    hits: set[str] = set()
    via = []
    for role, path in sets.items():
        try:
            common = scored.intersection(read_manifest(path, require_label=False).paths)
        except EnsError as exc:
            log.info("fit set %s not checked: %s", role, exc)
            continue
        if common:
            hits |= common
            via.append(f"{role} ({len(common)})")
    return {"eval_images": len(hits), "via": via} if hits else None
