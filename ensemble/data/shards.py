"""WebDataset tar shards of a manifest, readable by index.

`write_shards` packs every image of a manifest (bytes as they are, plus label, domain and source path)
into WebDataset tars with the `webdataset` package, then writes `manifest.csv` beside them: one row per
image whose path names its bytes inside a shard (`shard-000003.tar@<offset>:<size>`). Training and
extraction read that manifest like any other, so class-balanced sampling, sharding across ranks and
mid-epoch resume work unchanged; each image is one seek + read in a large file instead of one file open.
"""

from __future__ import annotations

import csv
import io
import os
import re
import tarfile
import tempfile
from pathlib import Path

from ..atomic import atomic_write_text
from ..errors import EnsError
from .manifest import Manifest, read_manifest

SHARD_MEMBER = re.compile(r"^(?P<tar>.+\.tar)@(?P<offset>\d+):(?P<size>\d+)$")
MANIFEST = "manifest.csv"


def read_member(path: str) -> bytes | None:
    """The bytes a shard path names, or None when `path` is not one."""
    match = SHARD_MEMBER.match(path)
    if match is None or os.path.exists(path):
        return None
    with open(match["tar"], "rb") as handle:
        handle.seek(int(match["offset"]))
        data = handle.read(int(match["size"]))
    if len(data) != int(match["size"]):
        raise OSError(f"{match['tar']}: truncated shard")
    return data


def write_shards(manifest: Manifest, out: str | Path, shard_size: int = 1000) -> Manifest:
    """Pack `manifest`'s images into tars of `shard_size` samples under `out`; returns the shard manifest."""
    out = Path(out)
    if shard_size < 1:
        raise EnsError(f"--shard-size {shard_size}: expected a positive number of images per shard")
    if (out / MANIFEST).exists():
        raise EnsError(f"--out {out}: a shard set is already there ({MANIFEST}); pick another folder")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".writing-") as tmp:
        _pack(manifest, Path(tmp), out, shard_size)
        rows = _index(Path(tmp), out, manifest)
        for tar in sorted(Path(tmp).glob("shard-*.tar")):
            os.replace(tar, out / tar.name)  # same file system: each shard appears whole
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "label", "domain"])
    writer.writerows(rows)
    atomic_write_text(out / MANIFEST, buffer.getvalue())  # written last: names a finished shard set
    return read_manifest(out / MANIFEST, require_label=False)


def _pack(manifest: Manifest, folder: Path, out: Path, shard_size: int) -> None:
    """The tars, written into `folder`; a failed write (a full disk) names the shard being written."""
    import webdataset as wds

    sink = None
    try:
        with wds.ShardWriter(str(folder / "shard-%06d.tar"), maxcount=shard_size, verbose=0) as sink:
            for i, path in enumerate(manifest.paths):
                try:
                    data = Path(path).read_bytes()
                except OSError as exc:
                    raise EnsError(f"{manifest.source}: row {i + 2}: {path}: {exc.strerror or exc}") from None
                ext = Path(path).suffix.lower().lstrip(".") or "img"
                sink.write({"__key__": f"{i:09d}", ext: data, "cls.txt": manifest.labels[i],
                            "domain.txt": manifest.domains[i], "path.txt": path})
    except OSError as exc:  # the tar writer's errors name no file
        shard = Path(sink.fname).name if sink is not None and sink.fname else "shard"
        raise OSError(exc.errno, exc.strerror or str(exc), exc.filename or str(out / shard)) from None


def _index(folder: Path, final: Path, manifest: Manifest) -> list[tuple[str, str, str]]:
    """(shard path, label, domain) per sample, in manifest order, from the tars' member offsets."""
    rows: list[tuple[str, str, str] | None] = [None] * len(manifest)
    for tar in sorted(folder.glob("shard-*.tar")):
        with tarfile.open(tar) as archive:
            for member in archive.getmembers():
                key, _, ext = member.name.partition(".")
                if ext in ("cls.txt", "domain.txt", "path.txt"):
                    continue
                i = int(key)
                rows[i] = (f"{tar.name}@{member.offset_data}:{member.size}", manifest.labels[i], manifest.domains[i])
    missing = [i for i, r in enumerate(rows) if r is None]
    if missing:
        raise EnsError(f"{final}: {len(missing)} image(s) missing from the written shards")
    return rows
