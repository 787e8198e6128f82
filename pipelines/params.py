"""Pipeline parameters given as ``name=value`` strings, typed by the pipeline's own signature."""

from __future__ import annotations

import inspect
from typing import Any

import yaml

from notellm.errors import ConfigError


def pipeline_signature() -> dict[str, inspect.Parameter]:
    from pipelines.notellm_pipeline import build_pipeline

    return dict(inspect.signature(build_pipeline().pipeline_func).parameters)


def parse_params(items: list[str]) -> dict[str, Any]:
    """``["max_steps=100", "dataset=synthetic"]`` -> typed values; unknown names and bad types are errors."""
    signature = pipeline_signature()
    out: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        name = name.strip()
        if not sep:
            raise ConfigError(f"pipeline parameter {item!r} must look like name=value")
        if name not in signature:
            raise ConfigError(f"unknown pipeline parameter {name!r}; known: {sorted(signature)}")
        kind = signature[name].annotation
        value = yaml.safe_load(raw) if raw.strip() else ""
        try:
            if kind is str:
                value = raw
            elif kind is float:
                value = float(value)
            elif kind is int:
                if isinstance(value, bool) or float(value) != int(value):
                    raise ValueError
                value = int(value)
            elif kind is bool:
                if not isinstance(value, bool):
                    raise ValueError
            elif kind is list and not isinstance(value, list):
                raise ValueError
        except (TypeError, ValueError):
            raise ConfigError(f"pipeline parameter {name}: {raw!r} is not a {kind.__name__}") from None
        out[name] = value
    return out
