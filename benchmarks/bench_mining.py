"""Benchmark pair mining: DuckDB (notellm.mining) against the vectorised pandas reference, and Spark local[2].

For each size, a synthetic log is written once (notellm.datasets.synthetic), then each implementation
mines it from the parquet file in its own fresh subprocess, so that peak RSS (``ru_maxrss`` of that
child) and time are its own. The two results must be identical (pairs and scores after thresholds and
top-t). Prints a markdown table and writes it into the "Pair mining" section of docs/benchmarks.md.

    python benchmarks/bench_mining.py                      # 1M and 10M events
    python benchmarks/bench_mining.py --sizes 200000 --no-docs
    python benchmarks/bench_mining.py --sizes 1000000 --spark-sizes 1000000 3000000

Spark (``mining.engine=spark``, ``notellm.mining_spark``, local mode) runs at ``--spark-sizes`` only (its
JVM is a child process, so its peak RSS and CPU are sampled from /proc over the worker's process tree).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## Pair mining"
IMPLEMENTATIONS = ("duckdb", "pandas", "spark")
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


class TreeSampler(threading.Thread):
    """Samples this process and its descendants (Spark's JVM) from /proc: the peak of their summed RSS and
    each descendant's CPU seconds as last seen (a JVM that is still running when the call returns)."""

    def __init__(self, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.interval, self.done = interval, threading.Event()
        self.peak_bytes, self.child_cpu = 0, {}
        self.page, self.tick = os.sysconf("SC_PAGE_SIZE"), os.sysconf("SC_CLK_TCK")

    def sample(self) -> None:
        stats = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    text = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "
                stats[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[21]))
        tree, grew = {os.getpid()}, True
        while grew:
            found = {pid for pid, (ppid, _, _) in stats.items() if ppid in tree} - tree
            tree |= found
            grew = bool(found)
        self.peak_bytes = max(self.peak_bytes, sum(stats[p][2] for p in tree if p in stats) * self.page)
        for pid in tree - {os.getpid()}:
            if pid in stats:
                self.child_cpu[pid] = stats[pid][1] / self.tick

    def run(self) -> None:
        while not self.done.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self.done.set()
        self.join()
        self.sample()


def worker(implementation: str, events_path: Path, result_path: Path) -> None:
    """Mine once in this process; print wall and CPU seconds and the peak RSS (this process's, with Spark
    also its JVM's) as JSON."""
    from notellm.config import MiningConfig
    from notellm.mining import mine_pairs

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from mining_pandas import mine_pairs_pandas

    cfg = MiningConfig(engine="spark") if implementation == "spark" else MiningConfig()
    mine = mine_pairs_pandas if implementation == "pandas" else mine_pairs
    sampler = TreeSampler()
    sampler.start()
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    extra = {}
    if implementation == "spark":  # the session start (the JVM) is part of the step's time; shown apart too
        from notellm.mining_spark import spark_session

        spark_session()
        extra["startup_s"] = time.perf_counter() - started
    pairs = mine(events_path, cfg)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    sampler.stop()
    pairs.to_parquet(result_path, index=False)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime) + sum(sampler.child_cpu.values())
    peak = max(after.ru_maxrss * 1024, sampler.peak_bytes) / 2**20
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "peak_rss_mib": peak, "pairs": len(pairs),
                      "load_average": os.getloadavg()[0], **extra}))


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


