"""Client notes are validated field by field, and every error names the field at fault."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from notellm.note_requests import RequestError, parse_note, parse_notes, parse_top_k


def test_object_string_and_json_string_notes() -> None:
    assert parse_note({"title": "Heat", "hashtags": ["Crime"]}, "n", 100) == {
        "title": "Heat", "content": "", "category": "", "hashtags": ["Crime"]}
    assert parse_note("a plain text", "n", 100)["content"] == "a plain text"
    assert parse_note('{"title": "T", "note_id": "7"}', "n", 100)["note_id"] == "7"
    assert parse_note("caf\u00e9".encode(), "n", 100)["content"] == "caf\u00e9"


@pytest.mark.parametrize(("raw", "message"), [
    ({"title": 3}, r"instances\[2\]\.title: expected a string, got int"),
    ({"title": "t", "hashtags": "x"}, r"instances\[2\]\.hashtags: expected a list of strings"),
    ({"title": "  ", "content": ""}, r"instances\[2\]: the note is empty"),
    ({"title": "t", "colour": "red"}, r"unknown field\(s\) \['colour'\]"),
    ({"title": "x" * 101}, r"101 characters, more than the limit of 100"),
    (42, r"expected a note object or a string, got int"),
    ('{"title": ', r"looks like JSON but does not parse"),
    (b"\xff\xfe", r"not valid UTF-8"),
])
def test_bad_notes_name_the_field(raw: object, message: str) -> None:
    with pytest.raises(RequestError, match=message):
        parse_notes([{"title": "ok"}, {"title": "ok"}, raw], "instances", 10, 100)


def test_batch_limits() -> None:
    with pytest.raises(RequestError, match="instances: is empty"):
        parse_notes([], "instances", 10, 100)
    with pytest.raises(RequestError, match="11 notes in one request, more than the limit of 10"):
        parse_notes(["a"] * 11, "instances", 10, 100)
    with pytest.raises(RequestError, match="expected a list, got dict"):
        parse_notes({"title": "a"}, "instances", 10, 100)


def test_top_k() -> None:
    assert parse_top_k(5, "k", 100) == 5
    for bad in (0, 101, "5", 2.5, True, float("nan")):
        with pytest.raises(RequestError, match="k:"):
            parse_top_k(bad, "k", 100)


@given(st.one_of(st.text(), st.binary(), st.dictionaries(st.text(), st.text()), st.integers(), st.none()))
def test_fuzzed_input_either_parses_or_raises_a_request_error(raw: object) -> None:
    try:
        note = parse_note(raw, "n", 1000)
    except RequestError:
        return
    assert note["title"].strip() or note["content"].strip()
