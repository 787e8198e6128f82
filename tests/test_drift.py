"""Drift check with real Evidently reports on windows made with numpy."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from notellm.config import SyntheticConfig
from notellm.contracts import EVENTS, NOTES, read_table
from notellm.datasets.synthetic import write_synthetic
from notellm.drift import check_drift
from notellm.drift_config import DriftConfig
from notellm.errors import ConfigError, DataError
from notellm.features import build_note_features

N = 150  # rows per window: enough for the tests to separate the windows, small for Evidently's t-SNE plot
CATEGORIES = np.array(["food", "travel", "tech", "sport"])
TOPIC_CENTRES = np.random.default_rng(99).normal(size=(len(CATEGORIES), 32))
CFG = DriftConfig(sample_size=N)


def _window(seed: int, drifted: bool = False,
            embedding_shift: float = 0.0) -> tuple[pd.DataFrame, np.ndarray]:
    """Note features and embeddings; a drifted window has another topic mix and longer texts."""
    rng = np.random.default_rng(seed)
    mix = [0.1, 0.2, 0.3, 0.4] if drifted else [0.4, 0.3, 0.2, 0.1]
    topic = rng.choice(len(CATEGORIES), size=N, p=mix)
    features = pd.DataFrame({
        "category": CATEGORIES[topic],
        "title_length": rng.poisson(30 if drifted else 20, N),
        "content_length": rng.poisson(400 if drifted else 200, N),
        "hashtag_count": rng.poisson(3, N),
        "clicks_7d": rng.poisson(2, N),
        "clicks_total": rng.poisson(10, N),
        "views_7d": np.zeros(N, dtype=int),  # a constant column must not break the check
        "views_total": rng.poisson(40, N),
    })
    emb = TOPIC_CENTRES[topic] + rng.normal(size=(N, 32)) + embedding_shift
    return features, emb / np.linalg.norm(emb, axis=1, keepdims=True)


def test_undrifted_window_passes():
    (ref, ref_emb), (cur, cur_emb) = _window(0), _window(1)
    result = check_drift(ref, cur, ref_emb, cur_emb, CFG)

    assert result.passed, result.reasons
    assert result.reasons == []
    assert result.metrics["drifted_columns_share"] < CFG.drift_share
    assert result.metrics["embedding_drift_score"] <= CFG.resolved_embedding_threshold


def test_drifted_window_fails_and_writes_reports(tmp_path):
    (ref, ref_emb), (cur, cur_emb) = _window(0), _window(1, drifted=True)
    html, summary = tmp_path / "out" / "drift.html", tmp_path / "out" / "drift.json"
    result = check_drift(ref, cur, ref_emb, cur_emb, CFG, html_path=html, summary_path=summary)

    assert not result.passed
    assert {"title_length", "content_length", "category"} <= set(result.drifted_columns)
    assert "hashtag_count" not in result.drifted_columns
    assert any("feature columns drifted" in r and "content_length" in r for r in result.reasons)
    assert any("embedding drift (mmd)" in r for r in result.reasons)
    assert result.metrics["embedding_drift_score"] > CFG.resolved_embedding_threshold
    assert all(type(v) is float for v in result.metrics.values())

    page = html.read_text(encoding="utf-8")
    assert page.lstrip().lower().startswith(("<!doctype html", "<html")) and "</html>" in page
    assert "<script src=" not in page.replace("'", '"').lower() and 'rel="stylesheet"' not in page
    assert "note_embedding" in page
    stored = json.loads(summary.read_text())
    assert stored["passed"] is False and stored["reasons"] == result.reasons
    assert stored["metrics"] == result.metrics
    assert all(type(v) is float for v in stored["metrics"].values())
    assert not [p.name for p in html.parent.iterdir() if p.name.endswith(".tmp")]


def test_embedding_drift_alone_fails_the_check():
    """DataDriftPreset ignores embeddings: only the explicit EmbeddingsDrift catches this window."""
    (ref, ref_emb), (cur, cur_emb) = _window(0), _window(1, embedding_shift=0.3)
    cfg = DriftConfig(sample_size=N, embedding_method="model")
    result = check_drift(ref, cur, ref_emb, cur_emb, cfg)

    assert not result.passed
    assert result.metrics["drifted_columns_share"] < cfg.drift_share
    assert len(result.reasons) == 1 and "embedding drift (model)" in result.reasons[0]
    assert result.metrics["embedding_drift_threshold"] == 0.55


def _synthetic_features(out_dir, seed: int, drift: bool) -> pd.DataFrame:
    write_synthetic(out_dir, SyntheticConfig(users=200, notes=1000, events=15_000, seed=seed, drift=drift))
    notes = read_table(out_dir / "notes.parquet", NOTES)
    events = read_table(out_dir / "events.parquet", EVENTS)
    return build_note_features(notes, events, as_of=pd.Timestamp("2024-02-15"))


def test_synthetic_windows_through_the_feature_table(tmp_path):
    """The generator's drift flag (reversed topic mix, longer texts) fails; another sample passes."""
    reference = _synthetic_features(tmp_path / "ref", seed=0, drift=False)
    cfg = DriftConfig(sample_size=1000)
    same = check_drift(reference, _synthetic_features(tmp_path / "same", seed=2, drift=False), cfg=cfg)
    drifted = check_drift(reference, _synthetic_features(tmp_path / "drift", seed=2, drift=True), cfg=cfg)

    assert same.passed, same.reasons
    assert not drifted.passed
    assert {"title_length", "content_length", "category"} <= set(drifted.drifted_columns)
    assert "embedding_drift_score" not in drifted.metrics  # no embeddings given: none tested


def test_bad_input_is_named():
    (ref, ref_emb), (cur, cur_emb) = _window(0), _window(1)
    with pytest.raises(DataError, match="'category'"):
        check_drift(ref, cur.drop(columns=["category"]), cfg=CFG)
    with pytest.raises(DataError, match="one row per note"):
        check_drift(ref, cur, ref_emb, cur_emb[:-1], CFG)
    with pytest.raises(DataError, match="both windows"):
        check_drift(ref, cur, ref_emb, None, CFG)
    bad = cur.astype({"clicks_total": float})
    bad.loc[3, "clicks_total"] = np.nan
    with pytest.raises(DataError, match="row 3, column 'clicks_total'"):
        check_drift(ref, bad, cfg=CFG)
    with pytest.raises(ConfigError, match="column_method 'nope'"):
        check_drift(ref, cur, cfg=DriftConfig(sample_size=N, column_method="nope"))


def test_config_rejects_inconsistent_settings():
    with pytest.raises(ValidationError, match="ROC AUC"):
        DriftConfig(embedding_method="model", embedding_threshold=0.3)
    with pytest.raises(ValidationError, match="listed twice"):
        DriftConfig(categorical_columns=["category", "title_length"])
    with pytest.raises(ValidationError):
        DriftConfig(unknown_key=1)
