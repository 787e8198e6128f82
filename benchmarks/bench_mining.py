"""Benchmark pair mining: DuckDB (notellm.mining) against the vectorised pandas reference.

For each size, a synthetic log is written once (notellm.datasets.synthetic), then each implementation
mines it from the parquet file in its own fresh subprocess, so that peak RSS (``ru_maxrss`` of that
child) and time are its own. The two results must be identical (pairs and scores after thresholds and
top-t). Prints a markdown table and writes it into the "Pair mining" section of docs/benchmarks.md.

    python benchmarks/bench_mining.py                      # 1M and 10M events
    python benchmarks/bench_mining.py --sizes 200000 --no-docs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## Pair mining"
IMPLEMENTATIONS = ("duckdb", "pandas")
COMMAND = "python benchmarks/bench_mining.py"


def synthetic_config(events: int, per_note: int = 40):  # noqa: ANN201 - SyntheticConfig, imported lazily
    """The generator's default shape, scaled: 100 events per user and ``per_note`` (default 40) per note."""
    from notellm.config import SyntheticConfig

    return SyntheticConfig(events=events, users=max(1, events // 100), notes=max(2, events // per_note),
                           seed=0)


def dataset(work_dir: Path, events: int, per_note: int = 40) -> Path:
    """The events parquet of the given size, generated on first use and reused afterwards."""
    from notellm.datasets.synthetic import write_synthetic

    cfg = synthetic_config(events, per_note)
    out = work_dir / f"synthetic-{cfg.events}-{cfg.users}-{cfg.notes}-{cfg.topics}-{cfg.seed}"
    path = out / "events.parquet"
    if not path.exists():
        started = time.perf_counter()
        write_synthetic(out, cfg)
        print(f"generated {events:,} events in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return path


def worker(implementation: str, events_path: Path, result_path: Path) -> None:
    """Mine once in this process; print wall and CPU seconds and this process's peak RSS as JSON."""
    from notellm.config import MiningConfig
    from notellm.mining import mine_pairs

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from mining_pandas import mine_pairs_pandas

    mine = mine_pairs if implementation == "duckdb" else mine_pairs_pandas
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    pairs = mine(events_path, MiningConfig())
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    pairs.to_parquet(result_path, index=False)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "peak_rss_mib": after.ru_maxrss / 1024,
                      "pairs": len(pairs), "load_average": os.getloadavg()[0]}))


def measure(implementation: str, events_path: Path, result_path: Path) -> dict:
    """Run one implementation in a fresh interpreter and return its measurements."""
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", implementation, "--events", str(events_path),
         "--result", str(result_path)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{implementation} worker failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(rows: list[dict]) -> str:
    lines = ["| events | implementation | wall (s) | CPU (s) | events/s | peak RSS (MiB) | pairs "
             "| speed-up (wall) | speed-up (CPU) | RSS ratio |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['events']:,} | {row['implementation']} | {row['seconds']:.2f} | "
                     f"{row['cpu_seconds']:.2f} | {row['events'] / row['seconds']:,.0f} | "
                     f"{row['peak_rss_mib']:,.0f} | {row['pairs']:,} | {row.get('speedup', '')} | "
                     f"{row.get('cpu_speedup', '')} | {row.get('rss_ratio', '')} |")
    return "\n".join(lines)


