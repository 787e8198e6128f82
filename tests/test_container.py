"""The project image as its users run it: built by `make image`, every pipeline step in it through kfp's
DockerRunner, both KServe models and the Feast feature server in containers of it, the manifests' commands.

The image is built once per session (the engine's layer cache makes an unchanged rebuild take seconds).
Containers run as the image's user on the host network, bound to loopback, with a read-only root file system
as the manifests ask; kserve's own clients (v1 and v2 REST, gRPC) call them from the test process.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
from containers import build_image, container, docker_api, run, wait_ready
from serving_world import (DIM, HELD_OUT, MODEL_VERSION, assert_top_k, embed_dicts, free_port, index_world,
                           note_fields, write_world)
from tiny_pipeline import PARAMS

from components import BASE_IMAGE

pytestmark = [pytest.mark.container, pytest.mark.slow]
IMAGE = BASE_IMAGE  # kfp's DockerRunner runs each step in the components' own image name


@pytest.fixture(scope="session")
def image() -> str:
    seconds = build_image(IMAGE)
    print(f"make image: {seconds:.0f} s")
    return IMAGE


def test_image_runs_as_its_user_with_what_the_steps_need(image: str) -> None:
    script = ("id -u && pwd && touch /workspace/probe && notellm --help >/dev/null && echo help-ok && "
              "python -c 'import milvus_lite, pyspark, torch; print(\"cuda\", torch.version.cuda)' && "
              "java -version 2>&1 | head -1 && pip list")
    out = run(["run", "--rm", image, "sh", "-c", script]).stdout
    uid, workdir, help_ok, cuda, java = out.splitlines()[:5]
    assert (uid, workdir, help_ok) == ("1000", "/workspace", "help-ok")
    assert cuda == "cuda None"  # the CPU image carries no CUDA build of torch
    assert "nvidia" not in out.lower()  # nor any CUDA library
    assert java.startswith("openjdk version")  # Spark's runtime (mining.engine=spark, SparkApplication)
    packages = {line.split()[0].lower() for line in out.splitlines()[6:] if line.strip()}
    assert {"milvus-lite", "kfp", "kserve", "feast", "evidently", "redis", "psycopg", "pyspark"} <= packages


def test_spark_entrypoint_runs_the_miner_and_starts_an_executor_in_the_image(image: str) -> None:
    """What a SparkApplication's pods run: ``/opt/spark-entrypoint.sh driver`` mines pairs with the image's
    Spark home (the pyspark package), and ``executor`` loads Spark's Kubernetes executor backend."""
    check_home = ('test -x /opt/spark-entrypoint.sh && test -x "$SPARK_HOME/bin/spark-submit" && '
                  'ls "$SPARK_HOME"/jars/spark-kubernetes_*.jar >/dev/null && test "$(readlink -f "$SPARK_HOME")" = '
                  '"$(python -c "import os, pyspark; print(os.path.realpath(os.path.dirname(pyspark.__file__)))")"')
    events = ("from pathlib import Path; from notellm.config import SyntheticConfig; "
              "from notellm.datasets.synthetic import write_synthetic; "
              "write_synthetic(Path('/tmp/d'), SyntheticConfig(events=5000, users=50, notes=200, seed=0))")
    script = (f"{check_home} && python -c \"{events}\" && /opt/spark-entrypoint.sh driver --master 'local[1]' "
              "--conf spark.ui.enabled=false /app/notellm/mining_spark.py --events /tmp/d/events.parquet "
              "--out /tmp/mined --config '{}' >/dev/null 2>&1 && "
              "python -c \"import pandas as pd; print('pairs', len(pd.read_parquet('/tmp/mined')))\"")
    out = run(["run", "--rm", "-e", "SPARK_DRIVER_BIND_ADDRESS=127.0.0.1", image, "bash", "-c", script]).stdout
    assert out.split()[0] == "pairs" and int(out.split()[1]) > 0
    executor_env = {"SPARK_EXECUTOR_MEMORY": "512m", "SPARK_DRIVER_URL": "spark://CoarseGrainedScheduler@127.0.0.1:9",
                    "SPARK_EXECUTOR_ID": "1", "SPARK_EXECUTOR_CORES": "1", "SPARK_APPLICATION_ID": "spark-x",
                    "SPARK_EXECUTOR_POD_IP": "127.0.0.1", "SPARK_RESOURCE_PROFILE_ID": "0",
                    "SPARK_EXECUTOR_POD_NAME": "p"}
    done = run(["run", "--rm", "--network=host", *(f"-e={k}={v}" for k, v in executor_env.items()), image,
                "/opt/spark-entrypoint.sh", "executor"], check=False, timeout=180)
    assert done.returncode != 0  # no driver listens there
    assert "KubernetesExecutorBackend" in done.stderr and "127.0.0.1:9" in done.stderr


