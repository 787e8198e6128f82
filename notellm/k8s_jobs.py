"""The cluster paths of two steps: pair mining as a SparkApplication (Kubeflow Spark Operator) and
fine-tuning as a TrainJob (Kubeflow Trainer, the ``torch-distributed`` runtime).

Rendering is pure (dicts, checked against the committed CRD schemas in ``manifests/schemas/``); running
goes through the ``kubernetes`` client: create, watch until the resource is done, and on failure raise a
:class:`~notellm.errors.NoteLLMError` with the operator's message and the tail of the driver's (or the
first training node's) log. Both jobs read and write a shared volume (a ReadWriteMany PVC) that the
pipeline step mounts too, so the step copies inputs in and results out.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from notellm.errors import ConfigError, NoteLLMError

SPARK = ("sparkoperator.k8s.io", "v1beta2", "sparkapplications")
TRAINER = ("trainer.kubeflow.org", "v1alpha1", "trainjobs")
SHARED_MOUNT = "/mnt/notellm-shared"
SPARK_ACCOUNT = "notellm-spark"  # manifests/base/spark-rbac.yaml
SPARK_VERSION = "4.3.0"  # the pyspark the image installs (pyproject: spark extra)
DRIVER_FILE = "local:///app/notellm/mining_spark.py"  # the project image keeps the package at /app
# Spark's Kubernetes entrypoint in the project image (image/spark-entrypoint.sh): Spark starts the driver and
# executor containers with the args `driver ...` / `executor ...` and no command, so the image's own command
# would run; the pod templates make this script the command instead (Spark keeps a template's command).
SPARK_ENTRYPOINT = "/opt/spark-entrypoint.sh"
SPARK_CONTAINERS = {"driver": "spark-kubernetes-driver", "executor": "spark-kubernetes-executor"}
LOG_LINES = 60


@dataclass(frozen=True)
class Shared:
    """The shared volume: a PVC ``claim`` mounted at ``mount`` in the step and in the job's pods."""

    claim: str
    mount: str = SHARED_MOUNT

    def volume(self) -> dict[str, Any]:
        return {"name": "shared", "persistentVolumeClaim": {"claimName": self.claim}}

    def volume_mount(self) -> dict[str, Any]:
        return {"name": "shared", "mountPath": self.mount}


def job_name(prefix: str, run_id: str) -> str:
    """A DNS-1123 name for this run's job: the same run (a retried step) gets the same name."""
    tail = "".join(c for c in run_id.lower() if c.isalnum())[:12] or "local"
    return f"{prefix}-{tail}"


def spark_application(name: str, namespace: str, image: str, shared: Shared, *, events: str, out: str,
                      mining_json: str, executors: int = 2, executor_cores: int = 1,
                      executor_memory: str = "2g", driver_memory: str = "2g") -> dict[str, Any]:
    """A SparkApplication that runs :func:`notellm.mining_spark.main` in the project image, its driver and
    executors started by the image's Spark entrypoint (``template``: the operator passes it to Spark as the
    pod template, whose container ``command`` Spark keeps)."""
    def template(role: str) -> dict[str, Any]:
        return {"spec": {"containers": [{"name": SPARK_CONTAINERS[role], "command": [SPARK_ENTRYPOINT]}]}}

    pod = {"volumeMounts": [shared.volume_mount()], "labels": {"app.kubernetes.io/part-of": "notellm"},
           "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "allowPrivilegeEscalation": False,
                               "capabilities": {"drop": ["ALL"]}}}
    return {
        "apiVersion": f"{SPARK[0]}/{SPARK[1]}", "kind": "SparkApplication",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/part-of": "notellm"}},
        "spec": {
            "type": "Python", "pythonVersion": "3", "mode": "cluster", "image": image,
            "imagePullPolicy": "IfNotPresent", "sparkVersion": SPARK_VERSION,
            "mainApplicationFile": DRIVER_FILE,
            "arguments": ["--events", events, "--out", out, "--config", mining_json],
            "sparkConf": {"spark.sql.session.timeZone": "UTC", "spark.ui.enabled": "false"},
            "restartPolicy": {"type": "Never"},
            "volumes": [shared.volume()],
            "driver": {**pod, "cores": 1, "memory": driver_memory, "serviceAccount": SPARK_ACCOUNT,
                       "template": template("driver")},
            "executor": {**pod, "instances": executors, "cores": executor_cores, "memory": executor_memory,
                         "template": template("executor")},
        },
    }


