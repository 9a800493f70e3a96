"""`ens data build`: public dataset layouts -> one merged, balanced manifest (+ a summary).

Layouts: a plain manifest, an image folder (one sub-folder per label), Google Landmarks v2
(`train.csv` with `id,landmark_id`; image `images/a/b/c/abc....jpg`) and Products-10K (`train.csv`
with `name,class,group`; image `images/<name>`). Labels are prefixed by the source name so sources
never share a class; then labels with fewer than `min_per_class` images are dropped, larger ones are
capped at `max_per_class` (seeded sample) and smaller ones oversampled to `oversample_to` by
repeating rows (DOMAIN.md: drop < 3, cap 100, oversample to 20).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_text
from ..config.load import read_yaml, validate
from ..config.schema import BuildCfg, SamplerCfg, SourceCfg, repeated
from ..errors import EnsError, file_problem
from .manifest import read_manifest

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
Row = tuple[str, str, str]  # absolute path, label, domain


def _read_csv(path: Path, needed: set[str]) -> list[dict]:
    if problem := file_problem(path, "CSV file"):
        raise EnsError(f"{path}: {problem}")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    missing = sorted(needed - set(rows[0] if rows else ()))
    if not rows or missing:
        raise EnsError(f"{path}: expected columns {sorted(needed)}; missing {missing or sorted(needed)}")
    return rows


def read_source(src: SourceCfg) -> list[Row]:
    """(path, label, domain) rows of one source, labels not yet prefixed."""
    domain = src.domain or src.name
    if src.kind == "manifest":
        m = read_manifest(src.csv)
        return [(p, lab, src.domain or d) for p, lab, d in zip(m.paths, m.labels, m.domains, strict=True)]
    if src.kind == "folder":
        root = Path(src.images)
        if not root.is_dir():
            raise EnsError(f"source {src.name}: images folder not found: {root}")
        return [(str(p.resolve()), p.parent.name, domain) for p in sorted(root.glob("*/*"))
                if p.suffix.lower() in IMAGE_SUFFIXES]
    images = Path(src.images).resolve()
    if src.kind == "gldv2":
        rows = _read_csv(Path(src.csv), {"id", "landmark_id"})
        return [(str(images / r["id"][0] / r["id"][1] / r["id"][2] / f"{r['id']}.jpg"), r["landmark_id"], domain)
                for r in rows]
    rows = _read_csv(Path(src.csv), {"name", "class"})  # products10k
    return [(str(images / r["name"]), r["class"], domain) for r in rows]


def balance(rows: list[Row], cfg: SamplerCfg, seed: int) -> tuple[list[Row], dict]:
    """Drop rare labels, cap frequent ones, oversample small ones by repeating rows (seeded)."""
    by_label: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        by_label[row[1]].append(row)
    rng = np.random.default_rng(seed)
    out, dropped, capped, repeated = [], 0, 0, 0
    for label in sorted(by_label):
        group = by_label[label]
        if len(group) < cfg.min_per_class:
            dropped += 1
            continue
        if len(group) > cfg.max_per_class:
            group = [group[i] for i in sorted(rng.choice(len(group), cfg.max_per_class, replace=False))]
            capped += 1
        if len(group) < cfg.oversample_to:
            extra = rng.choice(len(group), cfg.oversample_to - len(group), replace=True)
            repeated += len(extra)
            group = group + [group[i] for i in extra]
        out.extend(group)
    return out, {"labels_dropped": dropped, "labels_capped": capped, "rows_repeated": repeated}


def build(cfg: BuildCfg) -> dict:
    """Read every source, prefix labels, balance, write `cfg.out` and `<out>.summary.json`."""
    names = [s.name for s in cfg.sources]
    if repeated(names):
        raise EnsError(f"sources: names must be unique, got {names}")
    for src in cfg.sources:
        if src.csv is not None and Path(src.csv).resolve() == Path(cfg.out).resolve():
            raise EnsError(f"out: {cfg.out} is source {src.name}'s csv; writing there would replace the input "
                           "it is built from; pick another path")
    rows: list[Row] = []
    raw = {}
    for src in cfg.sources:
        found = read_source(src)
        if not found:
            raise EnsError(f"source {src.name}: no images found")
        raw[src.name] = found
        rows.extend((p, f"{src.name}:{label}", d) for p, label, d in found)
    balanced, effects = balance(rows, cfg.balance, cfg.seed)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    base = out.resolve().parent
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "label", "domain"])
    for path, label, domain in balanced:
        writer.writerow([os.path.relpath(path, base), label, domain])
    atomic_write_text(out, buffer.getvalue())
    summary = {"out": str(out), "rows": len(balanced), "labels": len({r[1] for r in balanced}),
               "balance": cfg.balance.model_dump(), **effects,
               "per_source": {name: _counts(found, [r for r in balanced if r[1].startswith(name + ":")])
                              for name, found in raw.items()},
               "per_domain": {d: _counts([], [r for r in balanced if r[2] == d])
                              for d in sorted({r[2] for r in balanced})}}
    atomic_write_text(out.with_suffix(".summary.json"), json.dumps(summary, indent=2))
    return summary


def _counts(found: list[Row], kept: list[Row]) -> dict:
    counts = {"rows": len(kept), "labels": len({r[1] for r in kept})}
    if found:
        counts.update(images_found=len(found), labels_found=len(Counter(r[1] for r in found)))
    return counts


def load_build_cfg(path: str | Path) -> BuildCfg:
    """A build config; its paths are relative to it."""
    path = Path(path)
    cfg = validate(BuildCfg, read_yaml(path), path)
    base = path.resolve().parent
    cfg.out = cfg.out if cfg.out.is_absolute() else base / cfg.out
    for src in cfg.sources:
        for key in ("csv", "images"):
            value = getattr(src, key)
            if value is not None and not value.is_absolute():
                setattr(src, key, base / value)
    return cfg
