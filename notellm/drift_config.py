"""Settings of the drift check (``notellm.drift.check_drift``): reference window vs current window."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from notellm.section import Section

#: Evidently's own thresholds for its embedding drift methods (MMD^2 score; ROC AUC of a classifier).
DEFAULT_EMBEDDING_THRESHOLDS = {"mmd": 0.015, "model": 0.55}


class DriftConfig(Section):
    """Column drift of note features (Evidently's per-column tests) and drift of the note embeddings."""

    numerical_columns: list[str] = Field(
        ["title_length", "content_length", "hashtag_count", "clicks_7d", "clicks_total", "views_7d",
         "views_total"], description="numeric feature columns tested for drift")
    categorical_columns: list[str] = Field(["category"], description="categorical feature columns")
    column_method: str | None = Field(
        None, description="Evidently stat test for every column, e.g. 'ks', 'wasserstein', 'psi' "
                          "(None: Evidently picks one by column type and sample size)")
    column_threshold: float | None = Field(
        None, gt=0, description="threshold of that test (None: its default)")
    drift_share: float = Field(
        0.3, gt=0, le=1, description="the features fail when at least this share of the columns drift "
                                     "(0.3: 3 of the 8 default columns; a topic shift with longer "
                                     "texts moves category and both lengths)")
    embedding_method: Literal["mmd", "model"] = Field(
        "mmd", description="mmd: kernel maximum mean discrepancy; model: ROC AUC of a classifier "
                           "telling the windows apart")
    embedding_threshold: float | None = Field(
        None, gt=0, description="the embeddings fail when the score exceeds this "
                                "(None: 0.015 for mmd, 0.55 for model)")
    sample_size: int = Field(
        1000, ge=20, description="rows drawn from each window; the embedding test and its t-SNE plot "
                                 "grow quadratically with it")
    threads: int = Field(
        1, ge=1, description="OpenMP threads for Evidently's t-SNE plot of the embeddings; more threads "
                             "than free cores makes it many times slower")
    split_quantile: float = Field(
        0.5, gt=0, lt=1, description="without a reference dataset, events before this quantile of event "
                                     "time form the reference window, the rest the current window")
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> DriftConfig:
        columns = self.numerical_columns + self.categorical_columns
        if not columns:
            raise ValueError("drift needs at least one column in numerical_columns or categorical_columns")
        repeated = sorted({c for c in columns if columns.count(c) > 1})
        if repeated:
            raise ValueError(f"drift columns listed twice: {repeated}")
        if self.embedding_method == "model" and not 0.5 <= self.resolved_embedding_threshold < 1:
            raise ValueError("drift.embedding_threshold for method 'model' is a ROC AUC in [0.5, 1)")
        return self

    @property
    def columns(self) -> list[str]:
        return self.numerical_columns + self.categorical_columns

    @property
    def resolved_embedding_threshold(self) -> float:
        if self.embedding_threshold is not None:
            return self.embedding_threshold
        return DEFAULT_EMBEDDING_THRESHOLDS[self.embedding_method]
