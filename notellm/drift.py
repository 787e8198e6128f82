"""Drift between a reference window and a current window of notes, with Evidently.

Per-column drift of the note features (text lengths, hashtag counts, category mix, behaviour
statistics) through ``DataDriftPreset``, and drift of the note embeddings through an explicit
``EmbeddingsDrift`` (the preset ignores embeddings). The verdict is computed here: the features
fail when at least ``drift_share`` of the columns drift, the embeddings when their score exceeds the
configured threshold. Outputs: a self-contained HTML report and a JSON summary, both written atomically.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from notellm.drift_config import DriftConfig
from notellm.errors import ConfigError, DataError, NoteLLMError
from notellm.io import atomic_path, write_json

EMBEDDING_NAME = "note_embedding"


@dataclass
class ColumnDrift:
    """Evidently's drift test on one column: score, the test used, its threshold and the outcome."""

    column: str
    score: float
    method: str
    threshold: float
    drifted: bool


@dataclass
class DriftResult:
    """The verdict; ``metrics`` holds plain floats only (ready for a Kubeflow Metrics artifact)."""

    passed: bool
    reasons: list[str]
    metrics: dict[str, float]
    columns: list[ColumnDrift] = field(default_factory=list)
    html_path: Path | None = None
    summary_path: Path | None = None

    @property
    def drifted_columns(self) -> list[str]:
        return [c.column for c in self.columns if c.drifted]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["drifted_columns"] = self.drifted_columns
        out["html_path"] = str(self.html_path) if self.html_path else None
        out["summary_path"] = str(self.summary_path) if self.summary_path else None
        return out


def _check_frame(df: pd.DataFrame, name: str, cfg: DriftConfig) -> None:
    missing = [c for c in cfg.columns if c not in df.columns]
    if missing:
        raise DataError(f"{name} lacks drift column(s) {missing}; found {list(df.columns)}",
                        column=missing[0])
    if len(df) < 2:
        raise DataError(f"{name} has {len(df)} row(s); drift needs at least 2")
    for column in cfg.numerical_columns:
        values = pd.to_numeric(df[column], errors="coerce")
        bad = values.isna().to_numpy() | ~np.isfinite(values.to_numpy(dtype=float, na_value=np.nan))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(f"{name}: not a finite number: {df[column].iloc[row]!r}", row=row, column=column)
    for column in cfg.categorical_columns:
        bad = df[column].isna().to_numpy()
        if bad.any():
            raise DataError(f"{name}: missing value", row=int(np.flatnonzero(bad)[0]), column=column)


def _check_embeddings(emb: np.ndarray | None, df: pd.DataFrame, name: str) -> np.ndarray | None:
    if emb is None:
        return None
    emb = np.asarray(emb, dtype=np.float64)
    if emb.ndim != 2 or emb.shape[0] != len(df):
        raise DataError(f"{name} embeddings must be an array of shape ({len(df)}, d), one row per note "
                        f"of the feature table; got shape {emb.shape}")
    bad = ~np.isfinite(emb).all(axis=1)
    if bad.any():
        raise DataError(f"{name} embeddings: non-finite value", row=int(np.flatnonzero(bad)[0]))
    return emb


def _sample(df: pd.DataFrame, emb: np.ndarray | None, cfg: DriftConfig) -> pd.DataFrame:
    """Draw up to ``sample_size`` rows; embeddings become columns ``emb_000...`` of the same rows."""
    rng = np.random.default_rng(cfg.seed)
    rows = np.sort(rng.choice(len(df), size=min(len(df), cfg.sample_size), replace=False))
    out = pd.DataFrame({c: pd.to_numeric(df[c].iloc[rows]).astype(float).to_numpy()
                        for c in cfg.numerical_columns})
    for column in cfg.categorical_columns:
        out[column] = df[column].iloc[rows].astype(str).to_numpy()
    if emb is not None:
        names = [f"emb_{i:03d}" for i in range(emb.shape[1])]
        out = pd.concat([out, pd.DataFrame(emb[rows], columns=names)], axis=1)
    return out


def _status_name(status: Any) -> str:
    return str(getattr(status, "value", status)).upper()


def _column_results(report: dict[str, Any], cfg: DriftConfig) -> list[ColumnDrift]:
    """Per-column score and test from the ValueDrift metrics, outcome from Evidently's own tests."""
    by_id = {}
    for metric in report["metrics"]:
        conf = metric.get("config", {})
        if conf.get("type", "").endswith(":ValueDrift"):
            by_id[metric["id"]] = (conf["column"], float(metric["value"]), str(conf.get("method")),
                                   float(conf.get("threshold")))
    outcome = {}
    for test in report.get("tests", []):
        metric_id = test.get("metric_config", {}).get("metric_id")
        if metric_id in by_id:
            outcome[by_id[metric_id][0]] = _status_name(test["status"]) == "FAIL"
    results = []
    for column, score, method, threshold in by_id.values():
        if column not in outcome:
            raise NoteLLMError(f"Evidently returned no drift test for column {column!r}")
        results.append(ColumnDrift(column, score, method, threshold, outcome[column]))
    order = {c: i for i, c in enumerate(cfg.columns)}
    results.sort(key=lambda c: order[c.column])
    if [c.column for c in results] != cfg.columns:
        raise NoteLLMError(f"Evidently tested columns {[c.column for c in results]}, expected {cfg.columns}")
    return results


