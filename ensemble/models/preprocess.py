"""Eval preprocessing as a module: uint8 RGB of any size -> resized, normalised float."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Preprocess(nn.Module):
    """uint8 [B,3,H,W] -> float [B,3,S,S]: bilinear (antialiased) resize, then (x - mean) / std.

    The same module runs in `ens embed` and inside exported files, so both see identical pixels.
    """

    def __init__(self, size_px: int, mean, std):
        super().__init__()
        self.size_px = int(size_px)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255.0
        x = F.interpolate(x, size=(self.size_px, self.size_px), mode="bilinear", antialias=True, align_corners=False)
        return (x - self.mean) / self.std


RESIZE = "bilinear-antialias"  # the one resize of training, eval and exported files (Preprocess)


def preprocess_record(size_px: int, mean, std, train_resize: str) -> dict:
    """What a model file says about its inputs: every consumer rebuilds `Preprocess` from this."""
    return {"size_px": int(size_px), "mean": [float(v) for v in mean], "std": [float(v) for v in std],
            "scale": "uint8 / 255", "resize": RESIZE, "interpolation": "bilinear", "antialias": True,
            "train_resize": train_resize}
