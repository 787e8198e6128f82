"""The Milvus vector store on a real Milvus Lite: build, swap, search, upsert, serving through a re-index."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from pymilvus import DataType

from notellm.errors import ConfigError, DataError, NoteLLMError
from notellm.index_config import IndexConfig
from notellm.vectorstore import (
    NoteIndex,
    UnknownNoteError,
    lite_server,
    sanitise_name,
    start_lite_server,
    stop_lite_server,
)

DIM = 16


def _notes(n: int, seed: int = 0) -> tuple[list[str], np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [f"note-{i}" for i in range(n)], vectors, [f"cat{i % 4}" for i in range(n)]


def _index(tmp_path: Path, **settings: object) -> NoteIndex:
    return NoteIndex(IndexConfig(uri=str(tmp_path / "milvus.db"), insert_batch_size=128, **settings))


@pytest.fixture
def served(tmp_path: Path) -> tuple[NoteIndex, list[str], np.ndarray, list[str]]:
    ids, vectors, cats = _notes(600)
    index = _index(tmp_path)
    index.swap_alias(index.build_collection("m1", ids, vectors, cats, progress=False))
    yield index, ids, vectors, cats
    index.close()


def test_build_swap_search_matches_exact_search(served) -> None:
    index, ids, vectors, cats = served
    assert index.count() == len(ids)
    info = index.describe()
    assert info.name == index.serving_collection() and info.model_version == "m1"
    assert info.rows == len(ids) and info.complete

    queries = vectors[:50]
    hits = index.search(queries, k=10)
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    recall = np.mean([len({h.note_id for h in row} & {ids[j] for j in top}) / 10
                      for row, top in zip(hits, exact, strict=True)])
    assert recall >= 0.95
    first = hits[0][0]
    assert (first.note_id, first.category) == (ids[0], cats[0])
    assert first.score == pytest.approx(1.0, abs=1e-4)
    assert all(row[i].score >= row[i + 1].score for row in hits for i in range(len(row) - 1))


def test_search_excludes_query_ids_and_applies_filter(served) -> None:
    index, ids, vectors, _ = served
    hits = index.search(vectors[:3], k=5, exclude_ids=[ids[0], [ids[1], ids[2]], None])
    assert ids[0] not in {h.note_id for h in hits[0]} and len(hits[0]) == 5
    assert not {ids[1], ids[2]} & {h.note_id for h in hits[1]} and len(hits[1]) == 5
    assert hits[2][0].note_id == ids[2]
    assert index.search(np.empty((0, DIM)), k=5) == []
    assert [h.note_id for h in index.search(vectors[3], k=2)[0]][0] == ids[3]  # one 1-d query

    related = index.related([ids[7], ids[8]], k=4, filter='category == "cat1"')
    assert [len(row) for row in related] == [4, 4]
    assert all(h.category == "cat1" and h.note_id not in (ids[7], ids[8]) for row in related for h in row)
    with pytest.raises(UnknownNoteError) as err:
        index.related([ids[0], "no-such-note"], k=3)
    assert err.value.note_ids == ["no-such-note"]


def test_get_vectors_returns_stored_vectors_and_skips_unknown(served) -> None:
    index, ids, vectors, _ = served
    got = index.get_vectors([ids[3], ids[500], "missing"])
    assert set(got) == {ids[3], ids[500]}
    np.testing.assert_allclose(got[ids[500]], vectors[500], rtol=1e-6)


def test_upsert_is_idempotent_and_makes_new_notes_searchable(served) -> None:
    index, ids, vectors, cats = served
    assert index.upsert(ids[:100], vectors[:100], cats[:100], "m1") == 100
    index.upsert(ids[:100], vectors[:100], cats[:100], "m1")
    assert index.count() == len(ids)

    fresh = -vectors[0]
    index.upsert(["cold-start"], fresh[None, :], ["cat9"], "m1")
    assert index.count() == len(ids) + 1
    assert index.search(fresh[None, :], k=1)[0][0] == ("cold-start", pytest.approx(1.0, abs=1e-4), "cat9")

    moved = vectors[1]
    index.upsert([ids[0]], moved[None, :], ["cat0"], "m1")
    np.testing.assert_allclose(index.get_vectors([ids[0]])[ids[0]], moved, rtol=1e-6)
    assert index.count() == len(ids) + 1

    with pytest.raises(NoteLLMError, match="model version 'm2'"):
        index.upsert(["x"], vectors[:1], ["cat0"], "m2")


def test_rebuilding_the_same_version_swaps_and_keeps_the_last_collections(served) -> None:
    index, ids, vectors, cats = served
    first = index.serving_collection()
    second = index.build_collection("m1", ids, vectors, cats, progress=False)
    assert second != first and index.serving_collection() == first  # not served before the swap
    assert index.swap_alias(second) == first
    assert [c.name for c in index.collections()] == [first, second]  # keep_collections=2: one to roll back to

    third = index.build_collection("m 2/rc", ids[:300], vectors[:300], cats[:300], progress=False)
    assert third.startswith(f"{index.alias}__{sanitise_name('m 2/rc')}__")
    index.swap_alias(third)
    assert [c.name for c in index.collections()] == [second, third]
    assert index.count() == 300 and index.describe().model_version == "m 2/rc"

    assert index.swap_alias(second) == third  # rollback
    assert index.count() == len(ids)


def test_bad_input_and_missing_collections_raise_clear_errors(tmp_path: Path) -> None:
    ids, vectors, cats = _notes(20)
    with _index(tmp_path) as index:
        with pytest.raises(NoteLLMError, match="no serving collection"):
            index.search(vectors[:1], k=3)
        with pytest.raises(NoteLLMError, match="does not exist"):
            index.count("nope")
        with pytest.raises(DataError, match="duplicate note_id") as err:
            index.build_collection("m1", ids[:5] + ids[:1], vectors[:6], cats[:6])
        assert err.value.row == 5 and err.value.column == "note_id"
        bad = vectors.copy()
        bad[4] = np.nan
        with pytest.raises(DataError, match="not finite"):
            index.build_collection("m1", ids, bad, cats)
        assert index.collections() == []

        name = index.build_collection("m1", ids, vectors, cats, progress=False)
        index.swap_alias(name)
        with pytest.raises(NoteLLMError, match="dimension 3.*dimension 16"):
            index.search(np.ones((1, 3)), k=2)

        schema = index.client.create_schema(auto_id=False)
        schema.add_field("note_id", DataType.VARCHAR, is_primary=True, max_length=16)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
        index.client.create_collection("foreign", schema=schema)
        with pytest.raises(NoteLLMError, match="not built by notellm"):
            index.swap_alias("foreign")
        assert index.serving_collection() == name

    with pytest.raises(NoteLLMError, match="cannot reach Milvus"):
        NoteIndex(IndexConfig(uri="http://127.0.0.1:1", timeout_s=2))
    with pytest.raises(ConfigError, match=r"\.db"):
        NoteIndex(IndexConfig(uri=str(tmp_path / "milvus")))
    with pytest.raises(ValueError):
        IndexConfig(alias="bad-alias")


READER = """
import json, pathlib, sys
import numpy as np
from notellm.vectorstore import NoteIndex
uri, stop, out = sys.argv[1], pathlib.Path(sys.argv[2]), open(sys.argv[3], "w")
queries = np.eye(16, dtype=np.float32)[:8]
with NoteIndex(uri=uri) as index:
    while not stop.exists():
        hits = index.search(queries, k=5)
        row = [index.count(), min(len(r) for r in hits), index.serving_collection()]
        print(json.dumps(row), file=out, flush=True)
