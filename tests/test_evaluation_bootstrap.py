"""Cluster bootstrap: pairs that share a query are not independent evidence."""

from __future__ import annotations

import numpy as np
import pytest

from notellm.evaluation.bootstrap import cluster_bootstrap, naive_interval


def test_repeated_queries_widen_the_interval():
    rng = np.random.default_rng(0)
    queries = np.repeat([f"q{i}" for i in range(20)], 50)  # 1,000 pairs from 20 queries
    targets = np.array([f"t{i}" for i in rng.integers(0, 300, size=queries.size)])
    hits = np.repeat(rng.random(20) < 0.4, 50).astype(float)  # a query's pairs hit or miss together
    boot = cluster_bootstrap(hits, queries, targets)
    low, high = naive_interval(hits)
    assert boot["low"] <= hits.mean() <= boot["high"]
    assert boot["high"] - boot["low"] > 3 * (high - low)
    assert cluster_bootstrap(hits, queries)["high"] - cluster_bootstrap(hits, queries)["low"] > 3 * (high - low)


def test_independent_pairs_match_the_naive_interval():
    rng = np.random.default_rng(1)
    hits = (rng.random(3000) < 0.2).astype(float)
    ids = [f"q{i}" for i in range(3000)]
    boot = cluster_bootstrap(hits, ids, [f"t{i}" for i in range(3000)])
    low, high = naive_interval(hits)
    assert boot["high"] - boot["low"] == pytest.approx(high - low, rel=0.2)
    assert boot["queries"] == 3000


def test_bad_shapes():
    with pytest.raises(ValueError, match="one query"):
        cluster_bootstrap(np.ones(3), ["a", "b"])
