"""The recommender's request parsing and its HTTP client (no server needed)."""

from __future__ import annotations

import socket

import pytest

from notellm.config import ServingConfig
from notellm.errors import NoteLLMError
from notellm.note_requests import RequestError
from notellm.recommend import RecommendClient, parse_body, parse_request

CFG = ServingConfig(max_request_notes=3, max_note_chars=50, max_top_k=20, default_top_k=7)


def test_instances_are_stored_ids_note_objects_or_text():
    request = parse_request({"instances": [{"note_id": "n1"}, {"note_id": "new", "title": "Pasta", "category": "food"},
                                           "just some text"], "top_k": 5}, CFG)

    assert request.top_k == 5 and request.upsert is False
    assert [q.note_id for q in request.queries] == ["n1", "new", None]
    assert request.queries[0].note is None
    assert request.queries[1].note == {"title": "Pasta", "content": "", "category": "food", "hashtags": [],
                                       "note_id": "new"}
    assert request.queries[2].note["content"] == "just some text"


def test_options_come_from_parameters_and_top_level_wins():
    assert parse_request({"instances": ["a"]}, CFG).top_k == CFG.default_top_k
    request = parse_request({"instances": [{"note_id": "x", "content": "a"}],
                             "parameters": {"top_k": 3, "upsert": True}}, CFG)
    assert (request.top_k, request.upsert) == (3, True)
    assert parse_request({"instances": ["a"], "parameters": {"top_k": 3}, "top_k": 4}, CFG).top_k == 4


@pytest.mark.parametrize(("body", "message"), [
    ([{"note_id": "n1"}], "request: expected a JSON object, got list"),
    ({"instance": [{"note_id": "n1"}]}, "unknown field(s) ['instance']"),
    ({"top_k": 3}, "instances: missing"),
    ({"instances": {"note_id": "n1"}}, "instances: expected a list, got dict"),
    ({"instances": []}, "instances: is empty"),
    ({"instances": ["a", "b", "c", "d"]}, "4 notes in one request, more than the limit of 3"),
    ({"instances": [{"note_id": ""}]}, "instances[0].note_id: expected a non-empty string"),
    ({"instances": [{"note_id": 7}]}, "instances[0].note_id: expected a non-empty string, got 7"),
    ({"instances": [{"note_id": "x" * 513}]}, "instances[0].note_id: longer than 512 characters"),
    ({"instances": ["ok", {"title": 3}]}, "instances[1].title: expected a string, got int"),
    ({"instances": ["   "]}, "instances[0]: the note is empty"),
    ({"instances": ["x" * 51]}, "51 characters, more than the limit of 50"),
    ({"instances": ["a"], "top_k": 0}, "top_k: must be between 1 and 20, got 0"),
    ({"instances": ["a"], "top_k": "5"}, "top_k: expected an integer, got '5'"),
    ({"instances": ["a"], "top_k": 21}, "top_k: must be between 1 and 20, got 21"),
    ({"instances": ["a"], "upsert": "yes"}, "upsert: expected true or false, got 'yes'"),
    ({"instances": ["a"], "upsert": True}, "instances[0]: upsert needs a note_id"),
    ({"instances": ["a"], "parameters": {"k": 1}}, "parameters: unknown field(s) ['k']"),
    ({"instances": ["a"], "parameters": [1]}, "parameters: expected an object, got list"),
    ({"instances": [{"note_id": "a", "content": "b", "category": "c" * 257}]}, "category: longer than 256"),
    ({"instances": [{"note_id": "a", "content": "b"}, {"note_id": "a", "content": "c"}], "upsert": True},
     "instances[1].note_id: 'a' is upserted twice"),
])
def test_bad_requests_name_the_field(body, message):
    with pytest.raises(RequestError) as info:
        parse_request(body, CFG)
    assert message in str(info.value)


def test_raw_bodies_parse_as_json_or_say_why_not():
    assert parse_body(b'{"instances": ["a"]}') == {"instances": ["a"]}
    with pytest.raises(RequestError, match=r"not valid JSON \(Expecting value at line 1 column 15\)"):
        parse_body(b'{"instances": ]')
    with pytest.raises(RequestError, match="not UTF-8"):
        parse_body(b'{"instances": ["\xff"]}')


def test_client_reports_an_unreachable_recommender():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again below: nothing listens there
    with RecommendClient(f"http://127.0.0.1:{port}", timeout_s=5) as client:
        with pytest.raises(NoteLLMError, match=f"cannot reach the recommender at http://127.0.0.1:{port}"):
            client.related("n1", 3)