def train_job(name: str, namespace: str, image: str, shared: Shared, *, command: list[str], nodes: int,
              gpus_per_node: int, runtime: str = "torch-distributed", cpu: str = "8",
              memory: str = "32Gi") -> dict[str, Any]:
    """A TrainJob: ``nodes`` x ``gpus_per_node`` processes of ``command`` (torchrun) in ``image``."""
    if nodes < 1 or gpus_per_node < 0:
        raise NoteLLMError(f"a TrainJob needs nodes >= 1 and gpus_per_node >= 0 (got {nodes}, {gpus_per_node})")
    limits: dict[str, Any] = {"cpu": cpu, "memory": memory}
    if gpus_per_node:
        limits["nvidia.com/gpu"] = gpus_per_node
    node_pod = {"spec": {"volumes": [shared.volume()],
                         "containers": [{"name": "node", "volumeMounts": [shared.volume_mount()]}]}}
    return {
        "apiVersion": f"{TRAINER[0]}/{TRAINER[1]}", "kind": "TrainJob",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/part-of": "notellm"}},
        "spec": {
            "runtimeRef": {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime", "name": runtime},
            "trainer": {"image": image, "command": command, "numNodes": nodes,
                        "numProcPerNode": max(gpus_per_node, 1),
                        "resourcesPerNode": {"requests": limits, "limits": limits},
                        "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}]},
            "runtimePatches": [{"manager": "notellm.io/pipeline", "trainingRuntimeSpec": {"template": {"spec": {
                "replicatedJobs": [{"name": "node", "template": {"spec": {"template": node_pod}}}]}}}}],
        },
    }


def train_command(work: str, config_file: str) -> list[str]:
    """torchrun over the project's own entry point (``notellm train``), resuming from the newest checkpoint
    on the shared volume: a restarted TrainJob continues where the last one stopped. torchrun takes the
    nodes, processes per node, rank and master from the ``PET_*`` variables the runtime sets."""
    return ["torchrun", "--no-python", "notellm", "train", "--notes", f"{work}/notes", "--pairs", f"{work}/pairs",
            "--out", f"{work}/model", "--config", config_file,
            "--set", f"training.checkpoint_dir={work}/checkpoints", "--set", "training.resume=true"]


# ---------------------------------------------------------------- the API


def api_client() -> Any:
    """A client with in-cluster credentials, else ~/.kube/config."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


def own_image(api: Any, namespace: str, pod: str) -> str:
    """The image of the first container of ``pod`` (the pipeline step's own pod)."""
    from kubernetes import client

    return client.CoreV1Api(api).read_namespaced_pod(pod, namespace).spec.containers[0].image


def _state(kind: str, obj: dict[str, Any]) -> tuple[str | None, str]:
    """("done" | "failed" | None, message) of a SparkApplication or TrainJob."""
    status = obj.get("status") or {}
    if kind == "SparkApplication":
        app = status.get("applicationState") or {}
        state = app.get("state", "")
        if state == "COMPLETED":
            return "done", state
        if state in {"FAILED", "SUBMISSION_FAILED", "UNKNOWN"}:
            return "failed", f"{state}: {app.get('errorMessage', '')}".strip(": ")
        return None, state
    for cond in status.get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in {"Complete", "Failed"}:
            done = cond["type"] == "Complete"
            return ("done" if done else "failed"), f"{cond['type']}: {cond.get('message', '')}".strip(": ")
    return None, ""


def _log_tail(api: Any, namespace: str, kind: str, obj: dict[str, Any]) -> str:
    """The last lines of the Spark driver's log, or of the first training node's; '' when unreadable."""
    from kubernetes import client

    core = client.CoreV1Api(api)
    try:
        if kind == "SparkApplication":
            pod = ((obj.get("status") or {}).get("driverInfo") or {}).get("podName")
        else:
            pods = core.list_namespaced_pod(
                namespace, label_selector=f"jobset.sigs.k8s.io/jobset-name={obj['metadata']['name']}").items
            pod = sorted(p.metadata.name for p in pods)[0] if pods else None
        return core.read_namespaced_pod_log(pod, namespace, tail_lines=LOG_LINES) if pod else ""
    except Exception:  # noqa: BLE001 - a missing log must not hide the job's own error
        return ""


def run_job(api: Any, body: dict[str, Any], *, timeout_s: float = 24 * 3600,
            watch_s: int = 60) -> dict[str, Any]:
    """Create ``body`` (or reuse the one of that name: a retried step), watch it until it is done and
    return it with the driver's/first node's log tail under ``log``; raise NoteLLMError when it fails."""
    from kubernetes import client, watch
    from kubernetes.client.exceptions import ApiException

    kind, namespace, name = body["kind"], body["metadata"]["namespace"], body["metadata"]["name"]
    group, version, plural = SPARK if kind == "SparkApplication" else TRAINER
    custom = client.CustomObjectsApi(api)
    try:
        obj = custom.create_namespaced_custom_object(group, version, namespace, plural, body)
    except ApiException as exc:
        if exc.status != 409:
            raise NoteLLMError(f"creating {kind} {namespace}/{name} failed: {exc.status} {exc.reason}: "
                               f"{exc.body}") from exc
        obj = custom.get_namespaced_custom_object(group, version, namespace, plural, name)
    deadline = time.monotonic() + timeout_s
    state, message = _state(kind, obj)
    while state is None:
        if time.monotonic() > deadline:
            raise NoteLLMError(f"{kind} {namespace}/{name} did not finish in {timeout_s:.0f} s ({message})")
        for event in watch.Watch().stream(custom.list_namespaced_custom_object, group, version, namespace,
                                          plural, field_selector=f"metadata.name={name}",
                                          timeout_seconds=watch_s):
            obj = event["object"]
            state, message = _state(kind, obj)
            if state is not None:
                break
    log = _log_tail(api, namespace, kind, obj)
    if state == "failed":
        raise NoteLLMError(f"{kind} {namespace}/{name} failed: {message}\n--- log (last {LOG_LINES} lines) ---\n"
                           f"{log}")
    return {**obj, "log": log}


def read_namespace(default: str = "default") -> str:
    """The namespace this pod runs in (its service account's), else ``default``."""
    path = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    return path.read_text().strip() if path.is_file() else default


# ---------------------------------------------------------------- the steps' cluster paths


@dataclass(frozen=True)
class Cluster:
    """Where a step's job runs: namespace, the step's own pod (whose image the job reuses), the shared
    volume, and this run's id (the job's name and its folder on the shared volume)."""

    namespace: str
    pod: str
    shared: Shared
    run_id: str


def mine_on_spark(config_yaml: str, data_dir: Path, out_dir: Path, where: Cluster, *, executors: int = 2,
                  api: Any | None = None, timeout_s: float = 24 * 3600) -> dict[str, Any]:
    """The mine step as a SparkApplication: the events go to the shared volume, Spark mines them there,
    and the step splits the mined pairs (the same :func:`~notellm.mining.split_pairs`) into ``out_dir``."""
    from notellm.contracts import PAIRS, write_table
    from notellm.io import write_json
    from notellm.kfp_io import config_from_yaml
    from notellm.mining import pair_stats, split_pairs
    from notellm.mining_spark import read_mined

    cfg = config_from_yaml(config_yaml).mining
    api = api or api_client()
    name = job_name("notellm-mine", where.run_id)
    work = Path(where.shared.mount) / name
    work.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(data_dir) / "events.parquet", work / "events.parquet")
    body = spark_application(name, where.namespace, own_image(api, where.namespace, where.pod), where.shared,
                             events=f"file://{work}/events.parquet", out=f"file://{work}/mined",
                             mining_json=cfg.model_dump_json(), executors=executors)
    done = run_job(api, body, timeout_s=timeout_s)
    pairs = split_pairs(read_mined(work / "mined"), cfg)
    stats = {"source": "mined", "engine": "spark (SparkApplication)", "spark_application": name,
             **pair_stats(pairs)}
    write_table(pairs, Path(out_dir) / "pairs.parquet", PAIRS)
    write_json(stats, Path(out_dir) / "pair_stats.json")
    return {**stats, "driver_log_tail": done["log"][-2000:]}


def finetune_on_trainer(config_yaml: str, notes_dir: Path, pairs_dir: Path, model_dir: Path, where: Cluster, *,
                        nodes: int, gpus_per_node: int, runtime: str = "torch-distributed",
                        api: Any | None = None, timeout_s: float = 7 * 24 * 3600) -> dict[str, Any]:
    """The finetune step as a TrainJob: inputs and config go to the shared volume, ``nodes`` x
    ``gpus_per_node`` ranks train there under torchrun (checkpoints on the shared volume, so a restarted
    TrainJob resumes), and the model directory is copied into ``model_dir``."""
    import json

    from notellm.io import atomic_dir

    api = api or api_client()
    name = job_name("notellm-train", where.run_id)
    work = Path(where.shared.mount) / name
    for src, dst in ((notes_dir, "notes"), (pairs_dir, "pairs")):
        shutil.copytree(src, work / dst, dirs_exist_ok=True)
    (work / "config.yaml").write_text(config_yaml)
    image = own_image(api, where.namespace, where.pod)
    body = train_job(name, where.namespace, cuda_tag(image) if gpus_per_node else image, where.shared,
                     command=train_command(str(work), str(work / "config.yaml")), nodes=nodes,
                     gpus_per_node=gpus_per_node, runtime=runtime)
    run_job(api, body, timeout_s=timeout_s)
    with atomic_dir(Path(model_dir)) as tmp:
        shutil.copytree(work / "model", tmp, dirs_exist_ok=True)
    meta = json.loads((Path(model_dir) / "notellm.json").read_text())
    return {**meta.get("metrics", {}), "model_version": meta["model_version"], "train_job": name,
            "nodes": nodes, "gpus_per_node": gpus_per_node}


def cuda_tag(image: str) -> str:
    """The CUDA build of the project image: its tag with ``-cuda`` appended (``reg/notellm:0.1.0`` ->
    ``reg/notellm:0.1.0-cuda``; one already ending in ``-cuda`` is kept). The one definition: the TrainJob's
    image here and the GPU steps' image in ``pipelines/compile.py``."""
    name, _, tag = image.rpartition(":")
    if "@" in image or not name or "/" in tag:
        raise ConfigError(f"image {image!r}: give REGISTRY/NAME:TAG (the CUDA build is tagged TAG-cuda)")
    return image if tag.endswith("-cuda") else f"{image}-cuda"
