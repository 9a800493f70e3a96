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
    facts = (f"PCA {d['concat_dim']} -> {reducer['dims']} (explained variance {reducer['explained_variance_ratio']:.3f})"
             if reducer else f"concatenation, {d['concat_dim']}-d")
    return (f"ensemble {ens.name}: {len(d['members'])} members in {len(d['groups'])} groups, {d['features']} "
            f"features, {facts}, fitted on {d['fit_on']['rows']} images")
