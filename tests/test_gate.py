"""The deploy gate needs both a recall at least the serving model's and a passing drift check."""

from notellm.gate import decide


def test_deploys_when_recall_holds_and_no_drift() -> None:
    decision = decide(0.30, 0.30, "the zero-shot baseline", True)
    assert decision.deploy
    assert "0.3000 >= 0.3000" in decision.reasons[0] and "zero-shot" in decision.reasons[0]


def test_stops_on_lower_recall_with_the_reason() -> None:
    decision = decide(0.20, 0.25, "serving model v1", True)
    assert not decision.deploy
    assert "0.2000 < 0.2500" in decision.markdown() and "not deployed" in decision.markdown()


def test_stops_on_drift_even_with_better_recall() -> None:
    decision = decide(0.5, 0.1, "serving model v1", False, ["embeddings drifted (MMD 0.2 > 0.015)"])
    assert not decision.deploy
    assert "embeddings drifted" in decision.reasons[1]


def test_min_gain() -> None:
    assert not decide(0.305, 0.30, "v1", True, min_gain=0.01).deploy
    assert decide(0.31, 0.30, "v1", True, min_gain=0.01).deploy
