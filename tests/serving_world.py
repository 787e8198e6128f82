"""Real KServe servers on loopback for the serving tests: a tiny-random model, Milvus Lite, Feast.

:func:`running_world` publishes synthetic notes to a Feast repository, embeds and indexes all but the last
``HELD_OUT`` of them in a shared Milvus Lite server, and starts server processes on free loopback ports:

- ``local``: both models as ``serving.local.serve`` builds them (the recommender calls the embedder
  in-process); with ``cluster``, also recommenders that call that embedder over v2 REST and gRPC, one whose
  predictor is down and one whose predictor hangs.
- with ``cluster``, ``remote``: ``python -m serving.recommender`` as a cluster runs it (``local``'s embedder
  over v1, features from ``feast``), and ``feast``: a Feast feature server (``feast serve``).

Test modules wrap it in a module-scoped ``world`` fixture.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

HELD_OUT = 5  # the last notes: published to Feast, not indexed
MODEL_VERSION = "tiny-random-notellm-untrained"
DIM = 16
MAX_REQUEST_NOTES = 8
LOCAL_SERVER = """
import json, sys
from notellm.config import load_config
from serving.local import build_models, run_server
from serving.recommender import NoteRecommender

args = json.loads(sys.argv[1])
cfg = load_config(args["config"])
models = build_models(cfg, args["model_dir"], args["feature_repo"])
for name, host, protocol, timeout_s in args["remotes"]:
    remote = NoteRecommender(name, cfg, feature_repo=args["feature_repo"], predictor_host=host,
                             predictor_protocol=protocol, predictor_timeout_s=timeout_s)
    remote.load()
    models.append(remote)
