"""One validated configuration: YAML file plus ``section.key=value`` overrides from the command line.

Sections follow DESIGN.md (data, mining, model, training, embedding, evaluation, drift, index, serving);
each section is a pydantic model that rejects unknown keys and out-of-range values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from notellm.drift_config import DriftConfig
from notellm.errors import ConfigError
from notellm.index_config import IndexConfig
from notellm.model_config import EmbeddingConfig, ModelConfig, PromptConfig, TrainingConfig
from notellm.section import Section


class SyntheticConfig(Section):
    """The deterministic synthetic dataset (users with topic interests, topical notes, click sessions)."""

    users: int = Field(2_000, ge=1)
    notes: int = Field(5_000, ge=2)
    events: int = Field(200_000, ge=1)
    topics: int = Field(20, ge=1)
    seed: int = Field(0, ge=0)
    drift: bool = Field(False, description="shift the topic mix and lengthen texts (a drifted window)")


class DataConfig(Section):
    dataset: Literal["movielens-100k", "synthetic", "files"] = "movielens-100k"
    min_rating: float = Field(4.0, description="MovieLens: ratings at or above this count as clicks")
    synthetic: SyntheticConfig = SyntheticConfig()
    notes_path: Path | None = Field(None, description="files: the user's notes (parquet, jsonl or csv)")
    events_path: Path | None = Field(None, description="files: the user's events")
    pairs_path: Path | None = Field(
        None, description="files: ready pairs note_id_a, note_id_b[, score][, split] (no mining then)")

    @model_validator(mode="after")
    def _files_need_paths(self) -> DataConfig:
        if self.dataset == "files" and self.notes_path is None:
            raise ValueError("dataset 'files' needs data.notes_path")
        if self.dataset == "files" and self.events_path is None and self.pairs_path is None:
            raise ValueError("dataset 'files' needs data.events_path or data.pairs_path")
        return self


class MiningConfig(Section):
    """Co-occurrence pair mining (paper section 4.3) and the leakage-free split."""

    engine: Literal["duckdb", "spark"] = Field(
        "duckdb", description="duckdb: one process; spark: Apache Spark (local mode here, a cluster through "
                              "the Spark Operator); both give the same pairs")
    window_positions: int | None = Field(10, ge=1, description="B within the next w clicks after A")
    window_seconds: float | None = Field(None, gt=0, description="B within this many seconds after A")
    source_actions: list[str] = ["view", "click"]
    target_actions: list[str] = ["click"]
    l_min: float = Field(0.01, ge=0)
    u_max: float = Field(30.0, gt=0)
    top_t: int = Field(10, ge=1)
    max_note_clicks_quantile: float | None = Field(
        None, gt=0, le=1, description="drop notes clicked more often than this quantile (over-popular)")
    test_note_fraction: float = Field(0.1, ge=0, lt=1, description="notes held out for the test pool")
    val_note_fraction: float = Field(0.05, ge=0, lt=1, description="notes held out for validation")
    seed: int = 0
    ready_pairs_directed: bool = Field(
        False, description="ready pairs: false (links are undirected) adds b->a for every link a-b; "
                           "true keeps each pair a->b as given")

    @model_validator(mode="after")
    def _check(self) -> MiningConfig:
        if self.window_positions is None and self.window_seconds is None:
            raise ValueError("set mining.window_positions, mining.window_seconds or both")
        if self.l_min > self.u_max:
            raise ValueError(f"mining.l_min ({self.l_min}) must not exceed mining.u_max ({self.u_max})")
        if self.test_note_fraction + self.val_note_fraction >= 1:
            raise ValueError("mining.test_note_fraction + mining.val_note_fraction must be below 1")
        return self


class EvaluationConfig(Section):
    """The paper's protocol (section 5.1) and the deploy gate."""

    ks: list[int] = Field([10, 100, 1000], min_length=1, description="Recall@k for these k")
    gate_k: int = Field(100, ge=1, description="the gate compares Recall@gate_k")
    generation_notes: int = Field(
        64, ge=0, description="test notes whose category and hashtags are generated (0: skip generation)")
    baselines: list[Literal["zero-shot", "prompteol", "minilm", "minilm-ft"]] = Field(
        ["zero-shot"], description="untrained or cheap baselines evaluated beside the model; the gate's "
                                   "first-run reference is the first of them")
    minilm_epochs: int = Field(1, ge=1)
    batch_size: int = Field(32, ge=1)

    @model_validator(mode="after")
    def _gate_k_is_measured(self) -> EvaluationConfig:
        if self.gate_k not in self.ks:
            raise ValueError(f"evaluation.gate_k ({self.gate_k}) must be one of evaluation.ks {self.ks}")
        return self


class ServingConfig(Section):
    """The KServe predictor (note embedder) and transformer (recommender)."""

    host: str = Field("127.0.0.1", description="local servers bind loopback unless told otherwise")
    http_port: int = Field(8080, ge=1, le=65535)
    embedder_name: str = "notellm-embedder"
    recommender_name: str = "notellm"
    max_batch_size: int = Field(32, ge=1, description="notes embedded in one forward pass")
    max_wait_ms: float = Field(5.0, ge=0, description="how long the batcher waits to fill a batch")
    max_request_notes: int = Field(64, ge=1, description="notes allowed in one request")
    max_note_chars: int = Field(20_000, ge=1, description="characters allowed in one note")
    max_top_k: int = Field(100, ge=1)
    default_top_k: int = Field(10, ge=1)


class Config(Section):
    data: DataConfig = DataConfig()
    mining: MiningConfig = MiningConfig()
    model: ModelConfig = ModelConfig()
    prompt: PromptConfig = PromptConfig()
    training: TrainingConfig = TrainingConfig()
    embedding: EmbeddingConfig = EmbeddingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    drift: DriftConfig = DriftConfig()
    index: IndexConfig = IndexConfig()
    serving: ServingConfig = ServingConfig()


def _parse_value(raw: str) -> Any:
    return yaml.safe_load(raw) if raw != "" else ""


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
    node[keys[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load the YAML file (if any), apply ``key.sub=value`` overrides, validate, return the Config."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        if not isinstance(tree, dict):
            raise ConfigError(f"config {path} must be a mapping of sections")
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), _parse_value(raw.strip()))
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in exc.errors())
        raise ConfigError(f"invalid configuration: {problems}") from exc
