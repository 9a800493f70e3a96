"""`ens index build` / `ens index add`: a searchable gallery of images embedded by a MODEL."""

from __future__ import annotations

from ..gallery.build import add_to_gallery, build_gallery


def describe(gallery, verb: str) -> str:
    facts = gallery.meta["index"]
    kind = "exact" if facts["type"] == "exact" else (
        f"IVF-Flat, nlist {facts['nlist']}, nprobe {facts['nprobe']}, recall@10 vs exact "
        f"{facts['recall_at_10_vs_exact']:.3f}")
    return (f"{verb} {gallery.folder}: {gallery.index.ntotal:,} images x {gallery.dim}-d "
            f"({gallery.meta['model']}; {kind})")


def run_build(spec, workdir, out, manifest, folder, approx_above, workers) -> str:
    return describe(build_gallery(spec, workdir, out, manifest, folder, approx_above, workers), "wrote")


def run_add(index, workdir, manifest, folder, workers) -> str:
    return describe(add_to_gallery(index, workdir, manifest, folder, workers), "updated")
