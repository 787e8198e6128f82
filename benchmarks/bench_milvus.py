"""HNSW in Milvus against exact numpy search: recall@k and queries/s on synthetic note-like vectors.

    .venv/bin/python benchmarks/bench_milvus.py                 # 1M x 128-d (about 10 min on 2 idle cores)
    .venv/bin/python benchmarks/bench_milvus.py --n 200000 --out results.json
    .venv/bin/python benchmarks/bench_milvus.py --n 200000 --ef 64 128 256 --docs   # rewrites the doc section
    .venv/bin/python benchmarks/bench_milvus.py --sizing                            # the cluster sizing table only

Vectors are clustered like real embeddings (unit-normalised points around a few thousand topic centres);
the queries are fresh points from the same distribution, not in the index. By default the collection is
built with ``NoteIndex.build_collection`` in a ``milvus-lite server`` subprocess (Milvus as its own
process, as when serving); ``--uri http://host:19530`` measures a Milvus server instead. Every query
set is sent as batched search calls (``IndexConfig.search_batch_size`` queries a call) and exact search
multiplies the same queries with the full matrix in numpy, chunk by chunk, in the same run.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from notellm.index_config import IndexConfig
from notellm.io import write_json
from notellm.vectorstore import NoteIndex, lite_server

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Milvus"
# Smaller sizes from an earlier run of this script (through NoteIndex, on 2 cores shared with other jobs, 1-minute
# load average 1.3 to 6.0), kept in the section below the 1M run.
EARLIER_ROWS = """| 500,000 | 259.5 | 200.4 | 64 | 0.9994 | 1,129 | 5.6x | 403.1 |
| 500,000 | | | 128 | 0.9998 | 791 | 3.9x | 437.2 |
| 500,000 | | | 256 | 0.9998 | 498 | 2.5x | 448.7 |
| 300,000 | 164.8 | 314.1 | 64 | 0.9995 | 1,247 | 4.0x | 220.3 |
| 300,000 | | | 128 | 0.9999 | 1,098 | 3.5x | 212.4 |
| 300,000 | | | 256 | 0.9999 | 838 | 2.7x | 213.5 |
| 200,000 | 150.2 | 417.3 | 64 | 0.9997 | 1,243 | 3.0x | 180.2 |
| 200,000 | | | 128 | 1.0000 | 1,071 | 2.6x | 199.6 |
| 200,000 | | | 256 | 1.0000 | 672 | 1.6x | 202.7 |"""


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


def hnsw_bytes(dim: int = 128, m: int = 16, metadata: int = 100) -> dict[str, float]:
    """Bytes per vector of a loaded HNSW collection (float32 vectors; hnswlib's layout, which Milvus's
    Knowhere HNSW follows): the vector, level 0 (2*M neighbour ids of 4 bytes and a count), the upper levels
    (a node reaches level l with probability M^-l, so 1/(M-1) levels of M ids and a count on average), the
    per-node label, level and link-list pointer, and the row's other fields (``metadata``: the note_id
    primary key, category and model_version strings, row id and timestamp; about 100 bytes for short ids)."""
    return {"vector": 4 * dim, "level 0 links": 4 * (2 * m) + 4, "upper levels": (4 * m + 4) / (m - 1),
            "label, level, pointer": 8 + 4 + 8, "fields": metadata}


def sizing(dim: int = 128, m: int = 16, headroom: float = 1.5, node_gib: int = 32,
           node_usable: float = 0.7) -> str:
    """The cluster sizing table (markdown): memory per replica and in all, and query nodes to hold it."""
    per = hnsw_bytes(dim, m)
    total = sum(per.values())
    lines = ["| part | bytes per vector |", "|---|---:|"]
    lines += [f"| {name} | {value:,.1f} |" for name, value in per.items()]
    lines += [f"| **loaded, per vector** | **{total:,.1f}** |", "",
              f"So one million {dim}-d vectors take {total * 1e6 / 2**30:.2f} GiB loaded in one replica "
              f"(the raw vectors alone {4 * dim * 1e6 / 2**30:.2f} GiB); with {headroom}x headroom (segments "
              f"being built and compacted, search buffers, the growing segment) plan "
              f"{headroom * total * 1e6 / 2**30:.2f} GiB per million per replica.", "",
              f"| vectors | shards | replicas | loaded, one replica (GiB) | planned, all replicas (GiB) "
              f"| during an alias swap (GiB) | query nodes of {node_gib} GiB ({node_usable:.0%} usable) |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    for n, shards, replicas in ((1_000_000, 1, 2), (10_000_000, 2, 2), (50_000_000, 4, 2), (100_000_000, 4, 3)):
        one = n * total / 2**30
        planned = one * headroom * replicas
        swap = 2 * planned  # the index step loads the new collection beside the serving one
        nodes = max(replicas, math.ceil(swap / (node_gib * node_usable)))
        lines.append(f"| {n:,} | {shards} | {replicas} | {one:,.1f} | {planned:,.1f} | {swap:,.1f} | {nodes} |")
    return "\n".join(lines)


def table_rows(results: dict) -> list[str]:
    rows = []
    for i, r in enumerate(results["runs"]):
        head = (f"| {results['n']:,} | {results['build_s']:,} | {results['exact_qps']} "
                if i == 0 else f"| {results['n']:,} | | ")
        rows.append(f"{head}| {r['ef']} | {r['recall']:.4f} | {r['qps']:,.0f} | {r['speedup']}x "
                    f"| {r['single_p50_ms']:,} |")
    return rows


def section(results: dict, others: tuple[dict, ...] = ()) -> str:
    """The Milvus section: ``results`` (the largest run) and ``others`` (smaller runs of the same session)."""
    rows = [row for r in sorted((results, *others), key=lambda r: -r["n"]) for row in table_rows(r)]
    loads = [x for r in (results, *others) for x in r["load"]]
    import pymilvus
    planned_gib = 1.5 * sum(hnsw_bytes(results["dim"], results["m"]).values()) * 1e6 / 2**30
    return f"""{SECTION}

