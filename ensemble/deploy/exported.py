"""Exported files of either format (TorchScript `.pt`, ONNX `.onnx`): read their description, run them."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..data.augment import to_uint8_tensor
from ..data.dataset import FailureLog, ImageDataset, collate_skip
from ..data.manifest import Manifest
from ..device import limit_worker_threads
from ..embed.cache import load_checked, write_checked
from ..errors import EnsError
from ..hashing import file_sha1
from .onnx import OnnxRunner, read_onnx_meta
from .torchscript import jit_load, read_export_meta

FORMATS = {".pt": "torchscript", ".onnx": "onnx"}


def export_format(path: str | Path) -> str:
    """torchscript | onnx, from the file name."""
    suffix = Path(path).suffix
    if suffix not in FORMATS:
        raise EnsError(f"{path}: expected an exported .pt (TorchScript) or .onnx file")
    return FORMATS[suffix]


def read_meta(path: str | Path) -> dict:
    """The description stored inside an exported file."""
    return read_onnx_meta(path) if export_format(path) == "onnx" else read_export_meta(path)


def load_runner(path: str | Path, device: torch.device | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 [B,3,H,W] -> float32 [B,D] on the CPU, running the file itself: torch.jit on `device`
    (default CPU), or onnxruntime on the CPU."""
    if export_format(path) == "onnx":
        return OnnxRunner(path)
    device = device or torch.device("cpu")
    module = jit_load(path, device)
    return lambda images: module(images.to(device)).cpu()


def embed_exported(path: str | Path, manifest: Manifest, cache_dir: Path | None, workers: int = 2,
                   device: torch.device | None = None) -> np.ndarray:
    """Embed every manifest row with an exported file (a TorchScript file on `device`, default CPU),
    each image fed whole at its own size (cached under `cache_dir` by file and manifest hash, with the
    cache file's SHA-1 checked on every read, unless it is None). Unreadable images give zero rows."""
    path = Path(path)
    key = hashlib.sha1(f"{file_sha1(path)}|{manifest.located_sha1}".encode()).hexdigest()[:20]
    cache = Path(cache_dir) / f"export-{path.name}" / f"{key}.npy" if cache_dir is not None else None
    dim = read_meta(path)["output_dim"]
    cached = load_checked(cache, len(manifest), dim) if cache is not None else None
    if cached is not None:
        return cached
    run = load_runner(path, device)
    dataset = ImageDataset(manifest.paths, [0] * len(manifest), to_uint8_tensor)
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=workers, collate_fn=collate_skip,
                                         worker_init_fn=limit_worker_threads)
    fails = FailureLog(manifest.paths, 0.01)
    out = np.zeros((len(manifest), dim), np.float32)
    with torch.no_grad():
        for batch in loader:
            fails.update(batch)
            if batch["images"] is not None:
                out[batch["indices"].numpy()] = run(batch["images"]).numpy()
    fails.check(final=True)
    if cache is not None:
        write_checked(cache, out, {"export": str(path), "manifest": str(manifest.source), "rows": len(manifest),
                                   "dim": dim})
    return out
