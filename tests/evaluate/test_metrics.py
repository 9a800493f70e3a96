import json
import numpy as np
import pytest

from ensemble.evaluate.metrics import average_precision_at, evaluate_embeddings, knn, retrieval_metrics


def test_mp5_hand_computed_with_fewer_than_five_relevant():
    index_labels = ["a", "a", "b", "b", "b", "b", "b", "b", "c"]
    neighbors = np.array([
        [0, 2, 1, 3, 4],  # query a: n_q = 2 -> scored on top 2: [a, b] -> 1/2
        [2, 3, 0, 4, 5],  # query b: n_q = 6 -> top 5: [b, b, a, b, b] -> 4/5
        [8, 0, 1, 2, 3],  # query c: n_q = 1 -> top 1: [c] -> 1
        [0, 1, 2, 3, 4],  # query z: no relevant index image -> excluded
    ])
    m = retrieval_metrics(neighbors, ["a", "b", "c", "z"], index_labels, k=5, map_k=5)
    assert m["mP@5"] == pytest.approx((0.5 + 0.8 + 1.0) / 3)
    assert m["recall@1"] == pytest.approx(1.0) and m["queries"] == 3 and m["excluded_queries"] == 1
    # AP@5: a hits at 1, 3 -> (1 + 2/3) / 2; b hits at 1, 2, 4, 5 -> (1 + 1 + 3/4 + 4/5) / 5; c -> 1
    assert m["mAP@5"] == pytest.approx(((1 + 2 / 3) / 2 + (1 + 1 + 0.75 + 0.8) / 5 + 1) / 3)


def test_average_precision_by_hand():
    rel = np.array([True, False, True, False, False])
    assert average_precision_at(rel, n_q=2, k=5) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision_at(rel, n_q=10, k=5) == pytest.approx((1 + 2 / 3) / 5)


def test_knn_is_euclidean_and_ties_do_not_change_the_score():
    index = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], np.float32)
    query = np.array([[0.9, 0.1]], np.float32)
    assert knn(query, index, 3).tolist() == [[0, 1, 2]]
    # two index images at exactly the same place with different labels: whichever comes first,
    # a query with one relevant image is scored on its top 1 only
    tied = np.array([[0.0, 1.0], [0.0, 1.0]], np.float32)
    m = evaluate_embeddings(np.array([[0.0, 1.0]], np.float32), ["x"], tied, ["x", "y"], k=5, map_k=5)
    first = knn(np.array([[0.0, 1.0]], np.float32), tied, 1)[0, 0]
    assert m["mP@5"] == (1.0 if first == 0 else 0.0) and m["queries"] == 1


def test_per_domain_scores():
    index = np.eye(3, dtype=np.float32)
    query = np.eye(3, dtype=np.float32)
    report = evaluate_embeddings(query, ["a", "b", "x"], index, ["a", "b", "c"], k=5, q_domains=["d1", "d1", "d2"])
    # d2's only query has no relevant index image: no score (JSON null), never NaN
    assert report["per_domain"]["d1"] == 1.0 and report["per_domain"]["d2"] is None
    assert report["macro_mP@5"] == 1.0  # the mean over the domains that have a score
    json.dumps(report, allow_nan=False)
    assert report["excluded_queries"] == 1
    # every domain counts the same in the macro mean, whatever its number of queries
    two = evaluate_embeddings(query, ["a", "c", "b"], index, ["a", "b", "c"], k=5, q_domains=["d1", "d1", "d2"])
    assert two["per_domain"] == {"d1": 0.5, "d2": 0.0} and two["macro_mP@5"] == 0.25
    assert abs(two["mP@5"] - 1 / 3) < 1e-9
    assert "macro_mP@5" not in evaluate_embeddings(query, ["a", "b", "c"], index, ["a", "b", "c"], k=5)


def test_approximate_search_reports_its_recall_against_exact():
    from ensemble.evaluate.metrics import evaluate_embeddings, search

    rng = np.random.default_rng(0)
    index = rng.standard_normal((4000, 16)).astype(np.float32)
    query = index[:50] + 0.01 * rng.standard_normal((50, 16)).astype(np.float32)
    exact, how = search(query, index, 5, approx_above=None)
    assert how == {"type": "exact"}
    approx, how = search(query, index, 5, approx_above=1000, nprobe=1)
    assert how["type"] == "ivf_flat" and how["nlist"] == 63 and how["checked_queries"] == 50
    measured = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(approx, exact)])
    assert how["recall_vs_exact"] == pytest.approx(measured) and 0 < measured < 1  # one list of 63 misses some
    _, full = search(query, index, 5, approx_above=1000, nprobe=63)
    assert full["recall_vs_exact"] == 1.0  # probing every list is exact
    labels = [str(i) for i in range(4000)]
    report = evaluate_embeddings(query, labels[:50], index, labels, approx_above=1000)
    assert report["search"]["type"] == "ivf_flat" and report["mP@5"] > 0.9
