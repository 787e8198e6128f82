"""mine_pairs: co-occurrence pairs (paper section 4.3) with a leakage-free train/val/test split."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def mine_pairs(config: str, notes: Input[Dataset], pairs: Output[Dataset], stats: Output[Metrics]):
    """Write pairs.parquet and pair_stats.json into the ``pairs`` directory."""
    from pathlib import Path

    from notellm import steps
    from notellm.kfp_io import config_from_yaml, log_metrics

    log_metrics(stats, steps.mine(config_from_yaml(config), Path(notes.path), Path(pairs.path)))
