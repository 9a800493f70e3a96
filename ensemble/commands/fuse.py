"""`ens fuse`: fuse trained members into one embedding (merge per architecture, concatenate, PCA)."""

from __future__ import annotations

from ..fuse.config import ensemble_cfg
from ..fuse.fit import fuse


def run(workdir: str, config_path: str | None, overrides: list[str], **flags) -> str:
    """Build the ensemble config (file < --set < flags), fit it, describe it in one line."""
    cfg = ensemble_cfg(workdir, config_path, overrides, **flags)
    ens = fuse(cfg, workdir).ensemble
    d = ens.description
    reducer = d["reducer"]
    if reducer is None:
        facts = f"concatenation, {d['concat_dim']}-d"
    elif reducer.get("type") == "learned":
        facts = (f"learned projection {d['concat_dim']} -> {reducer['dims']} "
                 f"(from PCA, trained on {reducer['trained_on']})")
    else:
        facts = (f"PCA {d['concat_dim']} -> {reducer['dims']} "
                 f"(explained variance {reducer['explained_variance_ratio']:.3f})")
    return (f"ensemble {ens.name}: {len(d['members'])} members in {len(d['groups'])} groups, {d['features']} "
            f"features, {facts}, fitted on {d['fit_on']['rows']} images")
