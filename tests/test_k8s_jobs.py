"""The cluster paths: rendered SparkApplications and TrainJobs validate against the committed CRD schemas,
and the steps' Kubernetes calls, made by the real ``kubernetes`` client, against a stand-in API server on
127.0.0.1 that records what was created and plays the operator (create, watch to completion, failure
surfaced with the log)."""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import jsonschema
import pandas as pd
import pytest

from notellm.errors import NoteLLMError
from notellm.k8s_jobs import (Cluster, Shared, cuda_tag, finetune_on_trainer, job_name, mine_on_spark, run_job,
                              spark_application, train_command, train_job)

SCHEMAS = Path(__file__).resolve().parents[1] / "manifests" / "schemas"
IMAGE = "registry.example/notellm:1.2.0"


def schema(name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / name).read_text())


def _spark(shared: Shared | None = None) -> dict[str, Any]:
    return spark_application("notellm-mine-abc", "notellm", IMAGE, shared or Shared("notellm-shared"),
                             events="file:///mnt/e.parquet", out="file:///mnt/mined", mining_json="{}")


def _train(gpus: int = 4) -> dict[str, Any]:
    return train_job("notellm-train-abc", "notellm", cuda_tag(IMAGE), Shared("notellm-shared"),
                     command=train_command("/mnt/notellm-shared/w", "/mnt/notellm-shared/w/config.yaml"),
                     nodes=2, gpus_per_node=gpus)


def test_rendered_jobs_validate_against_the_crd_schemas() -> None:
    spark_schema, train_schema = schema("sparkapplication.schema.json"), schema("trainjob.schema.json")
    for s in (spark_schema, train_schema):
        jsonschema.Draft202012Validator.check_schema(s)
    jsonschema.validate(_spark(), spark_schema)
    for gpus in (0, 4):
        jsonschema.validate(_train(gpus), train_schema)
    job = _train()
    assert job["spec"]["trainer"]["numNodes"] == 2 and job["spec"]["trainer"]["numProcPerNode"] == 4
    assert job["spec"]["trainer"]["image"] == "registry.example/notellm:1.2.0-cuda"
    assert job["spec"]["trainer"]["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == 4
    command = job["spec"]["trainer"]["command"]
    assert command[:4] == ["torchrun", "--no-python", "notellm", "train"]
    assert "training.resume=true" in command and "training.checkpoint_dir=/mnt/notellm-shared/w/checkpoints" in command
    # the schemas catch mistakes
    for bad, s in ((_spark(), spark_schema), (_train(), train_schema)):
        bad["spec"]["executor" if bad["kind"] == "SparkApplication" else "trainer"]["instancess"] = 2
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, s)
    bad = _spark()
    bad["spec"]["mode"] = "cluster-mode"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, spark_schema)
    bad = _train()
    bad["spec"]["trainer"]["numNodes"] = 0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, train_schema)
    assert job_name("notellm-train", "3F2a-99b0-...") == "notellm-train-3f2a99b0"
    with pytest.raises(NoteLLMError):
        cuda_tag("notellm")


# ---------------------------------------------------------------- a stand-in API server


class StandIn:
    """Records created custom objects; ``operator(kind, body)`` returns the states the object goes through
    (the last one is what GET and each watch report afterwards)."""

    def __init__(self, operator: Callable[[str, dict[str, Any]], list[dict[str, Any]]]) -> None:
        self.operator, self.created, self.objects, self.requests = operator, [], {}, []

    def handle(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        self.requests.append((method, path))
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "v1"] and parts[4] == "pods":
            if len(parts) == 5:
                return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [
                    {"metadata": {"name": "notellm-train-abc-node-0-0"}}]}
            if len(parts) == 7 and parts[6] == "log":
                return 200, f"log of {parts[5]}\nTraceback: boom"
            return 200, {"kind": "Pod", "apiVersion": "v1", "metadata": {"name": parts[5]},
                         "spec": {"containers": [{"name": "main", "image": IMAGE}]}}
        namespace, plural = parts[4], parts[5]
        if method == "POST":
            name = body["metadata"]["name"]
            if name in self.objects:
                return 409, {"kind": "Status", "reason": "AlreadyExists", "code": 409}
            self.created.append(copy.deepcopy(body))
            states = self.operator(body["kind"], body)
            self.objects[name] = [{**body, "status": s} for s in states]
            return 201, {**body, "status": {}}
        if len(parts) == 7:
            return 200, self.objects[parts[6]][-1]
        name = query["fieldSelector"][0].split("=", 1)[1]
        return 200, [{"type": "MODIFIED", "object": obj} for obj in self.objects[name]]


