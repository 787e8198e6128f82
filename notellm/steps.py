"""The pipeline's steps as plain functions over directories: the CLI and the Kubeflow components call these.

Each step reads its inputs from directories written by earlier steps, writes its outputs atomically into
its own directory and returns a dict of plain numbers for the run's metrics. Re-running a step overwrites
its outputs; it never appends.
"""

from __future__ import annotations

import functools
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from notellm.config import Config
from notellm.contracts import EMBEDDINGS, EVENTS, NOTES, read_table, write_table
from notellm.io import atomic_path

NOTES_FILE, EVENTS_FILE, PAIRS_FILE = "notes.parquet", "events.parquet", "pairs.parquet"
EMBEDDINGS_FILE = "embeddings.parquet"
CHALLENGER = "challenger (MiniLM fine-tuned)"

Step = TypeVar("Step", bound=Callable[..., dict[str, Any]])


def timed(step: Step) -> Step:
    """Add ``step_seconds`` (wall time inside the step) to the step's result, for the run's records."""
    @functools.wraps(step)
    def wrapper(*args: Any, **kwargs: Any) -> dict[str, Any]:
        began = time.perf_counter()
        result = step(*args, **kwargs)
        return {**result, "step_seconds": round(time.perf_counter() - began, 3)}
    return wrapper  # type: ignore[return-value]


@timed
def prepare_data(cfg: Config, out_dir: Path) -> dict[str, Any]:
    """Write the configured dataset's notes and events tables into ``out_dir``."""
    from notellm.datasets import build_dataset

    return build_dataset(cfg.data, out_dir)


@timed
def publish_features(data_dir: Path, repo_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Publish note features to Feast and read the training notes back through its offline store.

    The offline store gets two rows per note: one at the note's creation time (point-in-time training
    reads) and a snapshot at the last event (what serving sees, materialised into the online store).
    ``out_dir`` receives the notes as read from Feast, the events, and the ready pairs when there are any.
    """
    from notellm.features import FeatureRepo, build_note_features

    notes = read_table(data_dir / NOTES_FILE, NOTES)
    events = read_table(data_dir / EVENTS_FILE, EVENTS)
    repo = FeatureRepo(repo_dir) if (repo_dir / "feature_store.yaml").exists() else FeatureRepo.create(repo_dir)
    snapshot = max(events["ts"].max() if len(events) else notes["event_timestamp"].max(),
                   notes["event_timestamp"].max())
    rows = pd.concat([build_note_features(notes, events), build_note_features(notes, events, as_of=snapshot)],
                     ignore_index=True).drop_duplicates(["note_id", "event_timestamp"], keep="last")
    repo.write_offline(rows)
    repo.apply()
    repo.materialize(end=snapshot + pd.Timedelta(seconds=1))
    served = repo.offline_notes(notes["note_id"].tolist(), ts=notes["event_timestamp"].tolist())
    served["event_timestamp"] = notes["event_timestamp"].to_numpy()
    out_dir.mkdir(parents=True, exist_ok=True)
    write_table(served, out_dir / NOTES_FILE, NOTES)
    for name in (EVENTS_FILE, PAIRS_FILE):
        if (data_dir / name).is_file():
            with atomic_path(out_dir / name) as tmp:
                shutil.copyfile(data_dir / name, tmp)
        else:
            (out_dir / name).unlink(missing_ok=True)
    return {"notes": len(served), "events": len(events), "feature_rows": len(rows),
            "snapshot": str(snapshot), "feature_repo": str(repo.path)}


@timed
def mine(cfg: Config, data_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Mine co-occurrence pairs (or take the ready pairs) and split them without leakage (pairs.parquet,
    pair_stats.json)."""
    from notellm.mining import run_mining

    return run_mining(data_dir, out_dir, cfg.mining)


def _as_of(notes: pd.DataFrame, events: pd.DataFrame) -> pd.Timestamp:
    """The time of a features snapshot: the last event, or the last note's creation without events."""
    return events["ts"].max() if len(events) else notes["event_timestamp"].max()