"""


def _lines(path: Path) -> list[list]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.slow
def test_readers_never_see_a_partial_collection_during_a_reindex(tmp_path: Path) -> None:
    """Another process reads through the alias of a shared milvus-lite server while two re-indexes run."""
    ids, vectors, cats = _notes(3_000)
    stop, out = tmp_path / "stop", tmp_path / "reads.jsonl"

    with lite_server(tmp_path / "server") as uri:
        writer = NoteIndex(IndexConfig(insert_batch_size=250), uri=uri)
        writer.swap_alias(writer.build_collection("m1", ids, vectors, cats, progress=False))
        reader = subprocess.Popen([sys.executable, "-c", READER, uri, str(stop), str(out)],
                                  stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while not _lines(out) and reader.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            for version in ("m2", "m3"):
                writer.swap_alias(writer.build_collection(version, ids, vectors, cats, progress=False))
            reads_before = len(_lines(out))
            while (len(_lines(out)) < reads_before + 3 and reader.poll() is None
                   and time.monotonic() < deadline):
                time.sleep(0.05)
        finally:
            stop.touch()
            _, stderr = reader.communicate(timeout=60)
        final = writer.serving_collection()
        writer.close()

    assert reader.returncode == 0, stderr
    reads = _lines(out)
    assert {count for count, _, _ in reads} == {len(ids)}
    assert min(n for _, n, _ in reads) == 5
    served_names = {name for _, _, name in reads}
    assert final in served_names and len(served_names) >= 2


def test_a_restarted_lite_server_serves_the_flushed_collection(tmp_path: Path) -> None:
    ids, vectors, cats = _notes(200)
    uri, process = start_lite_server(tmp_path / "server")
    try:
        with NoteIndex(uri=uri) as index:
            index.swap_alias(index.build_collection("m1", ids, vectors, cats, progress=False))
            stop_lite_server(process)
            with pytest.raises(NoteLLMError, match=f"Milvus at {uri}"):  # gone: a clear error, not a hang
                index.count()
    finally:
        stop_lite_server(process)
    with lite_server(tmp_path / "server") as uri, NoteIndex(uri=uri) as index:
        assert index.count() == 200  # loaded again on first read
        assert index.related([ids[0]], k=3)[0][0].note_id != ids[0]


@pytest.mark.slow
def test_a_build_cut_off_by_a_crash_is_never_served_and_is_cleaned_up(tmp_path: Path) -> None:
    ids, vectors, cats = _notes(50_000)
    uri, process = start_lite_server(tmp_path / "server")
    failures: list[BaseException] = []
    try:
        with NoteIndex(IndexConfig(insert_batch_size=100), uri=uri) as index:
            first = index.build_collection("m1", ids[:500], vectors[:500], cats[:500], progress=False)
            index.swap_alias(first)

            def build() -> None:
                try:
                    index.build_collection("m2", ids, vectors, cats, progress=False)
                except NoteLLMError as exc:
                    failures.append(exc)

            thread = threading.Thread(target=build)
            thread.start()
            deadline = time.monotonic() + 60
            while len(index.client.list_collections()) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.2)  # some of the 500 insert calls done
            process.kill()  # a crash: nothing gets cleaned up
            thread.join(60)
    finally:
        stop_lite_server(process)
    assert failures, "the build should have failed when Milvus went away"

    with lite_server(tmp_path / "server") as uri, NoteIndex(uri=uri) as index:
        stale = [c for c in index.collections() if not c.complete]
        assert [c.model_version for c in stale] == ["m2"]
        with pytest.raises(NoteLLMError, match="not complete"):
            index.swap_alias(stale[0].name)
        assert index.describe().model_version == "m1" and index.count() == 500

        index.swap_alias(index.build_collection("m3", ids[:300], vectors[:300], cats[:300], progress=False))
        assert all(c.complete for c in index.collections())  # the stale build is dropped
