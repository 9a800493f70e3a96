"""Checkpoints and model files: torch.save through the atomic writer, verified reads."""

from __future__ import annotations

from pathlib import Path

import torch

from .atomic import atomic_file
from .errors import EnsError


class _Writes:
    """A file handle that keeps the OSError of a failed write: torch.save's zip writer reports a full disk
    as RuntimeError("unexpected pos ..."), without the cause."""

    def __init__(self, handle):
        self.handle, self.error = handle, None

    def write(self, data) -> int:
        try:
            return self.handle.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.handle.flush()


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """torch.save to a temp file in the same folder, fsync, rename (a failed write is the OSError that
    caused it, e.g. a full disk, naming `path`)."""
    with atomic_file(path) as file:
        handle = _Writes(file)
        try:
            torch.save(payload, handle)
        except RuntimeError:
            if handle.error is None:
                raise
            raise handle.error from None


def load_checkpoint(path: str | Path, kind: str | None = None) -> dict:
    """Load a checkpoint written by `save_checkpoint`; checks it is one of ours (and of `kind`)."""
    path = Path(path)
    if not path.is_file():
        raise EnsError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a damaged file
        raise EnsError(f"{path}: unreadable checkpoint ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or "ens_kind" not in payload:
        raise EnsError(f"{path}: not an ens checkpoint")
    if kind is not None and payload["ens_kind"] != kind:
        raise EnsError(f"{path}: is a {payload['ens_kind']} checkpoint, expected {kind}")
    return payload
