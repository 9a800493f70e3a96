"""Manifests: CSV files with `path,label[,domain]`, paths relative to the CSV's folder."""

from __future__ import annotations

import csv
import hashlib
import io
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from ..atomic import atomic_write_text
from ..errors import EnsError, file_problem


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

    @cached_property  # once per manifest: every embedder's cache key and each scoring's report use it
    def located_sha1(self) -> str:
        """Content and where its images are: byte-identical CSVs in two folders name different images, so
        what is cached per manifest is keyed by this, not by `sha1` (which names a training set wherever it lies)."""
        return hashlib.sha1("\n".join((self.sha1, *self.paths)).encode()).hexdigest()


def read_manifest(path: str | Path, require_label: bool = True) -> Manifest:
    """Read a manifest CSV; missing columns or an empty file are one-line errors."""
    path = Path(path)
    if problem := file_problem(path, "manifest"):
        raise EnsError(f"{path}: {problem}")
    content = path.read_bytes()
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise EnsError(f"{path}: not UTF-8 text (byte 0x{content[exc.start]:02x} at offset {exc.start}); "
                       "save the manifest as UTF-8") from None
    if not text.strip():
        raise EnsError(f"{path}: empty file (expected a header `path,label[,domain]` and rows)")
    reader = csv.DictReader(text.splitlines())
    rows = list(reader)
    columns = set(reader.fieldnames or ())
    needed = {"path", "label"} if require_label else {"path"}
    if not needed <= columns:
        raise EnsError(f"{path}: manifest needs columns {sorted(needed)}; missing {sorted(needed - columns)}")
    if not rows:
        raise EnsError(f"{path}: manifest has a header but no rows")
    for i, row in enumerate(rows, start=2):  # line numbers as an editor shows them (1 = header)
        if not (row.get("path") or "").strip():
            raise EnsError(f"{path}: line {i}: empty path")
        if require_label and not (row.get("label") or "").strip():
            raise EnsError(f"{path}: line {i}: empty label (every row of a labelled manifest needs one)")
    base = path.resolve().parent
    paths = canonical_paths(base, [r["path"] for r in rows])
    labels = tuple(str(r.get("label") or "") for r in rows)
    domains = tuple(str(r.get("domain") or "all") for r in rows)
    return Manifest(path.resolve(), paths, labels, domains, hashlib.sha1(content).hexdigest())


def check_unique(manifest: Manifest, role: str = "index") -> None:
    """An image listed twice would be counted twice (as a neighbour: inflating precision; as a query:
    weighting it twice): refuse it."""
    seen: dict[str, int] = {}
    for i, path in enumerate(manifest.paths, start=2):
        if path in seen:
            raise EnsError(f"{manifest.source}: lines {seen[path]} and {i} list the same image {path}; "
                           f"each {role} image must appear once")
        seen[path] = i


def read_eval_pair(query: str | Path, index: str | Path) -> tuple[Manifest, Manifest]:
    """The query and index manifests of an evaluation, each image once and no query in the index (it
    would find itself at distance 0, and GUIE's query and index sets are disjoint)."""
    q, i = read_manifest(query), read_manifest(index)
    check_unique(q, "query")
    check_unique(i, "index")
    shared = set(q.paths) & set(i.paths)
    if shared:
        line, first = next((n, p) for n, p in enumerate(q.paths, start=2) if p in shared)
        raise EnsError(f"{q.source}: {len(shared)} query image(s) also in the index {i.source} (first: line {line}, "
                       f"{first}); a query would find itself: keep query and index disjoint")
    return q, i


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



IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def write_path_manifest(paths: list[str | Path], out: Path, labels: list[str] | None = None) -> Manifest:
    """A manifest of these image paths (absolute; labels optional) written at `out` and read back."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "label", "domain"])
    for i, path in enumerate(paths):
        writer.writerow([str(Path(path).resolve()), labels[i] if labels else "", ""])
    atomic_write_text(out, buffer.getvalue())
    return read_manifest(out, require_label=False)


def folder_manifest(folder: str | Path, out: Path) -> Manifest:
    """Every image below `folder` (by suffix, sorted), labelled by its parent folder's name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EnsError(f"--folder {folder}: not a folder")
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not found:
        raise EnsError(f"--folder {folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) below it")
    labels = [p.parent.name if p.parent != folder else "" for p in found]
    return write_path_manifest(found, out, labels)
