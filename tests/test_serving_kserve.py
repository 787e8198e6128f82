"""The KServe servers for real: a tiny-random model, Milvus Lite, Feast, kserve's own clients, plain HTTP.

One module-scoped world (``tests/serving_world.py``): synthetic notes published to a Feast repository, all
but a few of them embedded and indexed in a shared Milvus Lite server, and server processes on free loopback
ports:

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
import subprocess
import sys
import time
from typing import Any

import httpx
import numpy as np
import psutil
import pytest
from serving_world import (
    BAD_REQUESTS,
    EMBED,
    INFER,
    MODEL_VERSION,
    RECOMMEND,
    assert_client_error,
    assert_top_k,
    related,
    running_world,
    start_process,
    v1,
    wait_ready,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    with running_world(tmp_path_factory.mktemp("serving")) as w:
        yield w


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
    response = v1(world.http, "notellm-embedder", {"instances": [json.dumps(notes[0]), notes[1]["content"]]})
    assert response.status_code == 200, response.text
    body = response.json()
    vectors = np.asarray(body["predictions"], dtype=np.float32)

    assert body["model_version"] == MODEL_VERSION and "generated" not in body
    assert vectors.shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors, world.embed(notes), atol=1e-5)
    # a note object and its JSON string are the same note
    as_object = v1(world.http, "notellm-embedder", {"instances": [notes[0]]}).json()["predictions"]
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
    over_v1 = v1(world.http, "notellm-embedder", {"instances": [world.note("n1"), "text"],
                                                    "parameters": {"generate": ["category", "hashtags"]}})
    assert over_v1.status_code == 200, over_v1.text
    generated = over_v1.json()["generated"]
    assert len(generated) == 2 and len(over_v1.json()["predictions"]) == 2
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
    result = related(world, [{"note_id": "n0"}], top_k=5)[0]

    assert result["note_id"] == "n0" and result["source"] == "index" and result["upserted"] is False
    assert_top_k(world, world.vectors["n0"], result["related"], 5, exclude="n0")
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
    result = related(world, [{"note_id": held_out}, {"note_id": "n2"}], top_k=4)

    assert [r["source"] for r in result] == ["features", "index"]
    assert_top_k(world, world.embed([world.note(held_out)])[0], result[0]["related"], 4, exclude=held_out)
    assert_top_k(world, world.vectors["n2"], result[1]["related"], 4, exclude="n2")


def test_predictor_over_v1_v2_and_grpc_agrees_with_in_process(world):
    query = [{"title": "A new note", "content": "mixed words from several topics", "hashtags": ["x"]}]
    truth = world.embed(query)[0]
    in_process = related(world, query, top_k=6)[0]["related"]
    assert_top_k(world, truth, in_process, 6, exclude=None)
    features = {h["note_id"]: h["features"] for h in in_process}
    for url, model in [(world.remote, "notellm-remote"), (world.http, "notellm-v2"), (world.http, "notellm-grpc")]:
        hits = related(world, query, top_k=6, model=model, url=url)[0]["related"]
        assert_top_k(world, truth, hits, 6, exclude=None)
        # the remote recommender reads features from the Feast feature server, the others from the repo
        assert all(h["features"] == features[h["note_id"]] for h in hits if h["note_id"] in features), model
    held_out = world.notes["note_id"].iloc[-2]
    remote = related(world, [{"note_id": held_out}], top_k=3, model="notellm-remote", url=world.remote)[0]
    assert remote["source"] == "features"
    assert_top_k(world, world.embed([world.note(held_out)])[0], remote["related"], 3, exclude=held_out)


def test_new_note_upserted_is_recommendable_at_once(world):
    from notellm.recommend import RecommendClient

    twin = world.note("n5")  # the same text as n5: its nearest stored note is n5
    new = {"note_id": "new-1", **twin, "category": "brand-new"}
    with RecommendClient(world.http) as client:
        before = client.for_text(new, k=3)
        assert before["upserted"] is False and before["source"] == "request"
        assert before["related"][0]["note_id"] == "n5"
    response = v1(world.http, "notellm", {"instances": [{"note_id": "new-1"}]})
    assert response.status_code == 404 and "unknown note_id 'new-1'" in response.json()["error"]

    upserted = related(world, [new], top_k=3, upsert=True)[0]
    world.vectors["new-1"] = world.embed([twin])[0]  # later tests rank against the index as it is now
    assert upserted["upserted"] is True and upserted["related"][0]["note_id"] == "n5"
    found = related(world, [{"note_id": "new-1"}], top_k=3)[0]
    assert found["source"] == "index" and found["related"][0]["note_id"] == "n5"
    neighbour = related(world, [{"note_id": "n5"}], top_k=1)[0]["related"][0]
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
        assert_top_k(world, world.vectors[note_id], result["related"], 3, exclude=note_id)


# --- bad input, backends down -----------------------------------------------------------------------


@pytest.mark.parametrize(("path", "body", "status", "message"), BAD_REQUESTS)
def test_bad_input_gets_a_4xx_naming_the_problem_and_serving_goes_on(world, path, body, status, message):
    with httpx.Client(base_url=world.http, timeout=60) as client:  # one keep-alive connection throughout
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = client.post(path, content=content, headers={"content-type": "application/json"})
        assert_client_error(response, status, message)
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
        response = v1(world.http, model, {"instances": ["a new note"]})
        assert response.status_code == 503, response.text
        assert reason in response.json()["error"]
        assert time.monotonic() - start < 6
        assert related(world, [{"note_id": "n1"}], model=model)[0]["source"] == "index"


def test_recommender_recovers_when_its_predictor_comes_up_and_fails_fast_when_it_goes(world):
    host, port = world.dead_predictor.rsplit(":", 1)
    log = world.root / "late-predictor.log"
    predictor = start_process([sys.executable, "-m", "serving.embedder", "--model_name", "notellm-embedder",
                               "--model_dir", str(world.root / "model"), "--host", host, "--http_port", port,
                               "--enable_grpc", "false"], log)
    try:
        wait_ready(f"http://{world.dead_predictor}/v2/health/ready", predictor, log)
        note = world.note(world.notes["note_id"].iloc[-1])
        response = v1(world.http, "notellm-nopredictor", {"instances": [note], "top_k": 3})
        assert response.status_code == 200, response.text  # no restart of the recommender needed
        assert_top_k(world, world.embed([note])[0], response.json()["predictions"][0]["related"], 3, exclude=None)
    finally:
        predictor.terminate()
        predictor.wait(20)
    response = v1(world.http, "notellm-nopredictor", {"instances": ["a new note"]})
    assert response.status_code == 503 and "cannot reach the predictor" in response.json()["error"]


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
            response = v1(url, model, {"instances": [instance]})
            assert response.status_code == 503, response.text
            assert f"Milvus at {world.milvus_uri}" in response.json()["error"]
            assert time.monotonic() - start < 15
        assert v1(world.http, "notellm-embedder", {"instances": ["still embedding"]}).status_code == 200
    finally:
        port = world.milvus_uri.rsplit(":", 1)[1]
        world.milvus = subprocess.Popen(
            [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(world.root / "milvus"),
             "--host", "127.0.0.1", "--port", port], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        response = v1(world.http, "notellm", {"instances": [{"note_id": "n1"}], "top_k": 2})
        if response.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert response.status_code == 200, response.text
    assert_top_k(world, world.vectors["n1"], response.json()["predictions"][0]["related"], 2, exclude="n1")


def test_feature_server_down_is_a_503(world):
    feast, _ = world.processes[2]
    feast.terminate()
    feast.wait(20)
    response = v1(world.remote, "notellm-remote", {"instances": [{"note_id": "n1"}]})
    assert response.status_code == 503
    assert "the feature store cannot read online features: cannot reach the Feast feature server" in (
        response.json()["error"])
    assert related(world, [{"note_id": "n1"}], top_k=2)[0]["source"] == "index"  # the local repo still serves
