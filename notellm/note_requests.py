"""Parse and validate the notes that clients send to the servers.

A note arrives as a JSON object (``title``, ``content``, optional ``hashtags``, ``category``, ``note_id``)
or as a plain string (its text). Every problem raises :class:`RequestError` naming the field at fault,
e.g. ``instances[3].content: expected a string, got int``; the servers turn it into a 400.
"""

from __future__ import annotations

import json
import math
from typing import Any

from notellm.errors import NoteLLMError

NOTE_FIELDS = {"note_id", "title", "content", "hashtags", "category", "event_timestamp"}


class RequestError(NoteLLMError):
    """A client request is malformed; the message names the field at fault."""


def check_unicode(value: str, where: str) -> str:
    """``value`` if it is valid Unicode (JSON escapes can carry lone surrogates, which tokenizers reject)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RequestError(f"{where}: not valid Unicode (a lone surrogate at character {exc.start})") from exc
    return value


def _text(value: Any, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RequestError(f"{where}: expected a string, got {type(value).__name__}")
    return check_unicode(value, where)


def parse_note(raw: Any, where: str, max_chars: int) -> dict[str, Any]:
    """Return a note dict with ``title``, ``content``, ``hashtags``, ``category`` (and ``note_id`` if given)."""
    if isinstance(raw, (bytes, bytearray)):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RequestError(f"{where}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
    if isinstance(raw, str):
        stripped = raw.strip()
        if stripped.startswith("{"):
            try:
                raw = json.loads(stripped)
            except json.JSONDecodeError as exc:
                raise RequestError(f"{where}: looks like JSON but does not parse ({exc.msg})") from exc
            except RecursionError as exc:
                raise RequestError(f"{where}: looks like JSON but is nested too deeply") from exc
        else:
            raw = {"content": raw}
    if not isinstance(raw, dict):
        raise RequestError(f"{where}: expected a note object or a string, got {type(raw).__name__}")
    unknown = sorted(set(raw) - NOTE_FIELDS)
    if unknown:
        raise RequestError(f"{where}: unknown field(s) {unknown}; a note has {sorted(NOTE_FIELDS)}")
    note = {
        "title": _text(raw.get("title"), f"{where}.title"),
        "content": _text(raw.get("content"), f"{where}.content"),
        "category": _text(raw.get("category"), f"{where}.category"),
    }
    hashtags = raw.get("hashtags") or []
    if not isinstance(hashtags, list) or not all(isinstance(h, str) for h in hashtags):
        raise RequestError(f"{where}.hashtags: expected a list of strings")
    note["hashtags"] = [check_unicode(h, f"{where}.hashtags[{i}]") for i, h in enumerate(hashtags)]
    if "note_id" in raw:
        note["note_id"] = _text(raw["note_id"], f"{where}.note_id")
    if not (note["title"].strip() or note["content"].strip()):
        raise RequestError(f"{where}: the note is empty (give a title or a content)")
    size = len(note["title"]) + len(note["content"]) + sum(map(len, hashtags))
    if size > max_chars:
        raise RequestError(f"{where}: the note has {size} characters, more than the limit of {max_chars}")
    return note


def parse_notes(raws: Any, where: str, max_notes: int, max_chars: int) -> list[dict[str, Any]]:
    """Validate a list of notes (the v1 ``instances`` or a v2 BYTES input)."""
    if not isinstance(raws, list):
        raise RequestError(f"{where}: expected a list, got {type(raws).__name__}")
    if not raws:
        raise RequestError(f"{where}: is empty")
    if len(raws) > max_notes:
        raise RequestError(f"{where}: {len(raws)} notes in one request, more than the limit of {max_notes}")
    return [parse_note(raw, f"{where}[{i}]", max_chars) for i, raw in enumerate(raws)]


def parse_top_k(value: Any, where: str, max_k: int) -> int:
    """A positive integer at most ``max_k``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and (not math.isfinite(value) or not value.is_integer())):
        raise RequestError(f"{where}: expected an integer, got {value!r}")
    if not 1 <= int(value) <= max_k:
        raise RequestError(f"{where}: must be between 1 and {max_k}, got {int(value)}")
    return int(value)
