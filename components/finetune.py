"""finetune: NoteLLM training (GCL + CSFT, LoRA by default); the model directory and its loss curve."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def finetune(config: str, notes: Input[Dataset], pairs: Input[Dataset], model: Output[Model],
             stats: Output[Metrics], loss_curve: Output[HTML], train_nodes: int = 0,
             train_gpus_per_node: int = 1, train_runtime: str = "torch-distributed",
             shared_pvc: str = "notellm-shared", run_id: str = "local"):
    """Train on the train pairs; the loss curve shows as an HTML visualization in the run.

    ``train_nodes`` 0 trains in this pod; N >= 1 launches a Kubeflow Trainer TrainJob (runtime
    ``train_runtime``) of N nodes x ``train_gpus_per_node`` GPUs on the shared claim ``shared_pvc``.
    """
    import base64
    import os
    from pathlib import Path

    from notellm import steps
    from notellm.k8s_jobs import Cluster, Shared, finetune_on_trainer, read_namespace
    from notellm.kfp_io import config_from_yaml, log_metrics

    if train_nodes > 0:
        where = Cluster(read_namespace(), os.environ["HOSTNAME"], Shared(shared_pvc), run_id)
        metrics = finetune_on_trainer(config, Path(notes.path), Path(pairs.path), Path(model.path), where,
                                      nodes=train_nodes, gpus_per_node=train_gpus_per_node, runtime=train_runtime)
    else:
        metrics = steps.finetune(config_from_yaml(config), Path(notes.path), Path(pairs.path), Path(model.path))
    model.metadata["model_version"] = metrics["model_version"]
    log_metrics(stats, metrics)
    png = base64.b64encode((Path(model.path) / "loss_curve.png").read_bytes()).decode()
    Path(loss_curve.path).write_text(f'<html><body><h2>Training loss</h2>'
                                     f'<img src="data:image/png;base64,{png}"/></body></html>')
