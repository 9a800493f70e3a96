"""An in-memory model as extraction sees it (`Embedder`), built from an `EmbeddingModel`."""

from __future__ import annotations

from functools import partial

import torch

from ..device import autocast_dtype
from ..errors import EnsError
from ..models.backbone import fixed_size_error
from ..models.member import FEATURES, EmbeddingModel
from .extract import Embedder


def model_embedder(model: EmbeddingModel, name: str, key: str, arch: str, features: str, device: torch.device,
                   size_px: int | None = None, channels_last: bool = False, normalize: bool = True,
                   precision: str = "fp32", extra_sizes: tuple[int, ...] = ()) -> Embedder:
    """An Embedder running `model.embed(x, features)` on `device`, at `size_px` (default: training size)
    and at each of `extra_sizes` (features averaged: the recipe's eval.extra_sizes), under `precision`'s
    autocast (the recipe's eval.precision).

    key: identity for caches (the model file's sha1; other than fp32, the precision is part of it);
    normalize=False gives raw features (e.g. to fit a layer on them).
    """
    if features not in FEATURES:
        raise EnsError(f"features: expected one of {FEATURES}, got {features!r}")
    size_px = size_px or model.backbone.image_size
    if size_px != model.backbone.image_size and model.backbone.fixed_size:
        raise fixed_size_error(name, f"eval.image_size {size_px} px", model.backbone.image_size,
                               "leave eval.image_size unset")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=fmt).eval()
    dims = {"neck": model.out_dim, "backbone": model.backbone.out_dim}
    out_dim = dims["neck"] + dims["backbone"] if features == "both" else dims[features]
    key = (f"{key}:{features}" + ("" if precision == "fp32" else f":{precision}")
           + (f":sizes={size_px},{','.join(map(str, extra_sizes))}" if extra_sizes else ""))
    return Embedder(name, key, arch, size_px, model.backbone.mean, model.backbone.std, out_dim,
                    partial(model.embed, features=features, normalize=normalize), channels_last,
                    autocast_dtype(device, precision), tuple(extra_sizes), model.backbone.fixed_size)
