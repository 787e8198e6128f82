"""prepare_data: the dataset's notes and events tables (MovieLens-100k, synthetic or the user's files)."""

from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def prepare_data(config: str, data: Output[Dataset], stats: Output[Metrics]):
    """Write notes.parquet and events.parquet into the ``data`` directory."""
    from pathlib import Path

    from notellm import steps
    from notellm.kfp_io import config_from_yaml, log_metrics

    log_metrics(stats, steps.prepare_data(config_from_yaml(config), Path(data.path)))
