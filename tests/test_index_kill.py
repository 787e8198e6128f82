"""The index step killed (SIGKILL) after filling its new collection, before swapping the alias to it.

A shared ``milvus-lite server`` on loopback holds the database, so the test, a reader and the index step's
process can all connect. A previous index run serves model m1; the index step for m2 runs in a subprocess
whose swap is a kill point: it reports the filled collection and waits, and the test, once it has seen that
collection complete with every row, kills the process. The old collection keeps serving all its rows; a
reader querying through the alias all along never sees an empty or partial collection; the next index run
swaps to the filled collection without filling it again; a third run drops the oldest collection
(``keep_collections`` = 2).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_vectorstore import READER, _lines, _notes

from notellm import steps
from notellm.config import load_config
from notellm.contracts import EMBEDDINGS, NOTES, write_table
from notellm.vectorstore import NoteIndex, lite_server

pytestmark = pytest.mark.slow

N = 1_000
#: The index step with its swap replaced by a kill point: the process reports the filled collection, then
#: waits to be killed, so the swap never runs (as when the pod dies there).
KILLED_BEFORE_SWAP = """
import pathlib, sys, time
from notellm import steps
from notellm.config import load_config
from notellm.vectorstore import NoteIndex
uri, notes_dir, embeddings_dir, filled = sys.argv[1:]

def kill_point(self, name, keep=None):
    pathlib.Path(filled).write_text(name)
    time.sleep(600)

NoteIndex.swap_alias = kill_point
cfg = load_config(overrides=[f"index.uri={uri}"])
steps.index(cfg, pathlib.Path(notes_dir), pathlib.Path(embeddings_dir))
"""


def _write_inputs(root: Path, versions: dict[str, int]) -> tuple[Path, dict[str, Path]]:
    """The notes table and, per model version, an embeddings table (vectors drawn with the given seed)."""
    ids, _, cats = _notes(N)
    notes = pd.DataFrame({"note_id": ids, "title": [f"Note {i}" for i in range(N)], "content": "text",
                          "hashtags": [[c] for c in cats], "category": cats,
                          "event_timestamp": pd.Timestamp("2024-01-01")})
    write_table(notes, root / "notes" / steps.NOTES_FILE, NOTES)
    embeddings = {}
    for version, seed in versions.items():
        vectors = _notes(N, seed=seed)[1]
        embeddings[version] = root / version
        write_table(pd.DataFrame({"note_id": ids, "vector": list(vectors), "model_version": version}),
                    root / version / steps.EMBEDDINGS_FILE, EMBEDDINGS)
    return root / "notes", embeddings


def _wait(condition: Callable[[], bool], process: subprocess.Popen, what: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"{what}: the process exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(0.05)


def test_a_killed_index_step_keeps_serving_and_the_next_run_completes_the_swap(tmp_path: Path) -> None:
    notes_dir, embeddings = _write_inputs(tmp_path, {"m1": 1, "m2": 2, "m3": 3})
    stop, reads, filled = tmp_path / "stop", tmp_path / "reads.jsonl", tmp_path / "filled"

    with lite_server(tmp_path / "milvus") as uri:
        cfg = load_config(overrides=[f"index.uri={uri}"])
        first = steps.index(cfg, notes_dir, embeddings["m1"])
        reader = subprocess.Popen([sys.executable, "-c", READER, uri, str(stop), str(reads)],
                                  stderr=subprocess.PIPE, text=True)
        killed = None
        try:
            _wait(lambda: len(_lines(reads)) > 0, reader, "the reader's first read")
            killed = subprocess.Popen([sys.executable, "-c", KILLED_BEFORE_SWAP, uri, str(notes_dir),
                                       str(embeddings["m2"]), str(filled)])
            _wait(filled.exists, killed, "the index step's fill")
            orphan = filled.read_text()
            with NoteIndex(cfg.index) as index:  # the filled collection, seen from outside before the kill
                assert index.describe(orphan).complete and index.count(orphan) == N
                assert index.serving_collection() == first["collection"]
            killed.send_signal(signal.SIGKILL)
            assert killed.wait(30) == -signal.SIGKILL

            with NoteIndex(cfg.index) as index:  # the old collection keeps serving, with all its rows
                assert index.serving_collection() == first["collection"]
                assert index.describe().model_version == "m1" and index.count() == N
                assert {c.name: c.complete for c in index.collections()} == {first["collection"]: True,
                                                                             orphan: True}
            reads_before = len(_lines(reads))
            _wait(lambda: len(_lines(reads)) >= reads_before + 3, reader, "reads after the kill")

            second = steps.index(cfg, notes_dir, embeddings["m2"])  # the next run: swaps to the filled one
            assert (second["collection"], second["previous"], second["reused"]) == (
                orphan, first["collection"], True)
            with NoteIndex(cfg.index) as index:
                assert second["rows"] == index.count(orphan) == N  # not filled twice
                assert index.describe().model_version == "m2"
                assert [c.name for c in index.collections()] == [first["collection"], orphan]
                stored = index.get_vectors(["note-0"])["note-0"]
            np.testing.assert_allclose(stored, _notes(N, seed=2)[1][0], rtol=1e-6)
            reads_before = len(_lines(reads))
            _wait(lambda: len(_lines(reads)) >= reads_before + 3, reader, "reads after the swap")

            third = steps.index(cfg, notes_dir, embeddings["m3"])  # retention: keep_collections=2
            assert third["previous"] == orphan and not third["reused"]
            with NoteIndex(cfg.index) as index:
                assert [c.name for c in index.collections()] == [orphan, third["collection"]]
                assert index.count() == N
        finally:
            if killed is not None:
                killed.kill()
            stop.touch()
            _, stderr = reader.communicate(timeout=60)

    assert reader.returncode == 0, stderr
    seen = _lines(reads)
    assert {count for count, _, _ in seen} == {N}  # never empty, never partial
    assert {hits for _, hits, _ in seen} == {5}
    served = [name for _, _, name in seen]
    order = [name for i, name in enumerate(served) if i == 0 or name != served[i - 1]]
    assert order in ([first["collection"], orphan], [first["collection"], orphan, third["collection"]])
