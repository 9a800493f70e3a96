"""`ens show`: a trained member's, a student's or an exported file's self-description."""

from __future__ import annotations

import json

from ..checkpoint import load_checkpoint
from ..deploy.exported import read_meta
from ..errors import EnsError
from ..workspace.layout import MODEL_FILE, Workspace
from ..workspace.resolve import ModelRef


def show(spec: str, workdir) -> dict:
    """What the model file says about itself (no model is built)."""
    ws, ref = Workspace.at(workdir), ModelRef.parse(spec)
    if ref.kind == "export":
        return read_meta(ref.path)
    if ref.kind == "ensemble":
        raise EnsError(f"MODEL {spec!r}: show describes model files; see runs/ensemble/<name>/ensemble.yaml")
    folder = ws.student_dir(ref.name) if ref.kind == "student" else ws.member_dir(ref.name)
    payload = load_checkpoint(folder / MODEL_FILE, kind=f"{ref.kind}_model")
    soup = {"soup": payload["soup"]} if payload.get("soup") else {}  # a student averaged over seeds: its runs
    return {**payload["describe"], "preprocess": payload.get("preprocess"), **soup}


def run(spec: str, workdir) -> str:
    return json.dumps(show(spec, workdir), indent=2)
