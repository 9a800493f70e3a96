"""Batched feature extraction: every image is decoded once, then every model and view runs on it.

Each model (an `Embedder`) names its preprocessing (size, mean, std); the loader's workers decode an
image once and produce one tensor per distinct preprocessing, so N members cost one decode per image.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data.augment import to_uint8_tensor
from ..data.dataset import FailureLog, ImageDataset, collate_skip
from ..device import limit_worker_threads, memory_format
from ..distributed import gather_rows, world
from ..models.backbone import fixed_size_error
from ..models.preprocess import Preprocess
from ..progress import label

# progress(positions in paths embedded so far, each embedder's features of those rows): see extract_many
Progress = Callable[[np.ndarray, list[np.ndarray]], None]


def embed_sizes(size_px: int, *extra_lists) -> list[int]:
    """The square sizes a model embeds at: `size_px`, then each list of extra sizes in order (None: none),
    each size once."""
    return list(dict.fromkeys(int(s) for s in [size_px, *(s for extra in extra_lists for s in extra or [])]))


@dataclass
class Embedder:
    """One model as extraction sees it: its preprocessing and a batch -> features function."""

    name: str
    key: str  # identity for caches: checkpoint content hash + feature choice
    arch: str  # members of one architecture are merged before fusion
    size_px: int
    mean: tuple
    std: tuple
    out_dim: int
    fn: Callable[[torch.Tensor], torch.Tensor]
    channels_last: bool = False
    autocast: torch.dtype | None = None  # None: fp32
    extra_sizes: tuple[int, ...] = ()  # the model's own multi-scale TTA (its recipe's eval.extra_sizes)
    fixed_size: bool = False  # a ViT whose positional embedding takes only size_px

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Features of a preprocessed batch, in float32 (computed under the embedder's autocast)."""
        with torch.autocast(images.device.type, dtype=self.autocast or torch.float32,
                            enabled=self.autocast is not None):
            return self.fn(images).float()

    def sizes(self, extra: list[int] | None = None) -> list[int]:
        """The square sizes this model embeds at: its size, its own extra sizes, then the run's extra TTA
        sizes (`extra`), each once."""
        every = embed_sizes(self.size_px, self.extra_sizes, extra)
        if self.fixed_size and len(every) > 1:
            raise fixed_size_error(self.name, f"TTA sizes {every[1:]}", self.size_px,
                                   "leave the TTA's extra_sizes empty")
        return every

    def views(self, sizes: list[int] | None = None) -> list[tuple]:
        """Preprocessing specs this model needs, one per size it embeds at (`sizes`: the run's extra TTA sizes)."""
        return [(s, tuple(self.mean), tuple(self.std)) for s in self.sizes(sizes)]


@dataclass(frozen=True)
class TTA:
    """Test-time augmentation: horizontal flip and extra square sizes, features averaged."""

    flip: bool = True
    extra_sizes: tuple[int, ...] = ()

    def describe(self) -> str:
        return f"flip={int(self.flip)},sizes={','.join(map(str, self.extra_sizes)) or '-'}"


class MultiTransform:
    """HxWx3 uint8 -> one normalised tensor per distinct (size, mean, std)."""

    def __init__(self, specs: list[tuple]):
        self.specs = specs
        self.pre = [Preprocess(size, mean, std) for size, mean, std in specs]

    def __call__(self, arr: np.ndarray) -> tuple:
        with torch.no_grad():
            x = to_uint8_tensor(arr)[None]
            return tuple(pre(x)[0] for pre in self.pre)


def normalize_blocks(feats: torch.Tensor, blocks: list[int] | None) -> torch.Tensor:
    """L2-normalise each block of columns on its own."""
    parts = feats.split(blocks, dim=1) if blocks else (feats,)
    return torch.cat([F.normalize(p, dim=-1) for p in parts], dim=1)