@pytest.fixture
def stand_in() -> Iterator[Callable[..., tuple[StandIn, Any]]]:
    servers: list[ThreadingHTTPServer] = []

    def start(operator: Callable[[str, dict[str, Any]], list[dict[str, Any]]]) -> tuple[StandIn, Any]:
        from kubernetes import client

        state = StandIn(operator)

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                code, payload = state.handle(self.command, url.path, parse_qs(url.query), body)
                if isinstance(payload, list):  # a watch: one JSON event per line
                    data = "".join(json.dumps(e) + "\n" for e in payload).encode()
                elif isinstance(payload, str):
                    data = payload.encode()
                else:
                    data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _serve

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        configuration = client.Configuration(host=f"http://127.0.0.1:{server.server_address[1]}")
        return state, client.ApiClient(configuration)

    yield start
    for server in servers:
        server.shutdown()


def test_spark_version_is_the_pyspark_the_image_installs() -> None:
    """The SparkApplication's sparkVersion names the Spark that runs it: pyspark's minor release, which
    pyproject's spark extra pins."""
    from importlib.metadata import version

    from notellm.k8s_jobs import SPARK_VERSION

    assert SPARK_VERSION.split(".")[:2] == version("pyspark").split(".")[:2]
    assert _spark()["spec"]["sparkVersion"] == SPARK_VERSION


