"""The pipeline's steps as plain functions over directories: the CLI and the Kubeflow components call these.

Each step reads its inputs from directories written by earlier steps, writes its outputs atomically into
its own directory and returns a dict of plain numbers for the run's metrics. Re-running a step overwrites
its outputs; it never appends.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from notellm.config import Config
from notellm.contracts import EMBEDDINGS, EVENTS, NOTES, read_table, write_table

NOTES_FILE, EVENTS_FILE, PAIRS_FILE = "notes.parquet", "events.parquet", "pairs.parquet"
EMBEDDINGS_FILE = "embeddings.parquet"


def prepare_data(cfg: Config, out_dir: Path) -> dict[str, Any]:
    """Write the configured dataset's notes and events tables into ``out_dir``."""
    from notellm.datasets import build_dataset

    return build_dataset(cfg.data, out_dir)


def publish_features(data_dir: Path, repo_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Publish note features to Feast and read the training notes back through its offline store.

    The offline store gets two rows per note: one at the note's creation time (point-in-time training
    reads) and a snapshot at the last event (what serving sees, materialised into the online store).
    ``out_dir`` receives the notes as read from Feast, and the events.
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
    shutil.copyfile(data_dir / EVENTS_FILE, out_dir / f".{EVENTS_FILE}.tmp")
    (out_dir / f".{EVENTS_FILE}.tmp").replace(out_dir / EVENTS_FILE)
    return {"notes": len(served), "events": len(events), "feature_rows": len(rows),
            "snapshot": str(snapshot), "feature_repo": str(repo.path)}


def mine(cfg: Config, data_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Mine co-occurrence pairs and split them without leakage (pairs.parquet, pair_stats.json)."""
    from notellm.mining import run_mining

    return run_mining(data_dir, out_dir, cfg.mining)


def _windows(notes: pd.DataFrame, events: pd.DataFrame, quantile: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Note features of the notes active before and after the ``quantile`` of event time."""
    from notellm.features import build_note_features

    cut = events["ts"].quantile(quantile)
    out = []
    for window in (events[events["ts"] < cut], events[events["ts"] >= cut]):
        active = notes[notes["note_id"].isin(window["note_id"])]
        out.append(build_note_features(active, window, as_of=window["ts"].max()))
    return out[0], out[1]


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
        reference = build_note_features(ref_notes, ref_events, as_of=ref_events["ts"].max())
        current = build_note_features(notes, events, as_of=events["ts"].max())
    reference = reference[reference["note_id"].isin(embeddings.index)].reset_index(drop=True)
    current = current[current["note_id"].isin(embeddings.index)].reset_index(drop=True)
    vectors = [pd.DataFrame(embeddings.loc[w["note_id"]].tolist()).to_numpy("float32")
               for w in (reference, current)]
    out_dir.mkdir(parents=True, exist_ok=True)
    result = run_check(reference, current, vectors[0], vectors[1], cfg.drift,
                       html_path=out_dir / "drift_report.html", summary_path=out_dir / "drift_summary.json")
    return {"passed": result.passed, "reasons": result.reasons, "metrics": result.metrics}
