"""finetune: NoteLLM training (GCL + CSFT, LoRA by default); the model directory and its loss curve."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def finetune(config: str, notes: Input[Dataset], pairs: Input[Dataset], model: Output[Model],
             stats: Output[Metrics], loss_curve: Output[HTML]):
    """Train on the train pairs; the loss curve shows as an HTML visualization in the run."""
    import base64
    from pathlib import Path

    from notellm import steps
    from notellm.kfp_io import config_from_yaml, log_metrics

    metrics = steps.finetune(config_from_yaml(config), Path(notes.path), Path(pairs.path), Path(model.path))
    model.metadata["model_version"] = metrics["model_version"]
    log_metrics(stats, metrics)
    png = base64.b64encode((Path(model.path) / "loss_curve.png").read_bytes()).decode()
    Path(loss_curve.path).write_text(f'<html><body><h2>Training loss</h2>'
                                     f'<img src="data:image/png;base64,{png}"/></body></html>')
