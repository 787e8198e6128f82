"""Deploying: local promotion is atomic and pruned; the cluster patch retargets the project's own InferenceService."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from notellm.deploy import deploy_kserve, inference_service_patch, promote_local, read_record
from notellm.errors import DataError, NoteLLMError

ISVC = Path(__file__).resolve().parents[1] / "manifests" / "base" / "inferenceservice.yaml"


def _model(tmp_path: Path, version: str) -> Path:
    model = tmp_path / f"model-{version}"
    model.mkdir()
    (model / "notellm.json").write_text(json.dumps({"model_version": version}))
    (model / "head.safetensors").write_bytes(b"weights")
    return model


def test_promote_copies_then_points_the_record(tmp_path: Path) -> None:
    root = tmp_path / "serving"
    assert read_record(root) is None
    for i in range(4):
        record = promote_local(_model(tmp_path, f"v{i}"), root, {"recall_at_100": 0.1 * i}, keep=2)
    assert record["model_version"] == "v3" and read_record(root) == record
    assert (Path(record["model_dir"]) / "head.safetensors").read_bytes() == b"weights"
    assert sorted(p.name for p in (root / "models").iterdir()) == ["v2", "v3"]
    (tmp_path / "again").mkdir()
    again = promote_local(_model(tmp_path / "again", "v3"), root, {"recall_at_100": 0.5})  # a re-run
    assert again["metrics"] == {"recall_at_100": 0.5} and len(list((root / "models").iterdir())) == 2


def test_a_model_without_version_is_refused(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    with pytest.raises(DataError, match="notellm.json"):
        promote_local(tmp_path / "m", tmp_path / "serving", {})


def _isvc() -> dict[str, Any]:
    return yaml.safe_load(ISVC.read_text())


def test_patch_retargets_the_predictor_container_and_keeps_its_other_settings() -> None:
    isvc = _isvc()
    patch = inference_service_patch(isvc, "s3://models/v7", "v7", {"recall_at_100": 0.2512})
    container = patch["spec"]["predictor"]["containers"][0]
    original = isvc["spec"]["predictor"]["containers"][0]
    assert {"name": "STORAGE_URI", "value": "s3://models/v7"} in container["env"]
    assert [e for e in container["env"] if e["name"] == "STORAGE_URI"] == [{"name": "STORAGE_URI",
                                                                           "value": "s3://models/v7"}]
    assert {k: v for k, v in container.items() if k != "env"} == {k: v for k, v in original.items() if k != "env"}
    assert patch["metadata"]["annotations"] == {"notellm.io/model-version": "v7",
                                                "notellm.io/recall-at-100": "0.2512"}
    assert isvc == _isvc(), "the patch must not modify the object it was built from"


class _ClusterStandIn:
    """Stands in for the Kubernetes API (no local one exists): holds one InferenceService, applies merge patches."""

    def __init__(self, isvc: dict[str, Any]) -> None:
        self.isvc = isvc
        self.patches: list[tuple] = []

    def get_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, name: str) -> dict:
        if name != self.isvc["metadata"]["name"]:
            raise RuntimeError(f'(404) inferenceservices "{name}" not found')
        return copy.deepcopy(self.isvc)

    def patch_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, name: str,
                                       body: dict) -> dict:
        self.patches.append((group, version, namespace, plural, name))
        self.isvc["spec"]["predictor"].update(body["spec"]["predictor"])
        self.isvc["metadata"].setdefault("annotations", {}).update(body["metadata"]["annotations"])
        return self.isvc


def test_deploy_kserve_patches_the_named_service() -> None:
    api = _ClusterStandIn(_isvc())
    out = deploy_kserve("notellm", "team-a", "pvc://notellm-models/v7", "v7", {"recall_at_100": 0.3}, api=api)
    assert api.patches == [("serving.kserve.io", "v1beta1", "team-a", "inferenceservices", "notellm")]
    env = out["spec"]["predictor"]["containers"][0]["env"]
    assert env[0] == {"name": "STORAGE_URI", "value": "pvc://notellm-models/v7"}
    with pytest.raises(NoteLLMError, match="patching InferenceService team-a/other failed: .*not found"):
        deploy_kserve("other", "team-a", "x", "v8", {}, api=api)