def section(table: str, rows: list[dict], sizes: list[int], per_note: int) -> str:
    import duckdb

    from notellm.mining import DUCKDB_MEMORY_LIMIT

    loads = [row["load_average"] for row in rows]
    sizes_arg = " ".join(str(s) for s in sizes)
    shape = "" if per_note == 40 else f" --events-per-note {per_note}"
    return f"""{SECTION}

Co-occurrence pair mining (`notellm.mining.mine_pairs`) against a vectorised pandas implementation of
the same method (`benchmarks/mining_pandas.py`: sort by user and time, shift by each window offset with
a same-user mask, drop duplicate (user, A, B), join `1/N_u`, sum per pair, sort for the top t).
`mine_pairs` reads the events with arrow, gives users and notes dense integer ids, builds the candidate
(A, B) keys from the sorted arrays (one array step per window offset) and scores them in DuckDB: one
candidate per (user, A, B) only where the user has a repeated note (elsewhere a pair cannot repeat),
the sum of `1/N_u` per packed (A, B) key, thresholds and the top t per A in one aggregate. Default
mining settings: a window of 10 positions, views and clicks as sources, clicks as targets, `l_min`
0.01, `u_max` 30, top 10. Synthetic logs from `notellm.datasets.synthetic` (seed 0, the generator's
default shape scaled up: 100 events per user, {per_note} per note). Each implementation mines the
events parquet file in a fresh subprocess: time is the whole call (reading included), CPU is user plus
system time of all its threads, peak RSS is the child's `ru_maxrss`. Both gave identical pairs and scores
(checked in the run). Speed-ups are pandas over DuckDB; the RSS ratio is DuckDB over pandas. DuckDB runs
with `memory_limit` {DUCKDB_MEMORY_LIMIT} (it spills beyond that).

Measured on {os.cpu_count()} CPU cores ({platform.machine()}), Python {platform.python_version()}, \
DuckDB {duckdb.__version__}, pandas {pd.__version__}. The machine was shared (1-minute load \
average {min(loads):.1f} to {max(loads):.1f} during the runs), so wall times are noisier than CPU times.

{table}

Where the time goes (10M events, default shape, one profiled run on the shared machine, CPU seconds):
reading the parquet file and giving dense ids about 7 (arrow read about 2.4, encoding users and notes
about 2, one hash of (user, note) for repeated notes and `N_u` about 1.5-2), building the candidate
keys from the sorted arrays about 6.5 (the stable sort about 1.1), and DuckDB's scoring 15 to 18,
most of it the hash aggregate that sums 38.1M distinct (A, B) keys, then the top-t aggregate over
them. Before this rewrite (DuckDB window `lead()` columns, a `DISTINCT` over all 39.2M (user, A, B)
keys, a join for `1/N_u`, string ids joined to integers in SQL) an earlier run took 38 s of CPU against
pandas' 86 (2.3x); it now takes 29 s against 99 (3.4x, the same run), at a third of pandas' peak
memory. The issue's target (10x) is not reached: on this log nearly every candidate is a distinct pair
(39.2M candidates, 38.1M distinct pairs, only 1.5M candidates touch a note repeated by its user), so
hashing about 38M distinct keys once is work both implementations must do, and it alone costs DuckDB
more than a tenth of pandas' whole time here. A denser shape does not change this: with 400 events per
note (25,000 notes, `--events-per-note 400`) DuckDB took 28 s of CPU against pandas' 69 (2.5x) in one
run. The calibration figure (a plain DuckDB self-join in about 5 s) was not reproducible on this
machine, whose load kept wall times at about twice the CPU times.

Reproduce: `{COMMAND} --sizes {sizes_arg}{shape}` (rewrites this section; the logs are cached
under `--work-dir`).
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--work-dir", type=Path, default=ROOT / ".cache" / "bench-mining")
    parser.add_argument("--events-per-note", type=int, default=40,
                        help="log shape: fewer notes make pairs repeat across users (default 40)")
    parser.add_argument("--no-docs", action="store_true", help="print the table only")
    parser.add_argument("--worker", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--events", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.events, args.result)
        return

    sys.path.insert(0, str(ROOT))
    from benchmarks.docs_section import write_section
    rows = []
    for events in args.sizes:
        path = dataset(args.work_dir, events, args.events_per_note)
        results, frames = {}, {}
        for implementation in IMPLEMENTATIONS:
            result_path = args.work_dir / f"pairs-{implementation}-{events}-{args.events_per_note}.parquet"
            results[implementation] = measure(implementation, path, result_path)
            frames[implementation] = pd.read_parquet(result_path)
            print(f"{events:,} events, {implementation}: {results[implementation]}", file=sys.stderr)
        pd.testing.assert_frame_equal(frames["duckdb"], frames["pandas"], check_exact=True)
        duck, pand = results["duckdb"], results["pandas"]
        rows.append({"events": events, "implementation": "DuckDB", **duck,
                     "speedup": f"{pand['seconds'] / duck['seconds']:.1f}x",
                     "cpu_speedup": f"{pand['cpu_seconds'] / duck['cpu_seconds']:.1f}x",
                     "rss_ratio": f"{duck['peak_rss_mib'] / pand['peak_rss_mib']:.2f}"})
        rows.append({"events": events, "implementation": "pandas", **pand})
    table = markdown(rows)
    print(table)
    if not args.no_docs:
        write_section(SECTION, section(table, rows, args.sizes, args.events_per_note))
        print(f"wrote {DOCS.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
