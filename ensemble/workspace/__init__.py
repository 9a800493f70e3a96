"""The workspace: the `runs/` layout, its typed artifacts, and MODEL resolution."""

from .artifacts import EnsembleFile, ModelFile, load_model_file, member_file, read_ensemble, save_model, student_file
from .layout import MODEL_FILE, Workspace
from .resolve import ModelRef, ResolvedModel, resolve_model

__all__ = ["MODEL_FILE", "EnsembleFile", "ModelFile", "ModelRef", "ResolvedModel", "Workspace", "load_model_file",
           "member_file", "read_ensemble", "resolve_model", "save_model", "student_file"]
