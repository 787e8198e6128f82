"""The local KServe server under a bounded load: 2,000 requests from 32 concurrent clients on loopback.

Valid requests (v1 embed, v2 infer, related notes by note_id and by text) are mixed with the malformed
ones of ``serving_world.BAD_REQUESTS`` (bad JSON, missing fields, wrong types, oversized text, too large a
batch, unknown note_id, unknown model). Every valid answer must be right (vectors as a single request gets
them, true top-k neighbours without the query note), every malformed one a 4xx naming the problem, none a
5xx; the server's memory stays bounded and it serves on afterwards.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from serving_world import (
    BAD_REQUESTS,
    DIM,
    EMBED,
    HELD_OUT,
    INFER,
    RECOMMEND,
    World,
    assert_client_error,
    assert_top_k,
    running_world,
)

pytestmark = pytest.mark.slow

REQUESTS = 2_000
CLIENTS = 32
MALFORMED_SHARE = 0.3
RSS_GROWTH_LIMIT_MB = 300
TEXTS = ["a weekend trip to the mountains", "quick pasta with garlic", "caf\u00e9 au lait \u2615 recipe",
         "notes on \u7b14\u8bb0 and hashtags", "  spaces  and\ttabs\nand lines  "]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    with running_world(tmp_path_factory.mktemp("load"), cluster=False) as w:
        yield w


@dataclass(frozen=True)
class Call:
    """One request: ``kind`` says how its answer is checked; ``items`` index the reference notes."""

    kind: str
    path: str
    body: Any
    items: tuple[int, ...] = ()
    note_id: str | None = None
    top_k: int = 0
    status: int = 200
    message: str = ""


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def _references(world: World) -> tuple[list[Any], np.ndarray]:
    """Notes (objects with a note_id, and texts) and their vectors, one single request each."""
    ids = list(world.vectors)[:10]
    notes: list[Any] = [{"note_id": n, **world.note(n)} for n in ids] + TEXTS
    with httpx.Client(base_url=world.http, timeout=60) as client:
        answers = [client.post(EMBED, json={"instances": [note]}) for note in notes]
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
    vectors = np.array([a.json()["predictions"][0] for a in answers], dtype=np.float32)
    np.testing.assert_allclose(vectors, world.embed([{"content": n} if isinstance(n, str) else n for n in notes]),
                               atol=1e-5)
    return notes, vectors


def _calls(world: World, notes: list[Any], rng: random.Random) -> list[Call]:
    held_out = world.notes["note_id"].iloc[-HELD_OUT:].tolist()
    stored = [n["note_id"] for n in notes if isinstance(n, dict)]
    calls = []
    for i in range(REQUESTS):
        if rng.random() < MALFORMED_SHARE:
            path, body, status, message = BAD_REQUESTS[i % len(BAD_REQUESTS)]
            calls.append(Call("malformed", path, body, status=status, message=message))
            continue
        kind = rng.choice(["embed", "infer", "by_id", "by_text"])
        items = tuple(rng.sample(range(len(notes)), rng.randint(1, 4)))
        top_k = rng.randint(1, 8)
        if kind == "embed":
            calls.append(Call(kind, EMBED, {"instances": [notes[j] for j in items]}, items))
        elif kind == "infer":
            data = [n if isinstance(n, str) else json.dumps(n) for n in (notes[j] for j in items)]
            calls.append(Call(kind, INFER, {"inputs": [{"name": "notes", "shape": [len(data)], "datatype": "BYTES",
                                                         "data": data}]}, items))
        elif kind == "by_id":
            note_id = rng.choice(stored + held_out)
            calls.append(Call(kind, RECOMMEND, {"instances": [{"note_id": note_id}], "top_k": top_k},
                              note_id=note_id, top_k=top_k))
        else:  # a note's text (with its note_id: left out of its own results) or a plain text
            j = items[0]
            note_id = notes[j]["note_id"] if isinstance(notes[j], dict) else None
            calls.append(Call(kind, RECOMMEND, {"instances": [notes[j]], "top_k": top_k}, (j,), note_id, top_k))
    return calls


async def _send(base_url: str, calls: list[Call]) -> list[httpx.Response]:
    """Each of CLIENTS clients (one keep-alive connection each) sends its share of the calls in turn."""
    answers: list[httpx.Response | None] = [None] * len(calls)

    async def client(first: int) -> None:
        async with httpx.AsyncClient(base_url=base_url, timeout=120) as http:
            for i in range(first, len(calls), CLIENTS):
                body = calls[i].body
                content = body if isinstance(body, bytes) else json.dumps(body).encode()
                answers[i] = await http.post(calls[i].path, content=content,
                                             headers={"content-type": "application/json"})

    await asyncio.gather(*(client(c) for c in range(CLIENTS)))
    return [a for a in answers if a is not None]


def _check(world: World, call: Call, response: httpx.Response, vectors: np.ndarray,
           stored: dict[str, np.ndarray]) -> None:
    if call.kind == "malformed":
        assert_client_error(response, call.status, call.message)
        return
    assert response.status_code == 200, (call, response.text)
    body = response.json()
    if call.kind in ("embed", "infer"):
        got = np.asarray(body["predictions"] if call.kind == "embed" else body["outputs"][0]["data"],
                         dtype=np.float32).reshape(len(call.items), -1)
        assert got.shape == (len(call.items), DIM)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(got, vectors[list(call.items)], atol=1e-5)
        return
    (result,) = body["predictions"]
    hits = result["related"]
    assert result["note_id"] == call.note_id and call.note_id not in {h["note_id"] for h in hits}
    if call.kind == "by_text":
        assert result["source"] == "request"
        query = vectors[call.items[0]]
    else:
        assert result["source"] == ("index" if call.note_id in world.vectors else "features")
        query = stored[call.note_id]
    assert_top_k(world, query, hits, call.top_k, exclude=call.note_id)


def test_bounded_load_of_valid_and_malformed_requests(world):
    notes, vectors = _references(world)
    calls = _calls(world, notes, random.Random(0))
    server = world.processes[0][0].pid
    rss_before = _rss_mb(server)

    start = time.perf_counter()
    answers = asyncio.run(_send(world.http, calls))
    seconds = time.perf_counter() - start
    rss_after = _rss_mb(server)

    statuses = Counter(a.status_code for a in answers)
    print(f"\n{len(answers)} requests from {CLIENTS} clients in {seconds:.1f} s ({len(answers) / seconds:.0f}/s); "
          f"statuses {dict(sorted(statuses.items()))}; kinds {dict(Counter(c.kind for c in calls))}; "
          f"server RSS {rss_before:.0f} MB before, {rss_after:.0f} MB after")
    assert len(answers) == REQUESTS
    assert not [s for s in statuses if s >= 500], statuses
    held_out = world.notes["note_id"].iloc[-HELD_OUT:].tolist()
    stored = {**world.vectors, **dict(zip(held_out, world.embed([world.note(n) for n in held_out])))}
    for call, response in zip(calls, answers, strict=True):
        _check(world, call, response, vectors, stored)
    assert rss_after - rss_before < RSS_GROWTH_LIMIT_MB

    assert httpx.get(f"{world.http}/v2/health/ready", timeout=10).status_code == 200
    after = httpx.post(f"{world.http}{EMBED}", json={"instances": [notes[0]]}, timeout=60)
    assert after.status_code == 200, after.text
    np.testing.assert_allclose(after.json()["predictions"][0], vectors[0], atol=1e-6)
