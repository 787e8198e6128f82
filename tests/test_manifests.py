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
    # the deprecated alias
    legacy["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = "RawDeployment"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(legacy, schema("inferenceservice.schema.json"))
    half = copy.deepcopy(one(docs, "InferenceService", "notellm"))
    # an External metric without its source
    half["spec"]["predictor"]["autoScaling"]["metrics"][0].pop("external")
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
    feast_pod = one(docs, "Deployment", "notellm-feast")["spec"]["template"]["spec"]
    assert cpu_image == feast_pod["containers"][0]["image"]
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


# --- issue 11: each defect of the production overlay, and a rule that catches it -------------------------


def _kustomization(path: Path) -> dict[str, Any]:
    return yaml.safe_load((path / "kustomization.yaml").read_text())


def _images(path: Path) -> dict[str, dict[str, str]]:
    return {entry["name"]: entry for entry in _kustomization(path).get("images", [])}


def test_the_image_is_a_kustomize_setting_and_the_cuda_tag_is_version_dash_cuda() -> None:
    """Resources name the image `notellm` (`notellm-cuda` for the GPU predictor); only `images:` entries map
    the names to a registry, and the tags are the project's version (CPU) and <version>-cuda (CUDA)."""
    for path in MANIFESTS.rglob("*.yaml"):
        if path.name != "kustomization.yaml":
            assert "ghcr.io" not in path.read_text(), f"{path}: a registry written into a resource"
    for target in TARGETS:
        for name, spec in pod_specs(build(target)):
            for container in spec["containers"] + spec.get("initContainers", []):
                assert "/" in container["image"] and split_image(container["image"])[1], \
                    f"{target}: {name} runs {container['image']}, a name no images: entry resolved"
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    cpu = _images(MANIFESTS / "base")["notellm"]
    assert cpu["newTag"] == version
    cuda = _images(MANIFESTS / "overlays/production")["notellm-cuda"]
    assert (cuda["newName"], cuda["newTag"]) == (cpu["newName"], f"{version}-cuda")
    assert set(IMAGE_NAMES) == {"notellm", "notellm-cuda"}


@pytest.mark.parametrize("target", TARGETS)
def test_gpu_containers_run_the_cuda_image_and_cpu_containers_do_not(target: str) -> None:
    """The production predictor asked for a GPU but ran the CPU image (no CUDA torch): a GPU it cannot use."""
    for name, spec in pod_specs(build(target)):
        for container in spec["containers"]:
            limits = container.get("resources", {}).get("limits", {})
            cuda = split_image(container["image"])[1].endswith("-cuda")
            assert cuda == (GPU in limits), f"{target}: {name}/{container['name']} runs {container['image']}"


def test_users_point_the_image_at_their_own_registry_with_an_images_entry(tmp_path: Path) -> None:
    """An overlay of the user's own with one `images:` entry (what `kustomize edit set image` writes) moves
    every container to the user's registry and keeps each tag, the predictor's -cuda included; the README
    shows it."""
    production = MANIFESTS / "overlays/production"
    default = _images(MANIFESTS / "base")["notellm"]["newName"]
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": [os.path.relpath(production, tmp_path)],
        "images": [{"name": default, "newName": "registry.example.com/team/notellm"}]}))
    ours = {(c["workload"], c["name"]): c["image"] for c in containers("overlays/production")}
    theirs = {}
    for name, spec in pod_specs(render(tmp_path)):
        for container in spec["containers"]:
            theirs[(name, container["name"])] = container["image"]
    assert theirs.keys() == ours.keys() and len(ours) >= 3
    for key, image in theirs.items():
        assert image == ours[key].replace(default, "registry.example.com/team/notellm", 1), key
    readme = (MANIFESTS / "README.md").read_text()
    assert "kustomize edit set image" in readme and f"- name: {default}" in readme and "newName:" in readme


@pytest.mark.parametrize("target", TARGETS)
def test_milvus_runs_as_non_root(target: str) -> None:
    """The operator sets runAsNonRoot/runAsUser 1000 on Milvus's pods only when spec.components.runAsNonRoot
    is true: without it Milvus ran as root, against manifests/README.md."""
    for milvus in find(build(target), "Milvus"):
        components = milvus["spec"]["components"]
        assert components.get("runAsNonRoot") is True
        security = components.get("securityContext", {})
        assert security.get("allowPrivilegeEscalation") is False
        assert "ALL" in security.get("capabilities", {}).get("drop", [])
        # Milvus writes under localStorage.path: a writable volume there for the non-root user
        local = milvus["spec"]["config"]["localStorage"]["path"]
        mounts = {m["mountPath"]: m["name"] for m in components.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in components.get("volumes", [])}
        assert local in mounts and "emptyDir" in volumes[mounts[local]]


