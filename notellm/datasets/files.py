"""A user's own notes, events and ready pairs (parquet, jsonl or csv) as canonical parquet tables.

Ready pairs keep their rows as given (the mining step orients, deduplicates and splits them), so a row
number in a later error is the row of the user's file.

Every table is read and validated, and every event and pair is checked against the notes, before
anything is written; then all tables are written beside their targets and renamed into place
together, so a bad input leaves the output directory as it was.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from notellm.contracts import (
    CONTRACTS,
    EVENTS,
    NOTES,
    PAIRS,
    check_references,
    read_table,
    to_arrow,
    validate,
)
from notellm.io import atomic_path

TABLE_FILES = {NOTES: "notes.parquet", EVENTS: "events.parquet", PAIRS: "pairs.parquet"}


def empty_table(kind: str) -> pd.DataFrame:
    """A table of the given kind with no rows (in canonical types)."""
    return validate(CONTRACTS[kind].schema.empty_table().to_pandas(), kind)


def _arrow(df: pd.DataFrame, kind: str, path: Path) -> pa.Table:
    """The validated table in contract types; ready pairs without a split keep none (mining assigns it)."""
    if kind == PAIRS and "split" not in df.columns:
        schema = CONTRACTS[PAIRS].schema
        schema = schema.remove(schema.get_field_index("split"))
        validate(df.assign(split="train"), PAIRS, file=path)
        return pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)
    return to_arrow(validate(df, kind, file=path), kind)


def write_tables(out_dir: Path, tables: dict[str, pd.DataFrame]) -> dict[str, Path]:
    """Validate, then write ``{kind: frame}`` as ``out_dir/<kind>.parquet``, all renamed in at the end.

    A ``pairs.parquet`` left from an earlier run is removed when ``tables`` has no pairs, so the
    directory always describes this run alone.
    """
    out_dir = Path(out_dir)
    paths = {kind: out_dir / TABLE_FILES[kind] for kind in tables}
    arrow = {kind: _arrow(df, kind, paths[kind]) for kind, df in tables.items()}
    with contextlib.ExitStack() as stack:
        for kind, table in arrow.items():
            pq.write_table(table, stack.enter_context(atomic_path(paths[kind])))
    if PAIRS not in tables:
        (out_dir / TABLE_FILES[PAIRS]).unlink(missing_ok=True)
    return paths


def import_files(notes_path: str | Path, events_path: str | Path | None = None,
                 pairs_path: str | Path | None = None, *, out_dir: Path) -> dict:
    """Import the user's tables into ``out_dir``; return counts and paths.

    Without an events file, an empty ``events.parquet`` is written (the ready pairs stand in for
    the behaviour), so every dataset directory has notes and events. Ready pairs need ``note_id_a`` and
    ``note_id_b``; ``score`` (1.0 when absent) and ``split`` are optional: a given split is checked for
    leakage here, a missing one is assigned by the mining step (:func:`notellm.mining.ready_pairs`).
    """
    from notellm.mining import check_split, read_ready_pairs

    notes = read_table(notes_path, NOTES)
    tables = {NOTES: notes,
              EVENTS: read_table(events_path, EVENTS) if events_path is not None else empty_table(EVENTS)}
    if events_path is not None:
        check_references(tables[EVENTS], ["note_id"], notes["note_id"], file=events_path, what="event")
    if pairs_path is not None:
        tables[PAIRS] = read_ready_pairs(pairs_path)
        check_references(tables[PAIRS], ["note_id_a", "note_id_b"], notes["note_id"], file=pairs_path,
                         what="pair")
        if "split" in tables[PAIRS].columns:
            check_split(tables[PAIRS], pairs_path)
    paths = write_tables(out_dir, tables)
    return {"dataset": "files", **{kind: len(df) for kind, df in tables.items()},
            "users": int(tables[EVENTS]["user_id"].nunique()),
            "paths": {kind: str(path) for kind, path in paths.items()}}
