"""The data contracts of DESIGN.md: notes, events, pairs, embeddings as parquet, validated on read.

Every violation raises :class:`~notellm.errors.DataError` naming the file, the row (0-based, as in
the file) and the column. Writes go through :func:`write_table`, which validates first and renames
into place, so a bad table never reaches disk.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from notellm.errors import DataError
from notellm.io import atomic_path

NOTES, EVENTS, PAIRS, EMBEDDINGS = "notes", "events", "pairs", "embeddings"
SPLITS = ("train", "val", "test")
MAX_UNIX_SECONDS = pd.Timestamp.max.timestamp()  # about the year 2262: pandas' datetime range


@dataclass(frozen=True)
class Contract:
    """Columns of a table and their arrow types; ``key`` columns must be non-empty strings."""

    name: str
    schema: pa.Schema
    keys: tuple[str, ...]
    unique: tuple[str, ...] = ()


_TS = pa.timestamp("us")
CONTRACTS: dict[str, Contract] = {
    NOTES: Contract(NOTES, pa.schema([
        ("note_id", pa.string()), ("title", pa.string()), ("content", pa.string()),
        ("hashtags", pa.list_(pa.string())), ("category", pa.string()), ("event_timestamp", _TS),
    ]), keys=("note_id",), unique=("note_id",)),
    EVENTS: Contract(EVENTS, pa.schema([
        ("user_id", pa.string()), ("note_id", pa.string()), ("ts", _TS), ("action", pa.string()),
    ]), keys=("user_id", "note_id", "action")),
    PAIRS: Contract(PAIRS, pa.schema([
        ("note_id_a", pa.string()), ("note_id_b", pa.string()), ("score", pa.float64()),
        ("split", pa.string()),
    ]), keys=("note_id_a", "note_id_b", "split")),
    EMBEDDINGS: Contract(EMBEDDINGS, pa.schema([
        ("note_id", pa.string()), ("vector", pa.list_(pa.float32())), ("model_version", pa.string()),
    ]), keys=("note_id", "model_version"), unique=("note_id",)),
}


def read_frame(path: str | Path) -> pd.DataFrame:
    """Read parquet, jsonl/ndjson or csv into a pandas frame; an unreadable file is a DataError."""
    path = Path(path)
    if not path.exists():
        raise DataError("file not found", file=path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pq.read_table(path).to_pandas()
        if suffix in (".jsonl", ".ndjson", ".json"):
            return pd.read_json(path, lines=True, dtype=False)
        if suffix == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:  # noqa: BLE001 - any reader failure means "unreadable file"
        raise DataError(f"cannot read the file ({type(exc).__name__}: {exc})", file=path) from exc
    raise DataError(f"unsupported file type {suffix!r} (use .parquet, .jsonl or .csv)", file=path)


def _first_bad_row(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _coerce_column(column: pd.Series, name: str, typ: pa.DataType, file: str | Path | None) -> pd.Series:
    """Convert one column to the contract type, naming the first row that cannot be converted."""
    if pa.types.is_timestamp(typ):
        if pd.api.types.is_datetime64_dtype(column) and not column.isna().any():
            return column.astype("datetime64[us]")
        text_seconds = column.dtype == object and pd.to_numeric(column, errors="coerce").notna().all()
        if pd.api.types.is_numeric_dtype(column) or (len(column) and text_seconds):  # unix seconds
            seconds = pd.to_numeric(column, errors="coerce")
            if not pd.api.types.is_bool_dtype(seconds):  # out of the datetime range (or inf): not a timestamp
                seconds = seconds.astype("float64").where(lambda s: s.abs() < MAX_UNIX_SECONDS)
            converted = pd.to_datetime(seconds, unit="s", errors="coerce", utc=True)
        else:
            converted = pd.to_datetime(column, errors="coerce", utc=True, format="ISO8601")
        bad = converted.isna().to_numpy()
        if bad.any():
            row = _first_bad_row(bad)
            raise DataError(f"not a timestamp: {column.iloc[row]!r}", file=file, row=row, column=name)
        return converted.dt.tz_localize(None).astype("datetime64[us]")
    if pa.types.is_floating(typ):
        converted = pd.to_numeric(column, errors="coerce")
        bad = converted.isna().to_numpy() | ~np.isfinite(converted.to_numpy(dtype=float, na_value=np.nan))
        if bad.any():
            row = _first_bad_row(bad)
            raise DataError(f"not a finite number: {column.iloc[row]!r}", file=file, row=row, column=name)
        return converted.astype("float64")
    if pa.types.is_list(typ):
        return _coerce_list_column(column, name, typ.value_type, file)
    # strings: ids may arrive as integers (csv, MovieLens); anything else is a type error.
    missing = column.isna().to_numpy()
    if missing.any():
        raise DataError("missing value", file=file, row=_first_bad_row(missing), column=name)
    if pd.api.types.infer_dtype(column, skipna=False) == "string":
        return column.astype(object)
    if pd.api.types.is_integer_dtype(column):
        return column.astype(str).astype(object)
    values = column.to_numpy(dtype=object)
    out = np.empty(len(values), dtype=object)
    for row, value in enumerate(values):
        if isinstance(value, str):
            out[row] = value
        elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            out[row] = str(value)
        elif value is None or (isinstance(value, float) and np.isnan(value)):
            raise DataError("missing value", file=file, row=row, column=name)
        else:
            raise DataError(f"expected a string, got {type(value).__name__} {value!r}",
                            file=file, row=row, column=name)
    return pd.Series(out, index=column.index, dtype=object)


def _coerce_list_column(column: pd.Series, name: str, value_type: pa.DataType,
                        file: str | Path | None) -> pd.Series:
    out = []
    want_float = pa.types.is_floating(value_type)
    for row, value in enumerate(column.to_numpy(dtype=object)):
        if isinstance(value, str) and not want_float:  # csv: "a|b|c"
            value = [v for v in value.split("|") if v]
        if isinstance(value, np.ndarray):
            value = value.tolist()
        if not isinstance(value, (list, tuple)):
            raise DataError(f"expected a list, got {type(value).__name__} {value!r}",
                            file=file, row=row, column=name)
        if want_float:
            try:
                arr = np.asarray(value, dtype=np.float32)
            except (TypeError, ValueError) as exc:
                raise DataError(f"expected a list of numbers ({exc})", file=file, row=row, column=name) from exc
            if arr.ndim != 1 or not np.isfinite(arr).all():
                raise DataError("expected a flat list of finite numbers", file=file, row=row, column=name)
            out.append(arr)
        else:
            if not all(isinstance(v, str) for v in value):
                raise DataError(f"expected a list of strings, got {value!r}", file=file, row=row, column=name)
            out.append(list(value))
    return pd.Series(out, index=column.index, dtype=object)


def validate(df: pd.DataFrame, kind: str, *, file: str | Path | None = None) -> pd.DataFrame:
    """Return ``df`` reduced to the contract's columns in canonical types, or raise a DataError."""
    contract = CONTRACTS[kind]
    missing = [f.name for f in contract.schema if f.name not in df.columns]
    if missing:
        raise DataError(f"missing column(s) {missing} for a {kind} table; found {list(df.columns)}",
                        file=file, column=missing[0])
    df = df.reset_index(drop=True)
    out = pd.DataFrame({f.name: _coerce_column(df[f.name], f.name, f.type, file) for f in contract.schema})
    for key in contract.keys:
        empty = (out[key].str.strip() == "").to_numpy()
        if empty.any():
            raise DataError("empty value", file=file, row=_first_bad_row(empty), column=key)
    for key in contract.unique:
        dup = out[key].duplicated().to_numpy()
        if dup.any():
            row = _first_bad_row(dup)
            raise DataError(f"duplicate {key} {out[key].iloc[row]!r}", file=file, row=row, column=key)
    if kind == PAIRS:
        bad = ~out["split"].isin(SPLITS).to_numpy()
        if bad.any():
            row = _first_bad_row(bad)
            raise DataError(f"split must be one of {SPLITS}, got {out['split'].iloc[row]!r}",
                            file=file, row=row, column="split")
    if kind == EMBEDDINGS and len(out):
        lengths = out["vector"].map(len).to_numpy()
        bad = lengths != lengths[0]
        if bad.any():
            row = _first_bad_row(bad)
            raise DataError(f"vector length {lengths[row]} differs from {lengths[0]} in row 0",
                            file=file, row=row, column="vector")
    return out


