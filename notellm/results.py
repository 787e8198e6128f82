"""The paper's results table on MovieLens-100k: NoteLLM against its baselines, each one a *setting*.

Every row is the same trainer and the same evaluation under config overrides (:data:`METHODS`): the LLM
rows differ only in ``prompt.kind``, ``training.alpha`` and whether they are trained at all; the two
MiniLM rows are the all-MiniLM-L6-v2 encoder, untrained or fine-tuned on the same training pairs with
MultipleNegativesRankingLoss. Each method embeds the whole catalogue once; its test pairs (the paper's
protocol) and its val pairs are ranked against every note, so val recall (the only split recipe choices
may be tuned on, see :func:`tune_on_val`) stands beside test recall.

Resumable: a finished method's result is cached as ``<workspace>/methods/<name>/result.json`` and is
reused while its settings (the config sections it reads, and a digest of the notes and pairs) are
unchanged; a trained model directory and training checkpoints are reused too, so an interrupted run
continues where it stopped. ``force`` recomputes the methods asked for.

Workspace layout::

    <workspace>/data/              notes.parquet, events.parquet
    <workspace>/mining/            pairs.parquet, pair_stats.json
    <workspace>/methods/<name>/    settings.json, result.json, model/, checkpoints/
    <workspace>/tuning/<method>/   one directory per tried setting (val split only)
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import logging
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from notellm.config import Config, load_config
from notellm.contracts import NOTES, PAIRS, read_table
from notellm.errors import ConfigError
from notellm.io import atomic_path, write_json
from notellm.model_config import TEMPLATES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Method:
    """One row of the table: an encoder, whether it is trained, and its config overrides."""

    label: str
    encoder: Literal["llm", "minilm"]
    trained: bool
    overrides: dict[str, Any] = field(default_factory=dict)
    generates: bool = False  # category and hashtag generation metrics (compression-prompt LLM rows)


METHODS: dict[str, Method] = {
    "zero-shot": Method("Zero-shot LLM (compression prompt, untrained)", "llm", False,
                        {"prompt.kind": "notellm", "model.dim": None}),
    "prompteol": Method("PromptEOL zero-shot", "llm", False, {"prompt.kind": "prompteol", "model.dim": None}),
    "minilm": Method("all-MiniLM-L6-v2 zero-shot", "minilm", False),
    "minilm-ft": Method("SentenceBERT (MiniLM fine-tuned, MNRL)", "minilm", True),
    "prompteol-cse": Method("PromptEOL+CSE", "llm", True,
                            {"prompt.kind": "prompteol", "training.alpha": 0.0}),
    "repllama": Method("RepLLaMA", "llm", True, {"prompt.kind": "repllama", "training.alpha": 0.0}),
    "notellm-wo-csft": Method("NoteLLM w/o CSFT", "llm", True,
                              {"prompt.kind": "notellm", "training.alpha": 0.0}, generates=True),
    "notellm": Method("NoteLLM", "llm", True, {"prompt.kind": "notellm"}, generates=True),
}
ALL_METHODS = list(METHODS)
# The default run fits about 90 minutes on 2 CPU cores; PromptEOL+CSE and RepLLaMA need ``methods=["all"]``.
CORE_METHODS = ["zero-shot", "prompteol", "minilm", "minilm-ft", "notellm-wo-csft", "notellm"]
REFERENCE = "notellm"
DATASET_NAMES = {"movielens-100k": "MovieLens-100k", "synthetic": "the synthetic dataset",
                 "files": "the user's dataset"}
PHASES = ("model", "embed", "generate", "total")
COLLAPSE_COSINE = 0.9  # a trained row whose embeddings' mean pairwise cosine is this high has collapsed
MINILM_BATCH_PAIRS, MINILM_LR = 32, 2e-5  # the SentenceBERT row's recipe (sentence-transformers' usual)

# The table's recipe on top of the config defaults (the user's --set overrides come after it).
# Budget, 2 CPU cores, SmolLM2-135M: on an earlier, slower run a train step of 16 pairs (about 90 tokens a
# note, bf16, shared prefix) took 7.9 s without LoRA dropout and 14.3 s with the default 0.05 (a Bernoulli
# mask on the input of each of the 7 x 30 adapted modules), so the recipe trains without it: the budget is
# about half an epoch, where dropout has little to regularise. The last full run (idle, native bf16) took, per
# row with its embedding and generation: NoteLLM w/o CSFT 15 min (about 3 s a step), NoteLLM 28 (it reads a
# second, category-hidden row per note for CSFT: about twice the tokens), PromptEOL+CSE 14, RepLLaMA 13, the
# four cheap rows 7: about 50 minutes for CORE_METHODS and 80 for all. Earlier per-step rates gave 85 and 135.
# Every trained row (MiniLM included, through budget_pairs) sees the same 250 x 16 = 4,000 training pairs,
# 0.49 of the MovieLens epoch: a full epoch (~515 steps) would double the trained LLM rows' time.
# The learning rates are the config's defaults (backbone 5e-4, tau 0.01), the val-best of the trials at this
# budget and at the pipeline's quick one (docs/quality.md, "Trials at the full budget" and "The pipeline's
# defaults"); tuned on val only.
RECIPE: dict[str, Any] = {
    "model.lora_dropout": 0.0,
    "training.max_steps": 250,
    "training.batch_pairs": 16,
    "training.bf16": "auto",
    "training.checkpoint_every": 50,
    "embedding.bf16": "auto",
}
BUDGET = ("Expected time on 2 otherwise idle CPU cores (from the rates in the comment on `RECIPE` in "
          "`notellm/results.py`): about 50 minutes for the default (core) rows, about 80 minutes with "
          "`--methods all` (two more trained rows), as measured on a CPU with native bf16; without it "
          "training runs in float32 and takes longer. Other work on the machine makes it proportionally "
          "longer; an interrupted run continues where it stopped.\n\n")
TUNING = ("Recipe choices (steps, learning rates of the projection and tau, batch size, bf16, prompt "
          "settings) may be tuned on the val split only: `notellm results --tune '[{}, {\"training.lr\": "
          "0.001}]'` (or `notellm.results.tune_on_val`) trains each setting and ranks the val pairs, never the "
          "test pairs; the table shows val R@100 beside the test numbers, and the trials are listed under "
          "Tuning on val.\n")
QUALITY = ("How the recipe was chosen (the defects fixed, the val trials, why tau starts at 1) and what the "
           "table says about NoteLLM: [quality.md](quality.md).\n\n")
# Fields that change how a run goes, never its result: left out of a method's settings digest.
_RUN_FIELDS = {"training": {"threads", "checkpoint_dir", "checkpoint_every", "keep_checkpoints", "resume",
                            "log_every", "val_every", "val_max_pairs", "val_k", "model_version"},
               "embedding": {"threads"}}


def results_config(config: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """The table's configuration: defaults, then :data:`RECIPE`, then the YAML file, then ``overrides``."""
    in_file: set[str] = set()
    if config is not None:
        in_file = set(_flat(load_config(config).model_dump(mode="json", exclude_unset=True)))
    recipe = [f"{key}={json.dumps(value)}" for key, value in RECIPE.items() if key not in in_file]
    return load_config(config, [*recipe, *overrides])


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def with_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """A copy of ``cfg`` with ``{"section.key": value}`` applied and validated."""
    tree = cfg.model_dump(mode="python")
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = tree
        for key in parents:
            if not isinstance(node.get(key), dict):
                raise ConfigError(f"override {dotted!r}: {key!r} is not a config section")
            node = node[key]
        if leaf not in node:
            raise ConfigError(f"override {dotted!r}: unknown setting {leaf!r}")
        node[leaf] = value
    return Config.model_validate(tree)