# --- the pipeline through kfp's DockerRunner ---------------------------------------------------------


@pytest.fixture(scope="module")
def docker_host(tmp_path_factory: pytest.TempPathFactory, image: str):
    with docker_api(tmp_path_factory.mktemp("engine")) as url, pytest.MonkeyPatch.context() as patch:
        patch.setenv("DOCKER_HOST", url)
        yield url


@pytest.fixture(scope="module")
def container_run(tmp_path_factory: pytest.TempPathFactory, docker_host: str) -> Path:
    from pipelines.local import run_local

    return run_local(tmp_path_factory.mktemp("in-containers"), runner="docker", min_gain=-1.0, **PARAMS)


@pytest.fixture(scope="module")
def subprocess_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipelines.local import run_local

    return run_local(tmp_path_factory.mktemp("in-processes"), min_gain=-1.0, **PARAMS)


def _table(run_dir: Path, task: str, name: str) -> pd.DataFrame:
    return pd.read_parquet(next((run_dir / task / name).rglob("*.parquet")))


def test_pipeline_in_containers_gives_the_subprocess_runners_outputs(container_run: Path,
                                                                     subprocess_run: Path) -> None:
    from pipelines.local import task_outputs

    tasks = {p.name for p in subprocess_run.iterdir() if p.is_dir()}
    assert {p.name for p in container_run.iterdir() if p.is_dir()} == tasks
    assert {"finetune", "embed", "deploy", "index"} <= tasks
    for task, name in [("note-features", "notes"), ("mine-pairs", "pairs")]:
        pd.testing.assert_frame_equal(_table(container_run, task, name), _table(subprocess_run, task, name))
    ours, theirs = (_table(r, "embed", "embeddings").set_index("note_id").sort_index() for r in
                    (container_run, subprocess_run))
    np.testing.assert_allclose(np.stack(ours["vector"]), np.stack(theirs["vector"]), atol=1e-5)
    for task in ("evaluate", "gate"):
        assert task_outputs(container_run, task) == pytest.approx(task_outputs(subprocess_run, task)), task
    assert (container_run / "evaluate" / "table").read_text() == (subprocess_run / "evaluate" / "table").read_text()


def test_steps_write_as_the_images_user_under_the_workspace(container_run: Path) -> None:
    from notellm.deploy import read_record

    workspace = container_run.parents[1]
    written = [p for p in container_run.rglob("*") if p.is_file()]
    assert written and {p.stat().st_uid for p in written} == {1000}
    record = read_record(workspace / "serving")
    assert record is not None and Path(record["model_dir"]).is_relative_to(workspace)
    assert (workspace / "milvus.db").exists() and (workspace / "feature_repo" / "feature_store.yaml").exists()


def test_a_failing_step_in_a_container_fails_the_run(tmp_path: Path, docker_host: str) -> None:
    from pipelines.local import run_local

    with pytest.raises(RuntimeError, match="make-config"):
        run_local(tmp_path, runner="docker", **{**PARAMS, "overrides": ["training.max_steps=-3"]})
    outputs = list((tmp_path / "runs").rglob("executor_output.json"))
    assert outputs == []  # nothing after the failed step ran


def test_exit_status_is_read_before_the_container_is_removed(tmp_path: Path, docker_host: str) -> None:
    """kfp's own loop reads an auto-removed container as a success; ours keeps it until its status is read."""
    import docker

    from pipelines.docker_runner import _run_container

    client = docker.from_env()
    try:
        runner = _run_container(tmp_path, None)
        assert runner(client, IMAGE, ["sh", "-c", "echo to-the-log; exit 3"], {}) == 3
        assert runner(client, IMAGE, ["true"], {}) == 0
        assert not client.containers.list(all=True, filters={"ancestor": IMAGE, "status": "exited"})
    finally:
        client.close()