def section(table: str, rows: list[dict], sizes: list[int], spark_sizes: list[int], per_note: int) -> str:
    import duckdb

    from notellm.mining import DUCKDB_MEMORY_LIMIT

    loads = [row["load_average"] for row in rows]
    sizes_arg = " ".join(str(s) for s in sizes)
    spark_arg = " ".join(str(s) for s in spark_sizes)
    shape = "" if per_note == 40 else f" --events-per-note {per_note}"
    spark_rows = [row for row in rows if row["implementation"].startswith("Spark")]
    try:
        import pyspark
        spark_version = f", PySpark {pyspark.__version__} (Java {_java_version()})"
    except ImportError:
        spark_version = ""
    startup = ", ".join(f"{row['startup_s']:.1f} s at {row['events']:,} events" for row in spark_rows)
    return f"""{SECTION}

Co-occurrence pair mining (`notellm.mining.mine_pairs`) against a vectorised pandas implementation of
the same method (`benchmarks/mining_pandas.py`: sort by user and time, shift by each window offset with
a same-user mask, drop duplicate (user, A, B), join `1/N_u`, sum per pair, sort for the top t), and the
same pairs on Spark (`mining.engine: spark`, `notellm.mining_spark`, local mode `local[2]`, driver memory
2g). `mine_pairs` reads the events with arrow, gives users and notes dense integer ids, builds the
candidate (A, B) keys from the sorted arrays (one array step per window offset; one candidate per
(user, A, B) only where the user has a repeated note, elsewhere a pair cannot repeat) and scores them
with `notellm.mining.pair_sql`, the one SQL text DuckDB and Spark both run: `GROUP BY a, b` for the sum
of `1/N_u`, thresholds, `row_number()` per A for the top t. Default mining settings: a window of 10
positions, views and clicks as sources, clicks as targets, `l_min` 0.01, `u_max` 30, top 10. Synthetic
logs from `notellm.datasets.synthetic` (seed 0, the generator's default shape scaled up: 100 events per
user, {per_note} per note). Each implementation mines the events parquet file in a fresh subprocess:
time is the whole call (reading included; for Spark also starting its JVM and session, {startup or "n/a"}
of it), CPU is user plus system time of all its threads (Spark: plus its JVM's), peak RSS is the child's
`ru_maxrss` (Spark: the peak of the worker's and its JVM's summed RSS, sampled every 0.25 s from /proc).
All engines gave identical pairs and scores (checked in the run). Speed-ups are pandas over DuckDB; the
RSS ratio is DuckDB over pandas. DuckDB runs with `memory_limit` {DUCKDB_MEMORY_LIMIT} (it spills beyond
that).

Measured on {os.cpu_count()} CPU cores ({platform.machine()}), Python {platform.python_version()}, \
DuckDB {duckdb.__version__}, pandas {pd.__version__}{spark_version}. The machine was shared with other \
jobs (1-minute load average {min(loads):.1f} to {max(loads):.1f} during the runs, on 2 cores), so wall \
times are noisier than CPU times.

{table}

{NOTES}
Reproduce (about 4 minutes here): `{COMMAND} --sizes {sizes_arg} --spark-sizes {spark_arg}{shape}`
(rewrites this section; the logs are cached under `--work-dir`).
"""


def _java_version() -> str:
    try:
        out = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30).stderr
        return out.split('"')[1]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"


