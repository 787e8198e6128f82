"""The deploy gate on synthetic val hits: NoteLLM wins, the challenger wins, neither beats the serving model,
a first run, the drift veto, and min_gain."""

from __future__ import annotations

import numpy as np
import pytest

from notellm.gate import Candidate, decide

PAIRS = 600
QUERIES = [f"q{i % 300}" for i in range(PAIRS)]  # two pairs per query: clustered, as real val pairs are
TARGETS = [f"t{i % 200}" for i in range(PAIRS)]


def hits(rate: float, seed: int) -> np.ndarray:
    """1/0 per val pair with the given recall, whole queries hitting or missing together."""
    per_query = np.random.default_rng(seed).random(300) < rate
    return per_query[np.arange(PAIRS) % 300].astype(float)


def models(notellm: float, challenger: float,
           serving: float | None) -> tuple[list[Candidate], Candidate | None]:
    candidates = [Candidate("notellm", "NoteLLM", "notellm-v2", hits(notellm, 1)),
                  Candidate("challenger", "challenger", "minilm-v2", hits(challenger, 2))]
    incumbent = None if serving is None else Candidate("serving", "serving model", "v1", hits(serving, 3))
    return candidates, incumbent


def test_notellm_wins_over_the_challenger_and_the_serving_model() -> None:
    candidates, serving = models(0.6, 0.3, 0.2)
    decision = decide(candidates, serving, QUERIES, TARGETS, True)
    assert decision.deploy and decision.winner == "notellm"
    assert decision.recall == pytest.approx(candidates[0].recall)
    assert "ahead of the challenger" in decision.reasons[0] and "outside the noise" in decision.reasons[0]
    assert "replaces it" in decision.reasons[1] and "serving model v1" in decision.reasons[1]
    markdown = decision.markdown("R@100")
    assert "deploy NoteLLM" in markdown and "| challenger | `minilm-v2` |" in markdown
    assert "val R@100" in markdown


def test_the_challenger_wins_when_it_is_better() -> None:
    candidates, serving = models(0.25, 0.6, 0.2)
    decision = decide(candidates, serving, QUERIES, TARGETS, True)
    assert decision.deploy and decision.winner == "challenger"
    assert "best trained model: the challenger" in decision.reasons[0]


def test_neither_beats_the_serving_model_outside_the_interval() -> None:
    candidates = [Candidate("notellm", "NoteLLM", "n", hits(0.5, 1)),
                  Candidate("challenger", "challenger", "c", hits(0.3, 2))]
    serving = Candidate("serving", "serving model", "v1", hits(0.5, 1))  # the same hits: lead 0
    decision = decide(candidates, serving, QUERIES, TARGETS, True)
    assert not decision.deploy and decision.winner == ""
    assert "the serving model stays" in decision.reasons[1] and "not deployed" in decision.markdown()
    slightly = hits(0.5, 1).copy()
    slightly[:2] = 1 - slightly[:2]  # one query flipped: a lead well inside the noise
    better = [Candidate("notellm", "NoteLLM", "n", np.maximum(slightly, hits(0.5, 1)))]
    assert not decide(better, serving, QUERIES, TARGETS, True).deploy


def test_a_first_run_deploys_the_best_trained_model() -> None:
    candidates, _ = models(0.3, 0.31, None)
    decision = decide(candidates, None, QUERIES, TARGETS, True)
    assert decision.deploy and "nothing serves yet" in decision.reasons[-2]
    assert decision.winner == max(candidates, key=lambda c: c.recall).key
    assert "inside the noise" in decision.reasons[0]


def test_drift_vetoes_even_a_clear_winner() -> None:
    candidates, serving = models(0.6, 0.3, 0.1)
    decision = decide(candidates, serving, QUERIES, TARGETS, False, ["embeddings drifted (MMD 0.2 > 0.015)"])
    assert not decision.deploy and decision.winner == ""
    assert "replaces it" in decision.reasons[1] and "embeddings drifted" in decision.reasons[-1]


def test_min_gain_raises_the_bar_and_a_negative_one_forces_the_gate_open() -> None:
    candidates, serving = models(0.6, 0.3, 0.2)
    assert not decide(candidates, serving, QUERIES, TARGETS, True, min_gain=0.9).deploy
    same = Candidate("serving", "serving model", "v1", candidates[0].hits)
    assert decide(candidates, same, QUERIES, TARGETS, True, min_gain=-1.0).deploy


def test_without_val_pairs_nothing_replaces_a_serving_model() -> None:
    empty = [Candidate("notellm", "NoteLLM", "n", np.zeros(0))]
    assert not decide(empty, Candidate("serving", "s", "v1", np.zeros(0)), [], [], True).deploy
    first = decide(empty, None, [], [], True)
    assert first.deploy and first.winner == "notellm" and "no interval" in first.reasons[0]