def test_run_job_creates_watches_and_surfaces_a_failure(stand_in) -> None:
    def operator(kind: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        if body["metadata"]["name"].endswith("bad"):
            return [{"applicationState": {"state": "RUNNING"}, "driverInfo": {"podName": "drv"}},
                    {"applicationState": {"state": "FAILED", "errorMessage": "driver container failed with "
                                          "ExitCode: 1"}, "driverInfo": {"podName": "drv"}}]
        return [{"applicationState": {"state": "SUBMITTED"}},
                {"applicationState": {"state": "COMPLETED"}, "driverInfo": {"podName": "drv"}}]

    server, api = stand_in(operator)
    done = run_job(api, _spark(), watch_s=5)
    assert done["status"]["applicationState"]["state"] == "COMPLETED" and "log of drv" in done["log"]
    assert server.created == [_spark()]
    again = run_job(api, _spark(), watch_s=5)  # a retried step finds its application: no second create
    assert len(server.created) == 1 and again["status"]["applicationState"]["state"] == "COMPLETED"
    bad = _spark()
    bad["metadata"]["name"] = "notellm-mine-bad"
    with pytest.raises(NoteLLMError, match="FAILED: driver container failed") as err:
        run_job(api, bad, watch_s=5)
    assert "Traceback: boom" in str(err.value)


def test_trainjob_failure_names_the_condition_and_the_node_log(stand_in) -> None:
    server, api = stand_in(lambda kind, body: [
        {"conditions": [{"type": "Created", "status": "True"}]},
        {"conditions": [{"type": "Failed", "status": "True", "message": "jobset failed"}]}])
    with pytest.raises(NoteLLMError, match="Failed: jobset failed") as err:
        run_job(api, _train(), watch_s=5)
    assert "log of notellm-train-abc-node-0-0" in str(err.value)
    assert ("GET", "/api/v1/namespaces/notellm/pods") in server.requests


def test_finetune_step_on_a_trainjob_copies_in_and_out(stand_in, tmp_path: Path) -> None:
    shared = Shared("notellm-shared", mount=str(tmp_path / "shared"))

    def operator(kind: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        command = body["spec"]["trainer"]["command"]
        out = Path(command[command.index("--out") + 1])
        assert (out.parent / "notes" / "notes.parquet").is_file() and (out.parent / "config.yaml").is_file()
        out.mkdir(parents=True)
        (out / "notellm.json").write_text(json.dumps({"model_version": "v9", "metrics": {"steps": 5}}))
        return [{"conditions": [{"type": "Complete", "status": "True"}]}]

    server, api = stand_in(operator)
    for name in ("notes", "pairs"):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{name}.parquet").write_bytes(b"x")
    where = Cluster(namespace="notellm", pod="finetune-pod", shared=shared, run_id="run-1234")
    metrics = finetune_on_trainer("model: {}\n", tmp_path / "notes", tmp_path / "pairs", tmp_path / "model", where,
                                  nodes=2, gpus_per_node=8, api=api)
    assert metrics == {"steps": 5, "model_version": "v9", "train_job": "notellm-train-run1234", "nodes": 2,
                       "gpus_per_node": 8}
    assert json.loads((tmp_path / "model" / "notellm.json").read_text())["model_version"] == "v9"
    (job,) = server.created
    jsonschema.validate(job, schema("trainjob.schema.json"))
    assert job["spec"]["trainer"]["image"] == IMAGE + "-cuda" and job["spec"]["runtimeRef"]["name"] == "torch-distributed"
    assert ("GET", "/api/v1/namespaces/notellm/pods/finetune-pod") in server.requests


@pytest.mark.slow
def test_mine_step_on_a_spark_application_runs_the_driver(stand_in, tmp_path: Path) -> None:
    """The stand-in operator runs the application's driver program in local mode, as spark-submit would."""
    pytest.importorskip("pyspark")
    from notellm.contracts import write_table
    from notellm.kfp_io import config_yaml
    from notellm.mining import run_mining
    from notellm.mining_spark import main
    from test_mining import _notes, clicks, log

    def operator(kind: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        main([a.removeprefix("file://") for a in body["spec"]["arguments"]])
        return [{"applicationState": {"state": "COMPLETED"}, "driverInfo": {"podName": "drv"}}]

    server, api = stand_in(operator)
    data = tmp_path / "data"
    rows = [*clicks("u", "A", "B", "C", "A", "D"), *clicks("v", "B", "A", "D", "C"), *clicks("w", "C", "D", "B")]
    write_table(log(*rows), data / "events.parquet", "events")
    write_table(_notes(["A", "B", "C", "D"]), data / "notes.parquet", "notes")
    text = config_yaml(["mining.l_min=0.0", "mining.test_note_fraction=0.25", "mining.engine=spark"])
    where = Cluster(namespace="notellm", pod="mine-pod", shared=Shared("c", mount=str(tmp_path / "shared")),
                    run_id="r1")
    stats = mine_on_spark(text, data, tmp_path / "out", where, api=api)
    from notellm.kfp_io import config_from_yaml

    expected = run_mining(data, tmp_path / "local", config_from_yaml(text).mining)
    assert stats["pairs"] == expected["pairs"] and stats["pairs_per_split"] == expected["pairs_per_split"]
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "out" / "pairs.parquet"),
                                  pd.read_parquet(tmp_path / "local" / "pairs.parquet"))
    jsonschema.validate(server.created[0], schema("sparkapplication.schema.json"))


def test_compiled_pipeline_records_the_cluster_parameters(tmp_path: Path) -> None:
    import yaml

    from pipelines.compile import compile_pipeline

    docs = list(yaml.safe_load_all(compile_pipeline(tmp_path / "p.yaml", cluster_jobs=True).read_text()))
    params = docs[0]["root"]["inputDefinitions"]["parameters"]
    assert params["mining_engine"]["defaultValue"] == "duckdb" and params["train_nodes"]["defaultValue"] == 0
    assert params["train_runtime"]["defaultValue"] == "torch-distributed"
    assert {"spark_on_cluster", "spark_executors", "train_gpus_per_node", "shared_pvc"} <= params.keys()
    mounts = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(mounts) == {"exec-mine-pairs", "exec-finetune"}
    assert all(e["pvcMount"][0]["mountPath"] == "/mnt/notellm-shared" for e in mounts.values())
