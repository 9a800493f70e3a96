"""Exported TorchScript files: tracing the embedding graph, the input contract, reading files back.

Contract (DESIGN.md): `torch.jit.load(FILE)` needs only torch; input uint8 [B,3,H,W] RGB of any size;
output float32 [B,D] L2-normalised. The graph resizes first, so everything after the resize sees a
fixed shape and tracing is exact for every input size.
"""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from ..data.augment import to_uint8_tensor
from ..data.decode import decode_image
from ..errors import EnsError

FORMAT = "ens-export-1"


class InputGuard(nn.Module):
    """Checks the input contract inside the exported file (scripted: a traced graph drops Python checks),
    so a float [0,1] batch, a grey or RGBA or NHWC tensor fails with a message instead of a wrong answer."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise ValueError("ens export: expected a uint8 tensor [B,3,H,W] (RGB, 0..255), got another dtype; "
                             "for float images in [0,1] pass (x * 255).round().to(torch.uint8)")
        if images.dim() != 4 or images.size(1) != 3:
            raise ValueError("ens export: expected shape [B,3,H,W] (RGB, channels first), got "
                             + str(images.shape) + "; for [B,H,W,3] pass images.permute(0, 3, 1, 2)")
        if images.size(0) == 0 or images.size(2) == 0 or images.size(3) == 0:
            raise ValueError("ens export: expected a non-empty batch of images, got shape " + str(images.shape))
        return self.inner(images)


@contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated", category=FutureWarning)
        yield


def trace(module: nn.Module) -> torch.jit.ScriptModule:
    """Trace on a non-square uint8 example, behind a scripted `InputGuard`. Shapes after the resize
    are fixed, so the tracer's warnings about shape-dependent Python values (timm's padding,
    pos-embed checks) are safe."""
    example = torch.randint(0, 256, (2, 3, 97, 131), dtype=torch.uint8)
    module = module.eval().requires_grad_(False)  # users' calls should not build autograd graphs
    with _quiet(), torch.no_grad():
        return torch.jit.script(InputGuard(torch.jit.trace(module, example, check_trace=False)))


def serialize(scripted: torch.jit.ScriptModule, meta: dict) -> bytes:
    """The file's bytes, with `meta` inside as ens.json. Serialised in memory: torch.jit.save aborts
    the process on a full disk; the atomic writer fails cleanly instead."""
    buffer = io.BytesIO()
    with _quiet():
        torch.jit.save(scripted, buffer, _extra_files={"ens.json": json.dumps(meta)})
    return buffer.getvalue()


def jit_load(path, device: torch.device | str = "cpu", **kwargs):
    """torch.jit.load (a path or file-like) onto `device`, without its deprecation notice (TorchScript
    is the contract)."""
    with _quiet():
        return torch.jit.load(path if hasattr(path, "read") else str(path), map_location=device, **kwargs)


def decoded_tensor(path: str) -> torch.Tensor:
    """A file as the exported model's user would feed it: fully decoded RGB, uint8 [1,3,H,W]."""
    return to_uint8_tensor(decode_image(path))[None]


def _is_training_checkpoint(path: str | Path) -> bool:
    """A torch.save zip whose pickle names `ens_kind` (what save_checkpoint writes), read without unpickling."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
            return bool(pickles) and b"ens_kind" in archive.read(pickles[0])
    except (OSError, zipfile.BadZipFile):
        return False


def read_export_meta(path: str | Path) -> dict:
    """The description stored inside an exported file."""
    extra = {"ens.json": ""}
    try:
        jit_load(path, _extra_files=extra)
    except (RuntimeError, ValueError) as exc:
        if _is_training_checkpoint(path):
            raise EnsError(f"{path}: an ens training checkpoint (best.pt / last.pt), not an exported file; pass the "
                           "member's name or student:<name> as MODEL, or write an exported file with `ens export`"
                           ) from None
        reason = str(exc).splitlines()[0].split(". This is an internal")[0][:200]  # torch appends advice on zips
        raise EnsError(f"{path}: not a TorchScript file ({reason})") from None
    if not extra["ens.json"]:
        raise EnsError(f"{path}: TorchScript file without ens metadata (not written by `ens export`)")
    meta = json.loads(extra["ens.json"])
    if meta.get("format") != FORMAT:
        raise EnsError(f"{path}: export format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta
