"""Manifests: CSV files with `path,label[,domain]`, paths relative to the CSV's folder."""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import EnsError


@dataclass(frozen=True)
class Manifest:
    """Rows of one manifest with absolute, canonical paths, and a hash of its content."""

    source: Path
    paths: tuple[str, ...]
    labels: tuple[str, ...]
    domains: tuple[str, ...]
    sha1: str

    def __len__(self) -> int:
        return len(self.paths)


def read_manifest(path: str | Path, require_label: bool = True) -> Manifest:
    """Read a manifest CSV; missing columns or an empty file are one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise EnsError(f"{path}: manifest not found")
    content = path.read_bytes()
    rows = list(csv.DictReader(content.decode("utf-8-sig").splitlines()))
    columns = set(rows[0].keys()) if rows else set()
    needed = {"path", "label"} if require_label else {"path"}
    if not rows or not needed <= columns:
        missing = sorted(needed - columns) if rows else sorted(needed)
        raise EnsError(f"{path}: manifest needs columns {sorted(needed)}; missing {missing}")
    base = path.resolve().parent
    paths = canonical_paths(base, [r["path"] for r in rows])
    labels = tuple(str(r.get("label") or "") for r in rows)
    domains = tuple(str(r.get("domain") or "all") for r in rows)
    return Manifest(path.resolve(), paths, labels, domains, hashlib.sha1(content).hexdigest())


def canonical_paths(base: Path, paths: list[str]) -> tuple[str, ...]:
    """Absolute paths with `..` and linked folders resolved, so one image has one spelling in every
    manifest (caches match rows by path); one realpath per folder, not per image."""
    real_dir: dict[str, str] = {}
    out = []
    for path in paths:
        folder, name = os.path.split(os.path.join(base, path))  # an absolute path stays as it is
        if folder not in real_dir:
            real_dir[folder] = os.path.realpath(folder)
        out.append(os.path.join(real_dir[folder], name))
    return tuple(out)


def label_index(labels: list[str] | tuple[str, ...]) -> dict[str, int]:
    """Stable label -> class index map (sorted label strings)."""
    return {label: i for i, label in enumerate(sorted(set(labels)))}
