"""Related notes: the recommender's logic over the Milvus index, the Feast online store and an embedder.

A query is a stored note (``{"note_id": ...}``) or a note given as text or as an object. A stored note's
vector comes from Milvus; a note that is not indexed but has Feast features is embedded from them; a new
note is embedded as given and, with ``upsert`` (and a ``note_id``), written into the serving collection so
that it is recommendable at once (cold start). Every hit comes with its score, its category and its Feast
online features; the query note is never among its own results.

The embedder is any async callable ``notes -> (vectors, model_version)``: the predictor in-process or over
HTTP (``serving/recommender.py``). Concurrent requests share their Milvus searches, their Milvus reads of
stored vectors and their Feast reads (:class:`notellm.batching.MicroBatcher`): Milvus Lite charges about
30-90 ms per search call.

Nothing here imports kserve; :class:`RecommendClient` calls a running recommender over HTTP.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from notellm.batching import MicroBatcher
from notellm.config import ServingConfig
from notellm.errors import NoteLLMError
from notellm.note_requests import RequestError, check_unicode, parse_note, parse_top_k

if TYPE_CHECKING:
    from notellm.vectorstore import Hit, NoteIndex

#: ``notes -> (L2-normalised float32 vectors (n, d), model_version)``
EmbedFn = Callable[[list[dict[str, Any]]], Awaitable[tuple[np.ndarray, str]]]
REQUEST_KEYS = {"instances", "top_k", "upsert", "parameters"}
OPTION_KEYS = {"top_k", "upsert"}
NOTE_ID_MAX_CHARS = 512  # the Milvus primary key's max_length (notellm.vectorstore.NOTE_ID_MAX_LEN)
CATEGORY_MAX_CHARS = 256  # notellm.vectorstore.CATEGORY_MAX_LEN
VERSION_TTL_S = 5.0
FEATURE_BATCH_IDS = 4096  # note ids in one Feast read shared by concurrent requests


class ServiceUnavailable(NoteLLMError):
    """A backend (Milvus, Feast or the predictor) cannot answer now; the servers turn it into a 503."""


class NoteNotFound(NoteLLMError):
    """Requested note ids are neither in the vector index nor in the feature store (a 404)."""

    def __init__(self, note_ids: Sequence[str]) -> None:
        self.note_ids = list(note_ids)
        shown = ", ".join(repr(n) for n in self.note_ids[:10])
        more = f" and {len(self.note_ids) - 10} more" if len(self.note_ids) > 10 else ""
        super().__init__(f"unknown note_id {shown}{more}: neither indexed nor in the feature store "
                         "(send the note's text instead)")


class FeatureSource(Protocol):
    """Online note features: ``notellm.features.FeatureRepo`` or :class:`FeatureServerClient`."""

    def online_features(self, note_ids: Sequence[str]) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class Query:
    """One instance: ``note`` is None for a stored note looked up by ``note_id``."""

    note_id: str | None
    note: dict[str, Any] | None


@dataclass(frozen=True)
class RecommendRequest:
    queries: list[Query]
    top_k: int
    upsert: bool


def _note_id(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RequestError(f"{where}: expected a non-empty string, got {value!r}")
    if len(value) > NOTE_ID_MAX_CHARS:
        raise RequestError(f"{where}: longer than {NOTE_ID_MAX_CHARS} characters")
    return check_unicode(value, where)


def parse_body(raw: bytes | str) -> Any:
    """A request body that arrived as raw bytes (no JSON content type), parsed as JSON."""
    try:
        return json.loads(raw)
    except UnicodeDecodeError as exc:
        raise RequestError(f"request: the body is not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise RequestError(f"request: the body is not valid JSON ({exc.msg} at line {exc.lineno} "
                           f"column {exc.colno})") from exc
    except RecursionError as exc:
        raise RequestError("request: the body is JSON nested too deeply") from exc


def parse_request(body: Any, cfg: ServingConfig) -> RecommendRequest:
    """Validate ``{"instances": [...], "top_k": k, "upsert": bool}`` (options also under ``parameters``).

    An instance is ``{"note_id": "..."}`` (a stored note), a note object (title, content, hashtags,
    category, optional note_id) or a plain string. Every problem is a RequestError naming the field.
    """
    if not isinstance(body, dict):
        raise RequestError(f"request: expected a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - REQUEST_KEYS)
    if unknown:
        raise RequestError(f"request: unknown field(s) {unknown}; expected {sorted(REQUEST_KEYS)}")
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise RequestError(f"parameters: expected an object, got {type(params).__name__}")
    unknown = sorted(set(params) - OPTION_KEYS)
    if unknown:
        raise RequestError(f"parameters: unknown field(s) {unknown}; expected {sorted(OPTION_KEYS)}")
    options = {**params, **{k: body[k] for k in OPTION_KEYS if k in body}}
    top_k = parse_top_k(options.get("top_k", cfg.default_top_k), "top_k", cfg.max_top_k)
    upsert = options.get("upsert", False)
    if not isinstance(upsert, bool):
        raise RequestError(f"upsert: expected true or false, got {upsert!r}")
    if "instances" not in body:
        raise RequestError("instances: missing (a list of {\"note_id\": ...} or notes)")
    raws = body["instances"]
    if not isinstance(raws, list):
        raise RequestError(f"instances: expected a list, got {type(raws).__name__}")
    if not raws:
        raise RequestError("instances: is empty")
    if len(raws) > cfg.max_request_notes:
        raise RequestError(f"instances: {len(raws)} notes in one request, more than the limit of "
                           f"{cfg.max_request_notes}")
    queries = []
    for i, raw in enumerate(raws):
        where = f"instances[{i}]"
        if isinstance(raw, dict) and set(raw) == {"note_id"}:
            queries.append(Query(_note_id(raw["note_id"], f"{where}.note_id"), None))
            continue
        note = parse_note(raw, where, cfg.max_note_chars)
        note_id = _note_id(note["note_id"], f"{where}.note_id") if "note_id" in note else None
        if upsert and note_id is None:
            raise RequestError(f"{where}: upsert needs a note_id for the new note")
        if len(note["category"]) > CATEGORY_MAX_CHARS:
            raise RequestError(f"{where}.category: longer than {CATEGORY_MAX_CHARS} characters")
        if upsert and any(q.note_id == note_id and q.note is not None for q in queries):
            raise RequestError(f"{where}.note_id: {note_id!r} is upserted twice in one request")
        queries.append(Query(note_id, note))
    return RecommendRequest(queries, top_k, upsert)


def _features_to_note(row: dict[str, Any]) -> dict[str, Any]:
    return {"note_id": row["note_id"], "title": row.get("title") or "", "content": row.get("content") or "",
            "hashtags": list(row.get("hashtags") or []), "category": row.get("category") or ""}


def _public_features(row: dict[str, Any]) -> dict[str, Any] | None:
    if not row.get("found"):
        return None
    return {k: v for k, v in row.items() if k not in ("note_id", "found")}


class Recommender:
    """Answers parsed requests; every backend failure becomes :class:`ServiceUnavailable`."""

    def __init__(self, index: NoteIndex, features: FeatureSource | None, embed: EmbedFn,
                 cfg: ServingConfig) -> None:
        self.index = index
        self.features = features
        self.embed = embed
        self.cfg = cfg
        wait = cfg.max_wait_ms / 1000
        self._search = MicroBatcher(self._search_batch, index.config.search_batch_size, wait)
        self._get = MicroBatcher(self._get_batch, index.config.search_batch_size, wait)
        self._rows = MicroBatcher(self._read_features, FEATURE_BATCH_IDS, wait)
        self._feature_lock = threading.Lock()  # Feast's sqlite store shares one connection across threads
        self._version: tuple[float, str] | None = None

    # --- backends (each call runs in a worker thread) ---------------------------------------------

    async def _milvus(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args)
        except NoteLLMError as exc:
            raise ServiceUnavailable(f"the vector index cannot {what}: {exc}") from exc

    def _search_batch(self, items: list[tuple[np.ndarray, int, str | None]]) -> list[list[Hit]]:
        """One search call for the queries of concurrent requests, each cut to its own k."""
        k = max(item[1] for item in items)
        hits = self.index.search(np.stack([item[0] for item in items]), k,
                                 exclude_ids=[item[2] for item in items])
        return [row[:item[1]] for row, item in zip(hits, items, strict=True)]

    async def _milvus_batched(self, what: str, batcher: MicroBatcher, items: list[Any]) -> list[Any]:
        """:meth:`_milvus` for a call shared with concurrent requests through ``batcher``."""
        try:
            return await batcher.submit(items)
        except NoteLLMError as exc:
            raise ServiceUnavailable(f"the vector index cannot {what}: {exc}") from exc

    def _get_batch(self, note_ids: list[str]) -> list[np.ndarray | None]:
        """One Milvus read for the note ids of concurrent requests (None where a note is not indexed)."""
        stored = self.index.get_vectors(list(dict.fromkeys(note_ids)))
        return [stored.get(n) for n in note_ids]

    def _read_features(self, note_ids: list[str]) -> list[dict[str, Any]]:
        """One Feast read for the note ids of concurrent requests, a row per id."""
        assert self.features is not None
        unique = list(dict.fromkeys(note_ids))
        with self._feature_lock:
            rows = dict(zip(unique, self.features.online_features(unique), strict=True))
        return [rows[n] for n in note_ids]

    async def online_features(self, note_ids: Sequence[str]) -> list[dict[str, Any]]:
        """Feast rows per id (``found`` False for unknown ids); all not found without a feature source."""
        if self.features is None:
            return [{"note_id": n, "found": False} for n in note_ids]
        try:
            return await self._rows.submit(list(note_ids))
        except Exception as exc:  # noqa: BLE001 - any Feast failure: the store cannot answer
            raise ServiceUnavailable(f"the feature store cannot read online features: {exc}") from exc

    async def _serving_version(self) -> str:
        now = time.monotonic()
        if self._version is None or now - self._version[0] > VERSION_TTL_S:
            info = await self._milvus("describe the serving collection", self.index.describe)
            self._version = (now, info.model_version)
        return self._version[1]

    async def _embed(self, notes: list[dict[str, Any]]) -> np.ndarray:
        vectors, version = await self.embed(notes)
        served = await self._serving_version()
        if version != served:
            raise ServiceUnavailable(
                f"the predictor serves model {version!r} but the serving collection holds vectors of model "
                f"{served!r}: deploy and index the same model")
        return vectors

    # --- requests -----------------------------------------------------------------------------------

    async def recommend(self, request: RecommendRequest) -> list[dict[str, Any]]:
        """One result per query: ``note_id``, ``source`` (index, features, request), ``upserted``, ``related``."""
        queries = request.queries
        sources = ["request"] * len(queries)
        vectors: dict[int, np.ndarray] = {}
        notes = {i: q.note for i, q in enumerate(queries) if q.note is not None}
        lookups = {i: q.note_id for i, q in enumerate(queries) if q.note is None and q.note_id is not None}
        if lookups:
            stored, described = await self._lookup(list(lookups.values()))
            for i, note_id in lookups.items():
                if note_id in stored:
                    vectors[i], sources[i] = stored[note_id], "index"
                else:
                    notes[i], sources[i] = described[note_id], "features"
        if notes:
            order = sorted(notes)
            vectors.update(zip(order, await self._embed([notes[i] for i in order]), strict=True))
        matrix = [vectors[i] for i in range(len(queries))]
        hits = await self._search_hits(matrix, request.top_k, [q.note_id for q in queries])
        upserted = [request.upsert and q.note is not None for q in queries]
        if any(upserted):
            await self._upsert([(q, v) for q, v, up in zip(queries, matrix, upserted) if up])
        return await self._results(queries, sources, upserted, hits)

    async def _lookup(self, note_ids: list[str]) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
        """Stored vectors of the indexed notes, and the other notes as described by their Feast features."""
        found = await self._milvus_batched("read note vectors", self._get, note_ids)
        stored = {n: v for n, v in zip(note_ids, found, strict=True) if v is not None}
        missing = list(dict.fromkeys(n for n in note_ids if n not in stored))
        if not missing:
            return stored, {}
        rows = await self.online_features(missing)
        unknown = [row["note_id"] for row in rows if not row["found"]]
        if unknown:
            raise NoteNotFound(unknown)
        return stored, {row["note_id"]: _features_to_note(row) for row in rows}

    async def _search_hits(self, vectors: list[np.ndarray], k: int,
                           exclude: list[str | None]) -> list[list[Hit]]:
        return await self._milvus_batched("search", self._search,
                                          [(v, k, e) for v, e in zip(vectors, exclude, strict=True)])

    async def _upsert(self, rows: list[tuple[Query, np.ndarray]]) -> None:
        version = await self._serving_version()
        ids = [q.note_id for q, _ in rows]
        categories = [q.note["category"] if q.note else "" for q, _ in rows]
        await self._milvus("upsert the new notes", self.index.upsert, ids,
                           np.stack([v for _, v in rows]), categories, version)

    async def _results(self, queries: list[Query], sources: list[str], upserted: list[bool],
                       hits: list[list[Hit]]) -> list[dict[str, Any]]:
        hit_ids = list(dict.fromkeys(h.note_id for row in hits for h in row))
        rows = {r["note_id"]: r for r in await self.online_features(hit_ids)} if hit_ids else {}
        return [{
            "note_id": q.note_id, "source": source, "upserted": up,
            "related": [{"note_id": h.note_id, "score": h.score, "category": h.category,
                         "features": _public_features(rows[h.note_id])} for h in row],
        } for q, source, up, row in zip(queries, sources, upserted, hits, strict=True)]


class FeatureServerClient:
    """Online features from a Feast feature server (``feast serve``) over HTTP, like ``FeatureRepo``."""

    def __init__(self, url: str, feature_service: str = "note_service", timeout_s: float = 10.0) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.feature_service = feature_service
        self._client = httpx.Client(timeout=timeout_s)

    def online_features(self, note_ids: Sequence[str]) -> list[dict[str, Any]]:
        import httpx

        ids = list(note_ids)
        if not ids:
            return []
        try:
            response = self._client.post(f"{self.url}/get-online-features", json={
                "feature_service": self.feature_service, "entities": {"note_id": ids}})
        except httpx.HTTPError as exc:
            raise NoteLLMError(f"cannot reach the Feast feature server at {self.url}: {exc}") from exc
        if not response.is_success:
            raise NoteLLMError(f"the Feast feature server at {self.url} answered {response.status_code}: "
                               f"{response.text[:500]}")
        body = response.json()
        names = body["metadata"]["feature_names"]
        columns = dict(zip(names, body["results"], strict=True))
        features = [n for n in names if n != "note_id"]
        out = []
        for j, note_id in enumerate(ids):
            found = any(columns[n]["statuses"][j] not in ("NOT_FOUND", "NULL_VALUE") for n in features)
            row: dict[str, Any] = {"note_id": note_id, "found": found}
            row.update({n: columns[n]["values"][j] if found else None for n in features})
            out.append(row)
        return out


class RecommendClient:
    """Calls a running recommender: ``RecommendClient("http://127.0.0.1:8080").related("n1", 10)``."""

    def __init__(self, base_url: str, model_name: str = ServingConfig().recommender_name,
                 timeout_s: float = 60.0) -> None:
        import httpx

        self.url = f"{base_url.rstrip('/')}/v1/models/{model_name}:predict"
        self._client = httpx.Client(timeout=timeout_s)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RecommendClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def recommend(self, instances: list[Any], top_k: int | None = None,
                  upsert: bool = False) -> list[dict[str, Any]]:
        """The raw call: one result per instance (see :meth:`Recommender.recommend`)."""
        import httpx

        body: dict[str, Any] = {"instances": instances, "upsert": upsert}
        if top_k is not None:
            body["top_k"] = top_k
        try:
            response = self._client.post(self.url, json=body)
        except httpx.HTTPError as exc:
            raise NoteLLMError(f"cannot reach the recommender at {self.url}: {exc}") from exc
        if not response.is_success:
            try:
                reason = response.json().get("error") or response.text
            except ValueError:
                reason = response.text
            raise NoteLLMError(f"the recommender answered {response.status_code}: {reason}")
        return response.json()["predictions"]

    def related(self, note_id: str, k: int | None = None) -> list[dict[str, Any]]:
        """Notes related to a stored note, best first: note_id, score, category, features."""
        return self.recommend([{"note_id": note_id}], k)[0]["related"]

    def for_text(self, note: dict[str, Any] | str, k: int | None = None, upsert: bool = False) -> dict[str, Any]:
        """Related notes for a new note (an object or plain text); ``upsert`` also indexes it (needs note_id)."""
        return self.recommend([note], k, upsert)[0]
