"""The KServe servers for real: a tiny-random model, Milvus Lite, Feast, kserve's own clients, plain HTTP.

One module-scoped world: synthetic notes published to a Feast repository, all but a few of them embedded and
indexed in a shared Milvus Lite server, and server processes on free loopback ports:

- ``local``: both models as ``serving.local.serve`` builds them (the recommender calls the embedder
  in-process), plus recommenders that call that embedder over v2 REST and gRPC, and one whose predictor is
  down; REST and gRPC.
- ``remote``: ``python -m serving.recommender`` as a cluster runs it: ``local``'s embedder over v1, features
  from a Feast feature server (``feast serve``, named by ``NOTELLM_FEAST_URL`` as in the manifests).
- ``feast``: that feature server.

The last tests stop Milvus (503s, the embedder keeps serving) and start it again (the recommender recovers),
then stop the feature server (503s from the recommender that reads it).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import psutil
import pytest

pytestmark = pytest.mark.slow

HELD_OUT = 5  # the last notes: published to Feast, not indexed
MODEL_VERSION = "tiny-random-notellm-untrained"
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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class World:
    root: Path
    notes: pd.DataFrame  # every note, indexed ones first
    vectors: dict[str, np.ndarray]  # the indexed notes' vectors, as the test process embeds them
    model: Any
    milvus_uri: str
    milvus: subprocess.Popen  # replaced when the last test restarts Milvus
    http: str  # the local server
    grpc: str
    remote: str  # the cluster-style recommender
    processes: list[tuple[subprocess.Popen, Path]]

    def embed(self, notes: list[dict[str, Any]]) -> np.ndarray:
        from notellm.model import embed_notes
        from notellm.model.prompt import Note

        return embed_notes(self.model, [Note(n.get("note_id", ""), n.get("title", ""), n.get("content", ""),
                                             tuple(n.get("hashtags", ())), n.get("category", "")) for n in notes])

    def note(self, note_id: str) -> dict[str, Any]:
        row = self.notes.set_index("note_id").loc[note_id]
        return {"title": row["title"], "content": row["content"], "hashtags": list(row["hashtags"]),
                "category": row["category"]}


def _start(command: list[str], log: Path, **env_vars: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           **env_vars}
    with log.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, cwd=Path(__file__).resolve().parents[1])


def _wait_ready(url: str, process: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    pytest.fail(f"server at {url} not ready after {timeout_s} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    import torch
    import yaml

    from notellm.config import SyntheticConfig
    from notellm.contracts import NOTES, read_table
    from notellm.datasets.synthetic import write_synthetic
    from notellm.index_config import IndexConfig
    from notellm.model import embed_notes
    from notellm.model.bundle import build_model
    from notellm.model.modeldir import save_model
    from notellm.model_config import ModelConfig, PromptConfig
    from notellm.steps import publish_features
    from notellm.vectorstore import NoteIndex, start_lite_server, stop_lite_server

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("serving")
    http_port, grpc_port, remote_port, dead_port, feast_port = (_free_port() for _ in range(5))
    silent = socket.create_server(("127.0.0.1", 0))  # a predictor that accepts connections and never answers
    milvus_uri, milvus = start_lite_server(root / "milvus")
    processes: list[tuple[subprocess.Popen, Path]] = []
    w = None
    try:
        write_synthetic(root / "raw", SyntheticConfig(users=30, notes=40, events=400, topics=3))
        publish_features(root / "raw", root / "repo", root / "data")
        config = {"index": {"uri": milvus_uri, "timeout_s": 5}, "serving": {"max_request_notes": 8}}
        (root / "config.yaml").write_text(yaml.safe_dump(config))
        model = build_model(ModelConfig(backbone="tiny-random", dim=16), PromptConfig())
        save_model(model, root / "model")

        # the servers take a while to import; the index is built meanwhile (they need it at the first request)
        local_args = {"config": str(root / "config.yaml"), "model_dir": str(root / "model"),
                      "feature_repo": str(root / "repo"), "http_port": http_port, "grpc_port": grpc_port,
                      "remotes": [["notellm-v2", f"127.0.0.1:{http_port}", "v2", 10],
                                  ["notellm-grpc", f"127.0.0.1:{grpc_port}", "grpc-v2", 10],
                                  ["notellm-nopredictor", f"127.0.0.1:{dead_port}", "v1", 10],
                                  ["notellm-hung", f"127.0.0.1:{silent.getsockname()[1]}", "v2", 1.5]]}
        remote = ["-m", "serving.recommender", "--model_name", "notellm-remote", "--config_file",
                  str(root / "config.yaml"), "--predictor_host", f"127.0.0.1:{http_port}",
                  "--predictor_protocol", "v1", "--host", "127.0.0.1", "--http_port", str(remote_port),
                  "--enable_grpc", "false"]
        feast = ["-c", "from feast.cli.cli import cli; cli()", "-c", str(root / "repo"), "serve",
                 "-h", "127.0.0.1", "-p", str(feast_port), "--no-access-log"]
        for name, args, env in [("local", ["-c", LOCAL_SERVER, json.dumps(local_args)], {}),
                                ("remote", remote, {"NOTELLM_FEAST_URL": f"http://127.0.0.1:{feast_port}"}),
                                ("feast", feast, {})]:
            log = root / f"{name}.log"
            processes.append((_start([sys.executable, *args], log, **env), log))

        notes = read_table(root / "data" / "notes.parquet", NOTES)
        indexed = notes.iloc[:-HELD_OUT]
        matrix = embed_notes(model, indexed)
        with NoteIndex(IndexConfig(**config["index"])) as index:
            index.swap_alias(index.build_collection(MODEL_VERSION, indexed["note_id"].tolist(), matrix,
                                                    indexed["category"].tolist(), progress=False))
        w = World(root, notes, dict(zip(indexed["note_id"], matrix)), model, milvus_uri, milvus,
                  f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{remote_port}",
                  processes)
        for (process, log), url in zip(processes, [f"{w.http}/v2/health/ready", f"{w.remote}/v2/health/ready",
                                                   f"http://127.0.0.1:{feast_port}/health"]):
            _wait_ready(url, process, log)
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


def _v1(url: str, model: str, body: Any) -> httpx.Response:
    return httpx.post(f"{url}/v1/models/{model}:predict", json=body, timeout=60)


def _related(world: World, instances: list[Any], top_k: int = 5, model: str = "notellm",
             url: str | None = None, **options: Any) -> list[dict[str, Any]]:
    response = _v1(url or world.http, model, {"instances": instances, "top_k": top_k, **options})
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def _assert_top_k(world: World, query: np.ndarray, hits: list[dict[str, Any]], k: int, exclude: str | None) -> None:
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


# --- the embedder ---------------------------------------------------------------------------------


def test_servers_listen_on_loopback_only(world):
    ports = {int(world.http.rsplit(":", 1)[1]), int(world.grpc.rsplit(":", 1)[1]),
             int(world.remote.rsplit(":", 1)[1])}
    seen = {}
    for process, _ in world.processes:
        proc = psutil.Process(process.pid)
        for conn in getattr(proc, "net_connections", proc.connections)(kind="inet"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port in ports:
                seen[conn.laddr.port] = conn.laddr.ip
    assert set(seen) == ports
    assert all(ip in ("127.0.0.1", "::ffff:127.0.0.1") for ip in seen.values()), seen


def test_v1_embeds_notes_and_text_like_a_bare_forward(world):
    notes = [world.note("n0"), {"content": "plain text about a trip"}]
    response = _v1(world.http, "notellm-embedder", {"instances": [json.dumps(notes[0]), notes[1]["content"]]})
    assert response.status_code == 200, response.text
    body = response.json()
    vectors = np.asarray(body["predictions"], dtype=np.float32)

    assert body["model_version"] == MODEL_VERSION and "generated" not in body
    assert vectors.shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors, world.embed(notes), atol=1e-5)
    # a note object and its JSON string are the same note
    as_object = _v1(world.http, "notellm-embedder", {"instances": [notes[0]]}).json()["predictions"]
    np.testing.assert_allclose(as_object[0], vectors[0], atol=1e-6)


def test_v2_rest_and_grpc_with_kserve_clients(world):
    from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig

    notes = [world.note("n3"), {"content": "hello"}]
    expected = world.embed(notes)
    texts = [json.dumps(notes[0]), "hello"]

    async def calls() -> list[Any]:
        rest = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
        as_json = await rest.infer(world.http, InferRequest("notellm-embedder", [
            InferInput("notes", [2], "BYTES", data=texts)]), model_name="notellm-embedder")
        binary_input = InferInput("text", [2], "BYTES")
        binary_input.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object), binary_data=True)
        as_binary = await rest.infer(world.http, InferRequest(
            "notellm-embedder", [binary_input], parameters={"binary_data_output": True}),
            model_name="notellm-embedder")
        async with InferenceGRPCClient(world.grpc, timeout=30, retries=0) as grpc:
            grpc_input = InferInput("notes", [2], "BYTES")
            grpc_input.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object))
            over_grpc = await grpc.infer(InferRequest("notellm-embedder", [grpc_input], request_id="req-7"))
        return [as_json, as_binary, over_grpc]

    responses = asyncio.run(calls())
    for response in responses:
        output = response.get_output_by_name("embedding")
        assert output.datatype == "FP32" and list(output.shape) == [2, 16]
        np.testing.assert_allclose(output.as_numpy(), expected, atol=1e-5)
    assert responses[0].id  # generated: the clients sent no id
    assert responses[2].id == "req-7" and responses[2].model_version == MODEL_VERSION


def test_generation_on_request_beside_the_vectors(world):
    v1 = _v1(world.http, "notellm-embedder", {"instances": [world.note("n1"), "text"],
                                               "parameters": {"generate": ["category", "hashtags"]}})
    assert v1.status_code == 200, v1.text
    generated = v1.json()["generated"]
    assert len(generated) == 2 and len(v1.json()["predictions"]) == 2
    assert all(isinstance(g["category"], str) and isinstance(g["hashtags"], list) for g in generated)

    from notellm.model import generate_for_notes
    from notellm.model.prompt import Note

    n1 = world.note("n1")
    local = generate_for_notes(world.model, [Note("", n1["title"], n1["content"], tuple(n1["hashtags"]),
                                                  n1["category"])], tasks=("category",))
    assert generated[0]["category"] == local["category"][0]

    v2 = httpx.post(f"{world.http}/v2/models/notellm-embedder/infer", timeout=60, json={
        "inputs": [{"name": "notes", "shape": [1], "datatype": "BYTES", "data": ["text"]}],
        "parameters": {"generate": "category"}})
    assert v2.status_code == 200, v2.text
    outputs = {o["name"]: o for o in v2.json()["outputs"]}
    assert set(outputs) == {"embedding", "category"}
    assert outputs["category"]["shape"] == [1] and outputs["category"]["data"] == [generated[1]["category"]]
    assert v2.json()["parameters"] == {"model_version": MODEL_VERSION}


def test_concurrent_callers_share_forward_passes(world):
    from notellm.config import ServingConfig
    from serving.embedder import NoteEmbedder

    # the folder above the model directory, as KServe's storage initializer may lay it out
    embedder = NoteEmbedder("e", world.root, ServingConfig(max_batch_size=32, max_wait_ms=50))
    embedder.load()
    notes = [{"title": f"note {i}", "content": f"text {i}", "hashtags": [], "category": ""} for i in range(12)]

    async def concurrently() -> list[tuple[np.ndarray, str]]:
        return await asyncio.gather(*(embedder.embed([n]) for n in notes))

    results = asyncio.run(concurrently())
    assert embedder._batcher.batches_run < len(notes)
    np.testing.assert_allclose(np.concatenate([v for v, _ in results]), world.embed(notes), atol=1e-5)


# --- the recommender ------------------------------------------------------------------------------


def test_known_note_gets_its_nearest_notes_with_features(world):
    result = _related(world, [{"note_id": "n0"}], top_k=5)[0]

    assert result["note_id"] == "n0" and result["source"] == "index" and result["upserted"] is False
    _assert_top_k(world, world.vectors["n0"], result["related"], 5, exclude="n0")
    notes = world.notes.set_index("note_id")
    for hit in result["related"]:
        assert hit["category"] == notes.loc[hit["note_id"], "category"]
        assert hit["features"]["title"] == notes.loc[hit["note_id"], "title"]
        assert hit["features"]["clicks_total"] >= hit["features"]["clicks_7d"] >= 0
    from notellm.recommend import RecommendClient

    with RecommendClient(world.http) as client:
        assert client.related("n0", 5) == result["related"]


def test_note_known_only_to_feast_is_embedded_from_its_features(world):
    held_out = world.notes["note_id"].iloc[-1]
    assert held_out not in world.vectors
    result = _related(world, [{"note_id": held_out}, {"note_id": "n2"}], top_k=4)

    assert [r["source"] for r in result] == ["features", "index"]
    _assert_top_k(world, world.embed([world.note(held_out)])[0], result[0]["related"], 4, exclude=held_out)
    _assert_top_k(world, world.vectors["n2"], result[1]["related"], 4, exclude="n2")


def test_predictor_over_v1_v2_and_grpc_agrees_with_in_process(world):
    query = [{"title": "A new note", "content": "mixed words from several topics", "hashtags": ["x"]}]
    truth = world.embed(query)[0]
    in_process = _related(world, query, top_k=6)[0]["related"]
    _assert_top_k(world, truth, in_process, 6, exclude=None)
    features = {h["note_id"]: h["features"] for h in in_process}
    for url, model in [(world.remote, "notellm-remote"), (world.http, "notellm-v2"), (world.http, "notellm-grpc")]:
        hits = _related(world, query, top_k=6, model=model, url=url)[0]["related"]
        _assert_top_k(world, truth, hits, 6, exclude=None)
        # the remote recommender reads features from the Feast feature server, the others from the repo
        assert all(h["features"] == features[h["note_id"]] for h in hits if h["note_id"] in features), model
    held_out = world.notes["note_id"].iloc[-2]
    remote = _related(world, [{"note_id": held_out}], top_k=3, model="notellm-remote", url=world.remote)[0]
    assert remote["source"] == "features"
    _assert_top_k(world, world.embed([world.note(held_out)])[0], remote["related"], 3, exclude=held_out)


def test_new_note_upserted_is_recommendable_at_once(world):
    from notellm.recommend import RecommendClient

    twin = world.note("n5")  # the same text as n5: its nearest stored note is n5
    new = {"note_id": "new-1", **twin, "category": "brand-new"}
    with RecommendClient(world.http) as client:
        before = client.for_text(new, k=3)
        assert before["upserted"] is False and before["source"] == "request"
        assert before["related"][0]["note_id"] == "n5"
    response = _v1(world.http, "notellm", {"instances": [{"note_id": "new-1"}]})
    assert response.status_code == 404 and "unknown note_id 'new-1'" in response.json()["error"]

    upserted = _related(world, [new], top_k=3, upsert=True)[0]
    world.vectors["new-1"] = world.embed([twin])[0]  # later tests rank against the index as it is now
    assert upserted["upserted"] is True and upserted["related"][0]["note_id"] == "n5"
    found = _related(world, [{"note_id": "new-1"}], top_k=3)[0]
    assert found["source"] == "index" and found["related"][0]["note_id"] == "n5"
    neighbour = _related(world, [{"note_id": "n5"}], top_k=1)[0]["related"][0]
    assert neighbour["note_id"] == "new-1" and neighbour["category"] == "brand-new"
    assert neighbour["features"] is None  # not in Feast (yet)
    assert neighbour["score"] == pytest.approx(1.0, abs=1e-4)


def test_concurrent_searches_share_milvus_calls(world):
    from notellm.config import ServingConfig
    from notellm.features import FeatureRepo
    from notellm.index_config import IndexConfig
    from notellm.recommend import Recommender, parse_request
    from notellm.vectorstore import NoteIndex
    from serving.embedder import NoteEmbedder

    embedder = NoteEmbedder("e", world.root / "model")
    embedder.load()
    cfg = ServingConfig(max_wait_ms=50)
    ids = list(world.vectors)[:8]
    with NoteIndex(IndexConfig(uri=world.milvus_uri)) as index:
        recommender = Recommender(index, FeatureRepo(world.root / "repo"), embedder.embed, cfg)

        async def concurrently() -> list[list[dict[str, Any]]]:
            return await asyncio.gather(*(recommender.recommend(parse_request(
                {"instances": [{"note_id": n}], "top_k": 3}, cfg)) for n in ids))

        results = asyncio.run(concurrently())
    assert recommender._search.batches_run < len(ids)
    for note_id, (result,) in zip(ids, results):
        assert result["note_id"] == note_id and result["source"] == "index"
        _assert_top_k(world, world.vectors[note_id], result["related"], 3, exclude=note_id)


# --- bad input, backends down -----------------------------------------------------------------------

EMBED = "/v1/models/notellm-embedder:predict"
RECOMMEND = "/v1/models/notellm:predict"
INFER = "/v2/models/notellm-embedder/infer"
BYTES_INPUT = {"name": "notes", "shape": [1], "datatype": "BYTES", "data": ["a note"]}


@pytest.mark.parametrize(("path", "body", "status", "message"), [
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
])
def test_bad_input_gets_a_4xx_naming_the_problem_and_serving_goes_on(world, path, body, status, message):
    with httpx.Client(base_url=world.http, timeout=60) as client:  # one keep-alive connection throughout
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = client.post(path, content=content, headers={"content-type": "application/json"})
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert message in error
        assert "Traceback" not in error and "Error :" not in error and "Exception" not in error
        fine = client.post(RECOMMEND, json={"instances": [{"note_id": "n1"}], "top_k": 2})
        assert fine.status_code == 200, fine.text


def test_grpc_bad_input_and_unknown_model(world):
    import grpc
    from kserve import InferenceGRPCClient, InferInput, InferRequest

    async def call(model: str, data: list[str]) -> Any:
        async with InferenceGRPCClient(world.grpc, timeout=30, retries=0) as client:
            return await client.infer(InferRequest(model, [InferInput("text", [len(data)], "BYTES", data=data)]))

    with pytest.raises(grpc.RpcError) as info:
        asyncio.run(call("notellm-embedder", [""]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inputs[text][0]: the note is empty" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        asyncio.run(call("nope", ["a"]))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert asyncio.run(call("notellm-embedder", ["a"])).get_output_by_name("embedding").shape == [1, 16]


def test_predictor_down_or_hung_is_a_503_for_new_notes_only(world):
    for model, reason in [("notellm-nopredictor", "cannot reach the predictor 'notellm-embedder' at 127.0.0.1:"),
                          ("notellm-hung", "did not answer within 1.5 s")]:
        start = time.monotonic()
        response = _v1(world.http, model, {"instances": ["a new note"]})
        assert response.status_code == 503, response.text
        assert reason in response.json()["error"]
        assert time.monotonic() - start < 6
        assert _related(world, [{"note_id": "n1"}], model=model)[0]["source"] == "index"


def test_internal_errors_are_500_without_details_and_keep_the_connection(world):
    # kserve's own parser of binary v2 bodies fails on a body without "inputs" (a KeyError in kserve)
    with httpx.Client(base_url=world.http, timeout=60) as client:
        response = client.post(INFER, content=b'{"x":1}', headers={
            "content-type": "application/octet-stream", "inference-header-content-length": "7"})
        assert response.status_code == 500
        assert response.json() == {"error": "internal error (see the server log)"}
        assert client.post(EMBED, json={"instances": ["fine"]}).status_code == 200


def test_milvus_down_is_a_503_and_the_servers_recover(world):
    from notellm.vectorstore import stop_lite_server

    stop_lite_server(world.milvus)
    try:
        for url, model, instance in [(world.http, "notellm", {"note_id": "n1"}), (world.http, "notellm", "text"),
                                     (world.remote, "notellm-remote", {"note_id": "n1"})]:
            start = time.monotonic()
            response = _v1(url, model, {"instances": [instance]})
            assert response.status_code == 503, response.text
            assert f"Milvus at {world.milvus_uri}" in response.json()["error"]
            assert time.monotonic() - start < 15
        assert _v1(world.http, "notellm-embedder", {"instances": ["still embedding"]}).status_code == 200
    finally:
        port = world.milvus_uri.rsplit(":", 1)[1]
        world.milvus = subprocess.Popen(
            [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(world.root / "milvus"),
             "--host", "127.0.0.1", "--port", port], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        response = _v1(world.http, "notellm", {"instances": [{"note_id": "n1"}], "top_k": 2})
        if response.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert response.status_code == 200, response.text
    _assert_top_k(world, world.vectors["n1"], response.json()["predictions"][0]["related"], 2, exclude="n1")


def test_feature_server_down_is_a_503(world):
    feast, _ = world.processes[2]
    feast.terminate()
    feast.wait(20)
    response = _v1(world.remote, "notellm-remote", {"instances": [{"note_id": "n1"}]})
    assert response.status_code == 503
    assert "the feature store cannot read online features: cannot reach the Feast feature server" in (
        response.json()["error"])
    assert _related(world, [{"note_id": "n1"}], top_k=2)[0]["source"] == "index"  # the local repo still serves