def test_docker_runner_refuses_paths_outside_the_workspace(tmp_path: Path) -> None:
    from notellm.errors import NoteLLMError
    from pipelines.docker_runner import require_under

    require_under(tmp_path, {"feature_repo": str(tmp_path / "repo"), "milvus_uri": "http://milvus:19530"})
    with pytest.raises(NoteLLMError, match="feature_repo=/elsewhere/repo lies outside the workspace"):
        require_under(tmp_path, {"feature_repo": "/elsewhere/repo"})
    with pytest.raises(NoteLLMError, match="data.notes_path=/data/notes.parquet"):
        require_under(tmp_path, {"overrides": ["data.notes_path=/data/notes.parquet"]})


# --- the KServe models and the Feast feature server, each in its own container -------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, image: str):
    """Predictor, transformer and Feast feature server from the image, as the InferenceService starts them;
    Milvus Lite on the host. Yields their addresses and the world's notes, model and indexed vectors."""
    from notellm.vectorstore import start_lite_server, stop_lite_server
    from pipelines.docker_runner import prepare_workspace

    root = tmp_path_factory.mktemp("served")
    milvus_uri, milvus = start_lite_server(root / "milvus")
    try:
        config, model = write_world(root, milvus_uri)
        notes, indexed, matrix = index_world(root, model, config)
        prepare_workspace(root)  # the servers run as the image's user: the Feast repository is theirs
        http, grpc, transformer, feast = (free_port() for _ in range(4))
        env = {"HOME": "/tmp", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        predictor_cmd = ["python", "-m", "serving.embedder", "--model_name", "notellm-embedder", "--model_dir",
                         "/mnt/models", "--host", "127.0.0.1", "--http_port", str(http), "--grpc_port", str(grpc),
                         "--enable_grpc", "true"]
        transformer_cmd = ["python", "-m", "serving.recommender", "--model_name", "notellm", "--predictor_host",
                           f"127.0.0.1:{http}", "--milvus_uri", milvus_uri, "--host", "127.0.0.1",
                           "--http_port", str(transformer), "--enable_grpc", "false"]
        feast_cmd = ["feast", "-c", str(root / "repo"), "serve", "-h", "127.0.0.1", "-p", str(feast)]
        with container("notellm-test-predictor", image, predictor_cmd, mounts={root / "model": "/mnt/models:ro"},
                       env=env) as predictor, \
             container("notellm-test-feast", image, feast_cmd, mounts={root: str(root)}, env=env) as feast_server, \
             container("notellm-test-transformer", image, transformer_cmd,
                       env={**env, "NOTELLM_FEAST_URL": f"http://127.0.0.1:{feast}"}) as recommender:
            wait_ready(predictor, f"http://127.0.0.1:{http}/v2/health/ready")
            wait_ready(feast_server, f"http://127.0.0.1:{feast}/health")
            wait_ready(recommender, f"http://127.0.0.1:{transformer}/v2/health/ready")
            yield SimpleNamespace(predictor=f"127.0.0.1:{http}", grpc=f"127.0.0.1:{grpc}",
                                  transformer=f"127.0.0.1:{transformer}", notes=notes, model=model,
                                  vectors=dict(zip(indexed["note_id"], matrix)))
    finally:
        stop_lite_server(milvus)


def test_predictor_container_answers_kserve_clients_v1_v2_and_grpc(served: SimpleNamespace) -> None:
    from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig

    texts = [json.dumps({"title": "Pasta at home", "content": "fresh pasta two ways"}), "a walk in the alps"]
    expected = embed_dicts(served.model, [json.loads(texts[0]), {"content": texts[1]}])

    async def calls() -> tuple[Any, Any, Any]:
        url = f"http://{served.predictor}"
        v1 = await InferenceRESTClient(RESTConfig(protocol="v1", retries=0)).infer(
            url, {"instances": texts}, model_name="notellm-embedder")
        v2 = await InferenceRESTClient(RESTConfig(protocol="v2", retries=0)).infer(
            url, InferRequest("notellm-embedder", [InferInput("notes", [2], "BYTES", data=texts)]),
            model_name="notellm-embedder")
        async with InferenceGRPCClient(served.grpc, timeout=60, retries=0) as grpc:
            grpc_input = InferInput("notes", [2], "BYTES")
            grpc_input.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object))
            over_grpc = await grpc.infer(InferRequest("notellm-embedder", [grpc_input], request_id="c-1"))
        return v1, v2, over_grpc

    v1, v2, over_grpc = asyncio.run(calls())
    assert v1["model_version"] == MODEL_VERSION
    np.testing.assert_allclose(np.asarray(v1["predictions"], dtype=np.float32), expected, atol=1e-5)
    for response in (v2, over_grpc):
        output = response.get_output_by_name("embedding")
        assert list(output.shape) == [2, DIM]
        np.testing.assert_allclose(output.as_numpy(), expected, atol=1e-5)
    assert over_grpc.id == "c-1"


