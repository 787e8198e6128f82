"""The deploy gate: of the models this run trained (NoteLLM and the challenger), the best one on the val pairs
replaces the serving model only when its lead is outside the interval, and only on data that has not
drifted. The decision always comes with its reasons, so a run says why it deployed what, or nothing.

Every model is measured on the same val pairs (hits: the target within the top k), so leads are paired
differences, and their 95% intervals come from the cluster bootstrap over query and target notes
(:mod:`notellm.evaluation.bootstrap`): val pairs share notes, so they are not independent.

- The best candidate is the one with the highest val recall (NoteLLM first on an exact tie); its lead over
  the runner-up is recorded with its interval.
- With a serving model it deploys only when the lower end of its lead's interval exceeds ``min_gain``
  (a lead inside the noise keeps what serves). With nothing serving yet, the best candidate deploys.
- A failed drift check vetoes the deploy whatever the recall.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Candidate:
    """A model measured on the val pairs: ``key`` names it to the pipeline (``notellm``, ``challenger``)."""

    key: str
    label: str
    model_version: str
    hits: np.ndarray = field(repr=False)

    @property
    def recall(self) -> float:
        return float(np.mean(self.hits)) if len(self.hits) else float("nan")


@dataclass(frozen=True)
class GateDecision:
    deploy: bool
    winner: str  # the key of the candidate to deploy ("" when none)
    recall: float  # the winner's val recall (nan when none)
    reasons: list[str] = field(default_factory=list)
    rows: list[tuple[str, str, float]] = field(default_factory=list)  # (label, model_version, val recall)

    def markdown(self, metric: str = "R@100") -> str:
        verdict = f"**deploy {_the(self.winner)}**" if self.deploy else "**stop: not deployed**"
        table = [f"| model | version | val {metric} (%) |", "|---|---|---:|",
                 *(f"| {label} | `{version}` | {100 * recall:.2f} |" for label, version, recall in self.rows)]
        return "\n".join([f"# Deploy gate: {verdict}", "", *table, "", *(f"- {r}" for r in self.reasons), ""])


def _lead(a: Candidate, b: Candidate, queries: Sequence[str], targets: Sequence[str],
          seed: int) -> dict[str, float]:
    """The paired difference of ``a``'s hits minus ``b``'s and its 95% cluster-bootstrap interval."""
    from notellm.evaluation.bootstrap import cluster_bootstrap

    return cluster_bootstrap(a.hits.astype(float) - b.hits.astype(float), queries, targets, seed=seed)


def _points(x: float) -> str:
    return f"{100 * x:+.2f}"


def _the(key: str) -> str:
    """How the reasons name a candidate: "NoteLLM", or "the challenger"."""
    return "NoteLLM" if key == "notellm" else f"the {key}"


def decide(candidates: Sequence[Candidate], serving: Candidate | None, queries: Sequence[str],
           targets: Sequence[str], drift_passed: bool, drift_reasons: Sequence[str] = (), *,
           metric: str = "R@100", min_gain: float = 0.0, seed: int = 0) -> GateDecision:
    """Which candidate (if any) replaces ``serving``; ``queries``/``targets`` are the val pairs' notes, in the
    order of every candidate's ``hits``. ``min_gain`` is in recall units (0.01 = one point)."""
    if not candidates:
        raise ValueError("the gate needs at least one candidate")
    pairs = len(queries)
    everyone = [*candidates, *([serving] if serving else [])]
    if any(len(c.hits) != pairs for c in everyone) or len(targets) != pairs:
        raise ValueError(f"every model needs one hit per val pair ({pairs}): got "
                         f"{[len(c.hits) for c in everyone]}")
    rows = [(c.label, c.model_version, c.recall) for c in everyone]
    ranked = sorted(candidates, key=lambda c: -c.recall if pairs else 0.0)  # stable: NoteLLM first on a tie
    best = ranked[0]
    reasons = []
    if pairs < 2:
        reasons.append(f"only {pairs} val pair(s): no interval, so no comparison on val")
        recall_ok = serving is None
        reasons.append(f"nothing serves yet: {_the(best.key)} deploys" if recall_ok
                       else f"the serving model {serving.model_version} stays")
    else:
        if len(ranked) > 1:
            runner_up = ranked[1]
            lead = _lead(best, runner_up, queries, targets, seed)
            clear = "outside" if lead["low"] > 0 else "inside"
            reasons.append(f"best trained model: {_the(best.key)} (val {metric} {100 * best.recall:.2f}%), "
                           f"ahead of {_the(runner_up.key)} by {_points(lead['mean'])} points, 95% interval "
                           f"[{_points(lead['low'])}, {_points(lead['high'])}] ({clear} the noise; "
                           f"{pairs} val pairs, {lead['queries']} queries)")
        if serving is None:
            recall_ok = True
            reasons.append(f"nothing serves yet: {_the(best.key)} deploys")
        else:
            lead = _lead(best, serving, queries, targets, seed)
            recall_ok = lead["low"] > min_gain
            relation = ">" if recall_ok else "<="
            outcome = "replaces it" if recall_ok else "the serving model stays"
            reasons.append(f"{_the(best.key)} against the serving model {serving.model_version}: lead "
                           f"{_points(lead['mean'])} points on val {metric}, 95% interval "
                           f"[{_points(lead['low'])}, {_points(lead['high'])}]; its lower end {relation} "
                           f"min_gain {_points(min_gain)}: {outcome}")
    if drift_passed:
        reasons.append("drift check passed")
    else:
        reasons.append("drift check failed, so nothing deploys: "
                       + ("; ".join(drift_reasons) or "no reason given"))
    deploy = recall_ok and drift_passed
    return GateDecision(deploy, best.key if deploy else "", best.recall if deploy else float("nan"), reasons,
                        rows)
