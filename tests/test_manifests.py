"""The Kubernetes manifests: every overlay builds with kustomize, every object validates, and the
serving rules hold (non-root containers with limits and probes, secrets only by reference, RBAC for the
pipeline, GPUs and autoscaling in production)."""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from manifest_containers import (IMAGE_NAMES, KSERVE_EXTENSION_FIELDS, MANIFESTS, build, containers, render,
                                 split_image)
from manifest_containers import pod_specs as _pod_specs

ROOT = MANIFESTS.parent
TARGETS = ["base", "overlays/dev", "overlays/production"]
OVERLAYS = {"overlays/dev": "notellm-dev", "overlays/production": "notellm"}
K8S_VERSION = kubernetes_validate.latest_version()
CUSTOM_SCHEMAS = {("serving.kserve.io/v1beta1", "InferenceService"): "inferenceservice.schema.json",
                  ("milvus.io/v1beta1", "Milvus"): "milvus.schema.json"}
SECRET_LIKE = re.compile(r"TOKEN|PASSWORD|SECRET|ACCESS_KEY|CREDENTIAL", re.IGNORECASE)
GPU = "nvidia.com/gpu"


@functools.cache
def schema(filename: str) -> dict[str, Any]:
    return json.loads((MANIFESTS / "schemas" / filename).read_text())