def resolve_methods(methods: Sequence[str] | None) -> list[str]:
    """None: :data:`CORE_METHODS`; ``["all"]``: every method; else the names given (in table order)."""
    if not methods:
        return list(CORE_METHODS)
    if list(methods) == ["all"]:
        return list(ALL_METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method(s) {unknown}: use 'all' or some of {ALL_METHODS}")
    return [m for m in ALL_METHODS if m in methods]


# ---------------------------------------------------------------------------------------------- data


def prepare(cfg: Config, workspace: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Write the dataset and the mined, split pairs into the workspace (cheap, deterministic); read them."""
    from notellm.datasets import build_dataset
    from notellm.mining import run_mining

    data_dir, mining_dir = workspace / "data", workspace / "mining"
    build_dataset(cfg.data, data_dir)
    stats = run_mining(data_dir, mining_dir, cfg.mining)
    notes = read_table(data_dir / "notes.parquet", NOTES)
    stats["catalogue_notes"] = len(notes)
    pairs = read_table(mining_dir / "pairs.parquet", PAIRS)
    if not (pairs["split"] == "test").any():
        raise ConfigError(f"no test pairs ({stats['source']}): raise mining.test_note_fraction, or give ready "
                          "pairs without a split column (or with test pairs in it)")
    return notes, pairs, stats


def data_digest(notes: pd.DataFrame, pairs: pd.DataFrame) -> str:
    """A digest of the note texts and the split pairs: cached results are valid only for the same data."""
    text = notes[["note_id", "title", "content", "category"]].astype(str)
    text["hashtags"] = [",".join(h) for h in notes["hashtags"]]
    digest = hashlib.sha256(pd.util.hash_pandas_object(text, index=False).to_numpy().tobytes())
    digest.update(pd.util.hash_pandas_object(pairs[["note_id_a", "note_id_b", "split"]].astype(str),
                                             index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def method_settings(method: Method, cfg: Config) -> dict[str, Any]:
    """The settings a method's result depends on (its config sections, less the run mechanics)."""
    dump = cfg.model_dump(mode="json")

    def section(name: str) -> dict[str, Any]:
        return {k: v for k, v in dump[name].items() if k not in _RUN_FIELDS.get(name, set())}

    settings: dict[str, Any] = {"data": dump["data"], "mining": dump["mining"], "encoder": method.encoder,
                                "seed": cfg.training.seed, "eval_batch_size": cfg.evaluation.batch_size}
    if method.encoder == "llm":
        settings.update(model=section("model"), prompt=section("prompt"), embedding=section("embedding"))
        if method.trained:
            settings["training"] = section("training")
        if method.generates:
            settings["generation_notes"] = cfg.evaluation.generation_notes
    elif method.trained:
        settings["minilm_epochs"] = cfg.evaluation.minilm_epochs
        settings["budget_pairs"] = budget_pairs(cfg)
    return settings


def budget_pairs(cfg: Config) -> int | None:
    """Training pairs every trained row may see: the LLM rows' steps x batch (None: their full epochs)."""
    t = cfg.training
    return t.max_steps * t.batch_pairs if t.max_steps else None


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------- one method


def _generation_sample(notes: pd.DataFrame, pairs: pd.DataFrame, n: int) -> pd.DataFrame:
    """Up to ``n`` notes of the test pairs never seen in a training pair (sorted ids: deterministic)."""
    test = pairs[pairs["split"] == "test"]
    train = pairs[pairs["split"] == "train"]
    seen = set(train["note_id_a"]) | set(train["note_id_b"])
    held_out = sorted(set(test["note_id_a"]) | set(test["note_id_b"]) - seen)
    return notes[notes["note_id"].isin(held_out[:n])].reset_index(drop=True)


def _generation_metrics(model: Any, cfg: Config, notes: pd.DataFrame, pairs: pd.DataFrame,
                        progress: bool) -> dict[str, Any]:
    from notellm.evaluation.textgen import category_metrics, hashtag_metrics
    from notellm.model import generate_for_notes

    sample = _generation_sample(notes, pairs, cfg.evaluation.generation_notes)
    if sample.empty:
        return {}
    categories = sorted({c for c in notes["category"] if c})
    counts = [max(1, min(cfg.prompt.max_output_hashtags, len(h))) for h in sample["hashtags"]]
    out = generate_for_notes(model, sample, num_hashtags=counts, known_categories=categories,
                             batch_size=cfg.evaluation.batch_size, progress=progress)
    return {"category": category_metrics(out["category"].tolist(), sample["category"].tolist(), categories),
            "hashtags": hashtag_metrics(out["hashtags"].tolist(), [list(h) for h in sample["hashtags"]]),
            "examples": out.head(5).merge(sample[["note_id", "title", "category"]], on="note_id",
                                          suffixes=("", "_true")).to_dict("records")}


def untrained_model(cfg: Config, notes: pd.DataFrame, train_pairs: pd.DataFrame) -> Any:
    """The untrained LLM of ``cfg``, centred as training centres it (on the notes of ``train_pairs``)."""
    from notellm.model import build_model
    from notellm.model.centering import fit_center_on_pairs
    from notellm.model.prompt import notes_from_frame

    model = build_model(cfg.model, cfg.prompt, seed=cfg.training.seed)
    if cfg.model.center_notes:
        fit_center_on_pairs(model, notes_from_frame(notes), train_pairs[["note_id_a", "note_id_b"]].to_numpy(),
                            cfg.model.center_notes, seed=cfg.training.seed)
    return model


def _llm_model(method: Method, cfg: Config, notes: pd.DataFrame, pairs: pd.DataFrame, method_dir: Path,
               progress: bool) -> tuple[Any, dict[str, Any], list[dict[str, Any]]]:
    """The untrained model, the trained one (reusing a finished model directory), its metrics and curve."""
    from notellm.model import load_model, train_model

    if not method.trained:
        return untrained_model(cfg, notes, pairs[pairs["split"] == "train"]), {}, []
    model_dir = method_dir / "model"
    if (model_dir / "notellm.json").is_file():
        log.info("%s: reusing the trained model in %s", method.label, model_dir)
        meta = json.loads((model_dir / "notellm.json").read_text())
        curve = json.loads((model_dir / "loss_curve.json").read_text())
        return load_model(model_dir), meta["metrics"], curve
    checkpoints = method_dir / "checkpoints"
    train_cfg = cfg.training.model_copy(update={"checkpoint_dir": checkpoints, "resume": True})
    model, metrics = train_model(notes, pairs, cfg.model, cfg.prompt, train_cfg, model_dir, progress=progress)
    shutil.rmtree(checkpoints, ignore_errors=True)  # the model directory supersedes them
    return model, metrics, json.loads((model_dir / "loss_curve.json").read_text())


def _minilm_model(method: Method, cfg: Config, notes: pd.DataFrame, pairs: pd.DataFrame, method_dir: Path,
                  progress: bool) -> tuple[Any, dict[str, Any], list[dict[str, Any]]]:
    from notellm.evaluation.minilm import finetune_minilm, load_minilm

    if not method.trained:
        return load_minilm(), {}, []
    model_dir = method_dir / "model"
    curve_path = method_dir / "loss_curve.json"
    if (model_dir / "config.json").is_file() and curve_path.is_file():
        return load_minilm(model_dir), json.loads((method_dir / "train_metrics.json").read_text()), \
            json.loads(curve_path.read_text())
    curve: list[dict[str, Any]] = []
    began = time.perf_counter()
    model = finetune_minilm(notes, pairs[pairs["split"] == "train"], epochs=cfg.evaluation.minilm_epochs,
                            batch_size=MINILM_BATCH_PAIRS, lr=MINILM_LR, seed=cfg.training.seed,
                            max_pairs=budget_pairs(cfg),
                            out_dir=model_dir, progress=progress,
                            on_step=lambda step, loss: curve.append({"step": step, "loss": loss}))
    metrics = {"steps": len(curve), "pairs_seen": int(getattr(model, "pairs_seen", 0)) or None,
               "train_seconds": round(time.perf_counter() - began, 2),
               "final_loss": curve[-1]["loss"] if curve else None}
    write_json(metrics, method_dir / "train_metrics.json")
    write_json(curve, curve_path)
    return model, metrics, curve


def run_method(name: str, cfg: Config, notes: pd.DataFrame, pairs: pd.DataFrame, method_dir: Path, *,
               splits: Sequence[str] = ("test", "val"), progress: bool = True) -> dict[str, Any]:
    """Train (if the method is trained), embed every note, rank the pairs of ``splits``; return the result.

    ``cfg`` is the table's config; the method's overrides are applied here. The result holds, per split,
    the rank of every pair's target (recall, its standard error and curves are derived from the ranks),
    the training metrics and loss curve, generation metrics, and the seconds spent in each phase.
    """
    from notellm.evaluation.retrieval import target_ranks
    from notellm.model.runtime import set_threads

    method = METHODS[name]
    cfg = with_overrides(cfg, method.overrides)
    set_threads(cfg.training.threads)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    load = _llm_model if method.encoder == "llm" else _minilm_model
    model, train_metrics, curve = load(method, cfg, notes, pairs, method_dir, progress)
    seconds["model"] = round(time.perf_counter() - started, 2)  # build, load or train

    started = time.perf_counter()
    set_threads(cfg.embedding.threads)
    if method.encoder == "llm":
        from notellm.model import embed_notes

        vectors = embed_notes(model, notes, cfg.embedding.batch_size, bf16=cfg.embedding.bf16,
                              progress=progress)
    else:
        from notellm.evaluation.minilm import minilm_embed

        vectors = minilm_embed(notes, model, cfg.evaluation.batch_size, progress=progress)
    seconds["embed"] = round(time.perf_counter() - started, 2)

    retrieval = {}
    ids = notes["note_id"].tolist()
    for split in splits:
        chosen = pairs[pairs["split"] == split]
        if chosen.empty:
            continue
        ranks, ties = target_ranks(chosen["note_id_a"].tolist(), chosen["note_id_b"].tolist(), ids, vectors)
        retrieval[split] = {"ranks": ranks, "ties": ties, "pool_size": len(ids)}

    curve = [{k: r[k] for k in ("step", "loss", "gcl", "csft") if k in r} for r in curve]
    result: dict[str, Any] = {"method": name, "label": method.label, "retrieval": retrieval,
                              "train": train_metrics, "curve": curve, "dim": int(vectors.shape[1])}
    if method.generates and cfg.evaluation.generation_notes and "test" in splits:
        started = time.perf_counter()
        result.update(_generation_metrics(model, cfg, notes, pairs, progress))
        seconds["generate"] = round(time.perf_counter() - started, 2)
    seconds["total"] = round(sum(seconds.values()), 2)  # this run's wall time
    result["seconds"] = seconds
    return result


def _cached_run(name: str, cfg: Config, notes: pd.DataFrame, pairs: pd.DataFrame, method_dir: Path,
                digest: str, *, splits: Sequence[str], force: bool,
                progress: bool) -> tuple[dict[str, Any], bool]:
    """The method's cached result if its settings are unchanged (and not ``force``), else a fresh run.

    Returns ``(result, ran)``. A method directory made with other settings is removed first.
    """
    method = METHODS[name]
    settings = {"method": name, "overrides": method.overrides, "splits": list(splits), "data_digest": digest,
                **method_settings(method, with_overrides(cfg, method.overrides))}
    key = _digest(settings)
    settings_path, result_path = method_dir / "settings.json", method_dir / "result.json"
    previous = json.loads(settings_path.read_text()).get("key") if settings_path.is_file() else None
    if force or (previous is not None and previous != key):
        if method_dir.exists():
            log.info("%s: %s, starting afresh", name, "forced" if force else "settings changed")
            shutil.rmtree(method_dir)
    elif result_path.is_file():
        log.info("%s: cached in %s", name, result_path)
        return json.loads(result_path.read_text()), False
    method_dir.mkdir(parents=True, exist_ok=True)
    write_json({"key": key, **settings}, settings_path)
    log.info("%s: running", name)
    result = run_method(name, cfg, notes, pairs, method_dir, splits=splits, progress=progress)
    result["key"] = key
    write_json(result, result_path)
    return json.loads(result_path.read_text()), True


# ------------------------------------------------------------------------------------------ reporting


def recall(result: dict[str, Any], split: str, ks: Sequence[int]) -> dict[str, Any]:
    """Recall@k, standard errors and the recall curve of a result's ``split`` (from its ranks)."""
    from notellm.evaluation.retrieval import recall_from_ranks

    return recall_from_ranks(np.asarray(result["retrieval"][split]["ranks"]), ks, curve_max_k=max(ks))


def compare(ranks_a: Sequence[int], ranks_b: Sequence[int], k: int, *, queries: Sequence[str] | None = None,
            targets: Sequence[str] | None = None, z: float = 2.0) -> dict[str, Any]:
    """Recall@k of A minus that of B on the same pairs, with the standard error of the paired difference.

    With ``queries`` (and ``targets``) the error is the cluster bootstrap's over those notes and ``low`` /
    ``high`` its 95% interval; without, pairs count as independent and the interval is ``diff ± z se``.
    ``verdict`` is "tie" when the interval holds 0, else "ahead" or "behind".
    """
    from notellm.evaluation.bootstrap import cluster_bootstrap

    a = np.asarray(ranks_a) <= k
    b = np.asarray(ranks_b) <= k
    if a.shape != b.shape or a.size < 2:
        raise ValueError(f"need the same pairs (at least 2) for both methods, got {a.size} and {b.size}")
    d = a.astype(float) - b.astype(float)
    diff = float(d.mean())
    if queries is not None:
        boot = cluster_bootstrap(d, queries, targets)
        se, low, high = boot["se"], boot["low"], boot["high"]
    else:
        se = float(d.std(ddof=1) / np.sqrt(d.size))
        low, high = diff - z * se, diff + z * se
    verdict = "tie" if low <= 0 <= high else ("ahead" if diff > 0 else "behind")
    return {"k": k, "diff": diff, "se": se, "low": low, "high": high, "verdict": verdict, "n": int(d.size)}


def split_pairs_of(pairs: pd.DataFrame | None, split: str) -> pd.DataFrame | None:
    """The pairs of ``split`` in the order their ranks were stored (None without a pairs table)."""
    return None if pairs is None else pairs[pairs["split"] == split].reset_index(drop=True)


def recall_interval(result: dict[str, Any], split: str, k: int, pairs: pd.DataFrame | None,
                    mask: np.ndarray | None = None) -> tuple[float, float]:
    """Recall@k of a result's ``split`` (the pairs of ``mask`` only) and its cluster-bootstrap standard error
    over query and target notes (binomial over pairs when ``pairs`` is None)."""
    from notellm.evaluation.bootstrap import cluster_bootstrap

    hits = (np.asarray(result["retrieval"][split]["ranks"]) <= k).astype(float)
    chosen = split_pairs_of(pairs, split)
    if mask is not None:
        hits = hits[mask]
        chosen = chosen[mask] if chosen is not None else None
    if hits.size < 2:
        return float(hits.mean()) if hits.size else float("nan"), float("nan")
    if chosen is None or len(chosen) != hits.size:
        return float(hits.mean()), float(np.sqrt(hits.mean() * (1 - hits.mean()) / hits.size))
    boot = cluster_bootstrap(hits, chosen["note_id_a"].tolist(), chosen["note_id_b"].tolist())
    return boot["mean"], boot["se"]


def unseen_target_mask(pairs: pd.DataFrame, split: str = "test") -> np.ndarray:
    """Which pairs of ``split`` have a target that no training pair contains."""
    train = pairs[pairs["split"] == "train"]
    seen = set(train["note_id_a"]) | set(train["note_id_b"])
    return ~split_pairs_of(pairs, split)["note_id_b"].isin(seen).to_numpy()


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{split} {n:,}" for split, n in counts.items()) or "unknown"


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _pct(x: float | None, se: float | None = None) -> str:
    if x is None:
        return ""
    return f"{100 * x:.2f}" if se is None else f"{100 * x:.2f} ± {100 * se:.2f}"


def _budget(name: str, result: dict[str, Any], train_pairs: int) -> str:
    """Training pairs seen (and the share of an epoch), or "no" for an untrained row."""
    train = result.get("train") or {}
    seen = train.get("pairs_seen")
    if not METHODS[name].trained or not train.get("steps"):
        return "no"
    if seen is None:
        return f"{train['steps']} steps"
    return f"{seen:,} ({seen / max(1, train_pairs):.2f} ep)"


def _prompt(name: str, cfg: Config) -> str:
    method = METHODS[name]
    if method.encoder == "minilm":
        return "text"
    kind = method.overrides.get("prompt.kind", cfg.prompt.kind)
    return f"{kind} ({cfg.prompt.layout})" if kind == "notellm" else kind


def _table(names: list[str], results: dict[str, dict[str, Any]], ks: list[int], gate_k: int,
           cfg: Config, pairs: pd.DataFrame | None, train_pairs: int) -> str:
    unseen = unseen_target_mask(pairs) if pairs is not None else None
    cols = [f"R@{k} (%)" for k in ks] + [f"R@{gate_k} unseen targets (%)", f"val R@{gate_k} (%)",
                                         "Cat. acc. (%)", "Illegal (%)", "BLEU-4", "ROUGE-1/2/L",
                                         "Budget (pairs seen)", "Prompt", "Wall (min)"]
    lines = ["| Method | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for name in names:
        label = METHODS[name].label
        result = results.get(name)
        if result is None:
            lines.append(f"| {label} | " + " | ".join(["not yet run"] + [""] * (len(cols) - 1)) + " |")
            continue
        cells = [_pct(*recall_interval(result, "test", k, pairs)) for k in ks]
        cells.append(_pct(*recall_interval(result, "test", gate_k, pairs, unseen)) if unseen is not None else "")
        cells.append(_pct(*recall_interval(result, "val", gate_k, pairs)) if "val" in result["retrieval"] else "")
        cat, tags = result.get("category"), result.get("hashtags")
        cells += [_pct(cat["accuracy"]) if cat else "", _pct(cat["illegal_rate"]) if cat else "",
                  f"{tags['bleu4']:.2f}" if tags else "",
                  "/".join(f"{100 * tags[m]:.1f}" for m in ("rouge1", "rouge2", "rougeL")) if tags else ""]
        cells += [_budget(name, result, train_pairs), _prompt(name, cfg), f"{result['seconds']['total'] / 60:.1f}"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _verdicts(names: list[str], results: dict[str, dict[str, Any]], k: int,
              pairs: pd.DataFrame | None = None) -> dict[str, dict[str, Any]]:
    ref = results.get(REFERENCE)
    if ref is None or "test" not in ref["retrieval"]:
        return {}
    test = split_pairs_of(pairs, "test")
    ids = {} if test is None or len(test) != len(ref["retrieval"]["test"]["ranks"]) else \
        {"queries": test["note_id_a"].tolist(), "targets": test["note_id_b"].tolist()}
    return {name: compare(ref["retrieval"]["test"]["ranks"], results[name]["retrieval"]["test"]["ranks"], k,
                          **ids)
            for name in names if name != REFERENCE and name in results}


def collapsed(names: Sequence[str], results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Trained LLM rows whose embeddings collapsed in training (the mean pairwise cosine of 64 training
    notes' embeddings after the last step, ``train.mean_pairwise_cosine``, at least :data:`COLLAPSE_COSINE`):
    their cosine. A lead over such a row says nothing about its method at a recipe where it learns."""
    out = {}
    for name in names:
        cosine = ((results.get(name) or {}).get("train") or {}).get("mean_pairwise_cosine")
        if METHODS[name].trained and METHODS[name].encoder == "llm" and cosine is not None \
                and cosine >= COLLAPSE_COSINE:
            out[name] = float(cosine)
    return out


def _paragraph(cfg: Config, names: list[str], results: dict[str, dict[str, Any]],
               verdicts: dict[str, dict[str, Any]], stats: dict[str, Any], k: int) -> str:
    if REFERENCE not in results:
        return (f"NoteLLM has not been run yet, so whether it is ahead of every baseline on R@{k} is open. "
                "The table fills in as methods finish.")
    label = {n: METHODS[n].label for n in names}
    behind = [n for n, v in verdicts.items() if v["verdict"] == "behind"]
    ties = [n for n, v in verdicts.items() if v["verdict"] == "tie"]

    def listing(group: list[str]) -> str:
        return ", ".join(f"{label[n]} ({100 * verdicts[n]['diff']:+.2f} ± {100 * verdicts[n]['se']:.2f})"
                         for n in group)

    missing = [n for n in names if n not in results]
    scope = "every baseline run so far" if missing else "every baseline in the table"
    if not verdicts:
        text = "No baseline has been run to compare NoteLLM with."
    elif not behind and not ties:
        text = (f"NoteLLM is ahead of {scope} on R@{k}: the 95% interval of each difference is above 0.")
    else:
        text = f"NoteLLM is **not** ahead of {scope} on R@{k}."
        if ties:
            text += f" A tie (the 95% interval holds 0): {listing(ties)}."
        if behind:
            text += f" Behind (the interval is below 0): {listing(behind)}."
        ahead = [n for n, v in verdicts.items() if v["verdict"] == "ahead"]
        if ahead:
            text += f" Ahead: {listing(ahead)}."
    t = cfg.training
    train_pairs = stats.get("pairs_per_split", {}).get("train", 0)
    steps = (results[REFERENCE].get("train") or {}).get("steps") or 0
    seen = steps * t.batch_pairs
    n_test = len(results[REFERENCE]["retrieval"]["test"]["ranks"])
    seen = (results[REFERENCE].get("train") or {}).get("pairs_seen", seen)
    text += (f" Differences are NoteLLM minus the baseline in points of R@{k} over the same {n_test:,} test "
             "pairs, ± the cluster-bootstrap standard error (pairs share query and target notes, so they are "
             f"not independent). Every trained row saw the same budget: {seen:,} training pairs "
             f"({seen / max(1, train_pairs):.2f} of an epoch of the {train_pairs:,} mined training pairs; "
             f"NoteLLM {steps} steps of {t.batch_pairs}, MiniLM in batches of {MINILM_BATCH_PAIRS}), on the "
             f"{cfg.model.backbone} backbone.")
    if behind or ties:
        text += (" The paper trained Llama-2-7B on far more pairs: a budget this small is the first suspect "
                 "for a gap, ahead of the method itself.")
    if cfg.prompt.hide_category and cfg.prompt.embed_whole_note:
        text += (" The NoteLLM rows embed, and train on, the whole note (`prompt.embed_whole_note`), as "
                 "PromptEOL, RepLLaMA and MiniLM see it; CSFT reads a second prompt per note that never shows the "
                 "note's category (`prompt.hide_category`), so that it predicts the category rather than "
                 "copying it.")
    elif cfg.prompt.hide_category:
        text += (" The compression prompt never shows a note's category in its input (`prompt.hide_category`, "
                 "so that CSFT is not a copy task): on MovieLens, where the category is the first genre and the "
                 "content lists every genre, the NoteLLM rows embed without that genre, while PromptEOL, "
                 "RepLLaMA and MiniLM see every genre.")
    gone = collapsed(names, results)
    if gone:
        chance = np.log(2 * t.batch_pairs - 1)
        text += (f" Collapsed in training (every embedding points one way, mean pairwise cosine at least "
                 f"{COLLAPSE_COSINE}): " + ", ".join(
                     f"{label[n]} (cosine {c:.2f}, loss over the last tenth of its steps "
                     f"{results[n]['train'].get('final_loss_mean_last10pct', float('nan')):.3f} against chance "
                     f"ln {2 * t.batch_pairs - 1} = {chance:.3f})" for n, c in gone.items())
                 + ": a lead over a collapsed row says nothing about its method at a recipe where it learns.")
    if missing:
        text += f" Not run yet: {', '.join(label[n] for n in missing)}."
    return text


def _plot_losses(curves: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    """The training loss of every trained method against its step (a moving average when long)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    for label, curve in curves.items():
        steps = np.array([r["step"] for r in curve])
        losses = np.array([r["loss"] for r in curve], dtype=float)
        window = max(1, len(losses) // 25)
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1:], smooth, label=label)
    ax.set_xlabel("step")
    smoothed = any(len(c) >= 50 for c in curves.values())
    ax.set_ylabel("training loss (moving average)" if smoothed else "training loss")
    ax.set_title("Training loss")
    ax.grid(True, alpha=0.3)
    if ax.lines:
        ax.legend()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return path


def _settings_block(cfg: Config) -> str:
    dump = cfg.model_dump(mode="json", include={"model", "prompt", "training", "embedding", "evaluation"})
    if cfg.prompt.template == TEMPLATES["en"]:
        dump["prompt"]["template"] = "en (the default English template)"
    return json.dumps(dump, indent=1)


def _comparison(verdicts: dict[str, dict[str, Any]], k: int) -> str:
    if not verdicts:
        return ""
    lines = [f"NoteLLM minus each baseline, R@{k}, in points (paired difference on the same test pairs; SE and "
             "95% interval from the cluster bootstrap over query and target notes; a tie is an interval that "
             "holds 0):", "", "| Baseline | Difference | SE | 95% interval | Verdict |", "|---|---:|---:|---|---|"]
    lines += [f"| {METHODS[n].label} | {100 * v['diff']:+.2f} | {100 * v['se']:.2f} | "
              f"[{100 * v['low']:+.2f}, {100 * v['high']:+.2f}] | {v['verdict']} |"
              for n, v in verdicts.items()]
    return "\n".join(lines) + "\n\n"


def _examples(done: list[str], results: dict[str, dict[str, Any]]) -> str:
    rows = [f"| {METHODS[n].label} | {_cell(e['title'])} | {_cell(e['category_true'])} | "
            f"{_cell(e['category'])} | {_cell(', '.join(e['hashtags']))} |"
            for n in done for e in results[n].get("examples", [])]
    if not rows:
        return ""
    head = ["Generated for held-out test notes (the first few):", "",
            "| Method | Title | Category (true) | Generated category | Generated hashtags |",
            "|---|---|---|---|---|"]
    return "\n".join(head + rows) + "\n\n"


def _settings(cfg: Config, names: list[str], done: list[str], results: dict[str, dict[str, Any]]) -> str:
    t = cfg.training
    rows = []
    for name in names:
        m = METHODS[name]
        over = " ".join(f"`{key}={json.dumps(v)}`" for key, v in m.overrides.items()) or "(none)"
        rows.append(f"| {m.label} | `{name}` | {m.encoder} | {'yes' if m.trained else 'no'} | {over} |")
    times = [f"- {METHODS[n].label}: " + ", ".join(f"{p} {results[n]['seconds'][p] / 60:.1f} min"
                                                   for p in PHASES if p in results[n]["seconds"])
             for n in done]
    if times:
        times.append(f"- all methods: {sum(results[n]['seconds']['total'] for n in done) / 60:.1f} min")
    budget = f"{t.max_steps} steps" if t.max_steps else f"{t.epochs} epoch(s)"
    return f"""## Settings

Every row is the same trainer and evaluation under these overrides of the configuration below:

| Method | name | encoder | trained | overrides |
|---|---|---|---|---|
{chr(10).join(rows)}

Trained LLM rows: {budget} of {t.batch_pairs} pairs, {cfg.model.finetune} (LoRA r {cfg.model.lora_r}) on
{cfg.model.backbone}, learning rates {t.lr} (backbone), {t.projection_lr} (projection), {t.tau_lr} (tau),
bf16 {t.bf16}. MiniLM is fine-tuned for {cfg.evaluation.minilm_epochs} epoch(s) in batches of
{MINILM_BATCH_PAIRS} pairs, lr {MINILM_LR}. Generation metrics use up to {cfg.evaluation.generation_notes}
test notes that no training pair contains.

Wall time per method on the machine that ran it (model = build, load or train; embed; generate):
{chr(10).join(times) if times else "- none yet"}

<details><summary>The configuration (model, prompt, training, embedding, evaluation)</summary>

```json
{_settings_block(cfg)}
```
</details>
"""


def tuning_section(cfg: Config, workspace: Path, digest: str, pairs: pd.DataFrame) -> str:
    """Markdown of every val trial in ``<workspace>/tuning`` made on the same data (best first per method),
    ± the cluster-bootstrap standard error over the val ``pairs``, as in the table.

    A trial is shown by what it changed against the table's own settings for that method, so a trial run
    with a shorter budget reads e.g. ``training.max_steps=80 training.lr=0.001``.
    """
    k = cfg.evaluation.gate_k
    rows = []
    for settings_path in sorted(Path(workspace).glob("tuning/*/*/settings.json")):
        result_path = settings_path.with_name("result.json")
        settings = json.loads(settings_path.read_text())
        if settings.get("data_digest") != digest or not result_path.is_file() or settings["method"] not in METHODS:
            continue
        name = settings["method"]
        method = METHODS[name]
        table = _flat(method_settings(method, with_overrides(cfg, method.overrides)))
        changes = {key: value for key, value in _flat(settings).items()
                   if key in table and table[key] != value}
        result = json.loads(result_path.read_text())
        mean, se = recall_interval(result, "val", k, pairs)
        rows.append((name, -mean, " ".join(f"`{key}={json.dumps(v)}`" for key, v in
                                           sorted(changes.items())) or "(the table's recipe)",
                     _pct(mean, se), result["seconds"]["total"] / 60))
    if not rows:
        return ""
    lines = [f"| {METHODS[name].label} | {changes} | {recall_text} | {minutes:.1f} |"
             for name, _, changes, recall_text, minutes in sorted(rows)]
    return f"""## Tuning on val

Every setting tried on the val split (`notellm results --tune ...`), by what it changes against the table's
recipe; the test pairs were never ranked for these; ± is the cluster-bootstrap standard error, as in the table.
Trials with a shorter budget than the table's are comparable with each other, not with the table's val column.
Each trial's changes are against the defaults of the day it ran (its directory's `settings.json` holds them
all); trials run before `prompt.embed_whole_note` hid the category from the pooled prompt unless they set
`prompt.hide_category=false`.

| Method | changed settings | val R@{k} (%) | minutes |
|---|---|---:|---:|
{chr(10).join(lines)}

"""


def write_results_md(cfg: Config, names: list[str], results: dict[str, dict[str, Any]], stats: dict[str, Any],
                     out_md: Path, command: str, tuning: str = "",
                     pairs: pd.DataFrame | None = None) -> dict[str, Any]:
    """Render the table, the verdict paragraph, the plots (PNG beside ``out_md``) and the settings.

    Methods of ``names`` missing from ``results`` show as "not yet run". Returns the verdicts.
    """
    from notellm.evaluation.report import plot_recall_curves

    ks = sorted(set(cfg.evaluation.ks))
    k = cfg.evaluation.gate_k
    dataset = DATASET_NAMES.get(cfg.data.dataset, cfg.data.dataset)
    verdicts = _verdicts(names, results, k, pairs)
    done = [n for n in names if n in results]
    figures = ""
    if done:
        recall_png = out_md.with_name(f"{out_md.stem}_recall_at_k.png")
        plot_recall_curves({METHODS[n].label: {"retrieval": recall(results[n], "test", ks)} for n in done},
                           recall_png, title=f"Recall@k, {dataset} test pairs")
        figures += f"![Recall@k]({recall_png.name})\n\n"
    curves = {METHODS[n].label: results[n]["curve"] for n in done if results[n].get("curve")}
    if curves:
        loss_png = out_md.with_name(f"{out_md.stem}_loss_curves.png")
        _plot_losses(curves, loss_png)
        figures += f"![Training loss]({loss_png.name})\n\n"
    status = ("complete" if len(done) == len(names) else
              "not yet run" if not done else f"partial: {len(done)} of {len(names)} methods done")
    scope = ("the full table (`--methods all`)" if names == ALL_METHODS else
             "the default table (the core rows; PromptEOL+CSE and RepLLaMA need `--methods all`)"
             if names == CORE_METHODS else "a table of the methods asked for")
    default_setup = cfg.model.backbone == "smollm2-135m" and cfg.data.dataset == "movielens-100k"
    budget = BUDGET if default_setup and names in (CORE_METHODS, ALL_METHODS) else ""
    if default_setup:
        budget += QUALITY
    md = f"""# Results: NoteLLM against the paper's baselines on {dataset}

Status: **{status}**. This is {scope}.

Command (from the repository root):

```
{command}
```

{budget}{TUNING}
Each query of a test pair is ranked against the whole catalogue ({stats.get("catalogue_notes", 0):,} notes)
and Recall@k is the share of targets in the top k (the paper's protocol), ± one standard error from a
cluster bootstrap over query and target notes (two-way cluster-robust; pairs that share a note are not
independent). "Unseen targets" is the same recall on the test pairs whose target is in no training pair: a
lead that vanishes there came from having trained on those notes. "Budget" is the number of training pairs
a row saw (every trained row the same); "Prompt" the prompt kind and, for the compression prompt, its
layout. Val recall (pairs of the validation notes, ranked the same way) is the only number recipe choices
were allowed to look at. Mined
pairs per split: {_counts(stats.get("pairs_per_split", {}))}; notes per split:
{_counts(stats.get("notes_per_split", {}))}.

{_table(names, results, ks, k, cfg, pairs, stats.get("pairs_per_split", {}).get("train", 0))}
{_paragraph(cfg, names, results, verdicts, stats, k)}

{_comparison(verdicts, k)}{figures}{_examples(done, results)}{tuning}{_settings(cfg, names, done, results)}"""
    with atomic_path(out_md) as tmp:
        tmp.write_text(md)
    return verdicts


# ------------------------------------------------------------------------------------------ entry points


def run_results(cfg: Config, workspace: Path, methods: list[str] | None = None,
                out_md: Path = Path("docs/results.md"), *, force: bool = False, command: str | None = None,
                progress: bool = True) -> dict[str, Any]:
    """Reproduce the results table: data, mining, every method (cached), then ``out_md`` and its plots.

    ``methods``: None runs :data:`CORE_METHODS`, ``["all"]`` every method, or name them. ``force`` reruns
    the methods asked for even when cached. ``command`` is printed in the markdown (default: the
    ``python -m notellm.results`` line that reproduces this call). The markdown is rewritten after
    every method, so an interrupted run leaves a partial table. Returns flat metrics (Kubeflow style), the
    verdicts against NoteLLM, which methods ran and which came from the cache, the wall seconds of each
    method and the markdown's path.
    """
    from notellm.evaluation.report import flat_metrics

    names = resolve_methods(methods)
    workspace, out_md = Path(workspace), Path(out_md)
    if command is None:
        command = shlex.join(["python", "-m", "notellm.results", "--workspace", str(workspace), "--out",
                              str(out_md), *(["--methods", *methods] if methods else [])])
    notes, pairs, stats = prepare(cfg, workspace)
    digest = data_digest(notes, pairs)
    results: dict[str, dict[str, Any]] = {}
    ran: list[str] = []
    cached: list[str] = []
    tuning = tuning_section(cfg, workspace, digest, pairs)
    verdicts = write_results_md(cfg, names, results, stats, out_md, command, tuning, pairs)
    for name in names:
        results[name], fresh = _cached_run(name, cfg, notes, pairs, workspace / "methods" / name, digest,
                                           splits=("test", "val"), force=force, progress=progress)
        (ran if fresh else cached).append(name)
        verdicts = write_results_md(cfg, names, results, stats, out_md, command, tuning, pairs)
    ks = sorted(set(cfg.evaluation.ks))
    table = {n: {"retrieval": recall(results[n], "test", ks),
                 **{p: results[n][p] for p in ("category", "hashtags") if p in results[n]}} for n in names}
    metrics = flat_metrics(table)  # keys: <method name with _>_recall_at_<k>, ...
    for name in names:
        if "val" in results[name]["retrieval"]:
            val = recall(results[name], "val", [cfg.evaluation.gate_k])
            slug = name.replace("-", "_")
            metrics[f"{slug}_val_recall_at_{cfg.evaluation.gate_k}"] = val["recall"][cfg.evaluation.gate_k]
    return {"metrics": metrics, "verdicts": verdicts, "ran": ran, "cached": cached, "out_md": str(out_md),
            "seconds": {n: results[n]["seconds"]["total"] for n in names}}


def tune_on_val(cfg: Config, workspace: Path, grid: dict[str, list[Any]] | list[dict[str, Any]],
                method: str = "notellm", *, k: int | None = None, force: bool = False,
                progress: bool = True) -> dict[str, Any]:
    """Try each setting of ``grid`` for ``method``; val split only.

    ``grid`` is either ``{"section.key": [values]}`` (every combination is tried) or a list of override
    dicts (each one a trial, e.g. one change at a time against ``{}``, the recipe itself).

    The test pairs are never ranked here: each trial embeds the catalogue and ranks the val pairs. Trials
    are cached like the table's methods. Returns the trials (settings, val Recall@k, its cluster-bootstrap
    standard error) sorted best first, and the best overrides; ``<workspace>/tuning/<method>/tuning.json``
    keeps them.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}: use one of {ALL_METHODS}")
    if not grid:
        raise ConfigError("tune_on_val needs a grid of at least one setting")
    k = k or cfg.evaluation.gate_k
    workspace = Path(workspace)
    notes, pairs, _ = prepare(cfg, workspace)
    if not (pairs["split"] == "val").any():
        raise ConfigError("mining produced no val pairs: raise mining.val_note_fraction")
    digest = data_digest(notes, pairs)
    trials = []
    for overrides in _trial_overrides(grid):
        trial_cfg = with_overrides(cfg, overrides)
        slug = _digest(overrides)
        result, _ = _cached_run(method, trial_cfg, notes, pairs, workspace / "tuning" / method / slug, digest,
                                splits=("val",), force=force, progress=progress)
        mean, se = recall_interval(result, "val", k, pairs)
        trials.append({"overrides": overrides, f"val_recall_at_{k}": mean,
                       "stderr": se, "seconds": result["seconds"]["total"], "dir": slug})
    trials.sort(key=lambda t: -t[f"val_recall_at_{k}"])
    summary = {"method": method, "k": k, "best": trials[0]["overrides"], "trials": trials}
    write_json(summary, workspace / "tuning" / method / "tuning.json")
    return summary


def _trial_overrides(grid: dict[str, list[Any]] | list[dict[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(grid, dict):
        keys = list(grid)
        return [dict(zip(keys, values)) for values in itertools.product(*(grid[key] for key in keys))]
    return [dict(overrides) for overrides in grid]


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m notellm.results``: the table (``run_results``) with the recipe config."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, default=Path("workspace/results"))
    parser.add_argument("--out", type=Path, default=Path("docs/results.md"))
    parser.add_argument("--methods", nargs="+",
                        help=f"'all' or some of {ALL_METHODS} (default: the core rows)")
    parser.add_argument("--config", type=Path, help="YAML config file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value")
    parser.add_argument("--force", action="store_true", help="rerun methods even when cached")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = results_config(args.config, args.overrides)
    command = shlex.join(["python", "-m", "notellm.results", *(sys.argv[1:] if argv is None else argv)])
    summary = run_results(cfg, args.workspace, args.methods, args.out, force=args.force, command=command)
    print(json.dumps({k: v for k, v in summary.items() if k != "metrics"}, indent=1))


if __name__ == "__main__":
    main()
