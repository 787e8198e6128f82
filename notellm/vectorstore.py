"""Note vectors in Milvus: one collection per model version, served through an alias.

The index step builds a complete new collection (insert in batches, flush, HNSW index, load, count check),
then points the serving alias at it in one step, so readers of the alias never see an empty or partial
collection. An index run killed between the build and the swap leaves a complete collection that was never
served: :meth:`NoteIndex.publish` (the index step) swaps to it instead of building again when it holds exactly
the rows to publish (same content fingerprint), else builds a new one.

Retention, applied after every swap (:meth:`NoteIndex.prune`): the serving collection and the newest
``IndexConfig.keep_collections - 1`` other complete collections (by build time; rollback targets, a complete
build that was never swapped in counts among them) are kept, older complete ones are dropped. Incomplete
collections (builds cut off) older than the serving one are dropped; newer ones may be builds still running.

``uri`` is a local ``*.db`` path (embedded Milvus Lite: one process per database) or ``http://host:port``
(a Milvus standalone or cluster, or a ``milvus-lite server`` that :func:`start_lite_server` starts so that
several processes can share one database). Milvus Lite serves a ``*.db`` path from inside the process that
opened it until that process exits; :meth:`NoteIndex.close` of the process's last open index on the path
releases the database, so another process (e.g. the next pipeline step) can open it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple, TypeVar

import numpy as np
from pymilvus import DataType, MilvusClient, MilvusException
from tqdm import tqdm

from notellm.errors import ConfigError, DataError, NoteLLMError
from notellm.index_config import IndexConfig

NOTE_ID_MAX_LEN = 512
CATEGORY_MAX_LEN = 256
MODEL_VERSION_MAX_LEN = 256
_GET_BATCH = 1_000
_PROP_ALIAS = "notellm.alias"
_PROP_MODEL_VERSION = "notellm.model_version"
_PROP_ROWS = "notellm.rows"
_PROP_CREATED = "notellm.created"
_PROP_COMPLETE = "notellm.complete"
_PROP_FINGERPRINT = "notellm.fingerprint"
_PROP_SERVED = "notellm.served"
#: Open NoteIndex objects per embedded Milvus Lite database (absolute path) in this process.
_LITE_OPEN: Counter[str] = Counter()
_T = TypeVar("_T")


class Hit(NamedTuple):
    """One search result: the note, its cosine similarity to the query (higher is closer), its category."""

    note_id: str
    score: float
    category: str


@dataclass(frozen=True)
class CollectionInfo:
    """A collection built by :meth:`NoteIndex.build_collection`, from its stored properties."""

    name: str
    model_version: str
    rows: int
    created: float
    complete: bool
    fingerprint: str = ""
    served: bool = False


class Published(NamedTuple):
    """What :meth:`NoteIndex.publish` did: the serving collection, the one before, whether it was reused."""

    collection: str
    previous: str | None
    reused: bool


class UnknownNoteError(NoteLLMError):
    """Some requested note ids are not in the serving collection."""

    def __init__(self, note_ids: Sequence[str], collection: str) -> None:
        self.note_ids = list(note_ids)
        shown = ", ".join(repr(n) for n in self.note_ids[:10])
        more = f" and {len(self.note_ids) - 10} more" if len(self.note_ids) > 10 else ""
        super().__init__(f"unknown note_id {shown}{more} (not in collection {collection!r})")


def sanitise_name(text: str, max_len: int = 80) -> str:
    """Turn ``text`` into a valid piece of a Milvus name (letters, digits, underscores)."""
    cleaned = re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_")[:max_len]
    return cleaned or "model"


def _is_server_uri(uri: str) -> bool:
    return uri.startswith(("http://", "https://", "tcp://", "grpc://", "unix:"))


def _is_local(uri: str) -> bool:
    return not _is_server_uri(uri) or re.match(r"^https?://(127\.0\.0\.1|localhost)[:/]", uri) is not None


def connect(uri: str, token: str = "", timeout_s: float = 30.0) -> MilvusClient:
    """Open a MilvusClient on ``uri``; a clear NoteLLMError when it cannot be reached or opened."""
    if not _is_server_uri(uri):
        if not uri.endswith(".db"):
            raise ConfigError(f"index.uri {uri!r}: use a local path ending in .db (Milvus Lite) or http://host:port")
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
    # Milvus Lite's gRPC server allows a keepalive ping per 5 minutes during a call: pymilvus's default
    # (every 10 s) gets the connection closed ("too_many_pings") while a long index build runs.
    options = {"grpc_options": {"grpc.keepalive_time_ms": 360_000}} if _is_local(uri) else {}
    try:
        return MilvusClient(uri=uri, token=token, timeout=timeout_s, **options)
    except MilvusException as exc:
        hint = ("" if _is_server_uri(uri) else
                " (a Milvus Lite database opens in one process only: for several processes run "
                "`milvus-lite server --data-dir DIR` and connect with http://127.0.0.1:PORT)")
        raise NoteLLMError(f"cannot reach Milvus at {uri}: {exc.message}{hint}") from exc


class NoteIndex:
    """Note vectors for one serving alias: build per model version, swap, upsert, search."""

    def __init__(self, config: IndexConfig | None = None, *, uri: str | None = None) -> None:
        self.config = config or IndexConfig()
        self.uri = uri or self.config.uri
        token = os.environ.get(self.config.token_env, "") if self.config.token_env else ""
        self.client = connect(self.uri, token, self.config.timeout_s)
        self.alias = self.config.alias
        self._lite_path = None if _is_server_uri(self.uri) else os.path.abspath(self.uri)
        if self._lite_path:
            _LITE_OPEN[self._lite_path] += 1

    def close(self) -> None:
        """Close the connection; the last open index on a Milvus Lite path in this process releases it."""
        self.client.close()
        path, self._lite_path = self._lite_path, None
        if path:
            _LITE_OPEN[path] -= 1
            if _LITE_OPEN[path] <= 0:
                del _LITE_OPEN[path]
                from milvus_lite.server_manager import server_manager_instance

                server_manager_instance.release_server(path)

    def __enter__(self) -> NoteIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- calls into Milvus -------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        try:
            return fn(*args, **kwargs)
        except MilvusException as exc:
            raise NoteLLMError(f"Milvus at {self.uri}: {what} failed: {exc.message or exc}") from exc

    def _read(self, what: str, target: str, fn: Callable[[], _T],
              diagnose: Callable[[], None] | None = None) -> _T:
        """Run a read on ``target``; load it once if it is not loaded (e.g. after a Milvus Lite restart).

        On other failures ``diagnose`` may raise a clearer error than Milvus gives.
        """
        try:
            return fn()
        except MilvusException as first:
            self._check_target(target)
            state = self._call(f"get load state of {target!r}", self.client.get_load_state, target)
            if str(state.get("state")) != "Loaded":
                self._call(f"load {target!r}", self.client.load_collection, target)
                return self._call(what, fn)
            if diagnose is not None:
                diagnose()
            raise NoteLLMError(f"Milvus at {self.uri}: {what} failed: {first.message or first}") from first

    def _check_target(self, target: str) -> None:
        if target == self.alias and self.serving_collection() is None:
            raise NoteLLMError(f"no serving collection: alias {self.alias!r} does not exist at {self.uri} "
                               "(run the index step first)")
        if target != self.alias and not self._call("has_collection", self.client.has_collection, target):
            raise NoteLLMError(f"collection {target!r} does not exist at {self.uri}")

    # --- collections and the alias ----------------------------------------------------------------

    def serving_collection(self) -> str | None:
        """The collection the alias points to, or None before the first swap."""
        aliases = self._call("list aliases", self.client.list_aliases)["aliases"]
        if self.alias not in aliases:
            return None
        return self._call("describe alias", self.client.describe_alias, self.alias)["collection_name"]

    def describe(self, name: str | None = None) -> CollectionInfo:
        """Properties of a collection this class built (default: the serving one)."""
        target = name or self.alias
        self._check_target(target)
        info = self._info(target)
        if info is None:
            raise NoteLLMError(f"collection {target!r} was not built by notellm for alias {self.alias!r}")
        return info

    def _info(self, name: str) -> CollectionInfo | None:
        desc = self._call(f"describe {name!r}", self.client.describe_collection, name)
        props = desc.get("properties") or {}
        if props.get(_PROP_ALIAS) != self.alias or _PROP_MODEL_VERSION not in props:
            return None
        return CollectionInfo(
            name=desc["collection_name"], model_version=props[_PROP_MODEL_VERSION],
            rows=int(props[_PROP_ROWS]), created=float(props[_PROP_CREATED]),
            complete=props.get(_PROP_COMPLETE) == "true", fingerprint=props.get(_PROP_FINGERPRINT, ""),
            served=props.get(_PROP_SERVED) == "true")

    def collections(self) -> list[CollectionInfo]:
        """Collections built for this alias, oldest first."""
        names = self._call("list collections", self.client.list_collections)
        infos = [self._info(n) for n in names if n.startswith(f"{self.alias}__")]
        return sorted((i for i in infos if i is not None), key=lambda i: (i.created, i.name))

    def _next_name(self, model_version: str) -> str:
        stem = f"{self.alias}__{sanitise_name(model_version)}__"
        taken = [n[len(stem):] for n in self._call("list collections", self.client.list_collections)
                 if n.startswith(stem)]
        generation = 1 + max((int(g) for g in taken if g.isdigit()), default=0)
        return f"{stem}{generation}"

    def _schema(self, dim: int) -> Any:
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("note_id", DataType.VARCHAR, is_primary=True, max_length=NOTE_ID_MAX_LEN)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("category", DataType.VARCHAR, max_length=CATEGORY_MAX_LEN)
        schema.add_field("model_version", DataType.VARCHAR, max_length=MODEL_VERSION_MAX_LEN)
        return schema

    def build_collection(self, model_version: str, note_ids: Sequence[str], vectors: Any,
                         categories: Sequence[str], *, progress: bool = True) -> str:
        """Create a new collection for ``model_version`` holding exactly these notes; return its name.

        Inserts in batches, flushes, builds the HNSW/COSINE index, loads, and checks the row count before
        marking the collection complete. On any failure the new collection is dropped. The alias is not
        touched: call :meth:`swap_alias` with the returned name.
        """
        ids, matrix, cats = _check_rows(note_ids, vectors, categories, model_version)
        return self._build(model_version, ids, matrix, cats, _fingerprint(model_version, ids, matrix, cats),
                           progress=progress)

    def publish(self, model_version: str, note_ids: Sequence[str], vectors: Any, categories: Sequence[str],
                *, progress: bool = True) -> Published:
        """Serve exactly these notes through the alias: build a collection (or reuse one), then swap.

        A complete collection that was never served and holds these very rows (an index run killed before
        its swap left it) is swapped in as it is; otherwise a new one is built.
        """
        ids, matrix, cats = _check_rows(note_ids, vectors, categories, model_version)
        fingerprint = _fingerprint(model_version, ids, matrix, cats)
        orphan = self._unserved_build(fingerprint, len(ids))
        name = orphan or self._build(model_version, ids, matrix, cats, fingerprint, progress=progress)
        return Published(name, self.swap_alias(name), orphan is not None)

    def _unserved_build(self, fingerprint: str, rows: int) -> str | None:
        """The newest complete, never-served collection holding exactly the rows of ``fingerprint``."""
        for info in reversed(self.collections()):
            if (info.complete and not info.served and info.fingerprint == fingerprint
                    and self.count(info.name) == rows):
                return info.name
        return None

    def _build(self, model_version: str, ids: list[str], matrix: np.ndarray, cats: list[str],
               fingerprint: str, *, progress: bool) -> str:
        if not ids:
            raise DataError("no notes to index", column="note_id")
        name = self._next_name(model_version)
        props = {_PROP_ALIAS: self.alias, _PROP_MODEL_VERSION: model_version, _PROP_ROWS: str(len(ids)),
                 _PROP_CREATED: repr(time.time()), _PROP_COMPLETE: "false",
                 _PROP_FINGERPRINT: fingerprint}
        self._call(f"create collection {name!r}", self.client.create_collection, name,
                   schema=self._schema(matrix.shape[1]), properties=props, consistency_level="Strong")
        try:
            self._insert(name, ids, matrix, cats, model_version, upsert=False, progress=progress)
            self._call(f"flush {name!r}", self.client.flush, name)
            index_params = self.client.prepare_index_params()
            index_params.add_index(
                field_name="vector", index_type="HNSW", metric_type=self.config.metric,
                params={"M": self.config.hnsw_m, "efConstruction": self.config.hnsw_ef_construction})
            try:
                self._call(f"create index on {name!r}", self.client.create_index, name, index_params)
            except NoteLLMError:
                # pymilvus retries a call whose connection dropped; the retry then finds the index built
                built = self._call(f"list indexes of {name!r}", self.client.list_indexes, name,
                                   field_name="vector")
                if not built:
                    raise
            self._call(f"load {name!r}", self.client.load_collection, name)
            stored = self.count(name)
            if stored != len(ids):
                raise NoteLLMError(
                    f"collection {name!r} holds {stored} rows after the build, expected {len(ids)}")
            self._call(f"mark {name!r} complete", self.client.alter_collection_properties, name,
                       properties={_PROP_COMPLETE: "true"})
        except BaseException:
            with contextlib.suppress(MilvusException):
                self.client.drop_collection(name)
            raise
        return name

    def swap_alias(self, name: str, keep: int | None = None) -> str | None:
        """Point the alias at the complete collection ``name``; drop old ones beyond ``keep``.

        Returns the collection the alias pointed to before (None on the first swap). ``keep`` (default
        ``IndexConfig.keep_collections``) counts the serving collection: 2 keeps one to roll back to.
        """
        info = self.describe(name)
        if not info.complete:
            raise NoteLLMError(
                f"collection {name!r} is not complete (its build did not finish): not serving it")
        state = self._call(f"get load state of {name!r}", self.client.get_load_state, name)
        if str(state.get("state")) != "Loaded":
            self._call(f"load {name!r}", self.client.load_collection, name)
        # Marked before the swap: a collection that ever served (and may have taken upserts) is never reused.
        self._call(f"mark {name!r} served", self.client.alter_collection_properties, name,
                   properties={_PROP_SERVED: "true"})
        previous = self.serving_collection()
        if previous is None:
            self._call(f"create alias {self.alias!r}", self.client.create_alias, name, self.alias)
        elif previous != name:
            self._call(f"alter alias {self.alias!r}", self.client.alter_alias, name, self.alias)
        self.prune(keep)
        return previous

    def prune(self, keep: int | None = None) -> list[str]:
        """Drop this alias's collections but the serving one and the newest ``keep - 1`` complete others.

        Incomplete collections (failed builds) older than the serving collection are dropped too; newer
        ones may be builds still running and are left alone. Returns the dropped names.
        """
        keep = self.config.keep_collections if keep is None else keep
        if keep < 1:
            raise ConfigError("keep must be at least 1 (the serving collection)")
        serving = self.serving_collection()
        infos = self.collections()
        serving_created = next((i.created for i in infos if i.name == serving), float("inf"))
        others = [i for i in infos if i.name != serving and i.complete]
        kept = {i.name for i in others[-(keep - 1):]} if keep > 1 else set()
        dropped = [i.name for i in infos if i.name != serving and i.name not in kept
                   and (i.complete or i.created < serving_created)]
        for name in dropped:
            self._call(f"drop {name!r}", self.client.drop_collection, name)
        return dropped

    # --- writes -------------------------------------------------------------------------------------

    def _insert(self, name: str, ids: list[str], matrix: np.ndarray, cats: list[str], model_version: str,
                *, upsert: bool, progress: bool) -> None:
        op = self.client.upsert if upsert else self.client.insert
        size = self.config.insert_batch_size
        with tqdm(total=len(ids), unit="note", desc=f"{'upsert' if upsert else 'insert'} {name}",
                  disable=not progress) as bar:
            for start in range(0, len(ids), size):
                stop = min(start + size, len(ids))
                rows = [{"note_id": ids[i], "vector": matrix[i].tolist(), "category": cats[i],
                         "model_version": model_version} for i in range(start, stop)]
                self._call(f"{'upsert' if upsert else 'insert'} into {name!r}", op, name, rows)
                bar.update(stop - start)

    def upsert(self, note_ids: Sequence[str], vectors: Any, categories: Sequence[str], model_version: str,
               *, progress: bool = False) -> int:
        """Insert or replace notes in the serving collection (idempotent); returns the number written.

        ``model_version`` must be the serving collection's: vectors of another model live in another space.
        """
        ids, matrix, cats = _check_rows(note_ids, vectors, categories, model_version)
        info = self.describe()
        if info.model_version != model_version:
            raise NoteLLMError(f"upsert of model version {model_version!r} into {info.name!r}, which serves "
                               f"model version {info.model_version!r}")
        if ids:
            self._insert(info.name, ids, matrix, cats, model_version, upsert=True, progress=progress)
        return len(ids)

    # --- reads --------------------------------------------------------------------------------------

    def count(self, collection: str | None = None) -> int:
        """Rows in ``collection`` (default: the serving one, through the alias)."""
        target = collection or self.alias
        rows = self._read(f"count {target!r}", target, lambda: self.client.query(
            target, filter="", output_fields=["count(*)"], timeout=self.config.timeout_s))
        return int(rows[0]["count(*)"])

    def get_vectors(self, note_ids: Sequence[str], collection: str | None = None) -> dict[str, np.ndarray]:
        """Stored vectors of the notes found (float32); ids not in the collection are left out."""
        target = collection or self.alias
        found: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(note_ids))
        for start in range(0, len(unique), _GET_BATCH):
            chunk = unique[start:start + _GET_BATCH]
            rows = self._read(f"get from {target!r}", target, functools.partial(
                self.client.get, target, ids=[_quotable(n) for n in chunk],
                output_fields=["note_id", "vector"], timeout=self.config.timeout_s))
            for row in rows:
                found[row["note_id"]] = np.asarray(row["vector"], dtype=np.float32)
        return found

    def search(self, vectors: Any, k: int, exclude_ids: Sequence[str | Iterable[str] | None] | None = None,
               filter: str | None = None, collection: str | None = None) -> list[list[Hit]]:
        """Top-``k`` notes for each query vector, best first, in one search call per batch of queries.

        ``exclude_ids`` has one entry per query (a note id, several, or None) whose notes are left out of
        that query's results; ``filter`` is a Milvus boolean expression applied to every query
        (e.g. ``category == "food"``).
        """
        target = collection or self.alias
        queries = np.asarray(vectors, dtype=np.float32)
        if queries.size == 0:
            return []
        queries = np.atleast_2d(queries)
        if queries.ndim != 2:
            raise NoteLLMError(f"query vectors must be a 2-d array, got shape {queries.shape}")
        if k < 1:
            raise NoteLLMError(f"k must be at least 1, got {k}")
        excluded = _exclusions(exclude_ids, len(queries))
        limit = k + max((len(e) for e in excluded), default=0)
        params = {"metric_type": self.config.metric, "params": {"ef": max(self.config.search_ef, limit)}}
        results: list[list[Hit]] = []
        size = self.config.search_batch_size
        for start in range(0, len(queries), size):
            chunk = queries[start:start + size]
            found = self._read(
                f"search {target!r}", target,
                functools.partial(
                    self.client.search, target, data=chunk.tolist(), limit=limit, filter=filter or "",
                    anns_field="vector", output_fields=["category"], search_params=params,
                    timeout=self.config.timeout_s),
                diagnose=lambda: self._check_dim(target, queries.shape[1]))
            for hits, skip in zip(found, excluded[start:start + size], strict=True):
                row = [Hit(h.id, float(h["distance"]), h["entity"]["category"])
                       for h in hits if h.id not in skip]
                results.append(row[:k])
        return results

    def related(self, note_ids: Sequence[str], k: int, filter: str | None = None) -> list[list[Hit]]:
        """Top-``k`` notes related to each stored note (itself left out); UnknownNoteError for unknown ids."""
        vectors = self.get_vectors(note_ids)
        missing = [n for n in note_ids if n not in vectors]
        if missing:
            raise UnknownNoteError(missing, self.serving_collection() or self.alias)
        queries = np.stack([vectors[n] for n in note_ids])
        return self.search(queries, k, exclude_ids=list(note_ids), filter=filter)

    def _check_dim(self, target: str, dim: int) -> None:
        fields = self._call(f"describe {target!r}", self.client.describe_collection, target)["fields"]
        stored = next(int(f["params"]["dim"]) for f in fields if f["name"] == "vector")
        if stored != dim:
            raise NoteLLMError(
                f"query vectors have dimension {dim}, collection {target!r} holds dimension {stored}")


def _quotable(note_id: str) -> str:
    """``note_id`` escaped for the ``note_id in ['...']`` expression that pymilvus builds without escaping."""
    return note_id.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r")


def _exclusions(exclude_ids: Sequence[str | Iterable[str] | None] | None, n: int) -> list[set[str]]:
    if exclude_ids is None:
        return [set() for _ in range(n)]
    if len(exclude_ids) != n:
        raise NoteLLMError(f"exclude_ids has {len(exclude_ids)} entries for {n} queries")
    return [set() if e is None else {e} if isinstance(e, str) else set(e) for e in exclude_ids]


def _fingerprint(model_version: str, ids: list[str], matrix: np.ndarray, cats: list[str]) -> str:
    """A hash of exactly the rows a collection holds (ids, vectors, categories, model version, in order)."""
    digest = hashlib.sha256(json.dumps([model_version, ids, cats, matrix.shape]).encode())
    digest.update(np.ascontiguousarray(matrix, dtype=np.float32).tobytes())
    return digest.hexdigest()


def _check_rows(note_ids: Sequence[str], vectors: Any, categories: Sequence[str],
                model_version: str) -> tuple[list[str], np.ndarray, list[str]]:
    """Validate one batch of rows; DataError naming the row and column of the first problem."""
    if not model_version or len(model_version) > MODEL_VERSION_MAX_LEN:
        raise DataError(f"model_version must be 1..{MODEL_VERSION_MAX_LEN} characters, got {model_version!r}",
                        column="model_version")
    ids = [str(n) for n in note_ids]
    cats = [str(c) for c in categories]
    matrix = np.asarray(vectors, dtype=np.float32)
    if not ids:
        return ids, matrix, cats
    if matrix.ndim != 2 or matrix.shape[0] != len(ids):
        raise DataError(f"vectors must have shape ({len(ids)}, d), got {matrix.shape}", column="vector")
    if len(cats) != len(ids):
        raise DataError(f"{len(cats)} categories for {len(ids)} note ids", column="category")
    seen: dict[str, int] = {}
    for row, note_id in enumerate(ids):
        if not note_id or len(note_id) > NOTE_ID_MAX_LEN:
            raise DataError(f"note_id must be 1..{NOTE_ID_MAX_LEN} characters", row=row, column="note_id")
        if note_id in seen:
            raise DataError(f"duplicate note_id {note_id!r} (also row {seen[note_id]})",
                            row=row, column="note_id")
        seen[note_id] = row
    for row, category in enumerate(cats):
        if len(category) > CATEGORY_MAX_LEN:
            raise DataError(f"category longer than {CATEGORY_MAX_LEN} characters", row=row, column="category")
    bad = ~np.isfinite(matrix).all(axis=1) | (np.linalg.norm(matrix, axis=1) == 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"vector of note {ids[row]!r} is zero or not finite", row=row, column="vector")
    return ids, matrix, cats


# --- a Milvus Lite server shared by several processes ---------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _tail(log: IO[bytes], chars: int = 2_000) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")[-chars:]


def start_lite_server(data_dir: str | Path, timeout_s: float = 60.0,
                      attempts: int = 3) -> tuple[str, subprocess.Popen[bytes]]:
    """Start ``milvus-lite server`` on a free loopback port; return its URI and the process.

    Every process can then open ``NoteIndex(uri=uri)``. Stop it with :func:`stop_lite_server`.
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    message = ""
    for _ in range(attempts):
        port = _free_port()
        log = tempfile.TemporaryFile()
        process = subprocess.Popen(
            [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(data_dir),
             "--host", "127.0.0.1", "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while process.poll() is None and time.monotonic() < deadline:
            if _port_open(port):
                log.close()
                return f"http://127.0.0.1:{port}", process
            time.sleep(0.05)
        if process.poll() is None:
            stop_lite_server(process)
            message = f"not listening on port {port} after {timeout_s:.0f} s"
        else:
            message = f"exited with code {process.returncode}: {_tail(log)}"
        log.close()
    raise NoteLLMError(f"milvus-lite server for {data_dir} did not start: {message}")


def stop_lite_server(process: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    """Stop a server from :func:`start_lite_server` (interrupt, so it closes its database; then kill)."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def lite_server(data_dir: str | Path) -> Iterator[str]:
    """``with lite_server(dir) as uri:`` a shared Milvus Lite server for the block's duration."""
    uri, process = start_lite_server(data_dir)
    try:
        yield uri
    finally:
        stop_lite_server(process)
