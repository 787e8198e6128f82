"""index: upsert the deployed model's embeddings into a new Milvus collection, then swap the serving alias."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def index(config: str, notes: Input[Dataset], embeddings: Input[Dataset],
          challenger_embeddings: Input[Dataset], winner: str, stats: Output[Metrics]):
    """The vectors of ``winner`` (NoteLLM's ``embeddings`` or ``challenger_embeddings``): the collection's
    dimension is that model's. Readers of the alias see the old collection until the new one is complete."""
    from pathlib import Path

    from notellm import steps
    from notellm.kfp_io import config_from_yaml

    chosen = {"notellm": embeddings, "challenger": challenger_embeddings}[winner]
    result = steps.index(config_from_yaml(config), Path(notes.path), Path(chosen.path))
    stats.log_metric("rows", result["rows"])
    stats.metadata.update({k: str(v) for k, v in result.items()})
