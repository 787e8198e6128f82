"""The Spark engine against the DuckDB engine: identical pairs, scores, thresholds, top t and split on the
hypothesis logs of the mining tests, on the hand-made edge cases, and on 1M synthetic events.

One local Spark session (``local[2]``) serves the whole module: starting one takes about 5 s.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings

from notellm.config import MiningConfig
from notellm.contracts import write_table
from notellm.errors import DataError
from notellm.mining import mine_pairs, run_mining, split_pairs
from test_mining import _threshold_log, clicks, configs, events_strategy, log, reference_pairs

pyspark = pytest.importorskip("pyspark", reason="the spark extra (pyspark) is not installed")

from notellm.mining_spark import mine_pairs_spark, read_mined, spark_session  # noqa: E402


@pytest.fixture(scope="module")
def spark():
    session = spark_session()
    session.conf.set("spark.sql.shuffle.partitions", "2")  # tiny logs: fewer tasks, same results
    yield session
    session.stop()


def assert_same(events: pd.DataFrame | Path, cfg: MiningConfig, spark) -> pd.DataFrame:
    """Both engines mine ``events``; the frames (and their splits) must be identical."""
    expected = mine_pairs(events, cfg)
    got = mine_pairs_spark(events, cfg, spark)
    pd.testing.assert_frame_equal(got, expected)
    pd.testing.assert_frame_equal(split_pairs(got, cfg), split_pairs(expected, cfg))
    return got


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(events=events_strategy, cfg=configs())
def test_spark_equals_duckdb_on_random_logs(spark, events: pd.DataFrame, cfg: MiningConfig) -> None:
    assert_same(events, cfg, spark)


@pytest.mark.parametrize("window", [
    {"window_positions": 40, "window_seconds": 30.0},
    {"window_positions": None, "window_seconds": 400.0},
    {"window_positions": 3, "max_note_clicks_quantile": 0.9},
])
def test_spark_equals_duckdb_on_long_windows(spark, window: dict) -> None:
    rng = np.random.default_rng(5)
    rows = [(f"u{rng.integers(3)}", f"n{rng.integers(25)}", int(rng.integers(0, 2000)),
             str(rng.choice(["view", "click"]))) for _ in range(300)]
    events = log(*rows)
    cfg = MiningConfig(l_min=0.0, top_t=5, **window)
    got = assert_same(events, cfg, spark)
    assert len(got) > 20
    assert set(zip(got["note_id_a"], got["note_id_b"], strict=True)) == set(reference_pairs(events, cfg))


def test_spark_edges_ties_thresholds_and_engine_setting(spark) -> None:
    just_over = pd.Timedelta(seconds=10, microseconds=1)
    ties = log(("u", "A", 0, "click"), ("u", "B", 10, "click"), ("u", "C", just_over, "click"),
               ("u", "D", 100, "click"), ("u", "E", 100, "click"))
    got = assert_same(ties, MiningConfig(window_positions=None, window_seconds=10, l_min=0.0), spark)
    assert list(zip(got["note_id_a"], got["note_id_b"], strict=True)) == [("A", "B"), ("B", "C"), ("D", "E")]
    for l_min, u_max in [(0.25, 0.3), (math.nextafter(0.25, 1), 0.3), (0.25, math.nextafter(0.3, 0))]:
        assert_same(_threshold_log(), MiningConfig(window_positions=1, l_min=l_min, u_max=u_max, top_t=100),
                    spark)
    tied = log(*clicks("u", "A", "n9", "A", "n10"), *clicks("v", "A", "n10", "A", "n9"),
               *clicks("w", "A", "n2", "x", "y"))
    assert list(assert_same(tied, MiningConfig(window_positions=1, l_min=0.0, top_t=2), spark)
                .query("note_id_a == 'A'")["note_id_b"]) == ["n10", "n9"]
    # mining.engine picks the engine inside mine_pairs (and so in run_mining, the CLI and the pipeline)
    cfg = MiningConfig(window_positions=3, l_min=0.0)
    pd.testing.assert_frame_equal(mine_pairs(tied, cfg.model_copy(update={"engine": "spark"})),
                                  mine_pairs(tied, cfg))


def test_spark_reads_converted_files_and_names_missing_values(spark, tmp_path: Path) -> None:
    events = _threshold_log()
    cfg = MiningConfig(window_positions=3, l_min=0.0)
    converted = events.assign(ts=events["ts"].dt.tz_localize("Europe/Paris").dt.tz_convert("UTC"),
                              user_id=events["user_id"].map({"p": 1, "q": 2, "r": 3}))
    converted.to_parquet(tmp_path / "converted.parquet")
    pd.testing.assert_frame_equal(mine_pairs_spark(tmp_path / "converted.parquet", cfg, spark),
                                  mine_pairs(events, cfg))
    table = pa.Table.from_pandas(events, preserve_index=False)
    notes = table.column("note_id").to_pylist()
    notes[3] = None
    path = tmp_path / "events.parquet"
    pq.write_table(table.set_column(1, "note_id", pa.array(notes, pa.string())), path)
    with pytest.raises(DataError) as err:
        mine_pairs_spark(path, cfg, spark)
    assert (err.value.row, err.value.column, err.value.file) == (3, "note_id", str(path))


def test_driver_output_reads_back_as_the_same_pairs(spark, tmp_path: Path) -> None:
    from notellm.mining_spark import main

    events = write_table(log(*clicks("u", "A", "B", "C", "A", "D"), *clicks("v", "B", "A", "D")),
                         tmp_path / "events.parquet", "events")
    cfg = MiningConfig(window_positions=2, l_min=0.0)
    main(["--events", str(events), "--out", str(tmp_path / "mined"), "--config", cfg.model_dump_json()])
    pd.testing.assert_frame_equal(read_mined(tmp_path / "mined"), mine_pairs(events, cfg))


@pytest.mark.slow
def test_spark_equals_duckdb_on_a_million_synthetic_events(spark, tmp_path: Path) -> None:
    from notellm.config import SyntheticConfig
    from notellm.datasets.synthetic import write_synthetic

    write_synthetic(tmp_path / "data", SyntheticConfig(events=1_000_000, users=10_000, notes=25_000, seed=0))
    cfg = MiningConfig(test_note_fraction=0.1, val_note_fraction=0.05)
    duck = run_mining(tmp_path / "data", tmp_path / "duckdb", cfg)
    spark_stats = run_mining(tmp_path / "data", tmp_path / "spark", cfg.model_copy(update={"engine": "spark"}))
    assert spark_stats == duck and duck["pairs"] > 100_000
    assert (tmp_path / "spark" / "pairs.parquet").read_bytes() == (tmp_path / "duckdb" / "pairs.parquet").read_bytes()
