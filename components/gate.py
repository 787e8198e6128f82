"""gate: deploy only if recall holds against the serving model (or baseline) and drift is within bounds."""

from kfp import dsl
from kfp.dsl import Markdown, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def gate(recall: float, reference_recall: float, reference: str, drift_passed: bool, drift_reasons: str,
         min_gain: float, metric: str, decision: Output[Markdown]) -> bool:
    """True to deploy; the decision and its reasons are recorded as Markdown either way."""
    from pathlib import Path

    from notellm.gate import decide

    result = decide(recall, reference_recall, reference, drift_passed,
                    [r for r in drift_reasons.split("; ") if r], metric=metric,
                    min_gain=min_gain)
    Path(decision.path).write_text(result.markdown())
    return result.deploy
