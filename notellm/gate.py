"""The deploy gate: a new model ships only if it retrieves at least as well as what serves now, on data
that has not drifted. The decision always comes with its reasons, so a stopped run says why."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class GateDecision:
    deploy: bool
    reasons: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        verdict = "**deploy**" if self.deploy else "**stop: not deployed**"
        return "\n".join([f"# Deploy gate: {verdict}", "", *(f"- {r}" for r in self.reasons), ""])


def decide(recall: float, reference_recall: float, reference: str, drift_passed: bool,
           drift_reasons: list[str] | None = None, metric: str = "R@100", min_gain: float = 0.0) -> GateDecision:
    """Deploy when ``recall >= reference_recall + min_gain`` and the drift check passed."""
    reasons = []
    recall_ok = recall >= reference_recall + min_gain
    relation = ">=" if recall_ok else "<"
    reasons.append(f"{metric} {recall:.4f} {relation} {reference_recall:.4f} + {min_gain:g} of {reference}")
    if drift_passed:
        reasons.append("drift check passed")
    else:
        reasons.append("drift check failed: " + ("; ".join(drift_reasons or []) or "no reason given"))
    return GateDecision(recall_ok and drift_passed, reasons)
