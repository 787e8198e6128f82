"""Note features: the feature table (text fields, lengths, behaviour counts) and the Feast repository.

``build_note_features`` computes one row per note from the notes and events tables. ``FeatureRepo``
drives a Feast repository (the ``feature_repo/`` directory of this project, or a copy of it): apply
the definitions, write the offline parquet, materialise into the online store, read online features
and read training notes back through the offline store, undoing three quirks of Feast's
``get_historical_features`` (it drops entity rows older than every feature row, does not keep the
row order and turns int columns into floats).
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from notellm.contracts import EVENTS, NOTES, validate
from notellm.errors import ConfigError, DataError
from notellm.io import atomic_path

if TYPE_CHECKING:
    from feast import FeatureStore

#: The Feast repository shipped with the project; ``FeatureRepo.create`` copies it.
REPO_TEMPLATE = Path(__file__).resolve().parents[1] / "feature_repo"
FEATURE_VIEW = "note_features"
FEATURE_SERVICE = "note_service"
#: Where the offline parquet lives, relative to the repository (the FileSource path in notes.py).
FEATURES_FILE = Path("data/note_features.parquet")
WINDOW = timedelta(days=7)

#: The feature table written to the offline store: join key, features, timestamp.
FEATURE_SCHEMA = pa.schema([
    ("note_id", pa.string()), ("title", pa.string()), ("content", pa.string()), ("category", pa.string()),
    ("hashtags", pa.list_(pa.string())), ("title_length", pa.int64()), ("content_length", pa.int64()),
    ("hashtag_count", pa.int64()), ("clicks_7d", pa.int64()), ("clicks_total", pa.int64()),
    ("views_7d", pa.int64()), ("views_total", pa.int64()), ("event_timestamp", pa.timestamp("us")),
])
FEATURE_NAMES = [n for n in FEATURE_SCHEMA.names if n not in ("note_id", "event_timestamp")]


def _utc_naive(ts: datetime | pd.Timestamp | None) -> pd.Timestamp:
    """A timestamp (None: now) as naive UTC, the contracts' convention; naive input is taken as UTC."""
    stamp = pd.Timestamp(ts if ts is not None else datetime.now(timezone.utc))
    return stamp.tz_convert("UTC").tz_localize(None) if stamp.tzinfo is not None else stamp


def build_note_features(notes: pd.DataFrame, events: pd.DataFrame | None,
                        as_of: datetime | None = None) -> pd.DataFrame:
    """One feature row per note, in the order of ``notes``.

    Text features: title, content, category, hashtags and their lengths (characters, hashtag count).
    Behaviour: clicks and views of the note in the 7 days up to the row's time (``(t - 7d, t]``) and in
    total up to it. With ``as_of`` every row is a snapshot at ``as_of`` (notes created later are left
    out); without it each row is stamped with, and counts events up to, its note's ``event_timestamp``.
    """
    import duckdb

    notes = validate(notes, NOTES)
    events = validate(events if events is not None else pd.DataFrame(
        {"user_id": [], "note_id": [], "ts": pd.Series([], dtype="datetime64[us]"), "action": []}), EVENTS)
    if as_of is not None:
        snapshot = _utc_naive(as_of)
        notes = notes[notes["event_timestamp"] <= snapshot].reset_index(drop=True)
        notes["event_timestamp"] = pd.Series(snapshot, index=notes.index).astype("datetime64[us]")
    keys = pd.DataFrame({"note_id": notes["note_id"], "t": notes["event_timestamp"],
                         "pos": np.arange(len(notes))})
    with duckdb.connect() as con:
        con.register("keys", keys)
        con.register("events", events)
        counts = con.execute("""
            SELECT k.pos,
                   count(*) FILTER (WHERE e.action = 'click' AND e.ts > k.t - ?) AS clicks_7d,
                   count(*) FILTER (WHERE e.action = 'click') AS clicks_total,
                   count(*) FILTER (WHERE e.action = 'view' AND e.ts > k.t - ?) AS views_7d,
                   count(*) FILTER (WHERE e.action = 'view') AS views_total
            FROM keys k LEFT JOIN events e ON e.note_id = k.note_id AND e.ts <= k.t
            GROUP BY k.pos ORDER BY k.pos
        """, [WINDOW, WINDOW]).df()
    out = pd.DataFrame({
        "note_id": notes["note_id"], "title": notes["title"], "content": notes["content"],
        "category": notes["category"], "hashtags": notes["hashtags"],
        "title_length": notes["title"].str.len().astype("int64"),
        "content_length": notes["content"].str.len().astype("int64"),
        "hashtag_count": notes["hashtags"].map(len).astype("int64"),
    })
    for column in ("clicks_7d", "clicks_total", "views_7d", "views_total"):
        out[column] = counts[column].to_numpy(dtype="int64")
    out["event_timestamp"] = notes["event_timestamp"].astype("datetime64[us]")
    return out


