"""Build the ensemble config from a YAML file, `--set` overrides and CLI flags."""

from __future__ import annotations

from pathlib import Path

from ..config.load import apply_overrides, read_yaml, validate
from ..config.schema import EnsembleCfg
from ..errors import EnsError
from ..workspace.layout import Workspace


def ensemble_cfg(workdir, path: str | None = None, overrides: list[str] | None = None, **flags) -> EnsembleCfg:
    """Config file (if any) < --set overrides < explicit flags; members default to all trained ones."""
    raw = read_yaml(path) if path else {}
    if path and raw.get("data"):
        data = Path(raw["data"])
        raw["data"] = str(data if data.is_absolute() else Path(path).resolve().parent / data)
    raw = apply_overrides(raw, overrides or [])
    if flags.get("members"):
        raw["members"] = [m.strip() for m in flags["members"].split(",") if m.strip()]
    if "members" not in raw:
        raw["members"] = Workspace.at(workdir).trained_members()
    for key in ("name", "fit_on", "features", "whiten", "merge", "pca"):
        if flags.get(key) is not None:
            raw[key] = flags[key]
    if flags.get("no_pca"):
        if flags.get("pca") is not None:
            raise EnsError(f"--pca {flags['pca']} and --no-pca: give one (a reducer to that many dims, or none)")
        raw["pca"] = None
    if path and not raw.get("name"):
        raw["name"] = Path(path).stem
    return validate(EnsembleCfg, raw, path or "ens fuse")