def test_transformer_container_recommends_with_milvus_feast_and_the_predictor(served: SimpleNamespace) -> None:
    from kserve import InferenceRESTClient, RESTConfig

    notes = served.notes.set_index("note_id")
    held_out = notes.index[-1]
    new_note = {"title": "A new note", "content": "mixed words from several topics", "hashtags": ["x"]}

    async def call() -> dict[str, Any]:
        client = InferenceRESTClient(RESTConfig(protocol="v1", retries=0, timeout=120))
        return await client.infer(f"http://{served.transformer}",
                                  {"instances": [{"note_id": "n0"}, {"note_id": held_out}, new_note], "top_k": 4},
                                  model_name="notellm")

    known, feast_only, new = asyncio.run(call())["predictions"]
    assert (known["source"], feast_only["source"]) == ("index", "features")
    assert_top_k(served, served.vectors["n0"], known["related"], 4, exclude="n0")
    held_out_note = note_fields(served.notes, held_out)
    assert_top_k(served, embed_dicts(served.model, [held_out_note])[0], feast_only["related"], 4, exclude=held_out)
    assert_top_k(served, embed_dicts(served.model, [new_note])[0], new["related"], 4, exclude=None)
    for hit in known["related"]:  # scalar features come from the Feast feature server's container
        assert hit["features"]["title"] == notes.loc[hit["note_id"], "title"]
    assert len(served.notes) - HELD_OUT == len(served.vectors)


# --- every container the manifests start ---------------------------------------------------------------


FEAST_CHECK = """
import sqlalchemy, sys
from pathlib import Path
from feast.infra.online_stores.helpers import get_online_store_from_config
from feast.repo_config import load_repo_config
cfg = load_repo_config(Path("/app/feature_repo"), Path(sys.argv[1]))
store = get_online_store_from_config(cfg.online_store)
registry = getattr(cfg.registry, "registry_type", "file")
if registry == "sql":
    sqlalchemy.engine.make_url(cfg.registry.path).get_dialect().import_dbapi()
print(type(store).__name__, registry)
"""
# What the Secrets named in manifests/README.md hold, in the form given there (values are dummies).
SECRET_VALUES = {"notellm-feast": {"FEAST_REGISTRY_URL": "postgresql+psycopg://feast@postgres:5432/feast",
                                   "FEAST_REDIS_CONNECTION": "redis:6379"}}


@pytest.mark.parametrize("target", ["overlays/dev", "overlays/production"])
def test_every_manifest_container_starts_its_command_and_loads_its_config(image: str, target: str,
                                                                          tmp_path: Path) -> None:
    """Each container the overlay starts from the project image: its command runs in the image (``--help``
    after its own arguments), and each Feast config it mounts loads its stores there (Redis and the SQL
    registry's driver in production). The CUDA predictor's command runs in the CPU build: the same code."""
    from manifest_containers import containers

    specs = containers(target)
    assert {spec["workload"] for spec in specs} >= {"InferenceService/notellm/predictor",
                                                    "InferenceService/notellm/transformer", "Deployment/notellm-feast"}
    stores = {}
    for number, spec in enumerate(specs):
        env = {**spec["env"], **{name: "dummy" for name in spec["secret_env"]}}
        for secret in spec["env_from_secrets"]:
            env.update(SECRET_VALUES[secret])
        args = ["run", "--rm", *(f"-e={key}={value}" for key, value in env.items())]
        for index, (path, text) in enumerate(spec["files"].items()):
            local = tmp_path / f"{number}-{index}"
            local.write_text(text)
            local.chmod(0o644)
            args.append(f"-v={local}:{path}:ro")
        if spec["working_dir"]:
            args.append(f"--workdir={spec['working_dir']}")
        out = run([*args, image, *spec["argv"], "--help"]).stdout
        assert "usage" in out.lower(), (spec["workload"], out[-2000:])
        for path in spec["files"]:
            if path.endswith("feature_store.yaml"):
                stores[spec["workload"]] = run([*args, image, "python", "-c", FEAST_CHECK, path]).stdout.split()
    expected = ["RedisOnlineStore", "sql"] if target == "overlays/production" else ["SqliteOnlineStore", "file"]
    assert stores == {"Deployment/notellm-feast": expected}
