"""Note features and the Feast repository: a real local Feast store (sqlite online, parquet offline)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from notellm.errors import ConfigError, DataError
from notellm.features import (FEATURE_NAMES, FEATURE_SERVICE, FEATURE_VIEW, FEATURES_FILE, REPO_TEMPLATE,
                              FeatureRepo, build_note_features)

T0 = pd.Timestamp("2024-03-01")


def day(n: float) -> pd.Timestamp:
    return T0 + pd.Timedelta(days=n)


def _notes() -> pd.DataFrame:
    return pd.DataFrame({
        "note_id": ["a", "b", "c", "d"],
        "title": ["Crème brûlée", "Tokyo trip", "GPU tips", "Late note"],
        "content": ["Caramel on top.", "Ten days in Japan.", "Batch your kernels.", "Created after."],
        "hashtags": [["dessert", "french"], ["travel"], [], ["misc", "x", "y"]],
        "category": ["food", "travel", "tech", "misc"],
        "event_timestamp": [day(0), day(2), day(1), day(12)],
    })


def _events() -> pd.DataFrame:
    rows = [
        ("u1", "a", day(3), "click"),   # exactly 7 days before day 10: outside the window, inside the total
        ("u2", "a", day(4), "click"),
        ("u1", "a", day(10), "click"),  # at the snapshot time: counted
        ("u3", "a", day(11), "click"),  # after the snapshot: never counted
        ("u1", "a", day(1), "view"),
        ("u2", "a", day(9), "view"),
        ("u2", "a", day(9.5), "like"),  # other actions count as neither
        ("u3", "b", day(5), "click"),
        ("u3", "b", day(1.5), "click"),
    ]
    return pd.DataFrame(rows, columns=["user_id", "note_id", "ts", "action"])


def test_build_note_features_counts_clicks_in_the_7_days_up_to_a_snapshot():
    features = build_note_features(_notes(), _events(), as_of=day(10)).set_index("note_id")

    assert list(features.index) == ["a", "b", "c"]  # d is created after the snapshot
    counts = features[["clicks_7d", "clicks_total", "views_7d", "views_total"]]
    assert counts.loc["a"].tolist() == [2, 3, 1, 2]
    assert counts.loc["b"].tolist() == [1, 2, 0, 0]
    assert counts.loc["c"].tolist() == [0, 0, 0, 0]
    assert features.loc["a", "title_length"] == len("Crème brûlée") == 12
    assert features["hashtag_count"].tolist() == [2, 1, 0]
    assert features.loc["a", "hashtags"] == ["dessert", "french"]
    assert (features["event_timestamp"] == day(10)).all()
    for column in ("title_length", "content_length", "hashtag_count", "clicks_7d", "clicks_total"):
        assert features[column].dtype == "int64", column


def test_build_note_features_without_snapshot_counts_up_to_each_notes_own_time():
    features = build_note_features(_notes(), _events()).set_index("note_id")

    assert features.loc["b", "clicks_total"] == 1  # the day-5 click comes after b's row at day 2
    assert features.loc["a", ["clicks_total", "views_total"]].tolist() == [0, 0]
    assert features.loc["d", "event_timestamp"] == day(12)


def test_build_note_features_names_the_bad_column():
    with pytest.raises(DataError, match="'ts'"):
        build_note_features(_notes(), _events().drop(columns=["ts"]))


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> FeatureRepo:
    """Two snapshots (day 10 and day 20) applied, written and materialised into a temporary repo."""
    repo = FeatureRepo.create(tmp_path_factory.mktemp("feast") / "feature_repo")
    snapshots = pd.concat([build_note_features(_notes(), _events(), as_of=day(10)),
                           build_note_features(_notes(), _events(), as_of=day(20))], ignore_index=True)
    repo.write_offline(snapshots)
    repo.apply()
    repo.materialize(end=day(30))
    return repo


def test_create_copies_definitions_and_leaves_data_behind(tmp_path):
    template = tmp_path / "template"
    shutil.copytree(REPO_TEMPLATE, template, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("registry.db", "online_store.db", "note_features.parquet"):
        (template / "data" / name).write_bytes(b"stale")

    repo = FeatureRepo.create(tmp_path / "copy", template=template)

    assert {"feature_store.yaml", ".feastignore", "notes.py", "data"} <= {p.name for p in repo.path.iterdir()}
    assert not [p for p in (repo.path / "data").iterdir() if p.suffix in (".db", ".parquet")]
    with pytest.raises(ConfigError, match="feature_store.yaml"):
        FeatureRepo(tmp_path)


def test_the_repository_registers_the_note_view_and_service(repo):
    view = repo.store.get_feature_view(FEATURE_VIEW)
    assert [f.name for f in view.features] == FEATURE_NAMES
    assert view.entities == ["note"]
    assert repo.store.get_entity("note").join_key == "note_id"
    assert view.batch_source.path == str(FEATURES_FILE)
    service = repo.store.get_feature_service(FEATURE_SERVICE)
    assert [p.name for p in service.feature_view_projections] == [FEATURE_VIEW]


def test_online_features_serve_latest_rows_and_mark_unknown_ids(repo):
    rows = repo.online_features(["c", "nope", "a"])

    assert [r["note_id"] for r in rows] == ["c", "nope", "a"]
    assert [r["found"] for r in rows] == [True, False, True]
    assert all(rows[1][name] is None for name in FEATURE_NAMES)
    a = rows[2]
    assert a["title"] == "Crème brûlée" and a["hashtags"] == ["dessert", "french"]
    assert (a["clicks_total"], a["clicks_7d"]) == (4, 0)  # the day-20 snapshot: 4 clicks, none since day 13
    assert isinstance(a["clicks_total"], int)
    assert rows[0]["hashtags"] == [] and rows[0]["hashtag_count"] == 0


def test_offline_notes_come_back_in_request_order_with_their_dtypes(repo):
    ids = ["c", "a", "b", "a", "d"]
    got = repo.offline_notes(ids, ts=day(25))

    assert got["note_id"].tolist() == ids
    expected = build_note_features(_notes(), _events(), as_of=day(20)).set_index("note_id").loc[ids]
    for name in FEATURE_NAMES:
        assert got[name].tolist() == expected[name].tolist(), name
        assert got[name].dtype == expected[name].dtype, name
    assert all(isinstance(h, list) for h in got["hashtags"])
    assert (got["event_timestamp"] == day(25)).all()
    empty = repo.offline_notes([])
    assert list(empty.columns) == list(got.columns) and (empty.dtypes == got.dtypes).drop("hashtags").all()


def test_offline_notes_are_point_in_time(repo):
    got = repo.offline_notes(["a", "a"], ts=[day(15), day(25)])

    assert got["clicks_total"].tolist() == [3, 4]  # the day-10 snapshot, then the day-20 one
    assert got["clicks_total"].dtype == "int64"


def test_offline_notes_name_notes_missing_at_the_requested_time(repo):
    with pytest.raises(DataError, match="'d' at"):  # d's only row is day 20: Feast would drop it silently
        repo.offline_notes(["a", "d"], ts=day(15))
    with pytest.raises(DataError, match="'nope'"):
        repo.offline_notes(["a", "nope"], ts=day(25))


def test_write_offline_rejects_a_bad_table(repo, tmp_path):
    other = FeatureRepo.create(tmp_path / "repo")
    table = build_note_features(_notes(), _events(), as_of=day(10))
    with pytest.raises(DataError, match="clicks_7d"):
        other.write_offline(table.drop(columns=["clicks_7d"]))
    table.loc[1, "title"] = None
    with pytest.raises(DataError, match="row 1, column 'title'"):
        other.write_offline(table)
    assert not other.features_path.exists()


@pytest.mark.slow
def test_feast_cli_applies_a_copy_of_the_repository(tmp_path):
    repo = FeatureRepo.create(tmp_path / "feature_repo")
    repo.write_offline(build_note_features(_notes(), _events(), as_of=day(10)))
    feast = Path(sys.executable).with_name("feast")
    command = [str(feast)] if feast.exists() else [shutil.which("feast") or "feast"]
    done = subprocess.run([*command, "apply"], cwd=repo.path, capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr[-2000:]
    assert "note_features" in done.stdout and "note_service" in done.stdout
    assert (repo.path / "data" / "registry.db").is_file()
