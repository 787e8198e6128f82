"""Run the pipeline on this machine with ``kfp.local``: Milvus Lite, a Feast sqlite store, a serving root.

Every path lives under one workspace directory, so a re-run reuses the Feast repository, the serving
record (the gate compares against the last deployed model) and the Milvus database.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from notellm.errors import NoteLLMError
from pipelines.notellm_pipeline import PIPELINE_NAME, notellm_pipeline


def local_parameters(workspace: Path, **params: Any) -> dict[str, Any]:
    """Pipeline parameters for a local run under ``workspace`` (absolute paths: steps run in subprocesses)."""
    workspace = workspace.resolve()
    return {"feature_repo": str(workspace / "feature_repo"), "serving_root": str(workspace / "serving"),
            "milvus_uri": str(workspace / "milvus.db"), "deploy_target": "local", **params}


RUNNERS = ("subprocess", "docker")


def run_local(workspace: Path, caching: bool = False, runner: str = "subprocess", image: str | None = None,
              **params: Any) -> Path:
    """Run the whole pipeline locally; return the run's directory (one folder per task).

    ``runner`` "subprocess" runs each task in a process of this environment; "docker" runs each in the project
    image (``image``, default the components' image) through kfp's DockerRunner, with docker or podman's
    Docker API (``DOCKER_HOST``). Every path a task is given must then lie under ``workspace``, the one host
    folder mounted into the tasks' containers.

    ``caching`` turns on kfp.local's task cache (off by default, as in kfp.local). Its key is a task's
    parameters and input artifact paths, so only ``make-config`` (a pure function of the parameters) can
    hit it here: ``prepare-data`` and ``note-features`` never cache (their keys would hold paths, not the data
    behind them) and every later step gets new input paths. A re-run with the same parameters reproduces
    the same tables, model weights, embeddings and metrics (seeded, deterministic on CPU); only the model
    version's timestamp differs. Its lead over the serving model is then exactly 0, which passes the gate only
    with a negative ``min_gain``; deploy and index then run again (a new collection for the new version; the
    previous one is kept for rollback). A task that came from the cache leaves no folder in the run's directory.
    """
    from kfp import local

    workspace = workspace.resolve()
    root = workspace / "runs"
    root.mkdir(parents=True, exist_ok=True)
    before = set(root.iterdir())
    arguments = local_parameters(workspace, **params)
    with contextlib.ExitStack() as stack:
        if runner == "docker":
            from pipelines.docker_runner import docker_runner, require_under

            require_under(workspace, arguments)
            task_runner = stack.enter_context(docker_runner(workspace, image))
        elif runner == "subprocess":
            task_runner = local.SubprocessRunner(use_venv=False)
        else:
            raise NoteLLMError(f"runner {runner!r}: expected one of {', '.join(RUNNERS)}")
        local.init(runner=task_runner, pipeline_root=str(root), raise_on_error=True, enable_caching=caching)
        notellm_pipeline(**arguments)
    created = sorted((p for p in set(root.iterdir()) - before if p.name.startswith(PIPELINE_NAME)),
                     key=lambda p: p.stat().st_mtime)
    if not created:
        raise RuntimeError(f"the local run left no directory under {root}")
    return created[-1]


def task_outputs(run_dir: Path, task: str) -> dict[str, Any]:
    """The parameter outputs of one task of a local run (empty when the task did not run)."""
    path = run_dir / task / "executor_output.json"
    if not path.exists():
        return {}
    return json.loads(path.read_text()).get("parameterValues", {})


def ran(run_dir: Path, task: str) -> bool:
    return (run_dir / task).is_dir()


# The quick budget: about 8 min of NoteLLM training on 2 CPU cores (bf16), and 60 MiniLM steps for the challenger
# (32 pairs a step, about 2 min) instead of its full epoch.
QUICK = {"max_steps": 60, "batch_pairs": 8, "challenger_steps": 60}
FULL = {"max_steps": 0}  # one full epoch over the train pairs


@contextlib.contextmanager
def local_server(workspace: Path, timeout_s: float = 180.0) -> Iterator[str]:
    """``notellm serve`` (KServe embedder + recommender on loopback) in a subprocess; yields its URL.
    Its log goes to ``workspace/serve.log``."""
    from serving.local import wait_ready

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    url = f"http://127.0.0.1:{port}"
    log = workspace / "serve.log"
    with log.open("wb") as out:  # a file, not a pipe: nobody reads a pipe while the server runs
        process = subprocess.Popen([sys.executable, "-c", "from notellm.cli import app; app()", "serve",
                                    "--workspace", str(workspace), "--port", str(port)],
                                   stdout=subprocess.DEVNULL, stderr=out)
    try:
        wait_ready(f"{url}/v2/health/ready", process, log.read_text, timeout_s)
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def _related_examples(workspace: Path, run_dir: Path, count: int = 3, k: int = 5) -> list[tuple[str, list[str]]]:
    """``count`` test notes with the titles of their top-``k`` related notes, asked of the local KServe server."""
    import pandas as pd

    from notellm.recommend import RecommendClient

    notes = pd.read_parquet(run_dir / "note-features" / "notes" / "notes.parquet").set_index("note_id")
    pairs = pd.read_parquet(run_dir / "mine-pairs" / "pairs" / "pairs.parquet")
    queries = pairs.loc[pairs["split"] == "test", "note_id_a"].drop_duplicates().head(count).tolist()
    with local_server(workspace) as url, RecommendClient(url) as client:
        hits = [client.related(q, k) for q in queries]
    return [(notes.at[q, "title"], [f"{notes.at[h['note_id'], 'title']} ({h['score']:.2f})" for h in row])
            for q, row in zip(queries, hits)]


def _data_lines(run_dir: Path) -> list[str]:
    """Where the pairs came from, and how much of the notes the prompt's length budget truncated."""
    from notellm.kfp_io import config_from_yaml
    from notellm.text_budget import describe
    from pipelines.progress import step_metrics

    mined, embedded = step_metrics(run_dir / "mine-pairs"), step_metrics(run_dir / "embed")
    source = "ready pairs" if "pairs" in step_metrics(run_dir / "prepare-data") else "mined pairs"
    lines = ["## Data", "", f"- {source}: " + ", ".join(
        f"{int(mined.get(f'pairs_per_split.{s}', 0)):,} {s}" for s in ("train", "val", "test"))]
    truncation = {key.removeprefix("truncation."): value for key, value in embedded.items()
                  if key.startswith("truncation.")}
    if truncation:
        unit = config_from_yaml(task_outputs(run_dir, "make-config")["Output"]).prompt.length_unit
        counts = {k: int(v) if k not in ("content_cut_mean", "content_kept_share") else float(v)
                  for k, v in truncation.items()}
        lines.append(f"- {describe({**counts, 'unit': unit})}")
    return lines


def summarize(workspace: Path, run_dir: Path) -> str:
    """A Markdown summary of a local run: results, drift, gate, where the model and collection live."""
    from notellm.deploy import read_record

    drift = task_outputs(run_dir, "check-drift")
    lines = [f"# NoteLLM local run `{run_dir.name}`", "", "## Evaluation (test pairs, whole catalogue)", "",
             (run_dir / "evaluate" / "table").read_text().strip(), "", *_data_lines(run_dir), "",
             f"## Drift: {'passed' if drift.get('passed') else 'FAILED'}", "",
             f"- report: {run_dir / 'check-drift' / 'report'}"]
    lines += [f"- {reason}" for reason in drift.get("reasons", "").split("; ") if reason]
    lines += ["", (run_dir / "gate" / "decision").read_text().strip().replace("# ", "## "), ""]
    record = read_record(workspace / "serving")
    if record:
        dim = f", {record['dim']}-d" if record.get("dim") else ""
        lines += [f"- serving model: `{record['model_version']}` ({record.get('kind', 'notellm')}{dim}) "
                  f"at {record['model_dir']}"]
    if ran(run_dir, "index"):
        meta = json.loads((run_dir / "index" / "executor_output.json").read_text())
        info = meta["artifacts"]["stats"]["artifacts"][0]["metadata"]
        lines += [f"- Milvus collection `{info['collection']}` behind alias `{info['alias']}` "
                  f"({info['rows']} notes) in {info['uri']}", "",
                  "## Related notes (top 5, from the local KServe recommender)", ""]
        for title, related in _related_examples(workspace, run_dir):
            lines += [f"- **{title}**: " + "; ".join(related)]
    elif record is None:
        lines += ["- nothing deployed yet: the gate stopped the first run"]
    return "\n".join(lines) + "\n"


def run_and_summarize(workspace: Path, full: bool = False, params: list[str] | None = None,
                      overrides: list[str] | None = None, runner: str = "subprocess",
                      image: str | None = None, verbose: bool = False) -> Path:
    """``notellm run``: the pipeline locally with the quick (or full) budget, then print and save a summary.

    Quiet unless ``verbose``: one line per step while it runs (:func:`pipelines.progress.quiet_run`),
    kfp.local's own output in ``workspace/run.log``."""
    from rich.console import Console
    from rich.markdown import Markdown

    from notellm.io import atomic_path
    from pipelines.params import parse_params
    from pipelines.progress import quiet_run

    arguments = {**(FULL if full else QUICK), **parse_params(params or [])}
    if overrides:
        arguments["overrides"] = [*arguments.get("overrides", []), *overrides]
    with quiet_run(workspace, verbose):
        run_dir = run_local(workspace, runner=runner, image=image, **arguments)
    text = summarize(workspace.resolve(), run_dir)
    with atomic_path(workspace / "summary.md") as tmp:
        tmp.write_text(text)
    Console().print(Markdown(text))
    Console().print(f"summary saved to {workspace / 'summary.md'}")
    return run_dir
