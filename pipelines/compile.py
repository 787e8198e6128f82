"""Compile the pipeline to the YAML users upload in the Kubeflow UI (committed; CI checks it is current)."""

from __future__ import annotations

from pathlib import Path

from notellm.io import atomic_path

DEFAULT_PACKAGE = Path(__file__).with_name("notellm_pipeline.yaml")


def compile_pipeline(out: Path = DEFAULT_PACKAGE, gpu: bool = False) -> Path:
    """Write the compiled pipeline (IR YAML) to ``out`` atomically."""
    from kfp import compiler

    from pipelines.notellm_pipeline import build_pipeline

    with atomic_path(out) as tmp:
        compiler.Compiler().compile(build_pipeline(gpu=gpu), str(tmp.with_suffix(".yaml")))
        tmp.with_suffix(".yaml").replace(tmp)
    return out


if __name__ == "__main__":
    print(compile_pipeline())
