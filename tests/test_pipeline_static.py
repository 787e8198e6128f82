"""Static checks of the pipeline: the committed YAML is current, components and image agree, parameters parse."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from components import BASE_IMAGE
from notellm.errors import ConfigError, NoteLLMError
from pipelines.compile import DEFAULT_PACKAGE, compile_pipeline
from pipelines.params import parse_params
from pipelines.submit import submit_run

ROOT = Path(__file__).resolve().parents[1]


def test_committed_pipeline_yaml_is_current(tmp_path: Path) -> None:
    fresh = compile_pipeline(tmp_path / "pipeline.yaml").read_text()
    assert DEFAULT_PACKAGE.read_text() == fresh, "pipelines/notellm_pipeline.yaml is stale: run `notellm compile`"


def test_gpu_variant_asks_for_an_accelerator(tmp_path: Path) -> None:
    text = compile_pipeline(tmp_path / "gpu.yaml", gpu=True).read_text()
    assert "nvidia.com/gpu" in text and "nvidia.com/gpu" not in DEFAULT_PACKAGE.read_text()


def test_every_component_runs_in_the_project_image() -> None:
    spec = yaml.safe_load(DEFAULT_PACKAGE.read_text())
    executors = spec["deploymentSpec"]["executors"]
    assert len(executors) == 12
    for name, executor in executors.items():
        container = executor["container"]
        assert container["image"] == BASE_IMAGE, name
        assert "pip install" not in " ".join(container["command"]), f"{name} installs packages at run time"


def test_dockerfile_installs_what_the_components_import() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install --no-deps -e ." in dockerfile
    for folder in ("notellm", "components", "pipelines", "serving", "feature_repo"):
        assert re.search(rf"^COPY {folder} \./{folder}$", dockerfile, re.M), folder
    for source in (ROOT / "components").glob("*.py"):
        imported = set(re.findall(r"^[ \t]+from (\w+)", source.read_text(), re.M))
        assert imported <= {"notellm", "pathlib", "collections", "base64", "shutil", "tempfile"}, source.name
    tag = BASE_IMAGE.rsplit(":", 1)[1]
    assert f'version = "{tag}"' in (ROOT / "pyproject.toml").read_text()
    assert f"IMAGE ?= {BASE_IMAGE}\n" in (ROOT / "Makefile").read_text()  # `make image` builds what the steps run


def _images(path: Path) -> dict[str, str]:
    executors = next(yaml.safe_load_all(path.read_text()))["deploymentSpec"]["executors"]
    return {name: executor["container"]["image"] for name, executor in executors.items()}


def test_the_image_is_a_compile_setting(tmp_path: Path) -> None:
    mine = "registry.example.com/team/notellm:1.4"
    images = _images(compile_pipeline(tmp_path / "mine.yaml", image=mine))
    assert set(images.values()) == {mine} and len(images) == 12
    gpu = _images(compile_pipeline(tmp_path / "gpu.yaml", gpu=True, image=mine))
    assert {name for name, image in gpu.items() if image == f"{mine}-cuda"} == {"exec-finetune", "exec-embed"}
    assert {image for name, image in gpu.items() if name not in {"exec-finetune", "exec-embed"}} == {mine}
    # the default GPU build runs the default image's CUDA tag; the rest of the file is the compiler's own
    default_gpu = compile_pipeline(tmp_path / "default-gpu.yaml", gpu=True).read_text()
    assert f"image: {BASE_IMAGE}-cuda" in default_gpu and default_gpu.startswith("# PIPELINE DEFINITION")
    for bad in ("registry.example.com/team/notellm", "notellm@sha256:0123", "bad image"):
        with pytest.raises(ConfigError, match="image"):
            compile_pipeline(tmp_path / "bad.yaml", gpu=True, image=bad)


def test_parameters_are_typed_by_the_pipeline_signature() -> None:
    assert parse_params(["max_steps=100", "learning_rate=1e-4", "dataset=synthetic", "overrides=[a=1]"]) == {
        "max_steps": 100, "learning_rate": 1e-4, "dataset": "synthetic", "overrides": ["a=1"]}
    with pytest.raises(ConfigError, match="unknown pipeline parameter 'max_step'"):
        parse_params(["max_step=1"])
    with pytest.raises(ConfigError, match="max_steps: '1.5' is not a int"):
        parse_params(["max_steps=1.5"])
    with pytest.raises(ConfigError, match="must look like name=value"):
        parse_params(["max_steps"])


class _RecordingClient:
    """Stands in for kfp.Client: there is no local Kubeflow Pipelines API server to talk to."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def create_run_from_pipeline_package(self, package: str, **kwargs: object) -> object:
        self.calls.append({"package": package, **kwargs})
        return type("Run", (), {"run_id": "run-123"})()


def test_submit_sends_the_compiled_package_with_typed_arguments() -> None:
    client = _RecordingClient()
    run_id = submit_run("http://kfp.example", DEFAULT_PACKAGE, "notellm", "nightly", ["max_steps=10"], client)
    assert run_id == "run-123"
    assert client.calls == [{"package": str(DEFAULT_PACKAGE), "arguments": {"max_steps": 10},
                             "run_name": "nightly", "experiment_name": "notellm"}]


def test_submit_reports_an_unreachable_host(tmp_path: Path) -> None:
    with pytest.raises(NoteLLMError, match="notellm compile"):
        submit_run("http://127.0.0.1:9", tmp_path / "missing.yaml", "e", None, [])
    with pytest.raises(NoteLLMError, match="submitting to http://127.0.0.1:9 failed"):
        submit_run("http://127.0.0.1:9", DEFAULT_PACKAGE, "e", None, [])
