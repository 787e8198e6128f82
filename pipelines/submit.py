"""Submit a run of the compiled pipeline to a Kubeflow Pipelines API server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from notellm.errors import NoteLLMError
from pipelines.params import parse_params


def submit_run(host: str, package: Path, experiment: str, run_name: str | None, params: list[str],
               client: Any | None = None) -> str:
    """Create a run from ``package`` with typed ``name=value`` parameters; return the run id."""
    if not package.exists():
        raise NoteLLMError(f"{package} does not exist: run `notellm compile` first")
    arguments = parse_params(params)
    try:
        if client is None:
            import kfp

            client = kfp.Client(host=host)
        result = client.create_run_from_pipeline_package(str(package), arguments=arguments, run_name=run_name,
                                                         experiment_name=experiment)
    except Exception as exc:  # noqa: BLE001 - connection and API errors of the kfp client
        raise NoteLLMError(f"submitting to {host} failed: {exc}") from exc
    return str(result.run_id)
