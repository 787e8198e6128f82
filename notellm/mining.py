"""Related-note pairs from user behaviour (paper section 4.3), computed in DuckDB, and their split.

For notes A and B, ``s(A->B)`` sums ``1 / N_u`` over the users u who had a source-action event on A
(``mining.source_actions``) and then a target-action event on B (``mining.target_actions``) within the
window; ``N_u`` is the number of distinct notes u had target-action events on. Each user counts once per
pair. "Then" means B is among the next ``window_positions`` events of the user after A (positions count
only source and target events, ordered by time, ties kept in file order) and/or at most
``window_seconds`` later (both set: both must hold). Pairs outside ``[l_min, u_max]`` are dropped and the
top ``top_t`` per A are kept (score descending, then ``note_id_b`` ascending).

Scores are rounded to :data:`SCORE_DECIMALS` decimals, so that the same sum of fractions added in a
different order (threads, another implementation) gives the same score, threshold and ranking.
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
import pyarrow.parquet as pq

from notellm.config import MiningConfig
from notellm.contracts import (CONTRACTS, EVENTS, NOTES, PAIRS, SPLITS, check_references, read_table,
                               validate, write_table)
from notellm.errors import DataError
from notellm.io import write_json

SCORE_DECIMALS = 9
PAIR_COLUMNS = ["note_id_a", "note_id_b", "score"]
_VALIDATE_BATCH_ROWS = 1_000_000
_HISTOGRAM_BINS = 20
DUCKDB_MEMORY_LIMIT = "1GB"  # DuckDB spills beyond this; its own default is 80% of the machine's memory
MAX_LEAD_WINDOW = 32  # longer position windows use an equi-join on positions instead of lead() columns
_SCALE = f"CAST({10 ** SCORE_DECIMALS} AS DOUBLE)"


def round_scores(values: Any) -> Any:
    """Round half up to :data:`SCORE_DECIMALS` decimals (numpy; the SQL below uses the same formula)."""
    scale = 10.0 ** SCORE_DECIMALS
    return np.floor(np.asarray(values, dtype=np.float64) * scale + 0.5) / scale


def _window_us(seconds: float) -> int:
    """The time window in whole microseconds (event times have microsecond resolution)."""
    return math.floor(round(seconds * 1_000_000, 6))


def _sql_list(values: list[str]) -> str:
    return "[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]::VARCHAR[]"


def _source_sql(con: duckdb.DuckDBPyConnection, events: pd.DataFrame | str | Path) -> str:
    """A FROM clause yielding user_id, note_id, ts, action and the file row of each event."""
    if isinstance(events, pd.DataFrame):
        frame = validate(events, EVENTS)
        table = pa.Table.from_pandas(frame, schema=CONTRACTS[EVENTS].schema, preserve_index=False)
        con.register("events_input", table.append_column("file_row", pa.array(np.arange(len(frame)))))
        return "events_input"
    path = Path(events)
    if not path.is_file():
        raise DataError("file not found", file=path)
    schema = pq.read_schema(path)
    expected = CONTRACTS[EVENTS].schema
    for field in expected:
        if field.name not in schema.names:
            raise DataError(f"missing column {field.name!r} for an events table; found {schema.names}",
                            file=path, column=field.name)
        found = schema.field(field.name).type
        naive_time = pa.types.is_timestamp(field.type) and pa.types.is_timestamp(found) and found.tz is None
        if not (found.equals(field.type) or naive_time):
            # Not in contract types (integer ids, text or zoned times): validate and convert in memory.
            return _source_sql(con, read_table(path, EVENTS))
    escaped = str(path).replace("'", "''")
    return (f"(SELECT user_id, note_id, ts, action, file_row_number AS file_row "
            f"FROM read_parquet('{escaped}', file_row_number = true))")


def _check_no_nulls(con: duckdb.DuckDBPyConnection, events: pd.DataFrame | str | Path) -> None:
    bad = con.execute("""
        SELECT file_row, CASE WHEN user_id IS NULL THEN 'user_id' WHEN note_id IS NULL THEN 'note_id'
                              ELSE 'ts' END
        FROM raw WHERE user_id IS NULL OR note_id IS NULL OR t IS NULL
        ORDER BY file_row LIMIT 1""").fetchall()
    if bad:
        raise DataError("missing value", file=None if isinstance(events, pd.DataFrame) else events,
                        row=int(bad[0][0]), column=bad[0][1])


def _candidates_sql(cfg: MiningConfig) -> str:
    """SQL for every (uid, a, b): a source event on a, then a target event on b in the window (a != b)."""
    w = cfg.window_positions
    if w is not None and w <= MAX_LEAD_WINDOW:
        # The next w events of the user are lead(.., 1..w) over one sorted window: no join needed.
        leads = ", ".join(f"lead(tnid, {k}) OVER w" for k in range(1, w + 1))
        gaps, within = "", ""
        if cfg.window_seconds is not None:
            gaps = ", unnest([" + ", ".join(f"lead(t, {k}) OVER w - t" for k in range(1, w + 1)) + "]) AS dt"
            within = f"AND dt <= {_window_us(cfg.window_seconds)}"
        return f"""
            SELECT uid, a, b FROM (
                SELECT uid, nid AS a, unnest([{leads}]) AS b {gaps}
                FROM ev WINDOW w AS (PARTITION BY uid ORDER BY t, file_row)
                QUALIFY is_src)
            WHERE b IS NOT NULL AND b <> a {within}"""
    # Otherwise positions pos+1 .. last, equi-joined on (uid, position); last is bounded by the user's
    # last event, by pos + w and by the last event at most window_seconds later.
    bounds = ["count(*) OVER (PARTITION BY uid)"]
    if w is not None:
        bounds.append(f"pos + {w}")
    if cfg.window_seconds is not None:
        bounds.append("max(pos) OVER (PARTITION BY uid ORDER BY t RANGE BETWEEN CURRENT ROW AND "
                      f"{_window_us(cfg.window_seconds)} FOLLOWING)")
    return f"""
        WITH positioned AS MATERIALIZED (
            SELECT uid, nid, tnid, is_src, t,
                   row_number() OVER (PARTITION BY uid ORDER BY t, file_row) AS pos
            FROM ev),
        probe AS (
            SELECT uid, nid AS a, unnest(range(pos + 1, last + 1)) AS bpos
            FROM (SELECT *, least({", ".join(bounds)}) AS last FROM positioned)
            WHERE is_src AND last > pos)
        SELECT p.uid, p.a, b.tnid AS b
        FROM probe p JOIN positioned b ON b.uid = p.uid AND b.pos = p.bpos
        WHERE b.tnid IS NOT NULL AND b.tnid <> p.a"""


def _load_events(con: duckdb.DuckDBPyConnection, events: pd.DataFrame | str | Path,
                 cfg: MiningConfig) -> None:
    """Create ``notes`` (note_id, nid), ``users`` (user_id, uid) and ``ev`` (uid, nid, t, file_row, is_src,
    tnid = nid on target events, else NULL) from the source and target events."""
    actions = sorted(set(cfg.source_actions) | set(cfg.target_actions))
    con.execute(f"""
        CREATE TEMP TABLE raw AS
        SELECT CAST(user_id AS VARCHAR) AS user_id, CAST(note_id AS VARCHAR) AS note_id,
               epoch_us(ts) AS t, file_row,
               list_contains({_sql_list(cfg.source_actions)}, action) AS is_src,
               list_contains({_sql_list(cfg.target_actions)}, action) AS is_tgt
        FROM {_source_sql(con, events)} WHERE list_contains({_sql_list(actions)}, action)""")
    _check_no_nulls(con, events)
    # Integer ids: notes in string order (so that ties in top-t break by note_id_b), users in any order.
    con.execute("""
        CREATE TEMP TABLE notes AS
        SELECT note_id, (row_number() OVER (ORDER BY note_id) - 1)::INTEGER AS nid
        FROM (SELECT DISTINCT note_id FROM raw)""")
    con.execute("""
        CREATE TEMP TABLE users AS
        SELECT user_id, (row_number() OVER () - 1)::INTEGER AS uid FROM (SELECT DISTINCT user_id FROM raw)""")
    con.execute("""
        CREATE TEMP TABLE ev AS
        SELECT u.uid, n.nid, r.t, r.file_row, r.is_src, CASE WHEN r.is_tgt THEN n.nid END AS tnid
        FROM raw r JOIN users u USING (user_id) JOIN notes n USING (note_id)""")
    con.execute("DROP TABLE raw")


def _id_bits(con: duckdb.DuckDBPyConnection, table: str) -> int:
    """Bits needed for the dense integer ids of a dictionary table."""
    (count,) = con.execute(f"SELECT count(*) FROM {table}").fetchall()[0]
    return max(1, (count - 1).bit_length())


def _top_pairs(con: duckdb.DuckDBPyConnection, cfg: MiningConfig) -> pd.DataFrame:
    """Score every candidate pair, apply the thresholds and the over-popular filter, keep the top t per A."""
    note_bits, user_bits = _id_bits(con, "notes"), _id_bits(con, "users")
    con.execute("""
        CREATE TEMP TABLE nu AS
        SELECT uid, 1.0::DOUBLE / count(DISTINCT tnid) AS inv_n
        FROM ev WHERE tnid IS NOT NULL GROUP BY uid""")
    popular = ""
    if cfg.max_note_clicks_quantile is not None:
        con.execute("""
            CREATE TEMP TABLE popular AS
            WITH clicks AS (SELECT tnid AS nid, count(*) AS n FROM ev WHERE tnid IS NOT NULL GROUP BY tnid)
            SELECT nid FROM clicks WHERE n > (SELECT quantile_cont(n, ?) FROM clicks)""",
                    [cfg.max_note_clicks_quantile])
        popular = "AND a NOT IN (SELECT nid FROM popular) AND b NOT IN (SELECT nid FROM popular)"
    # (user, a, b) and (a, b) packed into single integers: one-column hash tables are the cheapest.
    key = "BIGINT" if user_bits + 2 * note_bits <= 63 else "HUGEINT"
    mask = (1 << note_bits) - 1
    # The top-t aggregate's key orders by score descending, then note_id_b ascending.
    score_bits = (math.floor(cfg.u_max * 10 ** SCORE_DECIMALS) + 1).bit_length()
    rank = "BIGINT" if score_bits + note_bits <= 63 else "HUGEINT"
    return con.execute(f"""
        WITH cand AS (
            SELECT DISTINCT (uid::{key} << {2 * note_bits}) | (a::{key} << {note_bits}) | b AS key
            FROM ({_candidates_sql(cfg)})),
        scored AS (
            SELECT ((key >> {note_bits}) & {mask})::INTEGER AS a, (key & {mask})::INTEGER AS b,
                   floor(sum(inv_n) * {_SCALE} + 0.5)::BIGINT AS score_int
            FROM cand JOIN nu ON nu.uid = (key >> {2 * note_bits})::INTEGER
            GROUP BY a, b),
        kept AS (
            SELECT a, unnest(max((score_int::{rank} << {note_bits}) | ({mask} - b), {cfg.top_t})) AS rank_key
            FROM scored
            WHERE score_int / {_SCALE} >= $l_min AND score_int / {_SCALE} <= $u_max {popular}
            GROUP BY a),
        decoded AS (SELECT a, {mask} - (rank_key & {mask})::INTEGER AS b,
                           (rank_key >> {note_bits})::BIGINT / {_SCALE} AS score FROM kept)
        SELECT na.note_id AS note_id_a, nb.note_id AS note_id_b, score
        FROM decoded JOIN notes na ON na.nid = decoded.a JOIN notes nb ON nb.nid = decoded.b
        ORDER BY a, score DESC, b""", {"l_min": cfg.l_min, "u_max": cfg.u_max}).df()


def mine_pairs(events: pd.DataFrame | str | Path, cfg: MiningConfig, *,
               memory_limit: str = DUCKDB_MEMORY_LIMIT) -> pd.DataFrame:
    """Score co-occurring note pairs; return note_id_a, note_id_b, score (sorted by A, score desc, B).

    ``events`` is an events frame or the path of an events parquet file (streamed by DuckDB).
    ``memory_limit`` caps DuckDB's memory (for example "4GB"); beyond it DuckDB spills to a temporary
    directory, which is removed afterwards.
    """
    with tempfile.TemporaryDirectory(prefix="notellm-mining-") as temp_dir:
        con = duckdb.connect(config={"preserve_insertion_order": False, "temp_directory": temp_dir,
                                     "memory_limit": memory_limit})
        try:
            _load_events(con, events, cfg)
            pairs = _top_pairs(con, cfg)
        finally:
            con.close()
    pairs["score"] = pairs["score"].astype("float64")
    return pairs[PAIR_COLUMNS].reset_index(drop=True)


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

    Writes ``pairs.parquet`` and ``pair_stats.json`` atomically; the same inputs give the same outputs.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    events_path = data_dir / "events.parquet"
    validate_events_file(events_path, data_dir / "notes.parquet")
    pairs = split_pairs(mine_pairs(events_path, cfg), cfg)
    stats = pair_stats(pairs)
    write_table(pairs, out_dir / "pairs.parquet", PAIRS)
    write_json(stats, out_dir / "pair_stats.json")
    return stats