HNSW in Milvus against exact search (`benchmarks/bench_milvus.py`): the pipeline's index step and the
recommender's search, measured through the project's own `NoteIndex`. The collection is built with
`NoteIndex.build_collection` (what the index step runs: insert in batches of 10,000, flush, HNSW index with
M = {results['m']} and efConstruction = {results['ef_construction']}, load, count check) in a
`milvus-lite server` subprocess (pymilvus {pymilvus.__version__}, faiss-cpu HNSW), so Milvus runs as its own process, as
it does when serving; queries go through `NoteIndex.search` (what `NoteRecommender` calls, `index.search_ef`
= ef). Vectors are synthetic, {results['dim']}-d and unit-normalised, clustered like embeddings (points
around 2,000 random topic directions, noise as large as the centre); the {results['queries']:,} queries are
fresh points from the same distribution, not in the index. Exact search is numpy on the same machine in the
same run: all queries times the whole matrix, in chunks of 50,000 rows, `argpartition` for the top
{results['k']}. Queries/s are for the whole query set sent at once (one `search` call for all queries, the
way the recommender batches requests); "one query alone" is the median of 50 searches sent one call each.

The {results['n']:,}-vector rows were measured on {os.cpu_count()} CPU cores ({platform.machine()}, Python
{platform.python_version()}; 1-minute load average {min(loads):.1f} to {max(loads):.1f} at the start and end of
the run; recall is not affected by load). The smaller sizes are from an earlier run of the same script, one
size at a time, on a machine shared with other jobs (load average 1.3 to 6.0), so their times are noisier.

| vectors | build (s) | exact numpy (queries/s) | ef | recall@10 | HNSW queries/s | vs numpy | one query alone, p50 (ms) |
|---:|---:|---:|---:|---:|---:|---:|---:|
{chr(10).join(rows)}
{EARLIER_ROWS}

{MILVUS_NOTES}
### Sizing a Milvus cluster

Milvus Lite is for one machine; the catalogue at scale is served by Milvus standalone or cluster
(`manifests/`), where the query nodes hold each loaded collection in memory. Memory per vector for HNSW
(M = {results['m']}, {results['dim']}-d float32; the search ef only sets the work per query, not memory),
from the layout of the HNSW graph (hnswlib's, which Milvus's Knowhere HNSW follows: level 0 keeps up to
2*M neighbours per node, the upper levels M; hnswlib's ALGO_PARAMS.md puts the graph at about M*8-10
bytes per element) plus the row's other fields:

{sizing(results['dim'], results['m'])}