def find(docs: tuple[dict[str, Any], ...], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_specs(docs: tuple[dict[str, Any], ...]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod spec the manifests define: workload templates and the InferenceService components."""
    yield from _pod_specs(docs)


def walk(node: Any) -> Iterator[tuple[str, Any]]:
    """All (key, value) pairs of a nested document."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from walk(value)
    elif isinstance(node, (list, tuple)):
        for item in node:
            yield from walk(item)


def container_args(component: dict[str, Any]) -> dict[str, str]:
    args = component["containers"][0]["args"]
    return dict(zip(args[::2], args[1::2], strict=True))


def env_value(container: dict[str, Any], name: str) -> str:
    return next(e["value"] for e in container["env"] if e["name"] == name)


@pytest.mark.parametrize("target", TARGETS)
def test_every_object_validates(target: str) -> None:
    docs = build(target)
    assert docs
    for doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        if key in CUSTOM_SCHEMAS:
            jsonschema.Draft202012Validator(schema(CUSTOM_SCHEMAS[key])).validate(doc)
        else:
            try:
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                pytest.fail(f"{key}: neither a Kubernetes {K8S_VERSION} kind nor one with a project schema")
    for name, spec in pod_specs(docs):
        if name.startswith("InferenceService"):  # the PodSpec part, as Kubernetes would see it
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"}, "spec": spec}
            kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def test_project_schemas_are_valid_and_catch_mistakes() -> None:
    for filename in CUSTOM_SCHEMAS.values():
        jsonschema.Draft202012Validator.check_schema(schema(filename))
    docs = build("overlays/production")
    isvc = copy.deepcopy(one(docs, "InferenceService", "notellm"))
    isvc["spec"]["predictor"]["minReplica"] = 2  # a typo
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(isvc, schema("inferenceservice.schema.json"))
    legacy = copy.deepcopy(one(docs, "InferenceService", "notellm"))
    legacy["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = "RawDeployment"  # deprecated alias
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(legacy, schema("inferenceservice.schema.json"))
    half = copy.deepcopy(one(docs, "InferenceService", "notellm"))
    half["spec"]["predictor"]["autoScaling"]["metrics"][0].pop("external")  # an External metric without its source
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(half, schema("inferenceservice.schema.json"))
    milvus = copy.deepcopy(one(docs, "Milvus", "notellm"))
    milvus["spec"]["mode"] = "standalone"  # cluster components in standalone mode
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(milvus, schema("milvus.schema.json"))
    milvus = copy.deepcopy(one(docs, "Milvus", "notellm"))
    milvus["spec"]["dependencies"]["msgStreamType"] = "woodpeckr"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(milvus, schema("milvus.schema.json"))


@pytest.mark.parametrize("target", TARGETS)
def test_containers_are_locked_down_with_limits_and_probes(target: str) -> None:
    specs = list(pod_specs(build(target)))
    assert {name for name, _ in specs} >= {"InferenceService/notellm/predictor",
                                           "InferenceService/notellm/transformer", "Deployment/notellm-feast"}
    for name, spec in specs:
        pod_security = spec.get("securityContext", {})
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in spec["containers"] + spec.get("initContainers", []):
            where = f"{target}: {name}/{container['name']}"
            security = container.get("securityContext", {})
            assert security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is True, where
            assert security.get("runAsUser", pod_security.get("runAsUser", 1)) != 0, where
            assert security.get("allowPrivilegeEscalation") is False, where
            assert "ALL" in security.get("capabilities", {}).get("drop", []), where
            assert security.get("readOnlyRootFilesystem") is True, where
            tmp = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert tmp and "emptyDir" in volumes[tmp[0]["name"]], f"{where}: /tmp must be an emptyDir"
            resources = container.get("resources", {})
            assert {"cpu", "memory"} <= set(resources.get("limits", {})), where
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), where
            assert "readinessProbe" in container and "livenessProbe" in container, where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_inference_service_wiring(overlay: str) -> None:
    docs = build(overlay)
    isvc = one(docs, "InferenceService", "notellm")
    predictor, transformer = isvc["spec"]["predictor"], isvc["spec"]["transformer"]
    embedder = predictor["containers"][0]
    cpu_image = transformer["containers"][0]["image"]
    assert cpu_image == one(docs, "Deployment", "notellm-feast")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert embedder["image"] == (f"{cpu_image}-cuda" if overlay.endswith("production") else cpu_image)
    assert embedder["command"] == ["python", "-m", "serving.embedder"]
    assert container_args(predictor) == {"--model_name": "notellm-embedder", "--model_dir": "/mnt/models"}
    assert transformer["containers"][0]["command"] == ["python", "-m", "serving.recommender"]
    for component in (predictor, transformer):
        container = component["containers"][0]
        assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
        assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8080}
        assert [p["containerPort"] for p in container["ports"]] == [8080]

    args = container_args(transformer)
    assert args["--model_name"] == "notellm"
    assert args["--predictor_host"] == f"{isvc['metadata']['name']}-predictor"
    milvus = one(docs, "Milvus", "notellm")
    # the Milvus operator names the service <name>-milvus
    assert args["--milvus_uri"] == f"http://{milvus['metadata']['name']}-milvus:19530"
    feast = one(docs, "Service", "notellm-feast")
    feast_url = env_value(transformer["containers"][0], "NOTELLM_FEAST_URL")
    assert feast_url == f"http://{feast['metadata']['name']}:{feast['spec']['ports'][0]['port']}"

    storage = env_value(embedder, "STORAGE_URI")
    if overlay.endswith("dev"):
        assert storage == "pvc://notellm-models/current"
        one(docs, "PersistentVolumeClaim", "notellm-models")
        assert milvus["spec"]["mode"] == "standalone"
    else:
        assert storage.startswith("s3://")
        account = one(docs, "ServiceAccount", predictor["serviceAccountName"])
        assert account["secrets"] == [{"name": "notellm-s3"}]  # credentials by reference only
        assert milvus["spec"]["mode"] == "cluster"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_only_by_reference(overlay: str) -> None:
    docs = build(overlay)
    assert not find(docs, "Secret")
    referenced = set()
    for key, value in walk(docs):
        if key in {"secretKeyRef", "secretRef"} and isinstance(value, dict):
            referenced.add(value["name"])
        if key == "env":
            for item in value:
                literal = SECRET_LIKE.search(item["name"]) and "value" in item
                assert not literal, f"a literal secret value in env {item['name']}"
    assert referenced  # the transformer's Milvus token, the production Feast connection strings
    for path in MANIFESTS.rglob("*.y*ml"):
        for doc in yaml.safe_load_all(path.read_text()):
            assert not (isinstance(doc, dict) and doc.get("kind") == "Secret"), f"{path} holds a Secret"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rbac_lets_the_pipeline_deploy_and_index_in_its_namespace(overlay: str) -> None:
    docs = build(overlay)
    namespace = OVERLAYS[overlay]
    one(docs, "Namespace", namespace)
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == namespace, f"{doc['kind']}/{doc['metadata']['name']}"
    one(docs, "ServiceAccount", "notellm-pipeline")
    binding = one(docs, "RoleBinding", "notellm-pipeline")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "notellm-pipeline", "namespace": namespace}]
    role = one(docs, "Role", binding["roleRef"]["name"])

    def allowed(group: str, resource: str, verb: str) -> bool:
        return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
                   for r in role["rules"])

    for verb in ("get", "create", "patch"):
        assert allowed("serving.kserve.io", "inferenceservices", verb)
    assert allowed("", "configmaps", "get")
    assert not allowed("", "configmaps", "delete")
    assert not allowed("serving.kserve.io", "inferenceservices", "delete")
    secret_rules = [r for r in role["rules"] if "secrets" in r["resources"]]
    assert secret_rules and all(r.get("resourceNames") and set(r["verbs"]) == {"get"} for r in secret_rules)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_and_config_resolve(overlay: str) -> None:
    docs = build(overlay)
    deployment = one(docs, "Deployment", "notellm-feast")
    service = one(docs, "Service", "notellm-feast")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    configmaps = {c["metadata"]["name"] for c in find(docs, "ConfigMap")}
    claims = {c["metadata"]["name"] for c in find(docs, "PersistentVolumeClaim")}
    for volume in deployment["spec"]["template"]["spec"]["volumes"]:
        if "configMap" in volume:
            assert volume["configMap"]["name"] in configmaps
        if "persistentVolumeClaim" in volume:
            assert volume["persistentVolumeClaim"]["claimName"] in claims
    feast_config = next(c for c in find(docs, "ConfigMap")
                        if c["metadata"]["name"].startswith("notellm-feast-config"))
    store = yaml.safe_load(feast_config["data"]["feature_store.yaml"])
    assert store["project"] == "notellm" and store["entity_key_serialization_version"] == 3


def test_production_has_gpus_and_autoscaling_and_dev_has_neither() -> None:
    prod = build("overlays/production")
    isvc = one(prod, "InferenceService", "notellm")
    predictor, transformer = isvc["spec"]["predictor"], isvc["spec"]["transformer"]
    resources = predictor["containers"][0]["resources"]
    assert str(resources["limits"][GPU]) == "1"
    assert any(t["key"] == GPU for t in predictor["tolerations"])
    for component in (predictor, transformer):
        assert 2 <= component["minReplicas"] < component["maxReplicas"]
        assert component["autoScaling"]["metrics"]
    assert transformer["autoScaling"]["metrics"] == [{"type": "Resource", "resource": {
        "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}]
    hpa = one(prod, "HorizontalPodAutoscaler", "notellm-feast")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": "notellm-feast"}
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    assert "replicas" not in one(prod, "Deployment", "notellm-feast")["spec"]  # the HPA owns it
    milvus = one(prod, "Milvus", "notellm")
    assert milvus["spec"]["components"]["queryNode"]["replicas"] >= 2
    assert milvus["spec"]["dependencies"]["storage"]["secretRef"]

    dev = build("overlays/dev")
    assert not [v for k, v in walk(dev) if k == GPU]
