"""Related-note pairs from user behaviour (paper section 4.3) and their split.

For notes A and B, ``s(A->B)`` sums ``1 / N_u`` over the users u who had a source-action event on A
(``mining.source_actions``) and then a target-action event on B (``mining.target_actions``) within the
window; ``N_u`` is the number of distinct notes u had target-action events on. Each user counts once per
pair. "Then" means B is among the next ``window_positions`` events of the user after A (positions count
only source and target events, ordered by time, ties kept in file order) and/or at most
``window_seconds`` later (both set: both must hold). Pairs outside ``[l_min, u_max]`` are dropped and the
top ``top_t`` per A are kept (score descending, then ``note_id_b`` ascending).

Scores are rounded to :data:`SCORE_DECIMALS` decimals, so that the same sum of fractions added in a
different order (threads, another implementation) gives the same score, threshold and ranking.

How: events are read with arrow and given dense integer ids (notes in string order); the candidate
(a, b) of each source event and each later target event in its window come from the events sorted by
user and time, one array step per window offset; DuckDB then keeps one candidate per (user, pair)
(only where the user has a repeated note: elsewhere a pair cannot repeat), sums ``1 / N_u`` per
pair, applies the thresholds and keeps the top t per note, all on integer keys. That scoring is one SQL
text (:func:`pair_sql`) that the Spark engine (:mod:`notellm.mining_spark`) runs too.

Ready pairs (a user's links, ``data.pairs_path``) skip the scoring: :func:`ready_pairs` orients them
(``mining.ready_pairs_directed``) and either validates their split (:func:`check_split`) or assigns one with
:func:`split_pairs`, the same held-out-notes rule as mined pairs.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from notellm.config import MiningConfig
from notellm.contracts import (CONTRACTS, EVENTS, NOTES, PAIRS, SPLITS, check_references, read_frame,
                               read_table, validate, write_table)
from notellm.errors import DataError
from notellm.io import write_json

SCORE_DECIMALS = 9
PAIR_COLUMNS = ["note_id_a", "note_id_b", "score"]
_VALIDATE_BATCH_ROWS = 1_000_000
_HISTOGRAM_BINS = 20
DUCKDB_MEMORY_LIMIT = "1GB"  # DuckDB spills beyond this; its own default is 80% of the machine's memory
_SPARSE_REACH = 16  # below 1/16 of the events still in reach, index them instead of slicing
_SCALE = f"CAST({10 ** SCORE_DECIMALS} AS DOUBLE)"


def round_scores(values: Any) -> Any:
    """Round half up to :data:`SCORE_DECIMALS` decimals (numpy; the SQL below uses the same formula)."""
    scale = 10.0 ** SCORE_DECIMALS
    return np.floor(np.asarray(values, dtype=np.float64) * scale + 0.5) / scale


def _window_us(seconds: float) -> int:
    """The time window in whole microseconds (event times have microsecond resolution)."""
    return math.floor(round(seconds * 1_000_000, 6))


def _event_columns(events: pd.DataFrame | str | Path) -> tuple[pa.Table, str | Path | None]:
    """The events as an arrow table in contract types, and the file they came from (None for a frame)."""
    names = CONTRACTS[EVENTS].schema.names
    if isinstance(events, pd.DataFrame):
        return pa.Table.from_pandas(validate(events, EVENTS), schema=CONTRACTS[EVENTS].schema,
                                    preserve_index=False), None
    path = Path(events)
    if not path.is_file():
        raise DataError("file not found", file=path)
    schema = pq.read_schema(path)
    for field in CONTRACTS[EVENTS].schema:
        if field.name not in schema.names:
            raise DataError(f"missing column {field.name!r} for an events table; found {schema.names}",
                            file=path, column=field.name)
        found = schema.field(field.name).type
        naive_time = pa.types.is_timestamp(field.type) and pa.types.is_timestamp(found) and found.tz is None
        if not (found.equals(field.type) or naive_time):
            # Not in contract types (integer ids, text or zoned times): validate and convert in memory.
            return _event_columns(read_table(path, EVENTS))[0], path
    return pq.read_table(path, columns=names), path


def _codes(column: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """Integer codes of a (null-free) column and its distinct values, codes in first-seen order."""
    encoded = column.dictionary_encode().combine_chunks()
    return encoded.indices.to_numpy(zero_copy_only=False), encoded.dictionary


class _Events:
    """The source and target events with dense integer ids, in file order.

    ``uid`` numbers users in any order; ``nid`` numbers notes in ``note_ids`` (string) order, so that
    ties in top-t break by note_id_b; ``rep`` marks events on a note the user has more than one event on
    (only their pairs can repeat); ``inv_n[uid]`` is ``1 / N_u``.
    """

    def __init__(self, events: pd.DataFrame | str | Path, cfg: MiningConfig) -> None:
        table, file = _event_columns(events)
        action = table.column("action")
        src = pc.is_in(action, pa.array(cfg.source_actions, pa.string())).to_numpy(zero_copy_only=False)
        tgt = pc.is_in(action, pa.array(cfg.target_actions, pa.string())).to_numpy(zero_copy_only=False)
        keep = src | tgt
        if not keep.all():
            table = table.filter(pa.array(keep))
        rows = np.flatnonzero(keep)
        self.is_src, self.is_tgt = src[keep], tgt[keep]
        for name in ("user_id", "note_id", "ts"):
            nulls = table.column(name).is_null().to_numpy(zero_copy_only=False)
            if nulls.any():
                raise DataError("missing value", file=file, row=int(rows[np.argmax(nulls)]), column=name)
        self.uid, users = _codes(table.column("user_id"))
        codes, notes = _codes(table.column("note_id"))
        order = pc.sort_indices(notes).to_numpy()
        rank = np.empty(len(order), dtype=np.int32)
        rank[order] = np.arange(len(order), dtype=np.int32)
        self.nid = rank[codes]
        self.note_ids = notes.take(pa.array(order))
        self.t = table.column("ts").to_numpy().astype("datetime64[us]").view(np.int64)
        # One hash of (user, note) gives both the repeated notes and N_u.
        user_note, pairs = pd.factorize(self.uid.astype(np.int64) * len(order) + self.nid)
        self.rep = np.bincount(user_note)[user_note] > 1
        clicked = np.zeros(len(pairs), dtype=bool)
        clicked[user_note[self.is_tgt]] = True
        n_u = np.bincount(pairs[clicked] // len(order), minlength=len(users))
        self.inv_n = 1.0 / np.maximum(n_u, 1)

    def candidates(self, cfg: MiningConfig) -> tuple[pa.Table, pa.Table]:
        """Every (source event on a, then target event on b in the window, a != b), as two tables of
        ``a``, ``b`` and ``inv_n``: those that cannot repeat for their user (neither event on a repeated
        note), and those that can, with their ``uid``.

        Events are ordered by user, time and file row; for each offset k every event is compared with
        the event k positions later at once (array slices), and once few source events still reach
        that far (long time windows), only those are.
        """
        order = np.lexsort((self.t, self.uid))  # stable: ties in time stay in file order
        uid, nid, t = self.uid[order], self.nid[order], self.t[order]
        is_src, is_tgt, rep = self.is_src[order], self.is_tgt[order], self.rep[order]
        window_us = None if cfg.window_seconds is None else _window_us(cfg.window_seconds)
        active = None  # the source events whose window still reaches offset k, once they are few
        once: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        repeated: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        k = 1
        while k < len(uid) and (cfg.window_positions is None or k <= cfg.window_positions):
            if active is None:
                reach = is_src[:-k] & (uid[:-k] == uid[k:])
                if window_us is not None:
                    reach &= t[k:] - t[:-k] <= window_us
                i = np.flatnonzero(reach)
                if len(i) < len(uid) // _SPARSE_REACH:
                    active = i
            else:
                active = active[active + k < len(uid)]
                later = active + k
                keep = uid[later] == uid[active]
                if window_us is not None:
                    keep &= t[later] - t[active] <= window_us
                i = active = active[keep]
            if not len(i):
                break
            j = i + k
            hit = is_tgt[j] & (nid[i] != nid[j])
            i, j = i[hit], j[hit]
            may_repeat = rep[i] | rep[j]
            once.append((nid[i[~may_repeat]], nid[j[~may_repeat]], uid[i[~may_repeat]]))
            repeated.append((nid[i[may_repeat]], nid[j[may_repeat]], uid[i[may_repeat]]))
            k += 1

        def table(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], with_uid: bool) -> pa.Table:
            a, b, users = ((np.concatenate([p[n] for p in parts]) if parts else np.zeros(0, np.int32))
                           for n in range(3))
            columns = {"a": a, "b": b, "inv_n": self.inv_n[users]}
            return pa.table({**columns, "uid": users} if with_uid else columns)

        return table(once, False), table(repeated, True)


def popular_cut(clicks: np.ndarray, quantile: float) -> float:
    """Notes clicked more often than this are over-popular: the ``quantile`` of the click counts of the
    clicked notes (numpy's linear interpolation; both engines call this)."""
    clicks = clicks[clicks > 0]
    return float(np.quantile(clicks, quantile)) if len(clicks) else 0.0


def pair_sql(cfg: MiningConfig, *, popular: bool) -> str:
    """The pair formula as one SQL text that DuckDB and Spark both run.

    It reads ``once(a, b, inv_n)`` (candidates that cannot repeat for their user), ``repeated(uid, a, b,
    inv_n)`` (candidates that can: one per (user, pair) is kept) and, with ``popular``, ``popular(nid)``
    (over-popular notes, dropped on both sides). ``a`` and ``b`` are notes as keys that sort like the
    note ids; ``inv_n`` is ``1 / N_u``. It sums ``1 / N_u`` per pair, rounds half up to
    :data:`SCORE_DECIMALS` decimals, keeps ``l_min <= score <= u_max`` and the top t per a (score
    descending, then b), sorted by a, score descending, b.
    """
    def literal(value: float) -> str:  # the exact double in both dialects
        return f"CAST('{float(value)!r}' AS DOUBLE)"

    drop_popular = ("AND a NOT IN (SELECT nid FROM popular) AND b NOT IN (SELECT nid FROM popular)"
                    if popular else "")
    return f"""
        WITH cand AS (
            SELECT a, b, inv_n FROM once
            UNION ALL
            SELECT a, b, max(inv_n) AS inv_n FROM repeated GROUP BY uid, a, b),
        scored AS (
            SELECT a, b, CAST(floor(sum(inv_n) * {_SCALE} + 0.5) AS BIGINT) AS score_int
            FROM cand GROUP BY a, b),
        ranked AS (
            SELECT a, b, score_int, row_number() OVER (PARTITION BY a ORDER BY score_int DESC, b) AS r
            FROM scored
            WHERE score_int / {_SCALE} >= {literal(cfg.l_min)} AND score_int / {_SCALE} <= {literal(cfg.u_max)}
                  {drop_popular})
        SELECT a, b, score_int / {_SCALE} AS score FROM ranked WHERE r <= {cfg.top_t}
        ORDER BY a, score DESC, b"""


def _top_pairs(con: duckdb.DuckDBPyConnection, ev: _Events, cfg: MiningConfig) -> tuple[np.ndarray, ...]:
    """Score every candidate pair with :func:`pair_sql`; return (a, b, score) arrays sorted by a, score
    descending, b."""
    popular = cfg.max_note_clicks_quantile is not None
    if popular:
        clicks = np.bincount(ev.nid[ev.is_tgt], minlength=len(ev.note_ids))
        cut = popular_cut(clicks, cfg.max_note_clicks_quantile)
        con.register("popular", pa.table({"nid": np.flatnonzero(clicks > cut).astype(np.int32)}))
    once, repeated = ev.candidates(cfg)
    con.register("once", once)
    con.register("repeated", repeated)
    result = con.execute(pair_sql(cfg, popular=popular)).fetchnumpy()
    return result["a"], result["b"], result["score"]


def mine_pairs(events: pd.DataFrame | str | Path, cfg: MiningConfig, *,
               memory_limit: str = DUCKDB_MEMORY_LIMIT) -> pd.DataFrame:
    """Score co-occurring note pairs; return note_id_a, note_id_b, score (sorted by A, score desc, B).

    ``events`` is an events frame or the path of an events parquet file.
    ``memory_limit`` caps DuckDB's memory (for example "4GB"); beyond it DuckDB spills to a temporary
    directory, which is removed afterwards. With ``mining.engine`` spark, Spark computes the same pairs
    (:func:`notellm.mining_spark.mine_pairs_spark`).
    """
    if cfg.engine == "spark":
        from notellm.mining_spark import mine_pairs_spark

        return mine_pairs_spark(events, cfg)
    ev = _Events(events, cfg)
    with tempfile.TemporaryDirectory(prefix="notellm-mining-") as temp_dir:
        con = duckdb.connect(config={"preserve_insertion_order": False, "temp_directory": temp_dir,
                                     "memory_limit": memory_limit})
        try:
            a, b, score = _top_pairs(con, ev, cfg)
        finally:
            con.close()
    notes = ev.note_ids
    return pd.DataFrame({"note_id_a": notes.take(pa.array(a)).to_numpy(zero_copy_only=False).astype(object),
                         "note_id_b": notes.take(pa.array(b)).to_numpy(zero_copy_only=False).astype(object),
                         "score": np.asarray(score, dtype=np.float64)})


def read_ready_pairs(path: str | Path) -> pd.DataFrame:
    """A user's ready pairs: ``note_id_a``, ``note_id_b``, optional ``score`` (1.0 when absent) and optional
    ``split`` (kept only when the file has one), validated; rows stay in file order.

    A note paired with itself is a DataError naming the file, row and column.
    """
    frame = read_frame(path)
    has_split = "split" in frame.columns
    if "score" not in frame.columns:
        frame = frame.assign(score=1.0)
    pairs = validate(frame if has_split else frame.assign(split="train"), PAIRS, file=path)
    self_links = (pairs["note_id_a"] == pairs["note_id_b"]).to_numpy()
    if self_links.any():
        row = int(np.flatnonzero(self_links)[0])
        raise DataError(f"note {pairs['note_id_a'].iloc[row]!r} paired with itself", file=path, row=row,
                        column="note_id_b")
    return pairs if has_split else pairs.drop(columns="split")


def check_split(pairs: pd.DataFrame, file: str | Path | None = None) -> None:
    """Raise a DataError unless every val and test pair holds a note that no training pair touches.

    That note is the pair's held-out note (as in :func:`split_pairs`): a pair whose two notes both occur in
    training pairs leaks, and the error names its row and a training row of each note.
    """
    train = (pairs["split"] == "train").to_numpy()
    a, b = pairs["note_id_a"].to_numpy(dtype=object), pairs["note_id_b"].to_numpy(dtype=object)
    first_train_row: dict[str, int] = {}
    for row in np.flatnonzero(train)[::-1]:  # reversed: the earliest row wins
        first_train_row[a[row]] = first_train_row[b[row]] = int(row)
    seen = pd.Index(list(first_train_row))
    bad = ~train & pd.Series(a).isin(seen).to_numpy() & pd.Series(b).isin(seen).to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        split = pairs["split"].iloc[row]
        raise DataError(
            f"{split} pair ({a[row]!r}, {b[row]!r}) leaks: both notes are in training pairs (rows "
            f"{first_train_row[a[row]]} and {first_train_row[b[row]]}); every {split} pair needs a note that "
            "no training pair touches. Fix the split, or leave out the split column and the platform assigns "
            "a leakage-free one", file=file, row=row, column="split")


def ready_pairs(pairs: pd.DataFrame, cfg: MiningConfig, file: str | Path | None = None) -> pd.DataFrame:
    """Ready pairs in contract form: validated or assigned split, oriented, one row per (a, b).

    ``pairs`` is :func:`read_ready_pairs`' frame. With a ``split`` it is checked (:func:`check_split`),
    else :func:`split_pairs` assigns one. Unless ``cfg.ready_pairs_directed``, every link a-b also gives
    b->a (same score and split). The same (a, b) given twice is kept once (the first); given with two
    different splits it is a DataError naming the second row. Sorted like mined pairs.
    """
    given = pairs.assign(row=np.arange(len(pairs)))
    if "split" in given.columns:
        check_split(given, file)
    if not cfg.ready_pairs_directed:
        given = pd.concat([given, given.rename(columns={"note_id_a": "note_id_b", "note_id_b": "note_id_a"})],
                          ignore_index=True)
    given = given.sort_values("row", kind="stable")
    if "split" in given.columns:
        first = given.groupby(["note_id_a", "note_id_b"], sort=False)["split"].transform("first")
        conflict = given.loc[(given["split"] != first).to_numpy(), "row"]
        if len(conflict):
            row = int(conflict.min())
            raise DataError("this pair (or its reverse, for undirected links) is in an earlier row with "
                            "another split", file=file, row=row, column="split")
    out = given.drop_duplicates(["note_id_a", "note_id_b"], keep="first").drop(columns="row")
    if "split" not in out.columns:
        out = split_pairs(out, cfg)
    out = out.sort_values(["note_id_a", "score", "note_id_b"], ascending=[True, False, True], kind="stable")
    return out.reset_index(drop=True)[["note_id_a", "note_id_b", "score", "split"]]


def split_pairs(pairs: pd.DataFrame, cfg: MiningConfig) -> pd.DataFrame:
    """Add ``split``: a pair touching a held-out test note is ``test``, else one touching a validation
    note ``val``, else ``train``.

    The held-out notes are drawn (seeded by ``mining.seed``) from the sorted notes that occur in pairs,
    so a training pair never contains a test or validation note and the split is reproducible.
    """
    a, b = pairs["note_id_a"].astype(str), pairs["note_id_b"].astype(str)
    notes = np.sort(pd.unique(pd.concat([a, b], ignore_index=True)).astype(object))
    order = np.random.default_rng(cfg.seed).permutation(len(notes))
    n_test = round(cfg.test_note_fraction * len(notes))
    n_val = round(cfg.val_note_fraction * len(notes))
    test = notes[order[:n_test]]
    val = notes[order[n_test:n_test + n_val]]
    in_test = (a.isin(test) | b.isin(test)).to_numpy()
    in_val = (a.isin(val) | b.isin(val)).to_numpy()
    out = pairs.copy()
    out["split"] = np.where(in_test, "test", np.where(in_val, "val", "train"))
    return out


def _histogram(scores: np.ndarray) -> dict[str, list[float] | list[int]]:
    """Counts over log-spaced bins between the smallest and largest score."""
    if len(scores) == 0:
        return {"bins": [], "counts": []}
    low, high = float(scores.min()), float(scores.max())
    if low <= 0 or high <= low:
        counts, edges = np.histogram(scores, bins=1)
    else:
        edges = np.geomspace(low, high, _HISTOGRAM_BINS + 1)
        edges[0], edges[-1] = low, high
        counts, edges = np.histogram(scores, bins=edges)
    return {"bins": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def pair_stats(pairs: pd.DataFrame) -> dict[str, Any]:
    """Pairs per split, notes covered (overall and per split), score summary and histogram, pairs per note."""
    scores = pairs["score"].to_numpy(dtype=np.float64)

    def notes_in(frame: pd.DataFrame) -> int:
        return int(pd.concat([frame["note_id_a"], frame["note_id_b"]]).nunique())

    stats: dict[str, Any] = {
        "pairs": int(len(pairs)),
        "notes_covered": notes_in(pairs),
        "query_notes": int(pairs["note_id_a"].nunique()),
        "mean_pairs_per_note": float(len(pairs) / pairs["note_id_a"].nunique()) if len(pairs) else 0.0,
        "score_min": float(scores.min()) if len(scores) else None,
        "score_mean": float(scores.mean()) if len(scores) else None,
        "score_max": float(scores.max()) if len(scores) else None,
        "score_histogram": _histogram(scores),
    }
    if "split" in pairs.columns:
        stats["pairs_per_split"] = {s: int((pairs["split"] == s).sum()) for s in SPLITS}
        stats["notes_per_split"] = {s: notes_in(pairs[pairs["split"] == s]) for s in SPLITS}
    return stats


def validate_events_file(events_path: Path, notes_path: Path) -> None:
    """Validate an events parquet file in batches against the contract and the notes table.

    Raises a DataError naming the file, the row (counted over the whole file) and the column.
    """
    note_ids = read_table(notes_path, NOTES)["note_id"]
    if not events_path.is_file():
        raise DataError("file not found", file=events_path)
    try:
        parquet = pq.ParquetFile(events_path)
    except Exception as exc:  # noqa: BLE001 - any reader failure means "unreadable file"
        raise DataError(f"cannot read the file ({type(exc).__name__}: {exc})", file=events_path) from exc
    offset = 0
    for batch in parquet.iter_batches(batch_size=_VALIDATE_BATCH_ROWS):
        frame = batch.to_pandas()
        try:
            frame = validate(frame, EVENTS, file=events_path)
            check_references(frame, ["note_id"], note_ids, file=events_path, what="event")
        except DataError as exc:
            row = None if exc.row is None else exc.row + offset
            raise DataError(exc.detail, file=events_path, row=row, column=exc.column) from exc
        offset += len(frame)


def run_mining(data_dir: Path, out_dir: Path, cfg: MiningConfig) -> dict[str, Any]:
    """Mine and split pairs from ``data_dir/{notes,events}.parquet`` into ``out_dir``; return the stats.

    When ``data_dir`` holds ready pairs (``pairs.parquet``, written by the ``files`` dataset) they are used
    instead of mining (:func:`ready_pairs`); the events, if any, are still validated.
    Writes ``pairs.parquet`` and ``pair_stats.json`` atomically; the same inputs give the same outputs.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    events_path, ready_path = data_dir / "events.parquet", data_dir / "pairs.parquet"
    validate_events_file(events_path, data_dir / "notes.parquet")
    if ready_path.is_file():
        given = read_ready_pairs(ready_path)
        note_ids = read_table(data_dir / "notes.parquet", NOTES)["note_id"]
        check_references(given, ["note_id_a", "note_id_b"], note_ids, file=ready_path, what="pair")
        pairs = ready_pairs(given, cfg, ready_path)
    else:
        pairs = split_pairs(mine_pairs(events_path, cfg), cfg)
    stats = {"source": "ready pairs" if ready_path.is_file() else "mined", **pair_stats(pairs)}
    write_table(pairs, out_dir / "pairs.parquet", PAIRS)
    write_json(stats, out_dir / "pair_stats.json")
    return stats
