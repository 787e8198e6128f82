"""Deploy a model directory: locally into a serving root, on a cluster by patching the InferenceService.

Both targets keep a serving record (``<serving_root>/current.json``: model version, kind and dimension,
where the model lives, its metrics) that the next run's gate compares against. Promotion is atomic: the model
is copied in full before the record points to it, so a reader of the record never finds a half-copied model.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

from notellm.errors import DataError, NoteLLMError
from notellm.io import atomic_dir, write_json

RECORD = "current.json"
MODELS = "models"
KSERVE_GROUP, KSERVE_VERSION, KSERVE_PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
ANNOTATION_PREFIX = "notellm.io/"


def model_version(model_dir: str | Path) -> str:
    """The ``model_version`` recorded in a model directory's notellm.json."""
    path = Path(model_dir) / "notellm.json"
    try:
        return str(json.loads(path.read_text())["model_version"])
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"cannot read the model version: {exc}", file=path) from exc


def read_record(serving_root: str | Path) -> dict[str, Any] | None:
    """The serving record, or None when nothing has been deployed yet."""
    path = Path(serving_root) / RECORD
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise DataError(f"the serving record is not valid JSON: {exc}", file=path) from exc


def promote_local(model_dir: str | Path, serving_root: str | Path, metrics: dict[str, float],
                  keep: int = 3) -> dict[str, Any]:
    """Copy the model under ``serving_root/models/<version>``, then point the record at it."""
    version = model_version(model_dir)
    root = Path(serving_root)
    target = root / MODELS / version
    with atomic_dir(target) as tmp:
        shutil.copytree(model_dir, tmp, dirs_exist_ok=True)
    meta = json.loads((target / "notellm.json").read_text())
    record = {"model_version": version, "model_dir": str(target.resolve()), "target": "local",
              "kind": meta.get("kind", "notellm"), "dim": meta.get("dim"), "metrics": metrics,
              "deployed_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    write_json(record, root / RECORD)
    _prune(root / MODELS, keep=keep, current=version)
    return record


def _prune(models: Path, keep: int, current: str) -> None:
    versions = sorted((p for p in models.iterdir() if p.is_dir() and not p.name.startswith(".")),
                      key=lambda p: p.stat().st_mtime, reverse=True)
    for old in [p for p in versions if p.name != current][max(keep - 1, 0):]:
        shutil.rmtree(old, ignore_errors=True)


def inference_service_patch(isvc: dict[str, Any], storage_uri: str, version: str,
                            metrics: dict[str, float]) -> dict[str, Any]:
    """The merge patch that points the predictor of ``isvc`` (as read from the cluster) at a new model.

    The predictor is a custom container whose ``STORAGE_URI`` the storage initializer fetches into
    /mnt/models; the patch replaces that value (and ``model.storageUri`` where a model spec is used) and
    records the version and the metrics that passed the gate as annotations.
    """
    predictor = isvc.get("spec", {}).get("predictor", {})
    annotations = {f"{ANNOTATION_PREFIX}model-version": version,
                   **{f"{ANNOTATION_PREFIX}{k.replace('@', '-at-').replace('_', '-').lower()}": f"{v:.6g}"
                      for k, v in sorted(metrics.items())}}
    patch: dict[str, Any] = {"metadata": {"annotations": annotations}, "spec": {"predictor": {}}}
    if "model" in predictor:
        patch["spec"]["predictor"]["model"] = {"storageUri": storage_uri}
    containers = [dict(c) for c in predictor.get("containers", [])]
    for container in containers:
        if container.get("name") == "kserve-container":
            env = [e for e in container.get("env", []) if e.get("name") != "STORAGE_URI"]
            container["env"] = [{"name": "STORAGE_URI", "value": storage_uri}, *env]
            patch["spec"]["predictor"]["containers"] = containers
    if not patch["spec"]["predictor"]:
        raise NoteLLMError("the InferenceService has neither a predictor model nor a kserve-container to point "
                           "at the new model")
    return patch


def deploy_kserve(name: str, namespace: str, storage_uri: str, version: str, metrics: dict[str, float],
                  api: Any | None = None) -> dict[str, Any]:
    """Patch InferenceService ``name`` in ``namespace`` (in-cluster credentials, else ~/.kube/config)."""
    if api is None:
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        api = client.CustomObjectsApi()
    where = (KSERVE_GROUP, KSERVE_VERSION, namespace, KSERVE_PLURAL, name)
    try:
        body = inference_service_patch(api.get_namespaced_custom_object(*where), storage_uri, version, metrics)
        return api.patch_namespaced_custom_object(*where, body)
    except NoteLLMError:
        raise
    except Exception as exc:  # noqa: BLE001 - the API client raises its own exception types
        raise NoteLLMError(f"patching InferenceService {namespace}/{name} failed: {exc}") from exc