def _version(image: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", split_image(image)[1])[:2])


@pytest.mark.parametrize("target", TARGETS)
def test_milvus_message_stream_is_explicit_and_runs_no_hidden_cluster(target: str) -> None:
    """With no msgStreamType the operator gives cluster mode an in-cluster Pulsar (standalone 2.6:
    woodpecker): the stream is written out, and an in-cluster Pulsar or Kafka is never deployed by default.
    Milvus 2.6 cluster mode always runs streaming nodes: they are sized, not left at one unsized default
    replica."""
    for milvus in find(build(target), "Milvus"):
        spec = milvus["spec"]
        stream = spec["dependencies"].get("msgStreamType")
        assert stream, f"{target}: Milvus without dependencies.msgStreamType"
        if stream in {"pulsar", "kafka"}:
            external = spec["dependencies"].get(stream, {}).get("external")
            assert external is True, f"{target}: in-cluster {stream}"
        if spec["mode"] == "cluster" and _version(spec["components"]["image"]) >= (2, 6):
            node = spec["components"].get("streamingNode", {})
            assert node.get("replicas", 0) >= 2, f"{target}: streaming nodes not replicated"
            assert {"cpu", "memory"} <= set(node.get("resources", {}).get("requests", {}))
            assert {"cpu", "memory"} <= set(node.get("resources", {}).get("limits", {}))


@pytest.mark.parametrize("target", TARGETS)
def test_milvus_on_s3_names_its_region_and_root_path(target: str) -> None:
    """External S3 (the operator's milvus_s3.yaml): a bucket, a prefix (rootPath) and a region that matches
    the regional endpoint; without a region the MinIO client signs for us-east-1 and fails elsewhere."""
    for milvus in find(build(target), "Milvus"):
        storage = milvus["spec"]["dependencies"].get("storage", {})
        if not (storage.get("external") and storage.get("type") == "S3"):
            continue
        minio = milvus["spec"]["config"]["minio"]
        assert minio["bucketName"] and minio["rootPath"].strip("/") and minio["region"]
        assert minio["useSSL"] is True and storage["endpoint"].endswith(":443")
        assert storage["endpoint"] == f"s3.{minio['region']}.amazonaws.com:443"
        assert storage["secretRef"]


@pytest.mark.parametrize("target", TARGETS)
def test_inference_service_uses_standard_mode_not_its_legacy_alias(target: str) -> None:
    for isvc in find(build(target), "InferenceService"):
        assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"


@pytest.mark.parametrize("target", TARGETS)
def test_gpu_components_scale_on_a_gpu_metric(target: str) -> None:
    """A GPU predictor scaled on CPU utilisation never scales out (its CPU idles while the GPU is saturated).
    A GPU component scales on a GPU metric (KEDA, from Prometheus) for its own pods; KServe refuses
    scaleMetric under KEDA and External metrics under HPA."""
    for isvc in find(build(target), "InferenceService"):
        annotations = isvc["metadata"].get("annotations", {})
        autoscaler = annotations.get("serving.kserve.io/autoscalerClass", "hpa")
        for component in ("predictor", "transformer"):
            spec = isvc["spec"].get(component)
            if spec is None:
                continue
            metrics = spec.get("autoScaling", {}).get("metrics", [])
            if autoscaler == "keda":
                assert "scaleMetric" not in spec, f"{component}: KServe allows no scaleMetric under KEDA"
            else:
                assert all(m["type"] == "Resource" for m in metrics), f"{component}: HPA takes Resource only"
            gpu = any(GPU in c.get("resources", {}).get("limits", {}) for c in spec["containers"])
            if not gpu or spec.get("maxReplicas", 1) <= spec.get("minReplicas", 1):
                continue
            assert autoscaler == "keda" and metrics, f"{target}: {component} has GPUs and no GPU metric"
            assert "scaleMetric" not in spec
            for metric in metrics:
                assert metric["type"] == "External", f"{component} scales on {metric}"
                query = metric["external"]["metric"]["query"]
                assert "GPU" in query.upper()
                assert f'namespace="{isvc["metadata"]["namespace"]}"' in query
                assert f'pod=~"{isvc["metadata"]["name"]}-{component}-' in query


@pytest.mark.parametrize("target", TARGETS)
def test_milvus_token_is_required_where_milvus_auth_is_on(target: str) -> None:
    """With Milvus auth on, an optional token let the transformer start without it and fail every request; a
    required secretKeyRef keeps the pod from starting (CreateContainerConfigError) until the Secret exists."""
    docs = build(target)
    auth = any(m["spec"].get("config", {}).get("common", {}).get("security", {}).get("authorizationEnabled")
               for m in find(docs, "Milvus"))
    tokens = [e for _, spec in pod_specs(docs) for c in spec["containers"] for e in c.get("env", [])
              if e["name"] == "MILVUS_TOKEN"]
    assert tokens
    for token in tokens:
        ref = token["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "notellm-milvus" and ref["key"] == "token"
        assert ref.get("optional", False) is (not auth), f"{target}: Milvus auth {auth}, token optional {ref}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_shared_volumes_are_read_write_many(overlay: str) -> None:
    """Each claim is written by the pipeline's pods and read by serving pods (the predictor's storage
    initializer, the feature server) that the scheduler may place on other nodes: ReadWriteOnce held them
    Pending."""
    docs = build(overlay)
    used = set()
    for _, spec in pod_specs(docs):
        used |= {v["persistentVolumeClaim"]["claimName"] for v in spec.get("volumes", [])
                 if "persistentVolumeClaim" in v}
        for container in spec["containers"]:
            for item in container.get("env", []):
                if item["name"] == "STORAGE_URI" and item.get("value", "").startswith("pvc://"):
                    used.add(item["value"][len("pvc://"):].split("/")[0])
    claims = find(docs, "PersistentVolumeClaim")
    assert {c["metadata"]["name"] for c in claims} == used
    for claim in claims:
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"], claim["metadata"]["name"]


# What each of Feast's stores needs installed beyond feast itself (feast 0.67's extras): the online store by
# type, the SQL registry by its database (a bare postgresql:// is rewritten to postgresql+psycopg://).
FEAST_EXTRAS = {("online_store", "redis"): "redis", ("registry", "sql"): "postgres"}


def _feature_store_yaml(overlay: str) -> str:
    feast = next(c for c in containers(overlay) if c["workload"] == "Deployment/notellm-feast")
    return feast["files"][feast["env"]["FEAST_FS_YAML_FILE_PATH"]]


def test_production_feast_stores_have_their_extras_in_the_cluster_dependencies() -> None:
    """Redis online store and SQL registry: `feast[redis,postgres]` (redis, hiredis, psycopg 3) in the
    `cluster` extra that the image installs; feast alone cannot load either store."""
    store = yaml.safe_load(_feature_store_yaml("overlays/production"))
    kinds = {"online_store": store["online_store"].get("type"),
             "registry": store["registry"].get("registry_type")}
    needed = {extra for (section, kind), extra in FEAST_EXTRAS.items() if kinds[section] == kind}
    assert needed == {"redis", "postgres"}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    cluster = project.get("optional-dependencies", {}).get("cluster", [])
    extras = {extra.strip() for spec in cluster if spec.startswith("feast[")
              for extra in spec[len("feast["):spec.index("]")].split(",")}
    assert needed <= extras, f"the image's cluster extra {cluster} lacks feast[{','.join(sorted(needed))}]"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_feature_store_yaml_loads_with_feast(overlay: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The ConfigMap's feature_store.yaml loads as Feast's RepoConfig, with placeholder connection strings for
    the variables the notellm-feast Secret provides, and its online store class and registry driver import."""
    text = _feature_store_yaml(overlay)
    store = yaml.safe_load(text)
    if store["online_store"]["type"] == "redis":
        pytest.importorskip("redis", reason="feast[redis] (in the test extra) is not installed")
        pytest.importorskip("psycopg", reason="feast[postgres] (in the test extra) is not installed")
    from feast.infra.online_stores.helpers import get_online_store_from_config
    from feast.repo_config import load_repo_config
    from sqlalchemy.engine import make_url

    monkeypatch.setenv("FEAST_REGISTRY_URL", "postgresql://feast@postgres:5432/feast")
    monkeypatch.setenv("FEAST_REDIS_CONNECTION", "redis:6379")
    (tmp_path / "feature_store.yaml").write_text(text)
    config = load_repo_config(ROOT / "feature_repo", tmp_path / "feature_store.yaml")
    assert config.project == "notellm"
    get_online_store_from_config(config.online_store)
    if getattr(config.registry, "registry_type", "file") == "sql":
        assert "$" not in config.registry.path
        make_url(config.registry.path).get_dialect().import_dbapi()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_containers_lists_what_each_overlay_starts_from_the_project_image(overlay: str) -> None:
    """containers(): the predictor, the transformer and the feature server, with their commands and config."""
    found = {c["workload"]: c for c in containers(overlay)}
    assert set(found) == {"InferenceService/notellm/predictor", "InferenceService/notellm/transformer",
                          "Deployment/notellm-feast"}
    predictor = found["InferenceService/notellm/predictor"]
    assert predictor["argv"][:3] == ["python", "-m", "serving.embedder"]
    assert predictor["cuda"] is overlay.endswith("production")
    assert found["InferenceService/notellm/transformer"]["secret_env"] == ["MILVUS_TOKEN"]
    feast = found["Deployment/notellm-feast"]
    assert feast["argv"][:2] == ["feast", "serve"] and feast["working_dir"] == "/app/feature_repo"
    assert list(feast["files"]) == ["/etc/feast/feature_store.yaml"]
    assert feast["env_from_secrets"] == (["notellm-feast"] if overlay.endswith("production") else [])
    for container in found.values():
        assert container["image"].startswith(_images(MANIFESTS / "base")["notellm"]["newName"] + ":")
