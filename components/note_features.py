"""note_features: publish note features to Feast; read the training notes back from its offline store."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def note_features(data: Input[Dataset], feature_repo: str, notes: Output[Dataset], stats: Output[Metrics]):
    """Write the offline features, apply the repository, materialise the online store."""
    from pathlib import Path

    from notellm import steps
    from notellm.kfp_io import log_metrics

    log_metrics(stats, steps.publish_features(Path(data.path), Path(feature_repo), Path(notes.path)))