def _feature_table(df: pd.DataFrame, file: Path) -> pa.Table:
    """The feature frame as an arrow table with exactly FEATURE_SCHEMA, or a DataError naming the column."""
    missing = [n for n in FEATURE_SCHEMA.names if n not in df.columns]
    if missing:
        raise DataError(f"feature table lacks column(s) {missing}", file=file, column=missing[0])
    df = df.reset_index(drop=True)
    for name in FEATURE_SCHEMA.names:
        bad = df[name].isna().to_numpy()
        if bad.any():
            raise DataError("missing value", file=file, row=int(np.flatnonzero(bad)[0]), column=name)
    repeated = df.duplicated(["note_id", "event_timestamp"]).to_numpy()
    if repeated.any():
        row = int(np.flatnonzero(repeated)[0])
        raise DataError(f"note_id {df['note_id'].iloc[row]!r} has two rows at "
                        f"{df['event_timestamp'].iloc[row]}", file=file, row=row, column="note_id")
    columns = []
    for f in FEATURE_SCHEMA:
        try:
            columns.append(pa.array(df[f.name], type=f.type, from_pandas=True))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
            raise DataError(f"expected {f.type}: {exc}", file=file, column=f.name) from exc
    return pa.Table.from_arrays(columns, schema=FEATURE_SCHEMA)