def _windows(notes: pd.DataFrame, events: pd.DataFrame, quantile: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Note features of the notes active before and after the ``quantile`` of event time; without events
    (ready pairs only), of the notes created before and after the ``quantile`` of creation time."""
    from notellm.features import build_note_features

    if events.empty:
        ordered = notes.sort_values(["event_timestamp", "note_id"], kind="stable")
        cut_at = round(len(ordered) * quantile)
        early, late = ordered.iloc[:cut_at], ordered.iloc[cut_at:]
        return (build_note_features(early, None, as_of=_as_of(early, events)),
                build_note_features(late, None, as_of=_as_of(late, events)))
    cut = events["ts"].quantile(quantile)
    out = []
    for window in (events[events["ts"] < cut], events[events["ts"] >= cut]):
        active = notes[notes["note_id"].isin(window["note_id"])]
        out.append(build_note_features(active, window, as_of=window["ts"].max()))
    return out[0], out[1]


@timed
def check_drift(cfg: Config, data_dir: Path, embeddings_path: Path, out_dir: Path,
                reference_dir: Path | None = None) -> dict[str, Any]:
    """Compare a reference window with the current one: note features and the new model's embeddings.

    Without ``reference_dir`` the events are cut in time at ``drift.split_quantile``: the notes users
    engaged with before the cut are the reference, those after it the current window. With it, the
    reference dataset's notes (and their events) are compared with this dataset's.
    """
    from notellm.drift import check_drift as run_check
    from notellm.features import build_note_features

    notes, events = read_table(data_dir / NOTES_FILE, NOTES), read_table(data_dir / EVENTS_FILE, EVENTS)
    embeddings = read_table(embeddings_path, EMBEDDINGS).set_index("note_id")["vector"]
    if reference_dir is None:
        reference, current = _windows(notes, events, cfg.drift.split_quantile)
    else:
        ref_notes = read_table(reference_dir / NOTES_FILE, NOTES)
        ref_events = read_table(reference_dir / EVENTS_FILE, EVENTS)
        reference = build_note_features(ref_notes, ref_events, as_of=_as_of(ref_notes, ref_events))
        current = build_note_features(notes, events, as_of=_as_of(notes, events))
    reference = reference[reference["note_id"].isin(embeddings.index)].reset_index(drop=True)
    current = current[current["note_id"].isin(embeddings.index)].reset_index(drop=True)
    vectors = [pd.DataFrame(embeddings.loc[w["note_id"]].tolist()).to_numpy("float32")
               for w in (reference, current)]
    out_dir.mkdir(parents=True, exist_ok=True)
    result = run_check(reference, current, vectors[0], vectors[1], cfg.drift,
                       html_path=out_dir / "drift_report.html", summary_path=out_dir / "drift_summary.json")
    return {"passed": result.passed, "reasons": result.reasons, "metrics": result.metrics}


@timed
def finetune(cfg: Config, notes_dir: Path, pairs_dir: Path, model_dir: Path) -> dict[str, Any]:
    """Train NoteLLM on the train pairs (GCL + CSFT); writes the model directory (with its loss curve)."""
    from notellm.contracts import PAIRS
    from notellm.model import train

    notes = read_table(notes_dir / NOTES_FILE, NOTES)
    pairs = read_table(pairs_dir / PAIRS_FILE, PAIRS)
    return train(notes, pairs, cfg.model, cfg.prompt, cfg.training, model_dir)


@timed
def embed(cfg: Config, model_dir: Path, notes_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Embed every note with the model; writes embeddings.parquet. Reports how many notes the prompt's
    length budget truncated (``truncation``)."""
    from notellm.model import load_model, write_embeddings
    from notellm.model.runtime import set_threads

    from notellm.text_budget import truncation_stats

    set_threads(cfg.embedding.threads)
    model = load_model(model_dir)
    notes = read_table(notes_dir / NOTES_FILE, NOTES)
    stats = write_embeddings(model, notes, out_dir / EMBEDDINGS_FILE, cfg.embedding.batch_size,
                             bf16=cfg.embedding.bf16)
    return {**stats, "truncation": truncation_stats(notes, model.tokenizer, model.prompt_cfg)}


@timed
def finetune_challenger(cfg: Config, notes_dir: Path, pairs_dir: Path, model_dir: Path, embeddings_dir: Path,
                        max_steps: int = 0) -> dict[str, Any]:
    """The challenger: all-MiniLM-L6-v2 fine-tuned on the train pairs (at most ``max_steps`` steps; 0: the
    ``evaluation.minilm_epochs`` epochs), a servable model directory, and its vectors for every note."""
    from notellm.challenger import SentenceEncoder, train_challenger
    from notellm.contracts import PAIRS
    from notellm.model.runtime import set_threads

    set_threads(cfg.training.threads)
    notes = read_table(notes_dir / NOTES_FILE, NOTES)
    pairs = read_table(pairs_dir / PAIRS_FILE, PAIRS)
    trained = train_challenger(notes, pairs[pairs["split"] == "train"], model_dir, max_steps=max_steps,
                               epochs=cfg.evaluation.minilm_epochs, seed=cfg.training.seed)
    vectors = SentenceEncoder(model_dir).embed(notes, cfg.embedding.batch_size)
    table = pd.DataFrame({"note_id": notes["note_id"], "vector": list(vectors),
                          "model_version": trained["model_version"]})
    embeddings_dir.mkdir(parents=True, exist_ok=True)
    write_table(table, embeddings_dir / EMBEDDINGS_FILE, EMBEDDINGS)
    return {**trained, "notes": len(table)}


def _baseline_vectors(cfg: Config, name: str, notes: pd.DataFrame, train_pairs: pd.DataFrame) -> Any:
    """Vectors of every note under an untrained or cheap baseline (the results table's setting of ``name``)."""
    from notellm.results import METHODS, untrained_model, with_overrides

    method = METHODS[name]
    if method.encoder == "llm":
        from notellm.model import embed_notes

        model = untrained_model(with_overrides(cfg, method.overrides), notes, train_pairs)
        return embed_notes(model, notes, cfg.evaluation.batch_size, bf16=cfg.embedding.bf16)
    from notellm.evaluation.minilm import finetune_minilm, minilm_embed

    model = None
    if method.trained:
        model = finetune_minilm(notes, train_pairs, epochs=cfg.evaluation.minilm_epochs,
                                seed=cfg.training.seed)
    return minilm_embed(notes, model, cfg.evaluation.batch_size)


@timed
def evaluate(cfg: Config, model_dir: Path, notes_dir: Path, pairs_dir: Path, embeddings_dir: Path,
             out_dir: Path, challenger_dir: Path | None = None) -> dict[str, Any]:
    """The paper's protocol on the test pairs: NoteLLM, the challenger (its embeddings table in
    ``challenger_dir``, when trained), the baselines, generation metrics.

    Writes results.md (table), recall_at_k.png, results.json into ``out_dir``. The summary's reference is
    the first baseline's test Recall@gate_k (for display: the gate decides on val, :func:`gate`).
    """
    from notellm.contracts import PAIRS
    from notellm.evaluation.report import flat_metrics, plot_recall_curves, write_results_table
    from notellm.evaluation.retrieval import embedding_matrix, recall_for_pairs
    from notellm.evaluation.textgen import category_metrics, hashtag_metrics
    from notellm.io import write_json
    from notellm.model import generate_for_notes, load_model

    ev = cfg.evaluation
    notes = read_table(notes_dir / NOTES_FILE, NOTES)
    pairs = read_table(pairs_dir / PAIRS_FILE, PAIRS)
    ids, vectors = embedding_matrix(read_table(embeddings_dir / EMBEDDINGS_FILE, EMBEDDINGS))
    results: dict[str, dict[str, Any]] = {"NoteLLM": {"retrieval": recall_for_pairs(pairs, ids, vectors, ev.ks)}}
    if ev.generation_notes:
        test_ids = pd.unique(pairs.loc[pairs["split"] == "test", ["note_id_a", "note_id_b"]].to_numpy().ravel())
        sample = notes[notes["note_id"].isin(test_ids[:ev.generation_notes])]
        generated = generate_for_notes(load_model(model_dir), sample, batch_size=ev.batch_size)
        results["NoteLLM"]["category"] = category_metrics(
            generated["category"].tolist(), sample["category"].tolist(), sorted(set(notes["category"])))
        results["NoteLLM"]["hashtags"] = hashtag_metrics(generated["hashtags"].tolist(),
                                                         sample["hashtags"].tolist())
    if challenger_dir is not None:
        c_ids, c_vectors = embedding_matrix(read_table(challenger_dir / EMBEDDINGS_FILE, EMBEDDINGS))
        results[CHALLENGER] = {"retrieval": recall_for_pairs(pairs, c_ids, c_vectors, ev.ks)}
    train_pairs = pairs[pairs["split"] == "train"]
    for name in ev.baselines:
        results[name] = {"retrieval": recall_for_pairs(
            pairs, notes["note_id"].tolist(), _baseline_vectors(cfg, name, notes, train_pairs), ev.ks)}

    recall = results["NoteLLM"]["retrieval"]["recall"][ev.gate_k]
    reference_key = f"recall_at_{ev.gate_k}"
    if ev.baselines:
        reference = f"the {ev.baselines[0]} baseline"
        reference_recall = results[ev.baselines[0]]["retrieval"]["recall"][ev.gate_k]
    else:
        reference, reference_recall = "nothing (no baseline)", 0.0
    out_dir.mkdir(parents=True, exist_ok=True)
    write_results_table(results, out_dir / "results.md")
    plot_recall_curves(results, out_dir / "recall_at_k.png")
    summary = {reference_key: recall, "reference": reference, "reference_recall": reference_recall,
               "metrics": flat_metrics(results)}
    write_json({**summary, "results": {m: {p: {k: v for k, v in part.items() if k not in ("ranks", "curve")}
                                             for p, part in r.items()} for m, r in results.items()}},
               out_dir / "results.json")
    return summary


GATE_LABELS = {"notellm": "NoteLLM", "challenger": CHALLENGER}


def _val_hits(pairs: pd.DataFrame, ids: list[str], vectors: Any, k: int) -> Any:
    """1/0 per val pair (in table order): the target within the top ``k`` of the whole pool."""
    from notellm.evaluation.retrieval import target_ranks

    val = pairs[pairs["split"] == "val"]
    if val.empty:
        return np.zeros(0)
    ranks, _ = target_ranks(val["note_id_a"].tolist(), val["note_id_b"].tolist(), ids, vectors)
    return (ranks <= k).astype(float)


@timed
def gate(cfg: Config, notes_dir: Path, pairs_dir: Path, candidates: dict[str, Path],
         serving_root: Path | None, drift_passed: bool, drift_reasons: list[str],
         min_gain: float) -> dict[str, Any]:
    """Decide what to deploy (:func:`notellm.gate.decide`) on the val pairs' Recall@gate_k.

    ``candidates`` maps ``notellm`` / ``challenger`` to the directory of its embeddings table. The serving
    model (from the serving record) embeds the same notes now, so every lead is a paired difference over the
    same pairs and pool. Returns deploy, winner, recall (the winner's), metric, markdown and val_recall.
    """
    from notellm.challenger import encode_notes, load_encoder
    from notellm.contracts import PAIRS
    from notellm.deploy import read_record
    from notellm.evaluation.retrieval import embedding_matrix
    from notellm.gate import Candidate, decide
    from notellm.model.runtime import set_threads

    k = cfg.evaluation.gate_k
    notes = read_table(notes_dir / NOTES_FILE, NOTES)
    pairs = read_table(pairs_dir / PAIRS_FILE, PAIRS)
    val = pairs[pairs["split"] == "val"]
    scored = []
    for key, directory in candidates.items():
        table = read_table(directory / EMBEDDINGS_FILE, EMBEDDINGS)
        ids, vectors = embedding_matrix(table)
        scored.append(Candidate(key, GATE_LABELS[key], str(table["model_version"].iloc[0]),
                                _val_hits(pairs, ids, vectors, k)))
    record = read_record(serving_root) if serving_root else None
    serving = None
    if record is not None:
        set_threads(cfg.embedding.threads)
        encoder = load_encoder(record["model_dir"])
        vectors = encode_notes(encoder, notes, cfg.embedding.batch_size, bf16=cfg.embedding.bf16)
        serving = Candidate("serving", "serving model", str(record["model_version"]),
                            _val_hits(pairs, notes["note_id"].tolist(), vectors, k))
    metric = f"R@{k}"
    decision = decide(scored, serving, val["note_id_a"].tolist(), val["note_id_b"].tolist(), drift_passed,
                      drift_reasons, metric=metric, min_gain=min_gain, seed=cfg.training.seed)
    measured = [*scored, *([serving] if serving else [])]
    return {"deploy": decision.deploy, "winner": decision.winner, "recall": decision.recall, "metric": metric,
            "markdown": decision.markdown(metric), "val_recall": {c.key: c.recall for c in measured}}


@timed
def deploy(cfg: Config, model_dir: Path, metrics: dict[str, float], serving_root: Path,
           target: str = "local", storage_uri: str = "", isvc: str = "notellm",
           namespace: str = "kubeflow-user") -> dict[str, Any]:
    """Promote the model: ``local`` copies it into the serving root; ``kserve`` patches the InferenceService."""
    from notellm.deploy import deploy_kserve, model_version, promote_local

    record = promote_local(model_dir, serving_root, metrics)
    if target == "kserve":
        deploy_kserve(isvc, namespace, storage_uri, model_version(model_dir), metrics)
        record["inference_service"] = f"{namespace}/{isvc}"
    return record


@timed
def index(cfg: Config, notes_dir: Path, embeddings_dir: Path) -> dict[str, Any]:
    """Fill a new Milvus collection with every embedding, then swap the serving alias to it.

    A re-run after a run killed between the fill and the swap swaps to that run's complete collection
    instead of filling another (``reused``); see :meth:`notellm.vectorstore.NoteIndex.publish`.
    """
    from notellm.vectorstore import NoteIndex

    notes = read_table(notes_dir / NOTES_FILE, NOTES).set_index("note_id")
    emb = read_table(embeddings_dir / EMBEDDINGS_FILE, EMBEDDINGS)
    categories = notes["category"].reindex(emb["note_id"]).fillna("").tolist()
    version = str(emb["model_version"].iloc[0]) if len(emb) else "empty"
    with NoteIndex(cfg.index) as store:
        published = store.publish(version, emb["note_id"].tolist(), list(emb["vector"]), categories)
        count = store.count()
    return {"collection": published.collection, "previous": published.previous, "reused": published.reused,
            "alias": cfg.index.alias, "rows": count, "uri": cfg.index.uri, "model_version": version}
