"""The neck: dropout + Linear layers from backbone features to the embedding."""

from __future__ import annotations

from torch import nn

from ..config.schema import NeckCfg


def build_neck(cfg: NeckCfg, in_dim: int) -> nn.Sequential:
    """Dropout -> Linear (-> BatchNorm) per entry of `dims`; PReLU between layers."""
    layers: list[nn.Module] = []
    for i, dim in enumerate(cfg.dims):
        if i > 0:
            layers.append(nn.PReLU())
        layers += [nn.Dropout(cfg.dropout), nn.Linear(in_dim, dim)]
        if cfg.batchnorm:
            layers.append(nn.BatchNorm1d(dim))
        in_dim = dim
    return nn.Sequential(*layers)
