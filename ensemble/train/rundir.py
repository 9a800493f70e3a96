"""Claiming a run folder: one process at a time, recipe checked before anything is written.

Also the eval result cached beside a trained model, valid only for the settings that produced it.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..atomic import atomic_write_json
from ..checkpoint import load_checkpoint
from ..errors import EnsError
from .loop import check_same_recipe


@contextmanager
def run_lock(run_dir: Path, active: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on `run_dir` (a `.lock` file, released when the process dies);
    a second process on the same folder is refused at once instead of training beside the first."""
    if not active:
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise EnsError(f"{run_dir}: in use by another ens process (pid {holder}); wait for it to finish "
                           "or give the run another name") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


def check_recipe(path: Path, kind: str, key: dict) -> dict | None:
    """Checkpoint `path`'s payload, None where it does not exist; refused if another recipe wrote it."""
    if not path.exists():
        return None
    payload = load_checkpoint(path, kind=kind)
    check_same_recipe(path, payload["recipe_key"], key)
    return payload


def check_resume_recipe(run_dir: Path, kind: str, key: dict) -> None:
    """Refuse a run folder whose checkpoint came from another recipe, before anything there is written."""
    check_recipe(run_dir / "last.pt", kind, key)


def cached_result(path: Path, key: dict, compute: Callable[[], dict]) -> dict:
    """`compute()` stored in `path` with `key`; reused only while the key (eval settings, manifests,
    model file) is unchanged, so other settings never print old numbers."""
    if path.exists():
        try:
            stored = json.loads(path.read_text())
        except ValueError:
            stored = {}
        if isinstance(stored, dict) and stored.get("eval_key") == key:
            return stored
    result = {**compute(), "eval_key": key}
    atomic_write_json(path, result)
    return result
