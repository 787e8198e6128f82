"""HNSW in Milvus against exact numpy search: recall@k and queries/s on synthetic note-like vectors.

    .venv/bin/python benchmarks/bench_milvus.py                 # 1M x 128-d (about 30 min on 2 cores)
    .venv/bin/python benchmarks/bench_milvus.py --n 200000 --out results.json

Vectors are clustered like real embeddings (unit-normalised points around a few thousand topic centres);
the queries are fresh points from the same distribution, not in the index. By default the collection is
built with ``NoteIndex.build_collection`` in a ``milvus-lite server`` subprocess (Milvus as its own
process, as when serving); ``--uri http://host:19530`` measures a Milvus server instead. Every query
set is sent as batched search calls (``IndexConfig.search_batch_size`` queries a call) and exact search
multiplies the same queries with the full matrix in numpy, chunk by chunk, in the same run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from notellm.index_config import IndexConfig
from notellm.io import write_json
from notellm.vectorstore import NoteIndex, lite_server


def synthetic_vectors(n: int, dim: int, centres: int, spread: float, seed: int) -> np.ndarray:
    """``n`` unit vectors scattered around ``centres`` random topic directions."""
    rng = np.random.default_rng(seed)
    topics = rng.normal(size=(centres, dim)).astype(np.float32)
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        stop = min(start + 100_000, n)
        points = topics[rng.integers(0, centres, stop - start)]
        points += rng.normal(scale=spread / np.sqrt(dim), size=points.shape).astype(np.float32)
        out[start:stop] = points / np.linalg.norm(points, axis=1, keepdims=True)
    return out


def exact_top_k(base: np.ndarray, queries: np.ndarray, k: int, chunk: int = 50_000) -> np.ndarray:
    """Indices of the ``k`` highest cosine similarities (vectors are unit-norm), best first."""
    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_ids = np.zeros((len(queries), k), dtype=np.int64)
    for start in range(0, len(base), chunk):
        scores = queries @ base[start:start + chunk].T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if scores.shape[1] > k else \
            np.broadcast_to(np.arange(scores.shape[1]), (len(queries), scores.shape[1]))
        merged_scores = np.concatenate([best_scores, np.take_along_axis(scores, top, axis=1)], axis=1)
        merged_ids = np.concatenate([best_ids, top + start], axis=1)
        keep = np.argsort(-merged_scores, axis=1)[:, :k]
        best_scores = np.take_along_axis(merged_scores, keep, axis=1)
        best_ids = np.take_along_axis(merged_ids, keep, axis=1)
    return best_ids


def run(args: argparse.Namespace, uri: str) -> dict:
    base = synthetic_vectors(args.n + args.queries, args.dim, args.centres, args.spread, args.seed)
    queries, base = base[:args.queries], base[args.queries:]
    ids = [str(i) for i in range(args.n)]
    config = IndexConfig(uri=uri, alias="bench", hnsw_m=args.m, hnsw_ef_construction=args.ef_construction,
                         insert_batch_size=args.batch)

    start = time.perf_counter()
    exact = exact_top_k(base, queries, args.k)
    exact_s = time.perf_counter() - start
    exact_sets = [set(map(str, row)) for row in exact]

    with NoteIndex(config) as index:
        start = time.perf_counter()
        name = index.build_collection("bench", ids, base, ["x"] * args.n)
        build_s = time.perf_counter() - start
        index.swap_alias(name, keep=1)
        results = {"n": args.n, "dim": args.dim, "queries": args.queries, "k": args.k, "m": args.m,
                   "ef_construction": args.ef_construction, "build_s": round(build_s, 1),
                   "exact_s": round(exact_s, 3), "exact_qps": round(args.queries / exact_s, 1), "runs": []}
        for ef in args.ef:
            searcher = NoteIndex(config.model_copy(update={"search_ef": ef}), uri=uri)
            searcher.search(queries[:10], args.k)  # warm-up
            start = time.perf_counter()
            hits = searcher.search(queries, args.k)
            seconds = time.perf_counter() - start
            single = []
            for q in queries[:args.single]:
                t0 = time.perf_counter()
                searcher.search(q[None, :], args.k)
                single.append(time.perf_counter() - t0)
            searcher.close()
            recall = float(np.mean([len({h.note_id for h in row} & truth) / args.k
                                    for row, truth in zip(hits, exact_sets, strict=True)]))
            qps = args.queries / seconds
            results["runs"].append({"ef": ef, "recall": round(recall, 4), "qps": round(qps, 1),
                                    "speedup": round(qps / results["exact_qps"], 1),
                                    "single_p50_ms": round(1000 * float(np.median(single)), 1)})
    return results


def markdown(results: dict) -> str:
    lines = [f"n = {results['n']:,} x {results['dim']}-d, {results['queries']:,} queries, "
             f"k = {results['k']}, HNSW M = {results['m']}, efConstruction = {results['ef_construction']}; "
             f"build (insert, flush, index, load) {results['build_s']} s; "
             f"exact numpy search {results['exact_qps']} queries/s.", "",
             f"| ef | recall@{results['k']} | queries/s (batched) | vs numpy | one query alone, p50 ms |",
             "|---:|---:|---:|---:|---:|"]
    for r in results["runs"]:
        lines.append(f"| {r['ef']} | {r['recall']:.4f} | {r['qps']:,.0f} | {r['speedup']}x "
                     f"| {r['single_p50_ms']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="indexed vectors")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--ef", type=int, nargs="+", default=[64, 128, 256, 512],
                        help="search ef values to try")
    parser.add_argument("--m", type=int, default=16, help="HNSW M")
    parser.add_argument("--ef-construction", type=int, default=200)
    parser.add_argument("--batch", type=int, default=10_000, help="rows per insert call")
    parser.add_argument("--centres", type=int, default=2_000, help="topic centres of the synthetic vectors")
    parser.add_argument("--spread", type=float, default=1.0,
                        help="noise around a centre (relative to its norm)")
    parser.add_argument("--single", type=int, default=50, help="queries also timed one call each")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--uri", help="a Milvus server; default: a fresh milvus-lite server in a temp dir")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()

    if args.uri:
        results = run(args, args.uri)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-milvus-") as tmp, lite_server(Path(tmp) / "db") as uri:
            results = run(args, uri)
    if args.out:
        write_json(results, args.out)
    print(markdown(results))


if __name__ == "__main__":
    main()
