"""mine_pairs: co-occurrence pairs (paper section 4.3), or the user's ready pairs, with a leakage-free
train/val/test split."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def mine_pairs(config: str, notes: Input[Dataset], pairs: Output[Dataset], stats: Output[Metrics],
               engine: str = "duckdb", spark_on_cluster: bool = False, spark_executors: int = 2,
               shared_pvc: str = "notellm-shared", run_id: str = "local"):
    """Write pairs.parquet and pair_stats.json into the ``pairs`` directory.

    ``engine`` duckdb or spark (local mode in this pod); with ``spark_on_cluster`` the step runs a
    SparkApplication of ``spark_executors`` executors on the shared claim ``shared_pvc`` and waits for it.
    """
    import os
    from pathlib import Path

    from notellm import steps
    from notellm.k8s_jobs import Cluster, Shared, mine_on_spark, read_namespace
    from notellm.kfp_io import config_from_yaml, config_yaml, log_metrics

    config = config_yaml([f"mining.engine={engine}"], config)
    if spark_on_cluster and not (Path(notes.path) / "pairs.parquet").is_file():  # ready pairs: nothing to mine
        where = Cluster(read_namespace(), os.environ["HOSTNAME"], Shared(shared_pvc), run_id)
        result = mine_on_spark(config, Path(notes.path), Path(pairs.path), where, executors=spark_executors)
    else:
        result = steps.mine(config_from_yaml(config), Path(notes.path), Path(pairs.path))
    log_metrics(stats, result)
