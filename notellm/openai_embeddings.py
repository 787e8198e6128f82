"""The OpenAI embeddings API (``POST /openai/v1/embeddings``) over the note embedder: requests and answers.

A request is ``{"model": name, "input": str | [str], "encoding_format": "float" | "base64",
"dimensions": d, "user": ...}``. Each input string is read exactly as a v1 text instance
(:func:`notellm.note_requests.parse_note`): plain text is the note's ``content`` (empty title, no hashtags,
no category), and a string that starts with ``{`` is a whole note as JSON. So one string gets the same vector
from v1, v2 and this route. Token arrays are refused (the prompt wraps the text, so token ids cannot be
embedded as sent); ``dimensions`` is accepted only when it equals the model's d (NoteLLM vectors cannot be
truncated). The answer is OpenAI's ``{"object": "list", "data": [{"object": "embedding", "index": i,
"embedding": [...] | base64 of little-endian float32}], "model": name, "usage": {"prompt_tokens": n,
"total_tokens": n}}``, where n counts the prompt tokens the model ran (template included).

Errors use OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from notellm.note_requests import RequestError, parse_notes

REQUEST_FIELDS = {"model", "input", "encoding_format", "dimensions", "user"}
ENCODINGS = ("float", "base64")


class OpenAIRequestError(RequestError):
    """A request the OpenAI route refuses: ``status`` (400 or 404), the offending ``param``, OpenAI's ``code``."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.param, self.status, self.code = param, status, code

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status == 400 else "not_found_error"
        return {"error": {"message": str(self), "type": kind, "param": self.param, "code": self.code}}


def error_body(exc: RequestError) -> tuple[int, dict[str, Any]]:
    """Status and OpenAI error body for any request error (a plain RequestError: 400, param ``input``)."""
    if not isinstance(exc, OpenAIRequestError):
        exc = OpenAIRequestError(str(exc), "input")
    return exc.status, exc.body()


def parse_request(payload: Any, model_name: str, dim: int, max_notes: int,
                  max_chars: int) -> tuple[list[dict[str, Any]], str]:
    """The validated notes and the encoding format of a request body, or an :class:`OpenAIRequestError`."""
    if not isinstance(payload, dict):
        raise OpenAIRequestError(f"request: expected a JSON object, got {type(payload).__name__}")
    unknown = sorted(set(payload) - REQUEST_FIELDS)
    if unknown:
        raise OpenAIRequestError(f"unknown field(s) {unknown}; expected {sorted(REQUEST_FIELDS)}", unknown[0])
    model = payload.get("model")
    if not isinstance(model, str):
        raise OpenAIRequestError("model: missing (the served model's name)", "model")
    if model != model_name:
        raise OpenAIRequestError(f"the model {model!r} does not exist; this server has {model_name!r}",
                                 "model", 404, "model_not_found")
    fmt = payload.get("encoding_format") or "float"
    if fmt not in ENCODINGS:
        raise OpenAIRequestError(f"encoding_format: expected one of {list(ENCODINGS)}, got {fmt!r}",
                                 "encoding_format")
    dimensions = payload.get("dimensions")
    if dimensions is not None and dimensions != dim:
        raise OpenAIRequestError(f"dimensions: this model's vectors have {dim} dimensions and cannot be "
                                 f"truncated, got {dimensions!r}", "dimensions")
    if "input" not in payload:
        raise OpenAIRequestError("input: missing (a string or a list of strings)", "input")
    raw = payload["input"]
    raws = [raw] if isinstance(raw, str) else raw
    if isinstance(raws, list) and any(isinstance(r, (int, list)) and not isinstance(r, bool) for r in raws):
        raise OpenAIRequestError("input: token arrays are not supported (the note prompt wraps the text): "
                                 "send strings", "input")
    if isinstance(raws, list) and not all(isinstance(r, str) for r in raws):
        bad = next(type(r).__name__ for r in raws if not isinstance(r, str))
        raise OpenAIRequestError(f"input: expected a string or a list of strings, got a list holding {bad}",
                                 "input")
    return parse_notes(raws, "input", max_notes, max_chars), fmt


def response(vectors: np.ndarray, model_name: str, prompt_tokens: int, encoding_format: str) -> dict[str, Any]:
    """OpenAI's embeddings answer for float32 ``vectors`` (one row per input, in order)."""
    vectors = np.ascontiguousarray(vectors, dtype="<f4")
    if encoding_format == "base64":
        encoded: list[Any] = [base64.b64encode(row.tobytes()).decode("ascii") for row in vectors]
    else:
        encoded = vectors.tolist()
    return {"object": "list", "model": model_name,
            "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(encoded)],
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}
