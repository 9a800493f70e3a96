"""The one atomic writer: temp file in the same folder, fsync, rename; readers never see half a file.

Every artifact, report, cache entry and checkpoint is written through `atomic_file`; a failed or
interrupted write removes its temp file and names the target in the error.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _named(exc: OSError, path: Path) -> OSError:
    """The same error, naming the file we meant to write (not the temp file)."""
    return OSError(exc.errno, exc.strerror or str(exc), str(path))


@contextmanager
def atomic_file(path: str | Path, expected_bytes: int = 0) -> Iterator[BinaryIO]:
    """A binary handle whose content replaces `path` only when the block finishes without error."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        check_free_space(path.parent, expected_bytes)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:  # e.g. a read-only workspace
        raise _named(exc, path) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _named(exc, path) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable(folder: str | Path) -> None:
    """Refuse a long job whose results could not be saved before it starts (a read-only workspace), not
    after hours of work: create and remove a temp file in `folder`."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise _named(exc, folder) from None


def check_free_space(folder: Path, nbytes: int) -> None:
    """Refuse a write that cannot fit before starting it (a full disk mid-write leaves nothing behind
    either, but failing first is quicker and names the size)."""
    free = shutil.disk_usage(folder).free
    if nbytes > free:
        raise OSError(errno.ENOSPC, f"No space left on device: {nbytes:,} bytes to write, {free:,} free",
                      str(folder))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one."""
    with atomic_file(path, len(data)) as handle:
        handle.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj, indent: int | None = 2) -> None:
    """JSON without NaN (not JSON; a missing score is null)."""
    atomic_write_text(path, json.dumps(obj, indent=indent, allow_nan=False))


def atomic_write_npy(path: str | Path, array: np.ndarray) -> bytes:
    """Write an .npy file; returns its bytes (callers record their checksum)."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    atomic_write_bytes(path, buffer.getvalue())
    return buffer.getvalue()