class FeatureRepo:
    """A Feast feature repository on disk (``feature_store.yaml`` + definitions + ``data/``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).resolve()
        if not (self.path / "feature_store.yaml").is_file():
            raise ConfigError(f"{self.path} is not a Feast repository (no feature_store.yaml)")

    @classmethod
    def create(cls, target: str | Path, template: str | Path = REPO_TEMPLATE) -> FeatureRepo:
        """Copy the repository definitions (not its data) to ``target`` and return it there."""
        template = Path(template)
        if not (template / "feature_store.yaml").is_file():
            raise ConfigError(f"{template} is not a Feast repository (no feature_store.yaml)")
        ignore = shutil.ignore_patterns("__pycache__", "*.db", "*.parquet")
        shutil.copytree(template, target, ignore=ignore, dirs_exist_ok=True)
        (Path(target) / "data").mkdir(exist_ok=True)
        return cls(target)

    @property
    def features_path(self) -> Path:
        return self.path / FEATURES_FILE

    @cached_property
    def store(self) -> FeatureStore:
        from feast import FeatureStore

        return FeatureStore(repo_path=str(self.path))

    def _definitions(self) -> list[Any]:
        """Feast objects defined in the repository's .py files (honouring .feastignore), as `feast apply`."""
        from feast import Entity, FeatureService, FeatureView
        from feast.data_source import DataSource
        from feast.repo_operations import get_repo_files

        objects: list[Any] = []
        for file in get_repo_files(self.path):
            name = "_feast_repo_" + hashlib.sha1(str(file).encode()).hexdigest()[:12]
            spec = importlib.util.spec_from_file_location(name, file)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            for value in vars(module).values():
                if isinstance(value, (Entity, DataSource, FeatureView, FeatureService)) and not any(
                        value is seen for seen in objects):
                    objects.append(value)
        if not objects:
            raise ConfigError(f"no Feast definitions found in {self.path}")
        return objects

    def apply(self) -> list[str]:
        """Register the repository's entities, sources, views and services; return their names."""
        objects = self._definitions()
        self.store.apply(objects)
        return [o.name for o in objects]

    def write_offline(self, df: pd.DataFrame) -> Path:
        """Write the feature table(s) to the offline store's parquet, atomically, replacing what was there.

        ``df`` may hold several snapshots (``build_note_features`` at several ``as_of``): one row per
        note and time; retrieval then picks, per note, the latest row at or before the requested time.
        """
        table = _feature_table(df, self.features_path)
        with atomic_path(self.features_path) as tmp:
            pq.write_table(table, tmp)
        return self.features_path

    def materialize(self, end: datetime | None = None) -> None:
        """Load the latest row of every note up to ``end`` (default: now) into the online store."""
        self.store.materialize(start_date=datetime(1970, 1, 1, tzinfo=timezone.utc),
                               end_date=_utc_naive(end).tz_localize("UTC").to_pydatetime(),
                               feature_views=[FEATURE_VIEW])

    def online_features(self, note_ids: Sequence[str]) -> list[dict[str, Any]]:
        """Online features per requested id, in order; ``found`` is False (values None) for unknown ids."""
        from feast.protos.feast.serving.ServingService_pb2 import FieldStatus

        ids = _check_ids(note_ids)
        if not ids:
            return []
        response = self.store.get_online_features(
            features=self.store.get_feature_service(FEATURE_SERVICE),
            entity_rows=[{"note_id": i} for i in ids])
        values = response.to_dict()
        names = list(response.proto.metadata.feature_names.val)
        statuses = [list(r.statuses) for n, r in zip(names, response.proto.results) if n != "note_id"]
        rows = []
        for j, note_id in enumerate(ids):
            found = any(s[j] != FieldStatus.NOT_FOUND for s in statuses)
            row: dict[str, Any] = {"note_id": note_id, "found": found}
            for name in FEATURE_NAMES:
                value = values[name][j] if found else None
                row[name] = list(value) if name == "hashtags" and value is not None else value
            rows.append(row)
        return rows

    def offline_notes(self, note_ids: Sequence[str],
                      ts: datetime | Sequence[datetime] | None = None) -> pd.DataFrame:
        """Notes and their features as of ``ts`` (one time, one per id, or now) from the offline store.

        Rows come back in request order with the view's dtypes (ints stay ints, hashtags are lists);
        ``event_timestamp`` is the time they were read as of (naive UTC). An id with no feature row
        at or before its time is a DataError naming it.
        """
        ids = _check_ids(note_ids)
        dtypes = self._pandas_dtypes()
        if not ids:
            empty = {n: pd.Series([], dtype=object if d == "list" else d) for n, d in dtypes.items()}
            return pd.DataFrame({"note_id": pd.Series([], dtype=object), **empty,
                                 "event_timestamp": pd.Series([], dtype="datetime64[us]")})
        if ts is None or isinstance(ts, (datetime, pd.Timestamp)):
            times = pd.Series([_utc_naive(ts)] * len(ids), dtype="datetime64[us]")
        else:
            times = pd.Series([_utc_naive(t) for t in ts], dtype="datetime64[us]")
            if len(times) != len(ids):
                raise DataError(f"got {len(times)} timestamps for {len(ids)} note ids")
        # Feast also collapses repeated (id, time) rows: ask once per pair, then map back to the request.
        request = pd.DataFrame({"note_id": ids, "event_timestamp": times.dt.tz_localize("UTC")})
        request["key"] = request.groupby(["note_id", "event_timestamp"], sort=False).ngroup()
        got = self.store.get_historical_features(
            entity_df=request.drop_duplicates("key"),
            features=self.store.get_feature_service(FEATURE_SERVICE)).to_df()
        got = got[~got[FEATURE_NAMES].isna().all(axis=1)]
        got = got.set_index("key").reindex(request["key"].to_numpy())
        missing = got[FEATURE_NAMES].isna().all(axis=1).to_numpy()
        if missing.any():
            rows = np.flatnonzero(missing)
            listed = ", ".join(f"{ids[r]!r} at {times.iloc[r]}" for r in rows[:10])
            raise DataError(f"{len(rows)} requested note(s) have no feature row at or before the requested "
                            f"time: {listed}{' ...' if len(rows) > 10 else ''}", file=self.features_path,
                            column="note_id")
        out = pd.DataFrame({"note_id": pd.Series(ids, dtype=object)})
        for name, dtype in dtypes.items():
            column = got[name].reset_index(drop=True)
            out[name] = (column.map(lambda v: [str(x) for x in v]) if dtype == "list"
                         else column.astype(dtype))
        out["event_timestamp"] = times.to_numpy()
        return out

    def _pandas_dtypes(self) -> dict[str, str]:
        """The registered view's feature types as pandas dtypes (``list`` for arrays)."""
        from feast.types import Array, Bool, Float32, Float64, Int32, Int64, String

        simple = {str(t): d for t, d in [(Int64, "int64"), (Int32, "int32"), (Float64, "float64"),
                                          (Float32, "float32"), (String, "object"), (Bool, "bool")]}
        out = {}
        for f in self.store.get_feature_view(FEATURE_VIEW).features:
            if isinstance(f.dtype, Array):
                out[f.name] = "list"
            elif str(f.dtype) in simple:
                out[f.name] = simple[str(f.dtype)]
            else:
                raise ConfigError(f"feature {f.name!r} has a type ({f.dtype}) offline_notes cannot restore")
        return out


def _check_ids(note_ids: Sequence[str]) -> list[str]:
    ids = list(note_ids)
    for row, value in enumerate(ids):
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"note_id must be a non-empty string, got {value!r}", row=row, column="note_id")
    return ids
