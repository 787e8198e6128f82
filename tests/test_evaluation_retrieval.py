"""Recall@k: exact against a brute-force ranking, chunking, ties, validation, bounded memory."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pandas as pd
import pytest

from notellm.errors import DataError
from notellm.evaluation.retrieval import (
    embedding_matrix,
    recall_at_k,
    recall_for_pairs,
    recall_from_ranks,
    target_ranks,
)


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _brute_force_ranks(queries: np.ndarray, targets: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Sort every candidate but the query by cosine (float64) and find the target's position."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    ranks = []
    for q, t in zip(queries, targets, strict=True):
        scores = unit.astype(np.float64) @ unit[q].astype(np.float64)
        candidates = [i for i in np.argsort(-scores, kind="stable") if i != q]
        ranks.append(candidates.index(t) + 1)
    return np.array(ranks)


@pytest.fixture
def pool():
    rng = np.random.default_rng(7)
    n, pairs = 300, 120
    vectors = _unit(rng, n, 16)
    ids = [f"note{i}" for i in range(n)]
    queries = rng.integers(0, n, pairs)
    targets = (queries + rng.integers(1, n, pairs)) % n  # never the query itself
    return ids, vectors, queries, targets


def test_matches_brute_force(pool):
    ids, vectors, queries, targets = pool
    expected = _brute_force_ranks(queries, targets, vectors)
    qids, tids = [ids[i] for i in queries], [ids[i] for i in targets]
    result = recall_at_k(qids, tids, ids, vectors, ks=(1, 10, 100, 299))
    np.testing.assert_array_equal(result["ranks"], expected)
    for k in (1, 10, 100, 299):
        p = np.mean(expected <= k)
        assert result["recall"][k] == pytest.approx(p)
        assert result["stderr"][k] == pytest.approx(np.sqrt(p * (1 - p) / len(expected)))
    assert result["recall"][299] == 1.0  # every candidate is within the top pool-1
    assert result["n"] == 120 and result["pool_size"] == 300 and result["candidates"] == 299
    assert result["ties"] == 0


def test_chunk_size_does_not_change_ranks(pool):
    ids, vectors, queries, targets = pool
    qids, tids = [ids[i] for i in queries], [ids[i] for i in targets]
    full, _ = target_ranks(qids, tids, ids, vectors)
    for chunk in (1, 7, 1000):
        ranks, _ = target_ranks(qids, tids, ids, vectors, chunk=chunk)
        np.testing.assert_array_equal(ranks, full)
    ranks, _ = target_ranks(qids, tids, ids, vectors, memory_budget=1)  # one query per chunk
    np.testing.assert_array_equal(ranks, full)


def test_unnormalised_vectors_rank_by_cosine(pool):
    ids, vectors, queries, targets = pool
    scale = np.random.default_rng(1).uniform(0.1, 50, (len(ids), 1)).astype(np.float32)
    qids, tids = [ids[i] for i in queries], [ids[i] for i in targets]
    np.testing.assert_array_equal(target_ranks(qids, tids, ids, vectors * scale)[0],
                                  target_ranks(qids, tids, ids, vectors)[0])


def test_query_is_excluded_and_ties_go_to_the_target():
    ids = ["q", "t", "twin", "far"]
    vectors = np.array([[1, 0], [0.8, 0.6], [0.8, 0.6], [-1, 0]], dtype=np.float32)
    result = recall_at_k(["q"], ["t"], ids, vectors, ks=(1, 2, 3))
    # the query itself (cosine 1) is not a candidate; the twin ties with the target and does not outrank it
    assert result["ranks"].tolist() == [1]
    assert result["ties"] == 1
    assert result["recall"] == {1: 1.0, 2: 1.0, 3: 1.0}
    assert recall_at_k(["q"], ["far"], ids, vectors, ks=(2, 3))["recall"] == {2: 0.0, 3: 1.0}


def test_curve_is_recall_at_every_k():
    ranks = np.array([1, 2, 2, 5, 40])
    result = recall_from_ranks(ranks, ks=(1, 5), curve_max_k=6)
    np.testing.assert_allclose(result["curve"], [0.2, 0.6, 0.6, 0.6, 0.8, 0.8])
    assert result["recall"] == {1: 0.2, 5: 0.8}
    assert result["median_rank"] == 2.0
    assert len(recall_from_ranks(ranks, ks=(3, 10))["curve"]) == 10


def test_unknown_ids_are_named():
    ids, vectors = ["a", "b", "c"], np.eye(3, dtype=np.float32)
    with pytest.raises(DataError, match="'zz'") as err:
        recall_at_k(["a", "zz"], ["b", "c"], ids, vectors)
    assert err.value.row == 1 and err.value.column == "note_id_a"
    with pytest.raises(DataError, match="'nope'") as err:
        recall_at_k(["a"], ["nope"], ids, vectors)
    assert err.value.column == "note_id_b"


@pytest.mark.parametrize(("ids", "vectors", "message"), [
    (["a", "a", "b"], np.eye(3, dtype=np.float32), "duplicate note_id 'a'"),
    (["a", "b"], np.eye(3, dtype=np.float32), "one row per note_id"),
    (["a", "b", "c"], np.array([[1, 0], [0, 0], [0, 1]], dtype=np.float32), "'b' is zero"),
    (["a", "b", "c"], np.array([[1, 0], [np.nan, 1], [0, 1]], dtype=np.float32), "'b' is zero or not fin"),
])
def test_bad_pool_is_refused(ids, vectors, message):
    with pytest.raises(DataError, match=message):
        recall_at_k(["a"], ["c"], ids, vectors)


def test_self_pair_and_empty_input_are_refused():
    ids, vectors = ["a", "b"], np.eye(2, dtype=np.float32)
    with pytest.raises(DataError, match="to itself"):
        recall_at_k(["a", "b"], ["b", "b"], ids, vectors)
    with pytest.raises(DataError, match="no pairs"):
        recall_at_k([], [], ids, vectors)
    with pytest.raises(DataError, match="2 query ids but 1 target"):
        recall_at_k(["a", "b"], ["b"], ids, vectors)


def test_pairs_table_uses_its_split_and_names_its_rows():
    ids, vectors = ["a", "b", "c"], np.eye(3, dtype=np.float32)
    pairs = pd.DataFrame({"note_id_a": ["a", "b", "a", "x"], "note_id_b": ["b", "c", "c", "a"],
                          "score": 1.0, "split": ["train", "test", "test", "test"]})
    with pytest.raises(DataError) as err:
        recall_for_pairs(pairs, ids, vectors)
    assert err.value.row == 3 and "'x'" in str(err.value)
    result = recall_for_pairs(pairs.iloc[:3], ids, vectors, ks=(1,))
    assert result["n"] == 2
    embeddings = pd.DataFrame({"note_id": ids, "vector": list(vectors), "model_version": "v"})
    note_ids, matrix = embedding_matrix(embeddings)
    assert note_ids == ids and matrix.dtype == np.float32 and matrix.shape == (3, 3)


@pytest.mark.slow
def test_large_pool_memory_stays_bounded():
    """200k notes x 128-d, 300 queries: the full score matrix would be 240 MB; chunks stay near budget."""
    rng = np.random.default_rng(0)
    n, d, pairs, budget = 200_000, 128, 300, 16 * 2**20
    vectors = _unit(rng, n, d)
    ids = np.char.add("n", np.arange(n).astype(str)).tolist()
    queries = rng.integers(0, n, pairs)
    targets = (queries + 1) % n
    vectors[targets] = vectors[queries] + 0.05 * _unit(rng, pairs, d)  # targets near their queries
    tracemalloc.start()
    start = time.perf_counter()
    result = recall_at_k([ids[i] for i in queries], [ids[i] for i in targets], ids, vectors,
                         memory_budget=budget)
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 3 * budget, f"peak {peak / 2**20:.0f} MiB for a {budget / 2**20:.0f} MiB budget"
    assert result["recall"][10] > 0.95
    assert elapsed < 60
