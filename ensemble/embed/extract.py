"""Batched feature extraction with horizontal-flip TTA, in manifest order."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data.augment import to_uint8_tensor
from ..data.dataset import FailureLog, ImageDataset, collate_skip
from ..models.preprocess import Preprocess


class EvalTransform:
    """HxWx3 uint8 -> normalised 3xSxS float, through the same `Preprocess` that exports use."""

    def __init__(self, size_px: int, mean, std):
        self.pre = Preprocess(size_px, mean, std)

    def __call__(self, arr: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return self.pre(to_uint8_tensor(arr)[None])[0]


def normalize_blocks(feats: torch.Tensor, blocks: list[int] | None) -> torch.Tensor:
    """L2-normalise each block of columns on its own."""
    parts = feats.split(blocks, dim=1) if blocks else (feats,)
    return torch.cat([torch.nn.functional.normalize(p, dim=-1) for p in parts], dim=1)


def extract(fn, paths, size_px: int, mean, std, device: torch.device, batch_size: int = 64,
            workers: int = 2, flip_tta: bool = True, max_fail_ratio: float = 0.01, desc: str = "embed",
            blocks: list[int] | None = None) -> np.ndarray:
    """Run `fn(images) -> [B, D]` (L2-normalised) over all images; flip TTA averages both views.

    blocks: widths of feature blocks that are L2-normalised separately after the flip average
    (several features from one pass); default one block.

    Rows of unreadable images are zero (they are warned about and counted against max_fail_ratio).
    """
    dataset = ImageDataset(paths, [0] * len(paths), EvalTransform(size_px, mean, std), draft_px=size_px)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_skip)
    fails = FailureLog(paths, max_fail_ratio)
    out = None
    with torch.inference_mode():
        for batch in tqdm(loader, desc=desc, dynamic_ncols=True, leave=False):
            fails.update(batch)
            if batch["images"] is None:
                continue
            images = batch["images"].to(device)
            feats = fn(images)
            if flip_tta:
                feats = normalize_blocks(feats + fn(images.flip(-1)), blocks)
            if out is None:
                out = np.zeros((len(paths), feats.shape[1]), np.float32)
            out[batch["indices"].numpy()] = feats.float().cpu().numpy()
    fails.check(final=True)
    return out
