"""Retrieval metrics: mP@k exactly as GUIE defines it, recall@1 and mAP@k."""

from __future__ import annotations

import numpy as np


def knn(query: np.ndarray, index: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k nearest index rows per query by Euclidean distance (ties: lower index first)."""
    d2 = (query**2).sum(1, keepdims=True) - 2.0 * query @ index.T + (index**2).sum(1)[None, :]
    k = min(k, index.shape[0])
    return np.argsort(d2, axis=1, kind="stable")[:, :k]


def retrieval_metrics(neighbors: np.ndarray, query_labels, index_labels, k: int = 5) -> dict:
    """mP@k (inner sum to min(n_q, k)), recall@1 and mAP@k over queries with n_q > 0.

    Queries without any relevant index image are excluded and counted, as in GUIE.
    """
    index_labels = np.asarray(index_labels)
    counts = dict(zip(*np.unique(index_labels, return_counts=True), strict=True))
    per_query, excluded = [], 0
    for q, label in enumerate(query_labels):
        n_q = counts.get(label, 0)
        if n_q == 0:
            excluded += 1
            continue
        rel = index_labels[neighbors[q]] == label
        cut = min(n_q, k)
        precision_at = np.cumsum(rel[:k]) / np.arange(1, len(rel[:k]) + 1)
        ap = float((precision_at * rel[:k]).sum() / cut)
        per_query.append((rel[:cut].sum() / cut, float(rel[0]), ap))
    scores = np.asarray(per_query) if per_query else np.zeros((0, 3))
    return {f"mP@{k}": float(scores[:, 0].mean()) if len(scores) else float("nan"),
            "recall@1": float(scores[:, 1].mean()) if len(scores) else float("nan"),
            f"mAP@{k}": float(scores[:, 2].mean()) if len(scores) else float("nan"),
            "queries": len(per_query), "excluded_queries": excluded}


def evaluate_embeddings(q_emb, q_labels, i_emb, i_labels, k: int = 5, q_domains=None) -> dict:
    """Overall metrics plus mP@k per query domain."""
    neighbors = knn(np.asarray(q_emb, np.float32), np.asarray(i_emb, np.float32), k)
    report = retrieval_metrics(neighbors, q_labels, i_labels, k)
    if q_domains is not None:
        domains = np.asarray(q_domains)
        report["per_domain"] = {
            d: retrieval_metrics(neighbors[domains == d], np.asarray(q_labels)[domains == d], i_labels, k)[f"mP@{k}"]
            for d in sorted(set(domains.tolist()))}
    return report
