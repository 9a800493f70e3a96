"""Retrieval metrics: mP@5 exactly as GUIE defines it, recall@1 and mAP@100; faiss k-NN."""

from __future__ import annotations

import numpy as np

from ..errors import EnsError


def knn(query: np.ndarray, index: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k nearest index rows per query by Euclidean distance (exact, faiss flat)."""
    import faiss

    query = np.ascontiguousarray(query, dtype=np.float32)
    index = np.ascontiguousarray(index, dtype=np.float32)
    flat = faiss.IndexFlatL2(index.shape[1])
    flat.add(index)
    _, neighbors = flat.search(query, min(k, index.shape[0]))
    return neighbors


def ivf_flat(vectors: np.ndarray, rng: np.random.Generator, nprobe: int = 32):
    """A faiss IVF-Flat index holding `vectors` (float32, contiguous): nlist ~ sqrt(N), k-means on 64
    points per list drawn with `rng`."""
    import faiss

    n, dim = vectors.shape
    nlist = max(1, min(int(np.sqrt(n)), n // 39))  # faiss wants >= 39 training points per list
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, nlist)
    ivf.train(vectors[rng.choice(n, min(n, 64 * nlist), replace=False)])
    ivf.add(vectors)
    ivf.nprobe = min(nprobe, nlist)
    return ivf


def overlap(got: np.ndarray, want: np.ndarray, k: int) -> float:
    """Mean share of each row's exact top-k (`want`) that the approximate top-k (`got`) keeps."""
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(got, want, strict=True)]))


def approx_knn(query: np.ndarray, index: np.ndarray, k: int, nprobe: int = 32, check_queries: int = 200,
               seed: int = 0) -> tuple[np.ndarray, dict]:
    """k-NN through a faiss IVF-Flat index (`ivf_flat`), plus the recall@k it keeps against exact
    search on a sample of queries (searched exactly, which is cheap)."""
    query = np.ascontiguousarray(query, dtype=np.float32)
    index = np.ascontiguousarray(index, dtype=np.float32)
    rng = np.random.default_rng(seed)
    ivf = ivf_flat(index, rng, nprobe)
    k = min(k, len(index))
    _, neighbors = ivf.search(query, k)
    sample = rng.choice(len(query), min(len(query), check_queries), replace=False)
    kept = overlap(neighbors[sample], knn(query[sample], index, k), k)
    return neighbors, {"type": "ivf_flat", "nlist": ivf.nlist, "nprobe": ivf.nprobe, "recall_vs_exact": kept,
                       "checked_queries": int(len(sample))}


def search(query: np.ndarray, index: np.ndarray, k: int, approx_above: int | None = None,
           nprobe: int = 32) -> tuple[np.ndarray, dict]:
    """Exact search, or IVF above `approx_above` index rows (with its measured recall vs exact)."""
    if approx_above is not None and len(index) > approx_above:
        return approx_knn(query, index, k, nprobe)
    return knn(query, index, k), {"type": "exact"}


def precision_at(rel: np.ndarray, n_q: int, k: int) -> float:
    """GUIE P@k of one query: hits in the top min(n_q, k), divided by min(n_q, k)."""
    cut = min(n_q, k)
    return float(rel[:cut].sum() / cut)


def average_precision_at(rel: np.ndarray, n_q: int, k: int) -> float:
    """AP@k = 1/min(n_q, k) * sum_j P(j) rel(j) over the top k."""
    rel = rel[:k].astype(np.float64)
    hits = np.cumsum(rel)
    return float((hits / np.arange(1, len(rel) + 1) * rel).sum() / min(n_q, k))


def retrieval_metrics(neighbors: np.ndarray, query_labels, index_labels, k: int = 5, map_k: int = 100) -> dict:
    """mP@k, recall@1 and mAP@map_k over the queries that have relevant index images.

    Queries without any relevant index image are excluded and counted, as in GUIE.
    """
    index_labels = np.asarray(index_labels)
    labels, counts = np.unique(index_labels, return_counts=True)
    count_of = dict(zip(labels.tolist(), counts.tolist(), strict=True))
    scores, excluded = [], []
    for q, label in enumerate(query_labels):
        n_q = count_of.get(label, 0)
        if n_q == 0:
            excluded.append(q)
            continue
        rel = index_labels[neighbors[q]] == label
        scores.append((precision_at(rel, n_q, k), float(rel[0]), average_precision_at(rel, n_q, map_k)))
    # no scorable query: None (JSON null), never NaN (invalid JSON, and it sorts as a number)
    mean = [float(v) for v in np.mean(scores, axis=0)] if scores else [None] * 3
    return {f"mP@{k}": mean[0], "recall@1": mean[1], f"mAP@{map_k}": mean[2],
            "queries": len(scores), "excluded_queries": len(excluded)}


def evaluate_embeddings(q_emb, q_labels, i_emb, i_labels, k: int = 5, q_domains=None, map_k: int = 100,
                        approx_above: int | None = None) -> dict:
    """Overall metrics plus mP@k per query domain (neighbours from one search: exact unless the
    index has more than `approx_above` rows)."""
    return evaluate_with_neighbors(q_emb, q_labels, i_emb, i_labels, k, q_domains, map_k, approx_above)[0]


def evaluate_with_neighbors(q_emb, q_labels, i_emb, i_labels, k: int = 5, q_domains=None, map_k: int = 100,
                            approx_above: int | None = None) -> tuple[dict, np.ndarray]:
    """`evaluate_embeddings`' report, and the neighbours it scored ([queries, max(k, map_k)])."""
    if k < 1:
        raise EnsError(f"--k {k}: expected a positive number of neighbours")
    neighbors, how = search(q_emb, i_emb, max(k, map_k), approx_above)
    report = retrieval_metrics(neighbors, q_labels, i_labels, k, map_k)
    if how["type"] != "exact":
        report["search"] = how
    if q_domains is not None:
        domains, q_labels = np.asarray(q_domains), np.asarray(q_labels)
        report["per_domain"] = {
            d: retrieval_metrics(neighbors[domains == d], q_labels[domains == d], i_labels, k, map_k)[f"mP@{k}"]
            for d in sorted(set(domains.tolist()))}
        scored = [v for v in report["per_domain"].values() if v is not None]
        if len(report["per_domain"]) > 1:  # GUIE-mini's headline: every domain counts the same
            report[f"macro_mP@{k}"] = float(np.mean(scored)) if scored else None
    return report, neighbors
