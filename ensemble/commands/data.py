"""`ens data fetch` / `ens data build`: datasets and their manifests."""

from __future__ import annotations

from ..data.build import build, load_build_cfg
from ..data.fetch import fetch
from ..data.manifest import read_manifest
from ..data.shards import write_shards


def run_fetch(name: str, dest: str, shared: str, data_config: str) -> str:
    folder = fetch(name, dest, shared, data_config)
    if str(folder) == shared:
        return f"{name}: using {folder} (already here; {data_config} points there)"
    return f"{name}: manifests in {folder}; {data_config} now points there"


def run_build(config: str) -> str:
    summary = build(load_build_cfg(config))
    lines = [f"wrote {summary['out']}: {summary['rows']:,} rows, {summary['labels']:,} labels "
             f"({summary['labels_dropped']} labels dropped, {summary['labels_capped']} capped, "
             f"{summary['rows_repeated']} rows repeated)"]
    for name, c in summary["per_source"].items():
        lines.append(f"  {name}: {c['images_found']:,} images / {c['labels_found']:,} labels found, "
                     f"{c['rows']:,} rows / {c['labels']:,} labels kept")
    return "\n".join(lines)


def run_shards(manifest: str, out: str, shard_size: int) -> str:
    shards = write_shards(read_manifest(manifest, require_label=False), out, shard_size)
    count = len({p.split("@")[0] for p in shards.paths})
    return (f"wrote {count} shard(s) of up to {shard_size} images ({len(shards):,} images) and {shards.source}; "
            "point a data config's train/query/index/distill key at it")