run_server(models, host="127.0.0.1", http_port=args["http_port"], grpc_port=args["grpc_port"])
"""

EMBED = "/v1/models/notellm-embedder:predict"
RECOMMEND = "/v1/models/notellm:predict"
INFER = "/v2/models/notellm-embedder/infer"
BYTES_INPUT = {"name": "notes", "shape": [1], "datatype": "BYTES", "data": ["a note"]}

#: (path, body, status, message): bad requests to the local server and what it answers
BAD_REQUESTS: list[tuple[str, Any, int, str]] = [
    (RECOMMEND, b'{"instances": [{"note_id": "n1"}', 400, "Unrecognized request format"),
    (RECOMMEND, b"\xff\xfe", 400, "Unrecognized request format"),
    (EMBED, {"notes": ["a"]}, 400, "unknown field(s) ['notes']"),
    (EMBED, {"parameters": {}}, 400, "instances: missing"),
    (EMBED, {"instances": "a note"}, 400, 'Expected "instances" to be a list'),
    (EMBED, {"instances": [{"title": ["x"]}]}, 400, "instances[0].title: expected a string, got list"),
    (EMBED, {"instances": [{"title": "a", "body": "b"}]}, 400, "instances[0]: unknown field(s) ['body']"),
    (EMBED, {"instances": [""]}, 400, "instances[0]: the note is empty"),
    (EMBED, {"instances": ["x" * 20_001]}, 400, "more than the limit of 20000"),
    (EMBED, {"instances": ["a"] * 9}, 400, "9 notes in one request, more than the limit of 8"),
    (EMBED, {"instances": ["a"], "parameters": {"generate": ["summary"]}}, 400, "unknown task(s) ['summary']"),
    (RECOMMEND, {"instances": [{"note_id": "no-such-note"}]}, 404, "unknown note_id 'no-such-note'"),
    (RECOMMEND, {"instances": [{"note_id": "n1"}], "top_k": 101}, 400, "top_k: must be between 1 and 100"),
    (RECOMMEND, {"instances": ["a"], "upsert": True}, 400, "upsert needs a note_id"),
    ("/v1/models/nope:predict", {"instances": ["a"]}, 404, "Model with name nope does not exist"),
    ("/v2/models/nope/infer", {"inputs": [BYTES_INPUT]}, 404, "Model with name nope does not exist"),
    (INFER, b'{"inputs": [', 422, "the body is not valid JSON"),
    (INFER, {"id": "x"}, 422, "inputs: Field required"),
    (INFER, {"inputs": [{**BYTES_INPUT, "name": "images"}]}, 400, "one input named 'notes' or 'text'"),
    (INFER, {"inputs": [{**BYTES_INPUT, "datatype": "FP32", "data": [1.0]}]}, 400, "expected datatype BYTES"),
    (INFER, {"inputs": [{**BYTES_INPUT, "shape": [3]}]}, 400, "data does not match shape [3]"),
    (INFER, {"inputs": [{**BYTES_INPUT, "data": ["{\"title\": 1}"]}]}, 400, "inputs[notes][0].title"),
    ("/v2/models/notellm/infer", {"inputs": [BYTES_INPUT]}, 400, "the recommender speaks the v1 protocol"),
    # a lone surrogate (a JSON escape in a note's JSON string) and JSON nested too deeply: were 500s
    (EMBED, {"instances": ['{"title": "\\ud800"}']}, 400, "instances[0].title: not valid Unicode"),
    (RECOMMEND, {"instances": ['{"content": "x", "note_id": "\\udfff"}']}, 400, "note_id: not valid Unicode"),
    (EMBED, {"instances": ['{"title": ' + "[" * 5_000]}, 400, "instances[0]: looks like JSON but is nested too"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class World:
    root: Path
    notes: pd.DataFrame = field(repr=False)  # every note, indexed ones first
    vectors: dict[str, np.ndarray] = field(repr=False)  # the indexed notes' vectors, as the test process embeds them
    model: Any = field(repr=False)
    milvus_uri: str
    milvus: subprocess.Popen  # replaced when a test restarts Milvus
    http: str  # the local server
    grpc: str
    remote: str  # the cluster-style recommender ("" without cluster)
    dead_predictor: str  # host:port where "notellm-nopredictor" looks for its predictor (nothing listens)
    processes: list[tuple[subprocess.Popen, Path]]  # local first

    def embed(self, notes: list[dict[str, Any]]) -> np.ndarray:
        return embed_dicts(self.model, notes)

    def note(self, note_id: str) -> dict[str, Any]:
        return note_fields(self.notes, note_id)


def embed_dicts(model: Any, notes: list[dict[str, Any]]) -> np.ndarray:
    """Vectors of notes given as request dicts, as the test process embeds them."""
    from notellm.model import embed_notes
    from notellm.model.prompt import Note

    return embed_notes(model, [Note(n.get("note_id", ""), n.get("title", ""), n.get("content", ""),
                                    tuple(n.get("hashtags", ())), n.get("category", "")) for n in notes])


def note_fields(notes: pd.DataFrame, note_id: str) -> dict[str, Any]:
    """A stored note as a request dict (title, content, hashtags, category)."""
    row = notes.set_index("note_id").loc[note_id]
    return {"title": row["title"], "content": row["content"], "hashtags": list(row["hashtags"]),
            "category": row["category"]}


def start_process(command: list[str], log: Path, **env_vars: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           **env_vars}
    with log.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, cwd=Path(__file__).resolve().parents[1])


def wait_ready(url: str, process: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    from serving.local import wait_ready as wait

    try:
        wait(url, process, log.read_text, timeout_s)
    except RuntimeError as exc:
        pytest.fail(str(exc))


def write_world(root: Path, milvus_uri: str) -> tuple[dict[str, Any], Any]:
    """Synthetic notes published to a Feast repository (``root/repo``, tables in ``root/data``), a server config
    (``root/config.yaml``) and an untrained tiny-random model (``root/model``): the config and the model."""
    import yaml

    from notellm.config import SyntheticConfig
    from notellm.datasets.synthetic import write_synthetic
    from notellm.model.bundle import build_model
    from notellm.model.modeldir import save_model
    from notellm.model_config import ModelConfig, PromptConfig
    from notellm.steps import publish_features

    write_synthetic(root / "raw", SyntheticConfig(users=30, notes=40, events=400, topics=3))
    publish_features(root / "raw", root / "repo", root / "data")
    config = {"index": {"uri": milvus_uri, "timeout_s": 5}, "serving": {"max_request_notes": MAX_REQUEST_NOTES}}
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    model = build_model(ModelConfig(backbone="tiny-random", dim=DIM), PromptConfig())
    save_model(model, root / "model")
    return config, model


def index_world(root: Path, model: Any, config: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """All notes, the indexed ones (all but the last ``HELD_OUT``) and their vectors, indexed behind the alias."""
    from notellm.contracts import NOTES, read_table
    from notellm.index_config import IndexConfig
    from notellm.model import embed_notes
    from notellm.vectorstore import NoteIndex

    notes = read_table(root / "data" / "notes.parquet", NOTES)
    indexed = notes.iloc[:-HELD_OUT]
    matrix = embed_notes(model, indexed)
    with NoteIndex(IndexConfig(**config["index"])) as index:
        index.swap_alias(index.build_collection(MODEL_VERSION, indexed["note_id"].tolist(), matrix,
                                                indexed["category"].tolist(), progress=False))
    return notes, indexed, matrix


@contextlib.contextmanager
def running_world(root: Path, *, cluster: bool = True) -> Iterator[World]:
    """The world in ``root``; without ``cluster`` only the local server (embedder and recommender)."""
    import torch

    from notellm.vectorstore import start_lite_server, stop_lite_server

    torch.set_num_threads(1)
    http_port, grpc_port, remote_port, dead_port, feast_port = (free_port() for _ in range(5))
    silent = socket.create_server(("127.0.0.1", 0))  # a predictor that accepts connections and never answers
    milvus_uri, milvus = start_lite_server(root / "milvus")
    processes: list[tuple[subprocess.Popen, Path]] = []
    w = None
    try:
        config, model = write_world(root, milvus_uri)

        # the servers take a while to import; the index is built meanwhile (they need it at the first request)
        remotes = [["notellm-v2", f"127.0.0.1:{http_port}", "v2", 10],
                   ["notellm-grpc", f"127.0.0.1:{grpc_port}", "grpc-v2", 10],
                   ["notellm-nopredictor", f"127.0.0.1:{dead_port}", "v1", 10],
                   ["notellm-hung", f"127.0.0.1:{silent.getsockname()[1]}", "v2", 1.5]]
        local_args = {"config": str(root / "config.yaml"), "model_dir": str(root / "model"),
                      "feature_repo": str(root / "repo"), "http_port": http_port, "grpc_port": grpc_port,
                      "remotes": remotes if cluster else []}
        remote = ["-m", "serving.recommender", "--model_name", "notellm-remote", "--config_file",
                  str(root / "config.yaml"), "--predictor_host", f"127.0.0.1:{http_port}",
                  "--predictor_protocol", "v1", "--host", "127.0.0.1", "--http_port", str(remote_port),
                  "--enable_grpc", "false"]
        feast = ["-c", "from feast.cli.cli import cli; cli()", "-c", str(root / "repo"), "serve",
                 "-h", "127.0.0.1", "-p", str(feast_port), "--no-access-log"]
        servers = [("local", ["-c", LOCAL_SERVER, json.dumps(local_args)], {}, "/v2/health/ready", http_port)]
        if cluster:
            servers += [("remote", remote, {"NOTELLM_FEAST_URL": f"http://127.0.0.1:{feast_port}"},
                         "/v2/health/ready", remote_port), ("feast", feast, {}, "/health", feast_port)]
        for name, args, env, _, _ in servers:
            log = root / f"{name}.log"
            processes.append((start_process([sys.executable, *args], log, **env), log))

        notes, indexed, matrix = index_world(root, model, config)
        w = World(root, notes, dict(zip(indexed["note_id"], matrix)), model, milvus_uri, milvus,
                  f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}",
                  f"http://127.0.0.1:{remote_port}" if cluster else "", f"127.0.0.1:{dead_port}", processes)
        for (process, log), (_, _, _, path, port) in zip(processes, servers):
            wait_ready(f"http://127.0.0.1:{port}{path}", process, log)
        yield w
    finally:
        for process, _ in processes:
            process.terminate()
        for process, _ in processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
        stop_lite_server(w.milvus if w is not None else milvus)
        silent.close()


def v1(url: str, model: str, body: Any) -> httpx.Response:
    return httpx.post(f"{url}/v1/models/{model}:predict", json=body, timeout=60)


def related(world: World, instances: list[Any], top_k: int = 5, model: str = "notellm",
            url: str | None = None, **options: Any) -> list[dict[str, Any]]:
    response = v1(url or world.http, model, {"instances": instances, "top_k": top_k, **options})
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def assert_top_k(world: World, query: np.ndarray, hits: list[dict[str, Any]], k: int, exclude: str | None) -> None:
    """Hits are the k best indexed notes by cosine (ties aside), best first, with their true scores."""
    ids = [n for n in world.vectors if n != exclude]
    scores = np.stack([world.vectors[n] for n in ids]) @ query
    kth = np.sort(scores)[::-1][k - 1]
    truth = dict(zip(ids, scores))
    assert len(hits) == k
    assert all(h["note_id"] in truth for h in hits)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    for hit in hits:
        assert hit["score"] == pytest.approx(truth[hit["note_id"]], abs=1e-4)
        assert hit["score"] >= kth - 1e-4


def assert_client_error(response: httpx.Response, status: int | None = None, message: str = "") -> str:
    """A 4xx (``status`` if given) whose ``{"error": ...}`` names the problem, without Python internals."""
    assert 400 <= response.status_code < 500 and status in (None, response.status_code), (
        response.status_code, response.text)
    error = response.json().get("error")
    assert isinstance(error, str) and error.strip() and message in error, error
    assert "Traceback" not in error and "Error :" not in error and "Exception" not in error, error
    return error