def _embedding_score(report: dict[str, Any]) -> float:
    for metric in report["metrics"]:
        if metric.get("config", {}).get("type", "").endswith(":EmbeddingsDrift"):
            return float(metric["value"])
    raise NoteLLMError("Evidently returned no EmbeddingsDrift result")


def check_drift(reference: pd.DataFrame, current: pd.DataFrame,
                reference_embeddings: np.ndarray | None = None,
                current_embeddings: np.ndarray | None = None,
                cfg: DriftConfig | None = None, *,
                html_path: str | Path | None = None,
                summary_path: str | Path | None = None) -> DriftResult:
    """Compare the current window of note features (and embeddings) with the reference window.

    ``reference``/``current`` are note feature tables (``notellm.features.build_note_features``);
    the embeddings, if given, hold one row per row of the matching table. Writes the Evidently HTML
    report to ``html_path`` and the JSON summary to ``summary_path`` when given.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import EmbeddingsDrift
    from evidently.metrics.embeddings import MMDDriftMethod, ModelDriftMethod
    from evidently.presets import DataDriftPreset
    from threadpoolctl import threadpool_limits

    cfg = cfg or DriftConfig()
    _check_frame(reference, "reference", cfg)
    _check_frame(current, "current", cfg)
    if (reference_embeddings is None) != (current_embeddings is None):
        raise DataError("give embeddings for both windows or for neither")
    ref_emb = _check_embeddings(reference_embeddings, reference, "reference")
    cur_emb = _check_embeddings(current_embeddings, current, "current")
    if ref_emb is not None and cur_emb is not None and ref_emb.shape[1] != cur_emb.shape[1]:
        raise DataError(f"embedding sizes differ: reference {ref_emb.shape[1]}, current {cur_emb.shape[1]}")

    ref_sample, cur_sample = _sample(reference, ref_emb, cfg), _sample(current, cur_emb, cfg)
    threshold = cfg.resolved_embedding_threshold
    embeddings = None
    metrics: list[Any] = [DataDriftPreset(columns=cfg.columns, drift_share=cfg.drift_share,
                                          method=cfg.column_method, threshold=cfg.column_threshold)]
    if ref_emb is not None:
        embeddings = {EMBEDDING_NAME: [c for c in ref_sample.columns if c.startswith("emb_")]}
        method = (MMDDriftMethod(threshold=threshold) if cfg.embedding_method == "mmd"
                  else ModelDriftMethod(threshold=threshold))
        metrics.append(EmbeddingsDrift(embeddings_name=EMBEDDING_NAME, drift_method=method))
    definition = DataDefinition(numerical_columns=cfg.numerical_columns,
                                categorical_columns=cfg.categorical_columns, embeddings=embeddings)
    try:
        # constant columns (e.g. no views at all) make Evidently's correlation plots divide by zero
        with threadpool_limits(limits=cfg.threads, user_api="openmp"), np.errstate(divide="ignore",
                                                                                    invalid="ignore"):
            snapshot = Report(metrics, include_tests=True).run(
                current_data=Dataset.from_pandas(cur_sample, data_definition=definition),
                reference_data=Dataset.from_pandas(ref_sample, data_definition=definition))
    except ValueError as exc:
        if cfg.column_method is not None and "stattest" in str(exc).lower():
            raise ConfigError(f"drift.column_method {cfg.column_method!r}: {exc}") from exc
        raise
    report = snapshot.dict()

    columns = _column_results(report, cfg)
    drifted = [c for c in columns if c.drifted]
    share = len(drifted) / len(columns)
    out: dict[str, float] = {
        "reference_rows": float(len(reference)), "current_rows": float(len(current)),
        "sampled_reference_rows": float(len(ref_sample)), "sampled_current_rows": float(len(cur_sample)),
        "drifted_columns_count": float(len(drifted)), "drifted_columns_share": float(share),
        "drift_share_threshold": float(cfg.drift_share),
    }
    out.update({f"drift_score_{c.column}": c.score for c in columns})
    reasons = []
    if share >= cfg.drift_share:
        listed = ", ".join(f"{c.column} ({c.method} {c.score:.3g}, threshold {c.threshold:.3g})"
                           for c in drifted)
        reasons.append(f"{len(drifted)} of {len(columns)} feature columns drifted (share {share:.2f} >= "
                       f"{cfg.drift_share:.2f}): {listed}")
    if ref_emb is not None:
        score = _embedding_score(report)
        out["embedding_drift_score"] = score
        out["embedding_drift_threshold"] = float(threshold)
        if score > threshold:
            reasons.append(f"embedding drift ({cfg.embedding_method}) score {score:.4g} > "
                           f"threshold {threshold:.4g}")

    result = DriftResult(passed=not reasons, reasons=reasons, metrics=out, columns=columns)
    if html_path is not None:
        result.html_path = Path(html_path)
        with atomic_path(result.html_path) as tmp:
            snapshot.save_html(str(tmp))  # save_html writes nothing when given a Path
    if summary_path is not None:
        result.summary_path = Path(summary_path)
        write_json({**result.to_dict(), "config": cfg.model_dump()}, result.summary_path)
    return result
