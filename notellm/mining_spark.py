"""Pair mining on Apache Spark: the same pairs, scores, thresholds and top t as the DuckDB engine.

Spark reads the events (a parquet file or directory, local or on object storage), numbers each user's
source and target events by time and file row, gives every source event the events of its window (a
sliding frame of ``window_positions`` rows, else a range frame of ``window_seconds``), and hands the
candidates to :func:`notellm.mining.pair_sql`, the formula's one SQL text, which DuckDB runs too. Notes
are keyed by their ids: Spark compares strings bytewise, as arrow sorts them into DuckDB's dense ids. The
split (:func:`notellm.mining.split_pairs`) is the same function for both engines.

Locally Spark runs in local mode (``pyspark`` from PyPI and a Java runtime). On a cluster this module is
the driver program of a SparkApplication (:mod:`notellm.k8s_jobs`): ``python notellm/mining_spark.py
--events URI --out URI --config JSON`` writes the mined pairs as parquet.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from notellm.config import MiningConfig
from notellm.contracts import CONTRACTS, EVENTS, read_table, write_table
from notellm.errors import DataError
from notellm.mining import _window_us, pair_sql, popular_cut

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

LOCAL_MASTER = "local[2]"
# UTC: event times are compared as microseconds since the epoch, never through a local time zone.
SPARK_CONF = {"spark.ui.enabled": "false", "spark.sql.session.timeZone": "UTC",
              "spark.sql.shuffle.partitions": "8", "spark.driver.memory": "2g"}


def spark_session(master: str | None = None) -> SparkSession:
    """The active Spark session, else a new one: under ``spark-submit`` (a SparkApplication's driver) on
    the cluster it was submitted to, otherwise in local mode (``master``, default ``local[2]``)."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    builder = SparkSession.builder.appName("notellm-mining")
    if "PYSPARK_GATEWAY_PORT" not in os.environ:  # not launched by spark-submit: local mode
        builder = builder.master(master or os.environ.get("NOTELLM_SPARK_MASTER", LOCAL_MASTER))
        for key, value in SPARK_CONF.items():
            builder = builder.config(key, value)
    return builder.getOrCreate()


def _in_contract_types(path: Path) -> bool:
    """Whether a local parquet file already holds the events' columns in contract types."""
    schema = pq.read_schema(path)
    for field in CONTRACTS[EVENTS].schema:
        if field.name not in schema.names:
            return False
        found = schema.field(field.name).type
        same_time = pa.types.is_timestamp(field.type) and found == pa.timestamp("us")
        if not (found.equals(field.type) or same_time):
            return False
    return True


def _read_events(spark: SparkSession, events: pd.DataFrame | str | Path, scratch: Path) -> DataFrame:
    """The events as a Spark frame with ``file`` and ``row`` (file order). Frames and local files in other
    types (integer ids, zoned or nanosecond times) are validated and converted to contract types first."""
    if isinstance(events, pd.DataFrame):
        source = str(write_table(events, scratch / "events.parquet", EVENTS))
    elif "://" in str(events):  # object storage: written by the platform, in contract types
        source = str(events)
    else:
        path = Path(events)
        if not path.is_file():
            raise DataError("file not found", file=path)
        source = str(path if _in_contract_types(path) else
                     write_table(read_table(path, EVENTS), scratch / "events.parquet", EVENTS))
    frame = spark.read.parquet(source)
    return frame.select("user_id", "note_id", "ts", "action", frame["_metadata.file_path"].alias("file"),
                        frame["_metadata.row_index"].alias("row"))


def spark_pairs(spark: SparkSession, events: DataFrame, cfg: MiningConfig, *,
                file: str | Path | None = None) -> DataFrame:
    """The mined pairs (``a``, ``b``, ``score``, sorted by a, score descending, b) as a Spark frame.

    ``events`` has user_id, note_id, ts, action, file and row. A missing user, note or time on a mined
    event is a DataError naming ``file``, the row and the column.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    wanted = sorted(set(cfg.source_actions) | set(cfg.target_actions))
    ev = events.filter(F.col("action").isin(wanted)).select(
        F.col("user_id").alias("uid"), F.col("note_id").alias("nid"),
        F.unix_micros(F.col("ts").cast("timestamp")).alias("t"), "file", "row",
        F.col("action").isin(cfg.source_actions).alias("is_src"),
        F.col("action").isin(cfg.target_actions).alias("is_tgt"))
    nulls = ev.agg(*(F.min(F.when(F.col(c).isNull(), F.col("row"))).alias(name)
                     for c, name in (("uid", "user_id"), ("nid", "note_id"), ("t", "ts")))).first()
    for column in ("user_id", "note_id", "ts"):
        if nulls[column] is not None:
            raise DataError("missing value", file=file, row=int(nulls[column]), column=column)

    clicks = ev.filter("is_tgt").groupBy("nid").count()
    inv_n = ev.groupBy("uid").agg(
        (F.lit(1.0) / F.greatest(F.countDistinct(F.when(F.col("is_tgt"), F.col("nid"))), F.lit(1)))
        .alias("inv_n"))
    user = Window.partitionBy("uid")
    later = F.struct("nid", "t", "is_tgt", "pos")
    ev = ev.withColumn("pos", F.row_number().over(user.orderBy("t", "file", "row")))
    if cfg.window_positions is not None:  # the next w events
        ev = ev.withColumn("later", F.collect_list(later).over(
            user.orderBy("pos").rowsBetween(1, cfg.window_positions)))
    else:  # every event up to window_seconds later (ties in time: only those later in file order)
        ev = ev.withColumn("later", F.collect_list(later).over(
            user.orderBy("t").rangeBetween(0, _window_us(cfg.window_seconds))))
    cand = (ev.filter("is_src").select("uid", F.col("nid").alias("a"), F.col("t").alias("t_a"),
                                       F.col("pos").alias("pos_a"), F.explode("later").alias("e"))
            .filter(F.col("e.is_tgt") & (F.col("e.nid") != F.col("a")) & (F.col("e.pos") > F.col("pos_a"))))
    if cfg.window_seconds is not None:
        cand = cand.filter(F.col("e.t") - F.col("t_a") <= _window_us(cfg.window_seconds))
    repeated = cand.select("uid", "a", F.col("e.nid").alias("b")).join(inv_n, "uid")
    spark.createDataFrame([], "a string, b string, inv_n double").createOrReplaceTempView("once")
    repeated.createOrReplaceTempView("repeated")
    popular = cfg.max_note_clicks_quantile is not None
    if popular:
        counts = clicks.select("count").toPandas()["count"].to_numpy()
        cut = popular_cut(counts, cfg.max_note_clicks_quantile)
        clicks.filter(F.col("count") > cut).createOrReplaceTempView("popular")
    return spark.sql(pair_sql(cfg, popular=popular))


def mine_pairs_spark(events: pd.DataFrame | str | Path, cfg: MiningConfig,
                     spark: SparkSession | None = None) -> pd.DataFrame:
    """:func:`notellm.mining.mine_pairs` on Spark: note_id_a, note_id_b, score, sorted by A, score
    descending, B; the same frame as the DuckDB engine's."""
    spark = spark or spark_session()
    file = None if isinstance(events, pd.DataFrame) else events
    with tempfile.TemporaryDirectory(prefix="notellm-spark-") as scratch:
        table = spark_pairs(spark, _read_events(spark, events, Path(scratch)), cfg, file=file).toArrow()
    return pd.DataFrame({
        "note_id_a": table.column("a").to_numpy(zero_copy_only=False).astype(object),
        "note_id_b": table.column("b").to_numpy(zero_copy_only=False).astype(object),
        "score": table.column("score").to_numpy(zero_copy_only=False).astype("float64")})


def read_mined(path: str | Path) -> pd.DataFrame:
    """Mined pairs that the driver wrote (a parquet directory) as :func:`mine_pairs_spark`'s frame."""
    table = pq.read_table(path).to_pandas()
    table = table.sort_values(["a", "score", "b"], ascending=[True, False, True], kind="stable")
    return pd.DataFrame({"note_id_a": table["a"].astype(object).to_numpy(),
                         "note_id_b": table["b"].astype(object).to_numpy(),
                         "score": table["score"].astype("float64").to_numpy()})


def main(argv: list[str] | None = None) -> None:
    """The SparkApplication's driver: mine ``--events`` with ``--config`` (MiningConfig as JSON) and write
    the pairs (a, b, score) as parquet under ``--out``."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--events", required=True, help="events parquet (file, directory or object-store URI)")
    parser.add_argument("--out", required=True, help="where the pairs go (a parquet directory)")
    parser.add_argument("--config", required=True, help="the mining section as JSON")
    args = parser.parse_args(argv)
    cfg = MiningConfig.model_validate(json.loads(args.config))
    spark = spark_session()
    with tempfile.TemporaryDirectory(prefix="notellm-spark-") as scratch:
        events = _read_events(spark, args.events, Path(scratch))
        spark_pairs(spark, events, cfg, file=args.events).write.mode("overwrite").parquet(args.out)
    spark.stop()


if __name__ == "__main__":
    main()
