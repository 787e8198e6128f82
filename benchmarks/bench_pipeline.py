"""Wall time of ``notellm run`` by step, from the run's own records, and the share that is orchestration.

    .venv/bin/python benchmarks/bench_pipeline.py                    # the default run (MovieLens, SmolLM2)
    .venv/bin/python benchmarks/bench_pipeline.py -s model.backbone=tiny-random -p dataset=synthetic

Runs ``notellm run`` in a subprocess on a fresh workspace. Each task's wall time comes from kfp.local's
log ("Executing task" to "finished"); the time spent inside the step itself is the ``step_seconds``
metric every step logs on its Metrics artifact. The rest of a task (a fresh Python process, imports,
kfp's executor reading and writing its JSON) is orchestration overhead, as is the time between tasks.
After the last task ``notellm run`` starts the local KServe server and asks it for related notes
(the summary), which is reported on its own line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from docs_section import write_section

ANSI = re.compile(r"\x1b\[[0-9;]*m")
EVENT = re.compile(r"^(\d\d:\d\d:\d\d\.\d+) - INFO - (?:Executing task '([^']+)'|Task '([^']+)' finished)")


def task_times(log: str) -> list[tuple[str, datetime, datetime]]:
    """(task, start, end) from kfp.local's log lines, in the order the tasks ran."""
    starts: dict[str, datetime] = {}
    out, last = [], None
    for line in ANSI.sub("", log).splitlines():
        match = EVENT.match(line)
        if not match:
            continue
        stamp = datetime.strptime(match.group(1), "%H:%M:%S.%f")
        while last is not None and stamp < last:  # the log has no date: a run past midnight
            stamp += timedelta(days=1)
        last = stamp
        if match.group(2):
            starts[match.group(2)] = stamp
        else:
            out.append((match.group(3), starts.pop(match.group(3)), stamp))
    return out


def step_seconds(task_dir: Path) -> float | None:
    """The ``step_seconds`` a task's step logged on its Metrics artifact (None if it logged none)."""
    path = task_dir / "executor_output.json"
    if not path.exists():
        return None
    for outputs in json.loads(path.read_text()).get("artifacts", {}).values():
        for artifact in outputs.get("artifacts", []):
            if "step_seconds" in artifact.get("metadata", {}):
                return float(artifact["metadata"]["step_seconds"])
    return None


def measure(workspace: Path, run_args: list[str]) -> dict[str, Any]:
    began = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", "from notellm.cli import app; app()", "run",
                           "--workspace", str(workspace), *run_args], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - began
    run_log = workspace / "run.log"  # kfp.local's own output (notellm run prints one line per step)
    log = (run_log.read_text() if run_log.exists() else "") + proc.stdout + proc.stderr
    if proc.returncode:
        raise SystemExit(f"notellm run failed ({proc.returncode}):\n{log[-3000:]}")
    run_dir = max((workspace / "runs").iterdir(), key=lambda p: p.stat().st_mtime)
    times = task_times(log)
    if not times:
        raise SystemExit(f"no task start and end in kfp.local's log ({run_log}); its tail:\n{log[-3000:]}")
    rows = []
    for task, start, end in times:
        seconds = (end - start).total_seconds()
        work = step_seconds(run_dir / task)
        rows.append({"task": task, "wall_s": seconds, "step_s": work})
    tasks_wall = (times[-1][2] - times[0][1]).total_seconds()
    work = sum(r["step_s"] or 0.0 for r in rows)
    decision = next((p for p in (run_dir / "gate").rglob("decision") if p.is_file()), None)
    return {"rows": rows, "wall_s": wall, "tasks_wall_s": tasks_wall, "step_s": work,
            "summary_s": wall - tasks_wall, "run_args": run_args,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            "gate": decision.read_text().strip() if decision else "", "machine": machine()}


def machine() -> str:
    """The cores, architecture and bf16 support the run had (training's bf16 "auto" follows the last)."""
    from notellm.model.runtime import cpu_has_native_bf16

    bf16 = "native bf16 (AVX512-BF16/AMX), so training ran in bf16" if cpu_has_native_bf16() else \
        "no native bf16, so training ran in float32"
    return f"{os.cpu_count()} CPU cores ({platform.machine()}, {bf16}; embeddings in float32)"


def markdown(result: dict[str, Any], command: str) -> str:
    lines = ["## Pipeline (`notellm run`)", "",
             "Wall time of `notellm run` by task, from the run's own records: kfp.local's log gives each task's",
             "start and end; every step logs `step_seconds` (the time inside the `notellm.steps` function) on its",
             "Metrics artifact. Overhead is the rest of the task: a fresh Python process, imports, kfp's executor.",
             "\"Between tasks\" is kfp.local's own scheduling; the summary is the local KServe server's start-up",
             "and the related-notes queries after the last task.", "",
             "| task | wall (s) | in step (s) | overhead (s) | overhead share |", "|---|---:|---:|---:|---:|"]
    for row in result["rows"]:
        step = row["step_s"]
        over = row["wall_s"] - step if step is not None else None
        cells = ["", "", ""] if step is None else [f"{step:.1f}", f"{over:.1f}", f"{over / row['wall_s']:.0%}"]
        lines.append(f"| {row['task']} | {row['wall_s']:.1f} | " + " | ".join(cells) + " |")
    task_sum = sum(r["wall_s"] for r in result["rows"])
    between = result["tasks_wall_s"] - task_sum
    overhead = result["tasks_wall_s"] - result["step_s"]
    lines += [f"| between tasks | {between:.1f} | | {between:.1f} | |",
              f"| summary (serve + queries) | {result['summary_s']:.1f} | | | |",
              f"| **total** | **{result['wall_s']:.1f}** | {result['step_s']:.1f} | {overhead:.1f} | "
              f"{overhead / result['wall_s']:.0%} |", "",
              f"Total {result['wall_s'] / 60:.1f} min; orchestration overhead {overhead:.0f} s "
              f"({overhead / result['tasks_wall_s']:.0%} of the pipeline's tasks); peak RSS of one process "
              f"{result['peak_rss_mib']:,.0f} MiB.", "",
              f"Measured on {result['machine']}, nothing else heavy running, "
              + (f"with `{' '.join(result['run_args'])}`" if result["run_args"] else
                 "with the defaults (MovieLens-100k, SmolLM2-135M + LoRA, the quick budget, the MiniLM challenger)")
              + ". The gate's decision in this run, as it recorded it:",
              "", *[f"> {line.lstrip('# ')}".rstrip() for line in result["gate"].splitlines()], "",
              f"Reproduce: `{command}`", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, help="where the run goes (default: a temporary directory)")
    parser.add_argument("--full", action="store_true", help="the full training budget")
    parser.add_argument("-p", "--param", action="append", default=[], help="pipeline parameter name=value")
    parser.add_argument("-s", "--set", action="append", default=[], help="config override section.key=value")
    parser.add_argument("--out", type=Path, help="write the result as JSON")
    parser.add_argument("--write-docs", action="store_true", help="rewrite the section in docs/benchmarks.md")
    args = parser.parse_args()
    run_args = (["--full"] if args.full else []) + [f"--param={p}" for p in args.param] + \
        [f"--set={s}" for s in args.set]
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        result = measure(args.workspace or Path(tmp), run_args)
    command = " ".join(["python benchmarks/bench_pipeline.py", *sys.argv[1:]])
    text = markdown(result, command.replace(" --write-docs", ""))
    print(text)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    if args.write_docs:
        write_section("## Pipeline (`notellm run`)", text)


if __name__ == "__main__":
    main()
