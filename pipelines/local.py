"""Run the pipeline on this machine with ``kfp.local``: Milvus Lite, a Feast sqlite store, a serving root.

Every path lives under one workspace directory, so a re-run reuses the Feast repository, the serving
record (the gate compares against the last deployed model) and the Milvus database.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipelines.notellm_pipeline import PIPELINE_NAME, notellm_pipeline


def local_parameters(workspace: Path, **params: Any) -> dict[str, Any]:
    """Pipeline parameters for a local run under ``workspace`` (absolute paths: steps run in subprocesses)."""
    workspace = workspace.resolve()
    return {"feature_repo": str(workspace / "feature_repo"), "serving_root": str(workspace / "serving"),
            "milvus_uri": str(workspace / "milvus.db"), "deploy_target": "local", **params}


def run_local(workspace: Path, **params: Any) -> Path:
    """Run the whole pipeline locally; return the run's directory (one folder per task)."""
    from kfp import local

    workspace = workspace.resolve()
    root = workspace / "runs"
    root.mkdir(parents=True, exist_ok=True)
    before = set(root.iterdir())
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    notellm_pipeline(**local_parameters(workspace, **params))
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
