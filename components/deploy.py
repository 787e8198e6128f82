"""deploy: promote the gate's winner to serving (local serving root, or the KServe InferenceService)."""

from kfp import dsl
from kfp.dsl import Input, Metrics, Model, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def deploy(config: str, model: Input[Model], challenger_model: Input[Model], winner: str, recall: float,
           serving_root: str, target: str, inference_service: str, namespace: str, record: Output[Metrics]):
    """Deploy ``model`` (NoteLLM) or ``challenger_model`` as ``winner`` says, recording its val recall.
    ``target`` local: copy into the serving root; kserve: also patch the InferenceService's storageUri."""
    from pathlib import Path

    from notellm import steps
    from notellm.kfp_io import config_from_yaml

    chosen = {"notellm": model, "challenger": challenger_model}[winner]
    cfg = config_from_yaml(config)
    key = f"val_recall_at_{cfg.evaluation.gate_k}"
    result = steps.deploy(cfg, Path(chosen.path), {key: recall}, Path(serving_root), target=target,
                          storage_uri=chosen.uri, isvc=inference_service, namespace=namespace)
    record.log_metric(key, recall)
    record.metadata.update({k: str(v) for k, v in result.items() if k != "metrics"})
