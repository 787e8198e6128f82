"""deploy: promote the model to serving (local serving root, or the KServe InferenceService on a cluster)."""

from kfp import dsl
from kfp.dsl import Input, Metrics, Model, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def deploy(config: str, model: Input[Model], recall: float, serving_root: str, target: str,
           inference_service: str, namespace: str, record: Output[Metrics]):
    """``target`` local: copy into the serving root; kserve: also patch the InferenceService's storageUri."""
    from pathlib import Path

    from notellm import steps
    from notellm.kfp_io import config_from_yaml

    cfg = config_from_yaml(config)
    result = steps.deploy(cfg, Path(model.path), {f"recall_at_{cfg.evaluation.gate_k}": recall},
                          Path(serving_root), target=target, storage_uri=model.uri, isvc=inference_service,
                          namespace=namespace)
    record.log_metric(f"recall_at_{cfg.evaluation.gate_k}", recall)
    record.metadata.update({k: str(v) for k, v in result.items() if k != "metrics"})
