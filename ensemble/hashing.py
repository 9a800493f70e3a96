"""Content hashes: what identifies a model file, a manifest or a cache entry."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha1(path: str | Path, chunk_bytes: int = 1 << 22) -> str:
    """sha1 of a file's bytes, streamed."""
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()
