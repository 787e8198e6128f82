"""gate: deploy the best of NoteLLM and the challenger on val recall, only if it beats the serving model by a
lead outside the interval and drift is within bounds."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def gate(config: str, notes: Input[Dataset], pairs: Input[Dataset], embeddings: Input[Dataset],
         challenger_embeddings: Input[Dataset], challenger: bool, serving_root: str, drift_passed: bool,
         drift_reasons: str, min_gain: float, decision: Output[Markdown]
         ) -> NamedTuple("Gate", [("Output", bool), ("winner", str), ("recall", float)]):
    """``Output`` True to deploy ``winner`` (``notellm`` or ``challenger``; empty when nothing deploys), with
    its val recall; the decision, every model's val recall and the reasons are recorded as Markdown.
    (The flag is named ``Output``: kfp.local resolves a condition on a task's ``Output`` but not on a named
    output.)"""
    from collections import namedtuple
    from pathlib import Path

    from notellm import steps
    from notellm.kfp_io import config_from_yaml

    candidates = {"notellm": Path(embeddings.path)}
    if challenger:
        candidates["challenger"] = Path(challenger_embeddings.path)
    result = steps.gate(config_from_yaml(config), Path(notes.path), Path(pairs.path), candidates,
                        Path(serving_root) if serving_root else None, drift_passed,
                        [r for r in drift_reasons.split("; ") if r], min_gain)
    Path(decision.path).write_text(result["markdown"])
    recall = result["recall"] if result["deploy"] else -1.0
    return namedtuple("Gate", ["Output", "winner", "recall"])(result["deploy"], result["winner"], recall)