# Hand-written reading of the numbers (kept by reruns; update it when the numbers change).
NOTES = """\
This run had the machine to itself (load average 0.5 to 2.3 on 2 cores). An earlier run of the same script
on a shared machine (load average 6.8 to 8.6) measured DuckDB at 39.9 s wall / 22.2 s CPU at 10M and pandas at
73.4 s / 49.0 s, and Spark at 78.0 s wall at 1M: CPU times agree within about 10% across the two runs, wall
times do not, so compare engines within one run, not across runs. DuckDB uses about 2.2 times less CPU than
the vectorised pandas reference at 10M (1.3 times at 1M) and 0.37 of its peak memory.

Spark in local mode pays for its generality on one machine. At 1M events it took 17 times DuckDB's wall time
(22 times its CPU) and 3.3 times its peak memory (its JVM with 2g of driver memory, plus the Python process),
3.9 s of it starting the JVM and the session. At 10M the gap narrows to 10 times the wall time (14 times the
CPU) and 1.2 times the peak memory (3.3 GiB against 2.9): from 1M to 10M Spark's wall time grew 6.2 times,
DuckDB's 10.2 times, because the start-up and the per-stage scheduling are paid once. Spark mined 68,000
events/s against DuckDB's 700,000. It was not profiled here; the job is several shuffling stages (the
windowed candidates, then `pair_sql`) over 8 partitions on 2 task slots, with rows serialised between the
JVM and Python at both ends, where DuckDB works in-process on arrow buffers.

When to switch to `mining.engine: spark` (and `spark_on_cluster=true`): not for speed on one node. The
DuckDB engine mines 10M events in 14 s here, and its time and memory grow about linearly (peak RSS 0.7 GiB
at 1M, 2.9 GiB at 10M: the candidate arrays, about 4 per event, live in the step's process, outside
DuckDB's spilling `memory_limit`), so a node with 64 GiB covers logs of about 200 million events. Switch when
that stops being true: the events (and their candidates) no longer fit one node's memory or its pod's disk
(the step copies its input in), the mining must finish within a window one node cannot meet, or the events
already live in a lake (parquet on S3/GCS/HDFS, a Hive or Iceberg table) that Spark executors read in place,
where copying them into one pod would be the slow part. Spark's executors add task slots and memory by the
node, so on a cluster its per-event cost divides by the executors' cores, where DuckDB stays on one node.
The Spark engine gives the same pairs (checked above and in `tests/test_mining_spark.py`), so the switch is
a setting, not a migration.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--spark-sizes", type=int, nargs="*", default=[1_000_000],
                        help="sizes Spark local[2] mines too (needs the spark extra and Java; none: skip)")
    parser.add_argument("--work-dir", type=Path, default=ROOT / ".cache" / "bench-mining")
    parser.add_argument("--events-per-note", type=int, default=40,
                        help="log shape: fewer notes make pairs repeat across users (default 40)")
    parser.add_argument("--no-docs", action="store_true", help="print the table only")
    parser.add_argument("--save", type=Path, help="also write the measured rows as JSON here")
    parser.add_argument("--render", type=Path, help="no measuring: rewrite the section from rows --save wrote")
    parser.add_argument("--worker", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--events", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.events, args.result)
        return

    sys.path.insert(0, str(ROOT))
    from benchmarks.docs_section import write_section
    if args.render:
        saved = json.loads(args.render.read_text())
        write_section(SECTION, section(markdown(saved["rows"]), saved["rows"], saved["sizes"], saved["spark_sizes"],
                                       saved["events_per_note"]))
        print(f"wrote {DOCS.relative_to(ROOT)} from {args.render}", file=sys.stderr)
        return
    rows = []
    for events in sorted(set(args.sizes) | set(args.spark_sizes)):
        path = dataset(args.work_dir, events, args.events_per_note)
        results, frames = {}, {}
        # DuckDB at every size (the reference the others are checked against), pandas at --sizes, Spark at
        # --spark-sizes
        wanted = ["duckdb", *(["pandas"] if events in args.sizes else []),
                  *(["spark"] if events in args.spark_sizes else [])]
        for implementation in wanted:
            result_path = args.work_dir / f"pairs-{implementation}-{events}-{args.events_per_note}.parquet"
            results[implementation] = measure(implementation, path, result_path)
            frames[implementation] = pd.read_parquet(result_path)
            print(f"{events:,} events, {implementation}: {results[implementation]}", file=sys.stderr)
        first = next(iter(frames.values()))
        for frame in frames.values():  # every engine gave the same pairs and scores
            pd.testing.assert_frame_equal(frame, first, check_exact=True)
        duck, pand = results.get("duckdb"), results.get("pandas")
        if duck and pand:
            rows.append({"events": events, "implementation": "DuckDB", **duck,
                         "speedup": f"{pand['seconds'] / duck['seconds']:.1f}x",
                         "cpu_speedup": f"{pand['cpu_seconds'] / duck['cpu_seconds']:.1f}x",
                         "rss_ratio": f"{duck['peak_rss_mib'] / pand['peak_rss_mib']:.2f}"})
            rows.append({"events": events, "implementation": "pandas", **pand})
        elif duck:
            rows.append({"events": events, "implementation": "DuckDB", **duck})
        if "spark" in results:
            rows.append({"events": events, "implementation": "Spark local[2]", **results["spark"]})
    table = markdown(rows)
    print(table)
    if args.save:
        args.save.write_text(json.dumps({"rows": rows, "sizes": args.sizes, "spark_sizes": args.spark_sizes,
                                         "events_per_note": args.events_per_note}, indent=1))
    if not args.no_docs:
        write_section(SECTION, section(table, rows, args.sizes, args.spark_sizes, args.events_per_note))
        print(f"wrote {DOCS.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
