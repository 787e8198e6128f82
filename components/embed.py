"""embed: vectors for every note with the trained model (the embeddings table)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def embed(config: str, model: Input[Model], notes: Input[Dataset], embeddings: Output[Dataset],
          stats: Output[Metrics]):
    """Write embeddings.parquet (note_id, vector, model_version) into the ``embeddings`` directory."""
    from pathlib import Path

    from notellm import steps
    from notellm.kfp_io import config_from_yaml, log_metrics

    log_metrics(stats, steps.embed(config_from_yaml(config), Path(model.path), Path(notes.path),
                                   Path(embeddings.path)))