def _run_views(emb: Embedder, views: list[torch.Tensor], tta: TTA, blocks, normalize: bool = True) -> torch.Tensor:
    norm = (lambda f: normalize_blocks(f, blocks)) if normalize else (lambda f: f)
    total = None
    for images in views:
        images = images.contiguous(memory_format=memory_format(emb.channels_last))
        feats = norm(emb(images))
        if tta.flip:
            feats = feats + norm(emb(images.flip(-1)))
        total = feats if total is None else total + feats
    return norm(total)


def view_specs(embedders: list[Embedder], tta: TTA) -> list:
    """Every (size, ...) view the embedders need under `tta`, sorted: one decode feeds them all."""
    return sorted({v for e in embedders for v in e.views(list(tta.extra_sizes))})


def draft_px(embedders: list[Embedder], tta: TTA) -> int:
    """The JPEG draft size extraction decodes at: the largest view, so no view is upsampled."""
    return max(spec[0] for spec in view_specs(embedders, tta))


def extract_many(embedders: list[Embedder], paths, device: torch.device, tta: TTA = TTA(), batch_size: int = 64,
                 workers: int = 2, max_fail_ratio: float = 0.01, desc: str = "embed",
                 blocks: dict[str, list[int]] | None = None, jpeg_draft: bool = True,
                 normalize: bool = True, readable_before: int = 0, progress: Progress | None = None,
                 progress_every_s: float = 300.0) -> list[np.ndarray]:
    """Features of `paths` for every embedder, in manifest order; each image is decoded once.

    Rows of unreadable images are zero (warned about, and counted against max_fail_ratio).
    blocks: per embedder name, widths of feature blocks normalised separately (several features per pass).
    jpeg_draft: let libjpeg decode JPEGs at a reduced scale (never below the largest size needed).
    normalize: False returns raw features (summed over views), e.g. to fit a layer on them.
    readable_before: rows of the same manifest read from a cache, so max_fail_ratio is judged on the manifest.
    progress(rows, features): called at most every `progress_every_s` seconds with the positions in `paths`
    this process has embedded so far and each embedder's features of them, so a caller can save them (in a
    multi-process run each rank reports its own shard, before the gather).
    """
    specs = view_specs(embedders, tta)
    index_of = {spec: i for i, spec in enumerate(specs)}
    draft = draft_px(embedders, tta) if jpeg_draft else None
    w = world()
    mine = np.arange(len(paths))[w.rank::w.size]  # a multi-process run shards the rows, then gathers them
    shard = [paths[i] for i in mine]
    dataset = ImageDataset(shard, [0] * len(shard), MultiTransform(specs), draft_px=draft)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_skip,
                        worker_init_fn=limit_worker_threads)
    fails = FailureLog(shard, max_fail_ratio, readable_before // w.size)
    outputs = [np.zeros((len(shard), e.out_dim), np.float32) for e in embedders]
    done, saved_at = np.zeros(len(shard), bool), time.monotonic()
    with torch.inference_mode():
        names = ", ".join(e.name for e in embedders)
        for batch in tqdm(loader, desc=label(f"{desc} ({names})"), dynamic_ncols=True, leave=False,
                          disable=not w.main):
            fails.update(batch)
            if batch["images"] is None:
                continue
            rows = batch["indices"].numpy()
            for out, emb in zip(outputs, embedders, strict=True):
                views = [batch["images"][index_of[v]].to(device) for v in emb.views(list(tta.extra_sizes))]
                out[rows] = _run_views(emb, views, tta, (blocks or {}).get(emb.name), normalize).cpu().numpy()
            done[rows] = True
            if progress is not None and time.monotonic() - saved_at >= progress_every_s:
                so_far = np.flatnonzero(done)
                progress(mine[so_far], [out[so_far] for out in outputs])
                saved_at = time.monotonic()
    fails.check(final=True)
    return [gather_rows(out, mine, len(paths), w) for out in outputs]
