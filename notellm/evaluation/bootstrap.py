"""Intervals for Recall@k when pairs are not independent: a cluster bootstrap over queries and targets.

Test pairs share notes (on MovieLens-100k about 930 queries and 550 targets make 2,486 pairs; the top 5
targets are 16% of them), so the binomial standard error over pairs is too small. The query notes are
resampled with replacement (every pair of a drawn query comes along), and so, separately, are the target
notes; the two variances are combined as in two-way cluster-robust inference (Cameron, Gelbach and Miller
2011): ``se^2 = se_query^2 + se_target^2 - se_pair^2``, never below either one-way variance. With one pair
per query and per target this is the ordinary standard error.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

DEFAULT_REPS = 2000


def _bootstrap_se(values: np.ndarray, clusters: Sequence[str], reps: int, rng: np.random.Generator) -> float:
    """Standard deviation of the mean of ``values`` over replicates that redraw whole clusters."""
    codes, uniques = pd.factorize(pd.Index(list(clusters), dtype=object))
    n = len(uniques)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=reps).astype(np.float64)  # reps x clusters
    sums = counts @ np.bincount(codes, weights=values, minlength=n)
    sizes = counts @ np.bincount(codes, minlength=n).astype(np.float64)
    return float((sums / sizes).std(ddof=1))


def cluster_bootstrap(values: np.ndarray, queries: Sequence[str], targets: Sequence[str] | None = None, *,
                      reps: int = DEFAULT_REPS, seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Mean of per-pair ``values`` (1/0 hits, or paired differences of hits), its cluster-robust ``se`` and
    the normal interval ``low``..``high`` at ``level`` (queries, and targets when given, as clusters)."""
    from statistics import NormalDist

    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size != len(queries) or (targets is not None and len(targets) != values.size):
        raise ValueError(f"need one query (and target) per value: {values.size} values, {len(queries)} queries")
    if values.size < 2:
        raise ValueError("need at least two pairs for an interval")
    rng = np.random.default_rng(seed)
    var_q = _bootstrap_se(values, queries, reps, rng) ** 2
    var = var_q
    if targets is not None:
        var_t = _bootstrap_se(values, targets, reps, rng) ** 2
        var_pair = values.var(ddof=1) / values.size
        var = max(var_q + var_t - var_pair, var_q, var_t)
    mean, se = float(values.mean()), float(np.sqrt(var))
    half = NormalDist().inv_cdf(0.5 + level / 2) * se
    return {"mean": mean, "se": se, "low": mean - half, "high": mean + half, "level": level,
            "queries": int(pd.Index(list(queries)).nunique())}


def naive_interval(hits: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The normal interval of a proportion that treats every pair as independent (for comparison only)."""
    from statistics import NormalDist

    hits = np.asarray(hits, dtype=np.float64)
    p, z = hits.mean(), NormalDist().inv_cdf(0.5 + level / 2)
    half = z * np.sqrt(p * (1 - p) / hits.size)
    return float(p - half), float(p + half)
