"""finetune_challenger: all-MiniLM-L6-v2 fine-tuned on the train pairs (the cheap challenger to NoteLLM)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def finetune_challenger(config: str, notes: Input[Dataset], pairs: Input[Dataset], enabled: bool,
                        max_steps: int, model: Output[Model], embeddings: Output[Dataset],
                        stats: Output[Metrics]):
    """A servable sentence-transformers model directory and its vectors for every note (for the gate and,
    if it wins, the index). ``max_steps`` 0 trains ``evaluation.minilm_epochs`` epochs. With ``enabled`` False
    nothing is trained and both outputs stay empty: the gate then weighs NoteLLM alone."""
    from pathlib import Path

    from notellm import steps
    from notellm.kfp_io import config_from_yaml, log_metrics

    if not enabled:
        Path(model.path).mkdir(parents=True, exist_ok=True)
        Path(embeddings.path).mkdir(parents=True, exist_ok=True)
        stats.log_metric("trained", 0)
        return
    metrics = steps.finetune_challenger(config_from_yaml(config), Path(notes.path), Path(pairs.path),
                                        Path(model.path), Path(embeddings.path), max_steps=max_steps)
    model.metadata["model_version"] = metrics["model_version"]
    model.metadata["kind"] = "sentence-transformers"
    log_metrics(stats, {"trained": 1, **metrics})
