"""The predictor's OpenAI embeddings route, called with the ``openai`` client on a real server on loopback.

One module-scoped server: ``python -m serving.embedder`` as a cluster runs it (bound to 127.0.0.1), over an
untrained tiny-random model; its v1 route is the reference the OpenAI answers must equal.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from serving_world import free_port, start_process, v1, wait_ready

pytestmark = pytest.mark.slow

NAME = "notellm-embedder"
DIM = 16
MAX_REQUEST_NOTES = 8


@dataclass
class Server:
    url: str
    model: Any

    def client(self, **options: Any) -> Any:
        from openai import OpenAI

        return OpenAI(base_url=f"{self.url}/openai/v1", api_key="unused", max_retries=0, **options)

    def v1(self, instances: list[Any]) -> np.ndarray:
        response = v1(self.url, NAME, {"instances": instances})
        assert response.status_code == 200, response.text
        return np.asarray(response.json()["predictions"], dtype=np.float32)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    from notellm.model.bundle import build_model
    from notellm.model.modeldir import save_model
    from notellm.model_config import ModelConfig, PromptConfig

    root: Path = tmp_path_factory.mktemp("openai")
    model = build_model(ModelConfig(backbone="tiny-random", dim=DIM), PromptConfig())
    save_model(model, root / "model")
    (root / "config.yaml").write_text(yaml.safe_dump({"serving": {"max_request_notes": MAX_REQUEST_NOTES}}))
    port = free_port()
    log = root / "embedder.log"
    process = start_process([sys.executable, "-m", "serving.embedder", "--model_name", NAME, "--model_dir",
                             str(root / "model"), "--config_file", str(root / "config.yaml"), "--host",
                             "127.0.0.1", "--http_port", str(port), "--enable_grpc", "false"], log)
    try:
        wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", process, log)
        yield Server(f"http://127.0.0.1:{port}", model)
    finally:
        process.terminate()
        process.wait(20)


NOTE = {"title": "Lisbon in three days", "content": "Trams, custard tarts and the view from the castle.",
        "hashtags": ["travel", "food"], "category": "travel"}
TEXTS = ["a quiet café with good light", json.dumps(NOTE), "quotes \" and\nnew lines", "短い日本語のメモ"]


def test_openai_client_gets_the_v1_vectors(server):
    expected = server.v1(TEXTS)
    client = server.client()
    # left to itself the client asks for base64 and decodes it; ask for floats too
    for options in ({}, {"encoding_format": "float"}):
        answer = client.embeddings.create(model=NAME, input=TEXTS, **options)
        assert answer.model == NAME and [d.index for d in answer.data] == list(range(len(TEXTS)))
        np.testing.assert_allclose(np.asarray([d.embedding for d in answer.data]), expected, atol=1e-6)
    one = client.embeddings.create(model=NAME, input=TEXTS[0], encoding_format="float")
    np.testing.assert_allclose(one.data[0].embedding, expected[0], atol=1e-6)

    from notellm.model.prompt import Note

    notes = [Note("", "", TEXTS[0]), Note("", NOTE["title"], NOTE["content"], tuple(NOTE["hashtags"]),
                                          NOTE["category"]), Note("", "", TEXTS[2]), Note("", "", TEXTS[3])]
    tokens = sum(len(server.model.prompter.embedding_ids(n)) for n in notes)
    assert answer.usage.prompt_tokens == answer.usage.total_tokens == tokens


def test_base64_is_little_endian_float32_over_plain_http(server):
    response = httpx.post(f"{server.url}/openai/v1/embeddings", timeout=60,
                          json={"model": NAME, "input": TEXTS[:2], "encoding_format": "base64",
                                "dimensions": DIM, "user": "u1"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list" and [d["object"] for d in body["data"]] == ["embedding"] * 2
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in body["data"]])
    np.testing.assert_allclose(decoded, server.v1(TEXTS[:2]), atol=1e-6)


def test_concurrent_openai_and_v1_callers_get_their_own_vectors(server):
    from openai import AsyncOpenAI

    texts = [f"note number {i} about topic {i % 3}" for i in range(16)]
    expected = server.v1(texts[:MAX_REQUEST_NOTES]), server.v1(texts[MAX_REQUEST_NOTES:])
    expected = np.concatenate(expected)

    async def calls() -> list[np.ndarray]:
        client = AsyncOpenAI(base_url=f"{server.url}/openai/v1", api_key="unused", max_retries=0)
        async with httpx.AsyncClient(timeout=60) as http:
            async def over_openai(text: str) -> np.ndarray:
                answer = await client.embeddings.create(model=NAME, input=text)
                return np.asarray(answer.data[0].embedding)

            async def over_v1(text: str) -> np.ndarray:
                response = await http.post(f"{server.url}/v1/models/{NAME}:predict", json={"instances": [text]})
                return np.asarray(response.json()["predictions"][0])

            return await asyncio.gather(*(over_openai(t) if i % 2 else over_v1(t) for i, t in enumerate(texts)))

    np.testing.assert_allclose(np.stack(asyncio.run(calls())), expected, atol=1e-5)


#: (body, status, param, message): bad requests and OpenAI's error shape in the answer
BAD: list[tuple[Any, int, str | None, str]] = [
    ({"model": NAME, "input": [[1, 2, 3]]}, 400, "input", "token arrays are not supported"),
    ({"model": NAME, "input": [1, 2, 3]}, 400, "input", "token arrays are not supported"),
    ({"model": NAME, "input": []}, 400, "input", "input: is empty"),
    ({"model": NAME, "input": ""}, 400, "input", "input[0]: the note is empty"),
    ({"model": NAME, "input": [None]}, 400, "input", "a list holding NoneType"),
    ({"model": NAME, "input": ["a"] * 9}, 400, "input", "9 notes in one request, more than the limit of 8"),
    ({"model": NAME, "input": ["x" * 20_001]}, 400, "input", "more than the limit of 20000"),
    ({"model": NAME, "input": ['{"title": "a", "body": "b"}']}, 400, "input", "input[0]: unknown field(s)"),
    ({"model": NAME}, 400, "input", "input: missing"),
    ({"input": "a"}, 400, "model", "model: missing"),
    ({"model": NAME, "input": "a", "encoding_format": "int8"}, 400, "encoding_format", "expected one of"),
    ({"model": NAME, "input": "a", "dimensions": 8}, 400, "dimensions", "cannot be truncated"),
    ({"model": NAME, "input": "a", "temperature": 1}, 400, "temperature", "unknown field(s) ['temperature']"),
    ({"model": "text-embedding-3-small", "input": "a"}, 404, "model", "does not exist"),
    (b'{"model": "x", "input": ', 400, None, "the body is not valid JSON"),
    (b"[1, 2]", 400, None, "expected a JSON object, got list"),
]


@pytest.mark.parametrize(("body", "status", "param", "message"), BAD)
def test_bad_input_gets_openai_errors_and_serving_goes_on(server, body, status, param, message):
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    response = httpx.post(f"{server.url}/openai/v1/embeddings", timeout=60, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error["message"] and error["param"] == param, error
    assert error["type"] == ("invalid_request_error" if status == 400 else "not_found_error")
    assert "Traceback" not in error["message"]
    assert server.v1(["still serving"]).shape == (1, DIM)


def test_openai_client_raises_its_own_errors(server):
    import openai

    client = server.client()
    with pytest.raises(openai.BadRequestError) as bad:
        client.embeddings.create(model=NAME, input=[[1, 2, 3]])
    assert "token arrays" in bad.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-3-small", input="a")
