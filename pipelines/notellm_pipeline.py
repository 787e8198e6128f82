"""The NoteLLM pipeline: data -> Feast features -> pairs -> finetune (NoteLLM) + finetune_challenger (MiniLM)
-> embed -> evaluate + drift -> gate (the best on val) -> deploy + index of the gate's winner.
Compile with ``notellm compile`` and upload the YAML in the Kubeflow UI."""

from kfp import dsl

from components.check_drift import check_drift
from components.deploy import deploy
from components.embed import embed
from components.evaluate import evaluate
from components.finetune import finetune
from components.finetune_challenger import finetune_challenger
from components.gate import gate
from components.index import index
from components.make_config import make_config
from components.mine_pairs import mine_pairs
from components.note_features import note_features
from components.prepare_data import prepare_data
from notellm.k8s_jobs import SHARED_MOUNT

PIPELINE_NAME = "notellm"


def build_pipeline(gpu: bool = False, cluster_jobs: bool = False):
    """The pipeline function; ``gpu`` asks for one NVIDIA GPU for the finetune and embed steps;
    ``cluster_jobs`` mounts the shared claim (``shared_pvc``) in the mine and finetune steps, which the
    SparkApplication (``spark_on_cluster``) and the TrainJob (``train_nodes`` >= 1) need.

    Pipeline parameters ``challenger`` (train the MiniLM challenger; the gate then deploys the better of it
    and NoteLLM) and ``challenger_steps`` (its budget; 0: ``evaluation.minilm_epochs`` epochs)."""

    @dsl.pipeline(name=PIPELINE_NAME, description="NoteLLM: train, evaluate, drift-check and serve note embeddings")
    def notellm_pipeline(
        dataset: str = "movielens-100k",
        backbone: str = "smollm2-135m",
        max_steps: int = 60,
        batch_pairs: int = 16,
        learning_rate: float = 5e-4,
        alpha: float = 0.01,
        window_positions: int = 10,
        top_t: int = 10,
        min_gain: float = 0.0,
        feature_repo: str = "/mnt/notellm/feature_repo",
        serving_root: str = "/mnt/notellm/serving",
        milvus_uri: str = "http://notellm-milvus:19530",
        reference_data: str = "",
        deploy_target: str = "kserve",
        inference_service: str = "notellm",
        namespace: str = "kubeflow-user",
        overrides: list = [],  # noqa: B006 - KFP parameters are declared with their defaults
        config_yaml: str = "",
        mining_engine: str = "duckdb",
        spark_on_cluster: bool = False,
        spark_executors: int = 2,
        train_nodes: int = 0,
        train_gpus_per_node: int = 1,
        train_runtime: str = "torch-distributed",
        shared_pvc: str = "notellm-shared",
        challenger: bool = True,
        challenger_steps: int = 0,
    ):
        cfg = make_config(dataset=dataset, backbone=backbone, max_steps=max_steps, batch_pairs=batch_pairs,
                          learning_rate=learning_rate, alpha=alpha, window_positions=window_positions,
                          top_t=top_t, milvus_uri=milvus_uri, overrides=overrides, config_yaml=config_yaml)
        cfg.set_display_name("validate config")
        data = prepare_data(config=cfg.output)
        data.set_caching_options(False)  # its key holds the paths, not the data: files changed in place
        features = note_features(data=data.outputs["data"], feature_repo=feature_repo)
        features.set_caching_options(False)  # writes the Feast store
        notes = features.outputs["notes"]
        pairs = mine_pairs(config=cfg.output, notes=notes, engine=mining_engine, spark_on_cluster=spark_on_cluster,
                           spark_executors=spark_executors, shared_pvc=shared_pvc,
                           run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        trained = finetune(config=cfg.output, notes=notes, pairs=pairs.outputs["pairs"], train_nodes=train_nodes,
                           train_gpus_per_node=train_gpus_per_node, train_runtime=train_runtime,
                           shared_pvc=shared_pvc, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        if cluster_jobs:
            from kfp import kubernetes

            for task in (pairs, trained):
                kubernetes.mount_pvc(task, pvc_name=shared_pvc, mount_path=SHARED_MOUNT)
        trained.set_memory_limit("32G").set_cpu_limit("8")
        vectors = embed(config=cfg.output, model=trained.outputs["model"], notes=notes)
        vectors.set_memory_limit("16G")
        if gpu:
            for task in (trained, vectors):
                task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
        rival = finetune_challenger(config=cfg.output, notes=notes, pairs=pairs.outputs["pairs"],
                                    enabled=challenger, max_steps=challenger_steps)
        rival.set_memory_limit("8G")
        scored = evaluate(config=cfg.output, model=trained.outputs["model"], notes=notes,
                          pairs=pairs.outputs["pairs"], embeddings=vectors.outputs["embeddings"],
                          challenger_embeddings=rival.outputs["embeddings"], challenger=challenger)
        scored.set_memory_limit("16G")
        drift = check_drift(config=cfg.output, notes=notes, embeddings=vectors.outputs["embeddings"],
                            reference_data=reference_data)
        decision = gate(config=cfg.output, notes=notes, pairs=pairs.outputs["pairs"],
                        embeddings=vectors.outputs["embeddings"],
                        challenger_embeddings=rival.outputs["embeddings"], challenger=challenger,
                        serving_root=serving_root, drift_passed=drift.outputs["passed"],
                        drift_reasons=drift.outputs["reasons"], min_gain=min_gain)
        decision.set_memory_limit("16G").set_caching_options(False)  # embeds with what serves now
        with dsl.If(decision.outputs["Output"] == True, name="deploy-gate"):  # noqa: E712 - KFP condition syntax
            shipped = deploy(config=cfg.output, model=trained.outputs["model"],
                             challenger_model=rival.outputs["model"], winner=decision.outputs["winner"],
                             recall=decision.outputs["recall"], serving_root=serving_root,
                             target=deploy_target, inference_service=inference_service, namespace=namespace)
            shipped.set_caching_options(False)
            indexed = index(config=cfg.output, notes=notes, embeddings=vectors.outputs["embeddings"],
                            challenger_embeddings=rival.outputs["embeddings"],
                            winner=decision.outputs["winner"])
            indexed.set_caching_options(False).after(shipped)

    return notellm_pipeline


notellm_pipeline = build_pipeline()
