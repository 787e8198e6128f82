"""The challenger wins: one tiny kfp.local run where NoteLLM trains for one step (tiny-random backbone) and
the MiniLM challenger for two. The gate deploys the challenger and says why; the index holds its 384-d vectors;
the real KServe server (embedder + recommender, HTTP and gRPC) serves it from the deployed model directory:
v1, v2, gRPC and the OpenAI route give the vectors the index holds, generation is a clear 400, and the
recommender answers for indexed notes and for new text. (The NoteLLM-wins path: test_pipeline_local.py.)
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from serving_world import LOCAL_SERVER, free_port, start_process, wait_ready
from tiny_pipeline import PARAMS

from pipelines.local import run_local, task_outputs

pytestmark = pytest.mark.slow

MINILM_DIM = 384
EMBEDDER = "notellm-embedder"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("challenger")


@pytest.fixture(scope="module")
def run(workspace: Path) -> Path:
    return run_local(workspace, **{**PARAMS, "max_steps": 1, "challenger": True, "challenger_steps": 2})


@pytest.fixture(scope="module")
def server(workspace: Path, run: Path) -> dict[str, str]:
    """The local server (as `notellm serve` builds it, plus gRPC) on the deployed model and the run's
    index."""
    from notellm.deploy import read_record

    (workspace / "config.yaml").write_text(task_outputs(run, "make-config")["Output"])
    http_port, grpc_port = free_port(), free_port()
    model_dir = read_record(workspace / "serving")["model_dir"]
    args = {"config": str(workspace / "config.yaml"), "model_dir": model_dir,
            "feature_repo": str(workspace / "feature_repo"), "http_port": http_port, "grpc_port": grpc_port,
            "remotes": []}
    log = workspace / "server.log"
    process = start_process([sys.executable, "-c", LOCAL_SERVER, json.dumps(args)], log)
    try:
        wait_ready(f"http://127.0.0.1:{http_port}/v2/health/ready", process, log)
        yield {"http": f"http://127.0.0.1:{http_port}", "grpc": f"127.0.0.1:{grpc_port}"}
    finally:
        process.terminate()
        process.wait(20)


def _embeddings(run: Path) -> pd.DataFrame:
    path = run / "finetune-challenger" / "embeddings" / "embeddings.parquet"
    return pd.read_parquet(path).set_index("note_id")


def _note(run: Path, note_id: str) -> dict[str, Any]:
    row = pd.read_parquet(run / "note-features" / "notes" / "notes.parquet").set_index("note_id").loc[note_id]
    return {"title": row["title"], "content": row["content"], "hashtags": list(row["hashtags"]),
            "category": row["category"]}


def test_the_gate_deploys_the_challenger_and_says_why(workspace: Path, run: Path) -> None:
    from notellm.challenger import SENTENCE_TRANSFORMERS
    from notellm.deploy import read_record

    outputs = task_outputs(run, "gate")
    assert outputs["Output"] is True and outputs["winner"] == "challenger" and outputs["recall"] > 0
    decision = (run / "gate" / "decision").read_text()
    assert "deploy the challenger" in decision and "best trained model: the challenger" in decision
    assert "| NoteLLM |" in decision and "nothing serves yet" in decision
    assert "challenger (MiniLM fine-tuned)" in (run / "evaluate" / "table").read_text()
    model_json = json.loads((run / "finetune-challenger" / "model" / "notellm.json").read_text())
    record = read_record(workspace / "serving")
    assert record["model_version"] == model_json["model_version"] == _embeddings(run)["model_version"].iloc[0]
    assert record["kind"] == model_json["kind"] == SENTENCE_TRANSFORMERS and record["dim"] == MINILM_DIM
    assert record["metrics"] == {"val_recall_at_50": pytest.approx(outputs["recall"])}


def test_the_collection_has_the_challengers_dimension(run: Path) -> None:
    """Before the server starts: Milvus Lite lets one process at a time open the database."""
    from notellm.kfp_io import config_from_yaml
    from notellm.vectorstore import NoteIndex

    cfg = config_from_yaml(task_outputs(run, "make-config")["Output"])
    embeddings = _embeddings(run)
    with NoteIndex(cfg.index) as store:
        info = store.describe()
        fields = store.client.describe_collection(info.name)["fields"]
        assert info.model_version == embeddings["model_version"].iloc[0] and store.count() == len(embeddings)
        assert next(int(f["params"]["dim"]) for f in fields if f["name"] == "vector") == MINILM_DIM


def test_the_index_holds_the_challengers_vectors(run: Path, server: dict[str, str]) -> None:
    from kserve import InferenceGRPCClient, InferInput, InferRequest

    embeddings = _embeddings(run)
    note_id = embeddings.index[0]
    note, stored = _note(run, note_id), np.asarray(embeddings.loc[note_id, "vector"])
    assert stored.shape == (MINILM_DIM,)

    v1 = httpx.post(f"{server['http']}/v1/models/{EMBEDDER}:predict", timeout=60,
                    json={"instances": [note, "a new note"]}).json()
    assert v1["model_version"] == embeddings["model_version"].iloc[0]
    np.testing.assert_allclose(v1["predictions"][0], stored, atol=1e-4)  # the predictor agrees with the index
    v2 = httpx.post(f"{server['http']}/v2/models/{EMBEDDER}/infer", timeout=60, json={"inputs": [
        {"name": "notes", "shape": [1], "datatype": "BYTES", "data": [json.dumps(note)]}]}).json()
    assert v2["outputs"][0]["shape"] == [1, MINILM_DIM]
    np.testing.assert_allclose(v2["outputs"][0]["data"], stored, atol=1e-4)
    oai = httpx.post(f"{server['http']}/openai/v1/embeddings", timeout=60,
                     json={"model": EMBEDDER, "input": "a new note"}).json()
    np.testing.assert_allclose(oai["data"][0]["embedding"], v1["predictions"][1], atol=1e-5)
    assert oai["usage"]["prompt_tokens"] > 0

    async def over_grpc() -> Any:
        async with InferenceGRPCClient(server["grpc"], timeout=30, retries=0) as client:
            tensor = InferInput("notes", [1], "BYTES")
            tensor.set_data_from_numpy(np.array([json.dumps(note).encode()], dtype=object))
            return await client.infer(InferRequest(EMBEDDER, [tensor]))

    output = asyncio.run(over_grpc()).get_output_by_name("embedding")
    assert list(output.shape) == [1, MINILM_DIM]
    np.testing.assert_allclose(output.as_numpy()[0], stored, atol=1e-4)


def test_generation_is_a_clear_client_error(server: dict[str, str]) -> None:
    response = httpx.post(f"{server['http']}/v1/models/{EMBEDDER}:predict", timeout=60,
                          json={"instances": ["a note"], "parameters": {"generate": ["category"]}})
    assert response.status_code == 400 and "cannot generate" in response.json()["error"]


def test_the_recommender_serves_indexed_and_new_notes(run: Path, server: dict[str, str]) -> None:
    note_id = _embeddings(run).index[0]
    for instance in ({"note_id": note_id}, "a note about something new"):
        response = httpx.post(f"{server['http']}/v1/models/notellm:predict", timeout=60,
                              json={"instances": [instance], "top_k": 5})
        assert response.status_code == 200, response.text
        hits = response.json()["predictions"][0]["related"]
        assert len(hits) == 5 and all(h["score"] > 0 for h in hits)
        if isinstance(instance, dict):
            assert note_id not in {h["note_id"] for h in hits}  # an indexed note is not its own neighbour
