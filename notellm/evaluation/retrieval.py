"""Recall@k for related-note retrieval, exactly as in the paper (section 5.1).

For each test pair the first note is the query and the second the target. Every note of the pool
except the query is a candidate, ranked by cosine similarity to the query; Recall@k is the share of
pairs whose target ranks within the top k.

The ranking is exact and runs in chunks of queries: one matrix product ``chunk x pool`` at a time,
so memory stays bounded by ``memory_budget`` however many queries there are (a pool of a million
128-d notes needs its vectors plus one block of scores, never ``queries x pool``).

Ties: the target's rank is one plus the number of candidates scoring *strictly* higher, so a
candidate with exactly the target's score does not push it down (ties go to the target). With
float embeddings exact ties only arise from identical vectors (e.g. duplicate texts); the result
reports how many pairs had any tie (``ties``) so their effect can be judged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from notellm.errors import DataError

DEFAULT_KS = (10, 100, 1000)
DEFAULT_MEMORY_BUDGET = 256 * 2**20  # bytes per chunk of scores; big chunks amortise BLAS packing
_UNIT_TOLERANCE = 1e-5  # float32 normalisation leaves norms within about 1e-7 of 1


def _positions(ids: Sequence[str], index: pd.Index, column: str) -> np.ndarray:
    """Row positions of ``ids`` in the pool; an id that is not in the pool is a DataError naming it."""
    pos = index.get_indexer(pd.Index(list(ids), dtype=object))
    missing = np.flatnonzero(pos < 0)
    if missing.size:
        row = int(missing[0])
        raise DataError(f"note_id {ids[row]!r} is not in the pool of {len(index)} embedded notes "
                        f"({missing.size} pair(s) have unknown ids)", row=row, column=column)
    return pos


def _inverse_norms(vectors: np.ndarray, note_ids: pd.Index) -> np.ndarray | None:
    """1 / L2 norm of every row (None if all are unit length already), without copying the matrix.

    A zero or non-finite row is a DataError."""
    norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors).astype(np.float64))
    bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
    if bad.size:
        row = int(bad[0])
        raise DataError(f"the vector of note_id {note_ids[row]!r} is zero or not finite", row=row,
                        column="vector")
    if np.all(np.abs(norms - 1) < _UNIT_TOLERANCE):
        return None  # already unit vectors: dot products are the cosines
    return (1.0 / norms).astype(np.float32)


def _validate_pool(note_ids: Sequence[str], vectors: np.ndarray) -> tuple[pd.Index, np.ndarray]:
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(note_ids):
        raise DataError(f"vectors must be a (notes x d) matrix with one row per note_id: got shape "
                        f"{vectors.shape} for {len(note_ids)} note ids", column="vector")
    if len(note_ids) < 2:
        raise DataError(f"the pool needs at least 2 notes, got {len(note_ids)}", column="note_id")
    index = pd.Index(list(note_ids), dtype=object)
    if not index.is_unique:
        row = int(np.flatnonzero(index.duplicated())[0])
        raise DataError(f"duplicate note_id {index[row]!r} in the pool", row=row, column="note_id")
    return index, vectors


def target_ranks(query_ids: Sequence[str], target_ids: Sequence[str], note_ids: Sequence[str],
                 vectors: np.ndarray, *, chunk: int | None = None,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET, progress: bool = False,
                 ) -> tuple[np.ndarray, int]:
    """Rank (1 = best) of each pair's target among all pool notes but the query, and the number of ties.

    ``vectors`` (one row per ``note_ids`` entry) need not be normalised: scores are cosines either way.
    ``chunk`` queries are scored per matrix product; by default as many as fit ``memory_budget`` bytes.
    """
    query_ids, target_ids = list(query_ids), list(target_ids)
    if len(query_ids) != len(target_ids):
        raise DataError(f"{len(query_ids)} query ids but {len(target_ids)} target ids")
    if not query_ids:
        raise DataError("no pairs to evaluate")
    index, vectors = _validate_pool(note_ids, vectors)
    queries = _positions(query_ids, index, "note_id_a")
    targets = _positions(target_ids, index, "note_id_b")
    same = np.flatnonzero(queries == targets)
    if same.size:
        row = int(same[0])
        raise DataError(f"pair {row} relates note_id {query_ids[row]!r} to itself", row=row,
                        column="note_id_b")
    inv_norm = _inverse_norms(vectors, index)
    pool, n = len(index), len(queries)
    if chunk is None:
        chunk = memory_budget // (pool * (np.dtype(np.float32).itemsize + 2))
    chunk = int(max(1, min(chunk, n)))

    ranks = np.empty(n, dtype=np.int64)
    ties = 0
    scores = np.empty((chunk, pool), dtype=np.float32)
    starts = range(0, n, chunk)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="ranking", unit="chunk")
    for start in starts:
        q = queries[start:start + chunk]
        rows = np.arange(len(q))
        block = scores[:len(q)]
        if inv_norm is None:
            np.matmul(vectors[q], vectors.T, out=block)
        else:
            np.matmul(vectors[q] * inv_norm[q, None], vectors.T, out=block)
            block *= inv_norm[None, :]
        block[rows, q] = -np.inf  # the query is not a candidate
        target_score = block[rows, targets[start:start + chunk]][:, None]
        ranks[start:start + len(q)] = 1 + np.count_nonzero(block > target_score, axis=1)
        ties += int(np.count_nonzero(np.count_nonzero(block == target_score, axis=1) > 1))
    return ranks, ties


def recall_from_ranks(ranks: np.ndarray, ks: Sequence[int] = DEFAULT_KS, *,
                      curve_max_k: int | None = None) -> dict:
    """Recall@k with binomial standard errors, and the recall curve at k = 1..curve_max_k (default max ks)."""
    ranks = np.asarray(ranks, dtype=np.int64)
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    if ranks.size == 0:
        raise ValueError("no ranks: nothing to evaluate")
    n = int(ranks.size)
    curve_max_k = int(curve_max_k or ks[-1])
    counts = np.bincount(np.minimum(ranks, curve_max_k + 1), minlength=curve_max_k + 2)
    curve = np.cumsum(counts[1:curve_max_k + 1]) / n
    recall = {k: float(np.mean(ranks <= k)) for k in ks}
    stderr = {k: float(np.sqrt(p * (1 - p) / n)) for k, p in recall.items()}
    return {"n": n, "ks": ks, "recall": recall, "stderr": stderr, "curve": curve,
            "mean_rank": float(ranks.mean()), "median_rank": float(np.median(ranks))}


def recall_at_k(query_ids: Sequence[str], target_ids: Sequence[str], note_ids: Sequence[str],
                vectors: np.ndarray, ks: Sequence[int] = DEFAULT_KS, *, chunk: int | None = None,
                memory_budget: int = DEFAULT_MEMORY_BUDGET, curve_max_k: int | None = None,
                progress: bool = False) -> dict:
    """Recall@k of the pairs (query_ids[i] -> target_ids[i]) against the pool (note_ids, vectors).

    Returns ``n`` (pairs), ``pool_size``, ``candidates`` (pool size minus the query), ``ks``,
    ``recall`` and ``stderr`` (dicts k -> fraction), ``curve`` (recall at k = 1..curve_max_k),
    ``ranks`` (1-based rank of every target), ``ties``, ``mean_rank`` and ``median_rank``.
    """
    ranks, ties = target_ranks(query_ids, target_ids, note_ids, vectors, chunk=chunk,
                               memory_budget=memory_budget, progress=progress)
    result = recall_from_ranks(ranks, ks, curve_max_k=curve_max_k)
    result.update(pool_size=len(note_ids), candidates=len(note_ids) - 1, ranks=ranks, ties=ties)
    return result


def embedding_matrix(embeddings: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """Note ids and the (notes x d) float32 matrix of a validated ``embeddings`` table."""
    if embeddings.empty:
        raise DataError("the embeddings table is empty", column="vector")
    return embeddings["note_id"].tolist(), np.stack(embeddings["vector"].to_numpy()).astype(np.float32)


def recall_for_pairs(pairs: pd.DataFrame, note_ids: Sequence[str], vectors: np.ndarray,
                     ks: Sequence[int] = DEFAULT_KS, *, split: str | None = "test", **kwargs) -> dict:
    """:func:`recall_at_k` over the rows of a ``pairs`` table (those of ``split``; all if None)."""
    if split is not None:
        pairs = pairs[pairs["split"] == split]
    if pairs.empty:
        raise DataError(f"no pairs in split {split!r} to evaluate", column="split")
    try:
        return recall_at_k(pairs["note_id_a"].tolist(), pairs["note_id_b"].tolist(), note_ids, vectors, ks,
                           **kwargs)
    except DataError as exc:  # name the row of the pairs table, not of the filtered split
        if exc.row is None or exc.column not in ("note_id_a", "note_id_b"):
            raise
        raise DataError(exc.detail, row=int(pairs.index[exc.row]), column=exc.column) from exc
