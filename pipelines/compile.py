"""Compile the pipeline to the YAML users upload in the Kubeflow UI (committed; CI checks it is current).

The image every step runs in is a setting, not a code edit: ``compile_pipeline(image=...)`` (``notellm compile
--image REGISTRY/NAME:TAG``) writes it into each step's container; without it the steps run in the pipeline's
default image, ``components.BASE_IMAGE``. With ``gpu`` the GPU steps run in the CUDA build, ``IMAGE-cuda``.
"""

from __future__ import annotations

import re
from pathlib import Path

from components import BASE_IMAGE
from notellm.errors import ConfigError
from notellm.io import atomic_path
from notellm.k8s_jobs import cuda_tag

DEFAULT_PACKAGE = Path(__file__).with_name("notellm_pipeline.yaml")
_EXECUTOR = re.compile(r"^    (exec-[\w-]+):\s*$")
_IMAGE = re.compile(r"^(\s+image: )(\S+)\s*$")


def set_images(text: str, image: str) -> str:
    """The compiled YAML with each executor's container image set: ``IMAGE-cuda`` where it asks for a GPU."""
    import yaml

    executors = next(yaml.safe_load_all(text))["deploymentSpec"]["executors"]
    gpu = {name for name, spec in executors.items() if spec["container"].get("resources", {}).get("accelerator")}
    lines, executor = [], None
    for line in text.splitlines(keepends=True):
        if found := _EXECUTOR.match(line):
            executor = found.group(1)
        elif (found := _IMAGE.match(line)) and executor is not None:
            wanted = cuda_tag(image) if executor in gpu else image
            line = f"{found.group(1)}{wanted}\n"
        lines.append(line)
    return "".join(lines)


def compile_pipeline(out: Path = DEFAULT_PACKAGE, gpu: bool = False, image: str | None = None,
                     cluster_jobs: bool = False) -> Path:
    """Write the compiled pipeline (IR YAML) to ``out`` atomically, its steps in ``image``; ``cluster_jobs``
    mounts the shared claim that a SparkApplication or TrainJob step needs."""
    from kfp import compiler

    from pipelines.notellm_pipeline import build_pipeline

    if image is not None and not re.fullmatch(r"[\w.\-/:@]+", image):
        raise ConfigError(f"image {image!r} is not an image reference (REGISTRY/NAME:TAG)")
    with atomic_path(out) as tmp:
        yaml_path = tmp.with_suffix(".yaml")
        compiler.Compiler().compile(build_pipeline(gpu=gpu, cluster_jobs=cluster_jobs), str(yaml_path))
        if image is not None or gpu:
            yaml_path.write_text(set_images(yaml_path.read_text(), image or BASE_IMAGE))
        yaml_path.replace(tmp)
    return out


if __name__ == "__main__":
    print(compile_pipeline())