Shards split the insert stream (one per DML channel) and parallelise the index build; they do not change
memory. The index step writes a whole collection per model version in one go, so one or two shards are
plenty up to about 10M notes; more shards help at 50M+ so that several data/index nodes build at once.
Replicas multiply memory and query throughput and keep search up when a query node goes: two is the least
for serving. The alias swap (the index step loads the new collection before the alias moves to it, and
drops the old one after) needs room for two copies at once, or a swap one replica at a time. The Milvus
sizing tool (zilliz.com/sizing-tool; Milvus docs, "HNSW", on its memory overhead) shows, for its default of
1M 128-d vectors with HNSW, 488 MB of raw vectors and 1.1 GB of loading memory: 2.3x the raw vectors, in
line with the estimate above with its headroom ({planned_gib:.2f} GiB per million). Check the numbers on the cluster:
`--uri http://HOST:19530` runs this benchmark against it, and the query nodes' memory after `load` is the
figure to plan with.

Reproduce (`--n 1000000` takes about 10 minutes on 2 idle cores; `--n 500000` about 6):

```bash
.venv/bin/python benchmarks/bench_milvus.py --n {results['n']} --ef {" ".join(str(r["ef"]) for r in results["runs"])} --docs
.venv/bin/python benchmarks/bench_milvus.py --sizing
```
"""


# Hand-written reading of the numbers (kept by reruns; update it when the numbers change).
MILVUS_NOTES = """\
Reading the numbers:
- Recall@10 stays at or above 0.9994 at every size and ef tried (the target is 0.98); at 1M it is 0.9997 at
  ef 64 and 1.0000 from ef 128, the default `index.search_ef`.
- Batched HNSW answers 615 queries/s at 1M and ef 128, 4.0x exact numpy search in the same run (4.4x at
  ef 64, 1.9x at ef 512). Exact search is linear in the collection and an HNSW search grows far slower, so
  the ratio should grow with the catalogue, but these rows do not show that cleanly: the smaller sizes
  (1.6x to 5.6x) were measured under load, which slows numpy's multi-threaded matrix products more than
  Milvus (an earlier 1M run under load had numpy at 21 queries/s and HNSW 20x ahead).
- The index step on 1M notes took 274 s: 94 s to insert (about 10,600 notes/s in batches of 10,000), the
  rest flush, HNSW build and load. The serving alias keeps pointing at the previous collection meanwhile,
  so the step's time is not downtime.
- One search call has a fixed cost in Milvus Lite that grows with the collection (it searches each
  segment's HNSW graph in turn): a single query took 0.84 s (p50) at 1M, 0.4 s at 500k and about 0.2 s at
  200k-300k, while 1,000 queries in one call took 1.6 s at 1M. A recommender on Milvus Lite at this size
  therefore serves about one unbatched request a second; it gathers concurrent requests into one call
  (`notellm.batching.MicroBatcher`), and a production deployment uses Milvus standalone or cluster
  (`manifests/`), sized below, not Milvus Lite.
- The clustered synthetic vectors are easy for HNSW (recall saturates by ef 128); uniformly random vectors,
  which have no structure, would need a larger ef for the same recall.
- A long index build through pymilvus's default gRPC keepalive (a ping every 10 s) got its connection
  closed by the Milvus Lite server ("too_many_pings") and the retried `create_index` failed with "index
  already exists"; `notellm.vectorstore` pings local Milvus every 6 minutes and accepts an index that a
  retried call finds already built.
"""


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
    parser.add_argument("--docs", action="store_true", help="rewrite the Milvus section of docs/benchmarks.md")
    parser.add_argument("--render", type=Path, nargs="+",
                        help="no measuring: rewrite the section from --out files (the first the largest run)")
    parser.add_argument("--sizing", action="store_true", help="print the cluster sizing table only")
    args = parser.parse_args()
    if args.sizing:
        print(sizing(args.dim, args.m))
        return
    if args.render:
        import json

        sys.path.insert(0, str(ROOT))
        from benchmarks.docs_section import write_section
        loaded = [json.loads(path.read_text()) for path in args.render]
        write_section(SECTION, section(loaded[0], tuple(loaded[1:])))
        return

    load_start = os.getloadavg()[0]
    if args.uri:
        results = run(args, args.uri)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-milvus-") as tmp, lite_server(Path(tmp) / "db") as uri:
            results = run(args, uri)
    results["load"] = [round(load_start, 1), round(os.getloadavg()[0], 1)]
    if args.out:
        write_json(results, args.out)
    print(markdown(results))
    if args.docs:
        sys.path.insert(0, str(ROOT))
        from benchmarks.docs_section import write_section
        write_section(SECTION, section(results))


if __name__ == "__main__":
    main()
