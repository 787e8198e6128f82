"""The data contracts: round trips through every format, and a precise error for each bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from notellm import contracts
from notellm.errors import DataError


def write_as(df: pd.DataFrame, path: Path) -> Path:
    """Write a frame the way a user would: parquet as is, jsonl records, csv with hashtags as a|b|c."""
    if path.suffix == ".parquet":
        df.to_parquet(path, index=False)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row, default=str) + "\n" for row in df.to_dict("records")))
    else:
        df = df.copy()
        if "hashtags" in df:
            df["hashtags"] = df["hashtags"].map("|".join)
        df.to_csv(path, index=False)
    return path


def assert_error(exc: pytest.ExceptionInfo[DataError], path: Path | str | None, row: int | None,
                 column: str | None) -> None:
    err = exc.value
    assert (err.file, err.row, err.column) == (str(path) if path is not None else None, row, column)
    for part in (str(path) if path is not None else None, f"row {row}" if row is not None else None, column):
        if part is not None:
            assert part in str(err)


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".csv"])
@pytest.mark.parametrize("kind", ["notes", "events", "pairs"])
def test_round_trip_every_format(tmp_path, suffix, kind, notes_df, events_df, pairs_df):
    df = {"notes": notes_df, "events": events_df, "pairs": pairs_df}[kind]
    path = write_as(df, tmp_path / f"{kind}{suffix}")
    back = contracts.read_table(path, kind)
    pd.testing.assert_frame_equal(back, contracts.validate(df, kind))
    assert contracts.to_arrow(back, kind).schema == contracts.CONTRACTS[kind].schema


def test_write_table_then_read_table_is_identity(tmp_path, notes_df):
    path = contracts.write_table(notes_df, tmp_path / "out" / "notes.parquet", "notes")
    assert pq.read_schema(path) == contracts.CONTRACTS["notes"].schema
    pd.testing.assert_frame_equal(contracts.read_table(path, "notes"), contracts.validate(notes_df, "notes"))


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_embeddings_round_trip(tmp_path, suffix):
    df = pd.DataFrame({"note_id": ["a", "b"], "vector": [[0.5, -1.0, 2.0], [0.0, 1.0, 0.25]],
                       "model_version": ["v1", "v1"]})
    back = contracts.read_table(write_as(df, tmp_path / f"emb{suffix}"), "embeddings")
    assert back["vector"].iloc[1].dtype == np.float32
    np.testing.assert_array_equal(np.stack(back["vector"]), np.array(df["vector"].tolist(), dtype=np.float32))


def test_integer_ids_and_unix_seconds_are_accepted_in_jsonl(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text('{"user_id": 7, "note_id": 42, "ts": 1700000000, "action": "click"}\n')
    back = contracts.read_table(path, "events")
    assert back.iloc[0].tolist() == ["7", "42", pd.Timestamp("2023-11-14 22:13:20"), "click"]


def test_timezone_aware_timestamps_become_naive_utc():
    df = pd.DataFrame({"user_id": ["u"], "note_id": ["a"], "action": ["click"],
                       "ts": pd.to_datetime(["2024-01-01T00:00:00+02:00"])})
    assert contracts.validate(df, "events")["ts"].iloc[0] == pd.Timestamp("2023-12-31 22:00:00")


def test_missing_column_is_named(tmp_path, notes_df):
    path = write_as(notes_df.drop(columns=["category"]), tmp_path / "notes.csv")
    with pytest.raises(DataError, match="missing column") as exc:
        contracts.read_table(path, "notes")
    assert_error(exc, path, None, "category")


def _notes_with(notes_df: pd.DataFrame, column: str, value: object) -> pd.DataFrame:
    df = notes_df.astype({"event_timestamp": str})
    df[column] = df[column].astype(object)
    df.at[2, column] = value
    return df


@pytest.mark.parametrize(("column", "value", "message"), [
    ("event_timestamp", "yesterday", "not a timestamp"),
    ("title", None, "missing value"),
    ("hashtags", None, "expected a list"),
])
def test_bad_value_names_file_row_column(tmp_path, notes_df, column, value, message):
    path = write_as(_notes_with(notes_df, column, value), tmp_path / "notes.jsonl")
    with pytest.raises(DataError, match=message) as exc:
        contracts.read_table(path, "notes")
    assert_error(exc, path, 2, column)


def test_wrong_column_type_in_parquet(tmp_path, notes_df):
    path = write_as(notes_df.assign(category=[1.5, 2.5, 3.5]), tmp_path / "notes.parquet")
    with pytest.raises(DataError, match="expected a string, got float") as exc:
        contracts.read_table(path, "notes")
    assert_error(exc, path, 0, "category")


def test_wrong_type_in_validate_names_row(notes_df):
    with pytest.raises(DataError, match="expected a list of strings") as exc:
        contracts.validate(_notes_with(notes_df, "hashtags", ["ok", 3]), "notes", file="notes.jsonl")
    assert_error(exc, "notes.jsonl", 2, "hashtags")


def test_wrong_number_in_csv_pairs(tmp_path, pairs_df):
    df = pairs_df.astype({"score": object})
    df.at[1, "score"] = "high"
    path = write_as(df, tmp_path / "pairs.csv")
    with pytest.raises(DataError, match="not a finite number") as exc:
        contracts.read_table(path, "pairs")
    assert_error(exc, path, 1, "score")


@pytest.mark.parametrize("empty", ["", "   "])
def test_empty_id(tmp_path, notes_df, empty):
    notes_df.at[1, "note_id"] = empty
    path = write_as(notes_df, tmp_path / "notes.csv")
    with pytest.raises(DataError, match="empty value") as exc:
        contracts.read_table(path, "notes")
    assert_error(exc, path, 1, "note_id")


def test_duplicate_note_id_names_the_second_row(tmp_path, notes_df):
    notes_df.at[2, "note_id"] = "n1"
    path = write_as(notes_df, tmp_path / "notes.parquet")
    with pytest.raises(DataError, match="duplicate note_id 'n1'") as exc:
        contracts.read_table(path, "notes")
    assert_error(exc, path, 2, "note_id")


def test_event_for_unknown_note(events_df, notes_df):
    events_df.at[3, "note_id"] = "ghost"
    with pytest.raises(DataError, match="unknown note_id 'ghost'") as exc:
        contracts.check_references(events_df, ["note_id"], notes_df["note_id"], file="events.csv",
                                   what="event")
    assert_error(exc, "events.csv", 3, "note_id")


def test_pair_for_unknown_note_names_the_column(pairs_df, notes_df):
    pairs_df.at[0, "note_id_b"] = "ghost"
    with pytest.raises(DataError) as exc:
        contracts.check_references(pairs_df, ["note_id_a", "note_id_b"], notes_df["note_id"], file="p.jsonl")
    assert_error(exc, "p.jsonl", 0, "note_id_b")


def test_bad_split(tmp_path, pairs_df):
    pairs_df.at[1, "split"] = "holdout"
    path = write_as(pairs_df, tmp_path / "pairs.parquet")
    with pytest.raises(DataError, match="split must be one of") as exc:
        contracts.read_table(path, "pairs")
    assert_error(exc, path, 1, "split")


def test_embeddings_of_mixed_length(tmp_path):
    df = pd.DataFrame({"note_id": ["a", "b", "c"], "vector": [[1.0, 2.0], [3.0, 4.0], [5.0]],
                       "model_version": ["v"] * 3})
    path = write_as(df, tmp_path / "emb.parquet")
    with pytest.raises(DataError, match="vector length 1 differs from 2") as exc:
        contracts.read_table(path, "embeddings")
    assert_error(exc, path, 2, "vector")


def test_non_finite_embedding(tmp_path):
    df = pd.DataFrame({"note_id": ["a", "b"], "vector": [[1.0, 2.0], [np.nan, 4.0]],
                       "model_version": ["v"] * 2})
    with pytest.raises(DataError, match="finite") as exc:
        contracts.validate(df, "embeddings", file="emb.parquet")
    assert_error(exc, "emb.parquet", 1, "vector")


@pytest.mark.parametrize(("name", "content", "message"), [
    ("notes.parquet", b"PAR1 this is not parquet", "cannot read the file"),
    ("notes.jsonl", b'{"note_id": "a"}\n{not json', "cannot read the file"),
    ("notes.xlsx", b"whatever", "unsupported file type"),
    ("missing.csv", None, "file not found"),
])
def test_unreadable_file(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=message) as exc:
        contracts.read_table(path, "notes")
    assert_error(exc, path, None, None)


def test_failed_write_leaves_no_file(tmp_path, notes_df):
    target = tmp_path / "notes.parquet"
    bad = notes_df.assign(note_id=["n1", "n1", "n2"])
    with pytest.raises(DataError, match="duplicate"):
        contracts.write_table(bad, target, "notes")
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_previous_file(tmp_path, notes_df):
    target = contracts.write_table(notes_df, tmp_path / "notes.parquet", "notes")
    before = target.read_bytes()
    with pytest.raises(DataError):
        contracts.write_table(notes_df.drop(columns=["title"]), target, "notes")
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["notes.parquet"]


def test_empty_tables_are_valid(tmp_path):
    empty = contracts.CONTRACTS["events"].schema.empty_table().to_pandas()
    path = contracts.write_table(empty, tmp_path / "events.parquet", "events")
    assert len(contracts.read_table(path, "events")) == 0


# Formats users send: mixed ISO timestamps, unix seconds in csv, wrong types in jsonl.

def test_mixed_iso_timestamps_in_one_column(tmp_path, events_df):
    df = events_df.astype({"ts": str})
    df.at[0, "ts"] = "2024-02-01"
    df.at[1, "ts"] = "2024-02-01T10:01:00Z"
    back = contracts.read_table(write_as(df, tmp_path / "events.csv"), "events")
    assert back["ts"].iloc[1] == pd.Timestamp("2024-02-01 10:01:00")


def test_unix_seconds_in_csv(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("user_id,note_id,ts,action\nu1,n1,1700000000,click\n")
    assert contracts.read_table(path, "events")["ts"].iloc[0] == pd.Timestamp("2023-11-14 22:13:20")


def test_null_among_integer_ids_names_the_null_row(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text('{"user_id": 1, "note_id": "a", "ts": 1700000000, "action": "click"}\n'
                    '{"user_id": null, "note_id": "a", "ts": 1700000000, "action": "click"}\n')
    with pytest.raises(DataError, match="missing value") as exc:
        contracts.read_table(path, "events")
    assert_error(exc, path, 1, "user_id")


@pytest.mark.parametrize(("column", "value", "message"), [
    ("title", {"x": 1}, "expected a string"),
    ("hashtags", 7, "expected a list"),
    ("hashtags", ["a", 1], "expected a list of strings"),
])
def test_wrong_typed_value_in_jsonl_names_the_row(tmp_path, notes_df, column, value, message):
    path = write_as(_notes_with(notes_df, column, value), tmp_path / "notes.jsonl")
    with pytest.raises(DataError, match=message) as exc:
        contracts.read_table(path, "notes")
    assert_error(exc, path, 2, column)
