"""Datasets: MovieLens-100k from the recbole wheel, the synthetic generator, the user-files importer."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from user_notes import save

from notellm import contracts
from notellm.config import DataConfig, SyntheticConfig
from notellm.datasets import build_dataset, import_files, load_movielens, write_synthetic
from notellm.datasets.movielens import read_movielens_raw
from notellm.errors import DataError

# --- MovieLens-100k ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raw():
    return read_movielens_raw()


@pytest.fixture(scope="module")
def movielens():
    return load_movielens()


def test_raw_files_are_complete(raw):
    assert len(raw["inter"]) == 100_000
    assert raw["inter"]["user_id"].nunique() == len(raw["user"]) == 943
    assert raw["inter"]["item_id"].nunique() == len(raw["item"]) == 1_682


def test_movielens_notes(movielens, raw):
    notes, _ = movielens
    notes = contracts.validate(notes, "notes")
    assert notes["note_id"].tolist() == raw["item"]["item_id"].tolist()
    assert notes["title"].tolist() == raw["item"]["movie_title"].tolist()
    assert notes["hashtags"].map(" ".join).tolist() == raw["item"]["class"].tolist()
    assert (notes["category"] == notes["hashtags"].str[0]).all()
    toy = notes.set_index("note_id").loc["1"]
    assert toy["content"].startswith("Toy Story, released in 1995,")
    assert all(genre in toy["content"] for genre in toy["hashtags"])


def test_movielens_clicks_are_good_ratings_in_time_order(movielens, raw):
    notes, events = movielens
    events = contracts.validate(events, "events")
    inter = raw["inter"]
    good = inter[inter["rating"].astype(float) >= 4.0]
    assert len(events) == len(good) > 0
    assert set(events["action"]) == {"click"}
    assert events["ts"].is_monotonic_increasing
    expected = pd.DataFrame({"user_id": good["user_id"], "note_id": good["item_id"],
                             "ts": pd.to_datetime(good["timestamp"].astype(int), unit="s")})
    key = ["user_id", "note_id", "ts"]
    pd.testing.assert_frame_equal(events[key].sort_values(key, ignore_index=True),
                                  expected.sort_values(key, ignore_index=True), check_dtype=False)
    contracts.check_references(events, ["note_id"], notes["note_id"])


def test_movielens_note_time_precedes_every_rating_of_it(movielens, raw):
    notes, _ = movielens
    inter = raw["inter"]
    first = pd.to_datetime(inter["timestamp"].astype(int), unit="s").groupby(inter["item_id"]).min()
    note_time = notes.set_index("note_id")["event_timestamp"]
    assert (note_time.loc[first.index] <= first).all()
    assert note_time.notna().all()


def test_movielens_min_rating(raw):
    _, events = load_movielens(min_rating=5)
    assert len(events) == int((raw["inter"]["rating"].astype(float) >= 5).sum())


def test_movielens_does_not_import_recbole(movielens):
    assert "recbole" not in sys.modules


def test_movielens_missing_files(tmp_path):
    with pytest.raises(DataError, match=r"recbole==1\.2\.1") as exc:
        load_movielens(root=tmp_path)
    assert exc.value.file == str(tmp_path / "ml-100k.inter")


# --- synthetic -----------------------------------------------------------------------------------

SMALL = SyntheticConfig(users=300, notes=2_000, events=30_000, topics=12, seed=3)


def _write(path: Path, cfg: SyntheticConfig = SMALL, **kwargs) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    counts = write_synthetic(path, cfg, **kwargs)
    return (contracts.read_table(path / "notes.parquet", "notes"),
            contracts.read_table(path / "events.parquet", "events"), counts)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("synthetic"))


def test_synthetic_follows_the_contracts_and_config(small):
    notes, events, counts = small
    assert len(notes) == counts["notes"] == SMALL.notes
    assert len(events) == counts["events"] == SMALL.events
    assert counts["clicks"] == (events["action"] == "click").sum() > 0
    assert counts["users"] == events["user_id"].nunique() <= SMALL.users
    assert set(events["action"]) == {"view", "click"}
    assert notes["category"].nunique() == SMALL.topics  # 12 topics, each with its own category
    assert notes["hashtags"].map(len).min() >= 1
    assert events["ts"].is_monotonic_increasing
    assert notes["event_timestamp"].max() < events["ts"].min()
    contracts.check_references(events, ["note_id"], notes["note_id"])


def test_synthetic_files_have_the_contract_schema(tmp_path):
    write_synthetic(tmp_path, SyntheticConfig(users=5, notes=20, events=50))
    assert pq.read_schema(tmp_path / "notes.parquet") == contracts.CONTRACTS["notes"].schema
    assert pq.read_schema(tmp_path / "events.parquet") == contracts.CONTRACTS["events"].schema
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.parquet", "notes.parquet"]


def test_synthetic_same_seed_same_files(tmp_path):
    cfg = SyntheticConfig(users=50, notes=200, events=3_000, seed=11)
    write_synthetic(tmp_path / "a", cfg)
    write_synthetic(tmp_path / "b", cfg)
    write_synthetic(tmp_path / "c", cfg.model_copy(update={"seed": 12}))
    for name in ("notes.parquet", "events.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes()


def test_synthetic_chunks_stream_in_time_order(tmp_path):
    cfg = SyntheticConfig(users=100, notes=300, events=25_000, seed=1)
    _, events, _ = _write(tmp_path, cfg, chunk_events=1_000)
    assert pq.ParquetFile(tmp_path / "events.parquet").metadata.num_row_groups == 25
    assert len(events) == 25_000
    assert events["ts"].is_monotonic_increasing


def test_synthetic_users_click_mostly_within_their_interests(small):
    notes, events, _ = small
    clicks = events[events["action"] == "click"].merge(notes[["note_id", "category"]], on="note_id")
    per_user = clicks.groupby("user_id")["category"].agg(lambda c: c.value_counts(normalize=True).iloc[0])
    overall_top = clicks["category"].value_counts(normalize=True).iloc[0]
    assert per_user.mean() > overall_top + 0.2


def _category_shift(a: pd.Series, b: pd.Series) -> float:
    """Total variation distance between two category distributions."""
    pa_, pb = a.value_counts(normalize=True), b.value_counts(normalize=True)
    return float(pa_.sub(pb, fill_value=0).abs().sum() / 2)


def test_drift_changes_the_distributions_and_seed_does_not(tmp_path, small):
    notes, events, _ = small
    other_notes, other_events, _ = _write(tmp_path / "seed", SMALL.model_copy(update={"seed": 4}))
    drift_notes, drift_events, _ = _write(tmp_path / "drift", SMALL.model_copy(update={"drift": True}))

    def words(df: pd.DataFrame) -> float:
        return float(df["content"].str.split().str.len().mean())

    def clicked_categories(ev: pd.DataFrame, nt: pd.DataFrame) -> pd.Series:
        return ev[ev["action"] == "click"].merge(nt, on="note_id")["category"]

    assert abs(words(other_notes) / words(notes) - 1) < 0.03
    assert words(drift_notes) / words(notes) > 1.5
    assert _category_shift(notes["category"], other_notes["category"]) < 0.06
    assert _category_shift(notes["category"], drift_notes["category"]) > 0.3
    reference = clicked_categories(events, notes)
    same = _category_shift(reference, clicked_categories(other_events, other_notes))
    drifted = _category_shift(reference, clicked_categories(drift_events, drift_notes))
    assert drifted > 0.3 > 3 * same


# --- user files ----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".csv"])
def test_import_files_every_format(tmp_path, suffix, notes_df, events_df, pairs_df):
    paths = [save(df, tmp_path / f"{name}{suffix}")
             for name, df in (("notes", notes_df), ("events", events_df), ("pairs", pairs_df))]
    summary = import_files(*paths, out_dir=tmp_path / "out")
    assert (summary["notes"], summary["events"], summary["pairs"], summary["users"]) == (3, 4, 2, 2)
    for kind, df in (("notes", notes_df), ("events", events_df), ("pairs", pairs_df)):
        out = tmp_path / "out" / f"{kind}.parquet"
        assert summary["paths"][kind] == str(out)
        assert pq.read_schema(out) == contracts.CONTRACTS[kind].schema
        pd.testing.assert_frame_equal(contracts.read_table(out, kind), contracts.validate(df, kind))


def test_import_pairs_without_events_writes_empty_events(tmp_path, notes_df, pairs_df):
    notes_path, pairs_path = save(notes_df, tmp_path / "n.csv"), save(pairs_df, tmp_path / "p.csv")
    summary = import_files(notes_path, pairs_path=pairs_path, out_dir=tmp_path / "out")
    assert summary["events"] == 0
    assert len(contracts.read_table(tmp_path / "out" / "events.parquet", "events")) == 0


@pytest.mark.parametrize(("broken", "row", "column", "message"), [
    ("events_unknown_note", 2, "note_id", "unknown note_id"),
    ("pairs_unknown_note", 1, "note_id_b", "unknown note_id"),
    ("notes_duplicate", 2, "note_id", "duplicate"),
    ("events_missing_column", None, "action", "missing column"),
    ("pairs_bad_split", 0, "split", "split must be one of"),
])
def test_import_bad_input_writes_nothing(tmp_path, notes_df, events_df, pairs_df, broken, row, column,
                                        message):
    if broken == "events_unknown_note":
        events_df.at[2, "note_id"] = "n404"
    elif broken == "pairs_unknown_note":
        pairs_df.at[1, "note_id_b"] = "n404"
    elif broken == "notes_duplicate":
        notes_df.at[2, "note_id"] = "n2"
    elif broken == "events_missing_column":
        events_df = events_df.drop(columns=["action"])
    else:
        pairs_df.at[0, "split"] = "later"
    paths = {name: save(df, tmp_path / f"{name}.jsonl")
             for name, df in (("notes", notes_df), ("events", events_df), ("pairs", pairs_df))}
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.parquet").write_bytes(b"previous run")
    with pytest.raises(DataError, match=message) as exc:
        import_files(paths["notes"], paths["events"], paths["pairs"], out_dir=out)
    bad_file = paths[broken.split("_")[0]]
    assert (exc.value.file, exc.value.row, exc.value.column) == (str(bad_file), row, column)
    assert [p.name for p in out.iterdir()] == ["notes.parquet"]
    assert (out / "notes.parquet").read_bytes() == b"previous run"


# --- build_dataset -------------------------------------------------------------------------------


def test_build_dataset_dispatches_and_reruns_cleanly(tmp_path, notes_df, events_df, pairs_df):
    out = tmp_path / "data"
    files = DataConfig(dataset="files", notes_path=save(notes_df, tmp_path / "n.parquet"),
                       events_path=save(events_df, tmp_path / "e.parquet"),
                       pairs_path=save(pairs_df, tmp_path / "p.parquet"))
    assert build_dataset(files, out)["pairs"] == 2
    assert build_dataset(files, out)["notes"] == 3
    assert sorted(p.name for p in out.iterdir()) == ["events.parquet", "notes.parquet", "pairs.parquet"]

    synthetic = DataConfig(dataset="synthetic", synthetic=SyntheticConfig(users=10, notes=40, events=500))
    summary = build_dataset(synthetic, out)
    assert (summary["dataset"], summary["notes"], summary["events"]) == ("synthetic", 40, 500)
    assert sorted(p.name for p in out.iterdir()) == ["events.parquet", "notes.parquet"]  # stale pairs gone

    summary = build_dataset(DataConfig(), out)
    assert (summary["dataset"], summary["notes"]) == ("movielens-100k", 1_682)
    assert len(contracts.read_table(out / "events.parquet", "events")) == summary["events"]
    assert sorted(p.name for p in out.iterdir()) == ["events.parquet", "notes.parquet"]
