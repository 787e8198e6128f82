"""Small helpers the Kubeflow components share: the config they pass around and their Metrics artifacts.

The pipeline validates its parameters once (the ``make_config`` step) into a YAML string that every
later step takes; a step turns it back into a :class:`~notellm.config.Config` here.
"""

from __future__ import annotations

import math
from typing import Any

import yaml

from notellm.config import Config, load_config


def config_yaml(overrides: list[str], base_yaml: str = "") -> str:
    """Validate ``base_yaml`` plus ``section.key=value`` overrides and return the full config as YAML."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = None
        if base_yaml.strip():
            path = Path(tmp) / "config.yaml"
            path.write_text(base_yaml)
        cfg = load_config(path, overrides)
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def config_from_yaml(text: str) -> Config:
    """The Config a ``make_config`` step wrote."""
    return Config.model_validate(yaml.safe_load(text) or {})


def flat_numbers(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Every finite number (and bool) in a nested dict, keyed by its dotted path."""
    out: dict[str, float] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_numbers(value, f"{name}."))
        elif isinstance(value, (bool, int, float)) and math.isfinite(float(value)):
            out[name] = float(value)
    return out


def log_metrics(artifact: Any, values: dict[str, Any]) -> None:
    """Log the numbers of ``values`` on a KFP Metrics artifact (shown in the Kubeflow UI)."""
    for name, value in flat_numbers(values).items():
        artifact.log_metric(name, value)