def check_references(table: pd.DataFrame, columns: Iterable[str], note_ids: Iterable[str], *,
                     file: str | Path | None = None, what: str = "row") -> None:
    """Raise a DataError for the first row whose note id (in any of ``columns``) is not a known note."""
    known = pd.Index(pd.unique(pd.Series(list(note_ids), dtype=object)))
    for column in columns:
        bad = ~table[column].isin(known).to_numpy()
        if bad.any():
            row = _first_bad_row(bad)
            raise DataError(f"{what} for unknown note_id {table[column].iloc[row]!r} (not in the notes table)",
                            file=file, row=row, column=column)


def read_table(path: str | Path, kind: str) -> pd.DataFrame:
    """Read and validate one table of the given kind (``notes``, ``events``, ``pairs``, ``embeddings``)."""
    return validate(read_frame(path), kind, file=path)


def to_arrow(df: pd.DataFrame, kind: str) -> pa.Table:
    """Convert a validated frame into an arrow table with exactly the contract's schema."""
    schema = CONTRACTS[kind].schema
    return pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)


def write_table(df: pd.DataFrame, path: str | Path, kind: str) -> Path:
    """Validate ``df`` and write it to ``path`` as parquet, atomically."""
    path = Path(path)
    table = to_arrow(validate(df, kind, file=path), kind)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path
