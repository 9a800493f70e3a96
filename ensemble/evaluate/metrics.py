"""Retrieval metrics: mP@5 exactly as GUIE defines it, recall@1 and mAP@100; faiss k-NN."""

from __future__ import annotations

import numpy as np


def knn(query: np.ndarray, index: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k nearest index rows per query by Euclidean distance (exact, faiss flat)."""
    import faiss

    query = np.ascontiguousarray(query, dtype=np.float32)
    index = np.ascontiguousarray(index, dtype=np.float32)
    flat = faiss.IndexFlatL2(index.shape[1])
    flat.add(index)
    _, neighbors = flat.search(query, min(k, index.shape[0]))
    return neighbors


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
    mean = np.mean(scores, axis=0) if scores else np.full(3, np.nan)
    return {f"mP@{k}": float(mean[0]), "recall@1": float(mean[1]), f"mAP@{map_k}": float(mean[2]),
            "queries": len(scores), "excluded_queries": len(excluded)}


def evaluate_embeddings(q_emb, q_labels, i_emb, i_labels, k: int = 5, q_domains=None, map_k: int = 100) -> dict:
    """Overall metrics plus mP@k per query domain (neighbours from one exact search)."""
    neighbors = knn(q_emb, i_emb, max(k, map_k))
    report = retrieval_metrics(neighbors, q_labels, i_labels, k, map_k)
    if q_domains is not None:
        domains, q_labels = np.asarray(q_domains), np.asarray(q_labels)
        report["per_domain"] = {
            d: retrieval_metrics(neighbors[domains == d], q_labels[domains == d], i_labels, k, map_k)[f"mP@{k}"]
            for d in sorted(set(domains.tolist()))}
    return report
