"""A quiet local run: one progress line per pipeline step, kfp.local's own output in a log file.

kfp.local prints every task's executor input, streamed logs and outputs to stdout, and warns for each task
about settings a local runner cannot apply (cpu and memory limits, display names, a non-Python base
image). :func:`quiet_run` sends all of it to ``workspace/run.log`` and prints instead, per finished step,
its name, its elapsed time and one key figure. Lines that look like a real warning or error (from any
task) are still shown, once each; when a task fails, its last log lines (the traceback) are shown too.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

# kfp.local warnings that do not apply to a local run (the cluster honours these settings).
LOCAL_NOOP_WARNINGS = (r"Task '.*': settings \[.*\] have no effect in the current local runner",
                       r"You may be attemping to run a task that uses custom or non-Python base image")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_START = re.compile(r"Executing task '([^']+)'")
_END = re.compile(r"Task '([^']+)' finished with status (\w+)")
# Known noise of a dependency, not a problem: Milvus Lite's gRPC server logs an ERROR for AllocTimestamp,
# a call it does not implement and pymilvus does without.
HARMLESS = (r"Exception calling application: Method not implemented!",)
# A Python warning ("file.py:12: FutureWarning: ...") or a log record at WARNING level or above.
_PROBLEM = re.compile(r"^\S.*:\d+: \w*Warning: |\b(?:WARNING|ERROR|CRITICAL)\b(?:\]|:| -)")
_WHERE = re.compile(r"^\S+:\d+: |\d{4}-\d\d-\d\d[ T][\d:.,]+")  # a warning's file and a log line's time
_NOOP = re.compile("|".join((*LOCAL_NOOP_WARNINGS, *HARMLESS)))
_TAIL_LINES = 40


def step_metrics(task_dir: Path) -> dict[str, Any]:
    """A finished task's parameter outputs and the metadata of its artifacts, in one flat dict."""
    path = task_dir / "executor_output.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    values: dict[str, Any] = dict(data.get("parameterValues", {}))
    for artifact in data.get("artifacts", {}).values():
        for item in artifact.get("artifacts", []):
            values.update(item.get("metadata", {}))
    return values


def _int(value: Any) -> str:
    return f"{int(float(value)):,}"


def key_figure(task: str, m: dict[str, Any]) -> str:
    """The one number a user wants to see when ``task`` ends (empty when it has none)."""
    try:
        if task == "prepare-data":
            ready = f", {_int(m['pairs'])} ready pairs" if "pairs" in m else ""
            return f"{_int(m['notes'])} notes, {_int(m['events'])} events{ready}"
        if task == "note-features":
            return f"{_int(m['notes'])} notes in Feast, {_int(m['feature_rows'])} feature rows"
        if task == "mine-pairs":
            return (f"{_int(m['pairs'])} pairs: {_int(m['pairs_per_split.train'])} train, "
                    f"{_int(m['pairs_per_split.val'])} val, {_int(m['pairs_per_split.test'])} test")
        if task == "finetune":
            return f"{_int(m['steps'])} steps, loss {m['first_loss']:.3f} -> {m['final_loss']:.3f}"
        if task == "finetune-challenger":
            if not m.get("trained"):
                return "off"
            return (f"MiniLM, {_int(m['steps'])} steps ({_int(m['pairs_seen'])} pairs), loss {m['first_loss']:.3f} "
                    f"-> {m['final_loss']:.3f}")
        if task == "embed":
            return (f"{_int(m['notes'])} notes embedded, {_int(m['truncation.content_truncated'])} with "
                    "truncated content")
        if task == "evaluate":
            return (f"{m['metric']} {100 * m['recall']:.2f} against {100 * m['reference_recall']:.2f} "
                    f"({m['reference']})")
        if task == "check-drift":
            return "drift within bounds" if m["passed"] else f"DRIFT: {m['reasons']}"
        if task == "gate":
            return "deploy" if m["Output"] else "stop (see the summary)"
        if task == "deploy":
            return f"model {m['model_version']}"
        if task == "index":
            return f"{_int(m['rows'])} notes in {m['collection']}"
    except (KeyError, TypeError, ValueError):
        return ""
    return ""


def _say(stream: TextIO, text: str) -> None:
    """Write one line straight to ``stream`` (kfp.local patches ``print`` while it streams a task's logs)."""
    stream.write(text + "\n")
    stream.flush()


class _Tap(io.TextIOBase):
    """A stdout replacement: every line goes to the log and to ``on_line``."""

    def __init__(self, log: TextIO, on_line: Callable[[str], None]) -> None:
        self._log, self._on_line, self._partial = log, on_line, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._log.write(text)
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            self._on_line(_ANSI.sub("", line))
        return len(text)

    def flush(self) -> None:
        self._log.flush()


class _Progress:
    """Turns kfp.local's output lines into progress lines, shown problems and a failed task's tail."""

    def __init__(self, runs_root: Path, out: TextIO, err: TextIO) -> None:
        self.runs_root, self.out, self.err = runs_root, out, err
        self.before = set(runs_root.iterdir()) if runs_root.is_dir() else set()
        self.started: dict[str, float] = {}
        self.tail: deque[str] = deque(maxlen=_TAIL_LINES)
        self.shown: set[str] = set()

    def run_dir(self) -> Path | None:
        new = [p for p in self.runs_root.iterdir() if p not in self.before] if self.runs_root.is_dir() else []
        return max(new, key=lambda p: p.stat().st_mtime) if new else None

    def line(self, line: str) -> None:
        if start := _START.search(line):
            self.started[start.group(1)] = time.monotonic()
            self.tail.clear()
        elif end := _END.search(line):
            self.finished(end.group(1), end.group(2))
        else:
            self.tail.append(line)
            text = line.strip()
            key = _WHERE.sub("", text)
            if _PROBLEM.search(text) and not _NOOP.search(text) and key not in self.shown:
                self.shown.add(key)
                _say(self.err, text)

    def finished(self, task: str, status: str) -> None:
        elapsed = time.monotonic() - self.started.get(task, time.monotonic())
        run_dir = self.run_dir()
        figure = key_figure(task, step_metrics(run_dir / task)) if run_dir and status == "SUCCESS" else ""
        mark = "ok" if status == "SUCCESS" else status
        _say(self.out, f"{task:<14} {elapsed:7.1f} s  {mark:<4} {figure}".rstrip())
        if status != "SUCCESS":
            _say(self.err, "\n".join([f"--- last lines of {task}:", *self.tail]))


@contextlib.contextmanager
def quiet_run(workspace: Path, verbose: bool = False) -> Iterator[Path]:
    """While open, kfp.local's output goes to ``workspace/run.log`` (yielded) and one line per finished step
    to stdout; ``verbose`` changes nothing (everything shows, as kfp.local prints it)."""
    log_path = workspace / "run.log"
    if verbose:
        yield log_path
        return
    workspace.mkdir(parents=True, exist_ok=True)
    out, err = sys.stdout, sys.stderr
    progress = _Progress(workspace.resolve() / "runs", out, err)
    with log_path.open("w") as log, warnings.catch_warnings():
        def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None) -> None:
            text = warnings.formatwarning(message, category, filename, lineno, line)
            (log if _NOOP.search(str(message)) else err).write(text)

        warnings.showwarning = show  # this process's own warnings: kfp.local's no-ops to the log only
        tap = _Tap(log, progress.line)
        with contextlib.redirect_stdout(tap):
            try:
                yield log_path
            finally:
                tap.flush()
        _say(out, f"full log: {log_path}")
