"""A gallery index on disk: `index.faiss` (exact L2 below a size threshold, IVF-Flat above it with its
measured recall), `rows.csv` (path, label, domain per vector) and `gallery.json` (the model's
identity, the index type, hashes of the other two files), written last.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from ..data.manifest import Manifest
from ..errors import EnsError
from ..evaluate.metrics import ivf_flat, knn, overlap
from ..hashing import file_sha1

INDEX_FILE, ROWS_FILE, META_FILE = "index.faiss", "rows.csv", "gallery.json"
APPROX_ABOVE = 1_000_000  # vectors above which the gallery is an IVF index (exact search of 1M x 64: ~10 ms/query)


def build_faiss(vectors: np.ndarray, approx_above: int = APPROX_ABOVE, nprobe: int = 32, seed: int = 0):
    """(faiss index holding `vectors`, facts): exact, or IVF-Flat with nlist ~ sqrt(N) and its recall@10
    against exact search on up to 200 of the gallery's own vectors."""
    import faiss

    vectors = np.ascontiguousarray(vectors, np.float32)
    if len(vectors) <= approx_above:
        index = faiss.IndexFlatL2(vectors.shape[1])
        index.add(vectors)
        return index, {"type": "exact"}
    rng = np.random.default_rng(seed)
    index = ivf_flat(vectors, rng, nprobe)
    return index, {"type": "ivf_flat", "nlist": index.nlist, "nprobe": index.nprobe,
                   "recall_at_10_vs_exact": measured_recall(index, vectors, rng)}


def measured_recall(index, vectors: np.ndarray, rng, queries: int = 200, k: int = 10) -> float:
    """recall@k of `index` against exact search, on up to `queries` of its own vectors."""
    sample = vectors[rng.choice(len(vectors), min(len(vectors), queries), replace=False)]
    return overlap(index.search(sample, k)[1], knn(sample, vectors, k), k)


@dataclass
class Gallery:
    """A loaded gallery: the faiss index, one row (path, label, domain) per vector, its description."""

    folder: Path
    index: object  # faiss.Index
    rows: list[dict]
    meta: dict

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(Euclidean distances, row indices) of the k nearest gallery vectors per query."""
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise EnsError(f"{self.folder}: the gallery holds {self.dim}-d vectors, got queries of shape "
                           f"{tuple(queries.shape)}")
        squared, rows = self.index.search(np.ascontiguousarray(queries, np.float32), min(k, self.index.ntotal))
        return np.sqrt(np.maximum(squared, 0)), rows

    def refuse_known(self, paths, source: str) -> None:
        """One-line EnsError naming `source` (where `paths` came from) if any of them is in the gallery."""
        known = {r["path"] for r in self.rows}
        again = [p for p in paths if p in known]
        if again:
            raise EnsError(f"{source}: {len(again)} image(s) already in the gallery {self.folder}, e.g. {again[0]}")

    def add(self, vectors: np.ndarray, manifest: Manifest) -> None:
        """Append vectors and their rows (refuses images already in the gallery)."""
        self.refuse_known(manifest.paths, str(manifest.source))
        self.index.add(np.ascontiguousarray(vectors, np.float32))
        self.rows += manifest_rows(manifest)


def manifest_rows(manifest: Manifest) -> list[dict]:
    return [{"path": p, "label": label, "domain": d}
            for p, label, d in zip(manifest.paths, manifest.labels, manifest.domains, strict=True)]


def save(gallery: Gallery) -> None:
    """index and rows first, then gallery.json naming their hashes: a killed write is detected on load."""
    import faiss

    folder = gallery.folder
    atomic_write_bytes(folder / INDEX_FILE, faiss.serialize_index(gallery.index).tobytes())
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["path", "label", "domain"])
    writer.writeheader()
    writer.writerows(gallery.rows)
    atomic_write_text(folder / ROWS_FILE, buffer.getvalue())
    gallery.meta.update(vectors=int(gallery.index.ntotal), index_sha1=file_sha1(folder / INDEX_FILE),
                        rows_sha1=file_sha1(folder / ROWS_FILE))
    atomic_write_json(folder / META_FILE, gallery.meta)


def load(folder: str | Path) -> Gallery:
    """A saved gallery, checked against the hashes in its gallery.json."""
    import json

    import faiss

    folder = Path(folder)
    if not (folder / META_FILE).is_file():
        raise EnsError(f"{folder}: not a gallery (no {META_FILE}; build one with `ens index build`)")
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise EnsError(f"{folder / META_FILE}: unreadable ({exc}); rebuild the gallery") from None
    if not isinstance(meta, dict):
        raise EnsError(f"{folder / META_FILE}: expected a JSON object; rebuild the gallery")
    for name, key in ((INDEX_FILE, "index_sha1"), (ROWS_FILE, "rows_sha1")):
        if not (folder / name).is_file() or file_sha1(folder / name) != meta.get(key):
            raise EnsError(f"{folder / name}: does not match {META_FILE} (damaged, or an interrupted write); "
                           "rebuild the gallery")
    index = faiss.deserialize_index(np.frombuffer((folder / INDEX_FILE).read_bytes(), np.uint8))
    with open(folder / ROWS_FILE, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if len(rows) != index.ntotal:
        raise EnsError(f"{folder}: {len(rows)} rows for {index.ntotal} vectors")
    return Gallery(folder, index, rows, meta)
