"""make_config: validate the run's parameters once into the YAML config every later step takes."""

from kfp import dsl

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def make_config(dataset: str, backbone: str, max_steps: int, batch_pairs: int, learning_rate: float,
                alpha: float, window_positions: int, top_t: int, milvus_uri: str, overrides: list,
                config_yaml: str = "") -> str:
    """``config_yaml`` (a full or partial YAML config), then the typed parameters, then ``overrides``
    (``section.key=value`` strings) win in that order."""
    from notellm.kfp_io import config_yaml as build

    steps = max_steps if max_steps > 0 else "null"  # 0: train one full epoch
    typed = [f"data.dataset={dataset}", f"model.backbone={backbone}", f"training.max_steps={steps}",
             f"training.batch_pairs={batch_pairs}", f"training.lr={learning_rate}", f"training.alpha={alpha}",
             f"mining.window_positions={window_positions}", f"mining.top_t={top_t}", f"index.uri={milvus_uri}"]
    return build([*typed, *(str(o) for o in overrides)], config_yaml)
