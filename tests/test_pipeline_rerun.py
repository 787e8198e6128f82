"""The same local pipeline run twice in one workspace (kfp.local): same artifacts, no duplicated data.

Both runs have kfp.local's task cache on: the second takes ``make-config`` from the cache (the only task
whose key can hit, see ``run_local``), executes every other task again and must reproduce the first one's
content: notes and pairs tables, model weights, embeddings, metrics. Only the model version differs (it
carries the training time). The first run's gate compares with nothing, the second's with the serving model:
a lead of exactly 0 is inside any interval, so both runs force the gate open (min_gain -1) and deploy and
index run again. After each run Milvus serves each note once and the Feast stores hold each note once.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from tiny_pipeline import OVERRIDES, PARAMS

from pipelines.local import run_local, task_outputs

pytestmark = pytest.mark.slow

RERUN = {**PARAMS, "overrides": [*OVERRIDES, "evaluation.baselines=[]"], "min_gain": -1.0}
#: Fields that measure time: they differ between two runs of the same computation.
TIMINGS = ("seconds", "step_seconds", "train_seconds", "seconds_per_step", "notes_per_s")


def _notes(run: Path) -> pd.DataFrame:
    return pd.read_parquet(run / "note-features" / "notes" / "notes.parquet")


def _store_rows(workspace: Path, config_run: Path) -> dict[str, Any]:
    """Rows per note id in Milvus (each collection of the alias) and in Feast's online and offline stores.

    Opened only after the run, when no step holds the Milvus Lite database; closing releases it.
    """
    from notellm.features import FEATURE_NAMES, FEATURES_FILE
    from notellm.kfp_io import config_from_yaml
    from notellm.vectorstore import NoteIndex

    cfg = config_from_yaml(task_outputs(config_run, "make-config")["Output"])
    with NoteIndex(cfg.index) as store:
        milvus = {"serving": store.serving_collection(), "count": store.count(),
                  "collections": {c.name: (store.count(c.name), c.complete) for c in store.collections()}}
    repo = workspace / "feature_repo"
    online_path = repo / yaml.safe_load((repo / "feature_store.yaml").read_text())["online_store"]["path"]
    with sqlite3.connect(online_path) as db:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        online = [db.execute(f'SELECT count(DISTINCT entity_key), count(*) FROM "{t}"').fetchone()
                  for t in tables]
    offline = pd.read_parquet(repo / FEATURES_FILE)
    return {"milvus": milvus, "online": online, "features_per_note": len(FEATURE_NAMES),
            "offline_rows": len(offline), "offline_keys": len(offline[["note_id", "event_timestamp"]]
                                                              .drop_duplicates())}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    workspace = tmp_path_factory.mktemp("rerun")
    first = run_local(workspace, caching=True, **RERUN)
    after_first = _store_rows(workspace, first)
    second = run_local(workspace, caching=True, **RERUN)
    return {"workspace": workspace, "first": first, "second": second,
            "stores": [after_first, _store_rows(workspace, first)]}  # the same config, cached in the second


def _without_timings(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in TIMINGS and k != "model_version"}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def _model_files(model_dir: Path) -> dict[str, Any]:
    """Hash of every model file; the JSON files (version, timings) as data without time-dependent fields."""
    files: dict[str, Any] = {}
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        name = str(path.relative_to(model_dir))
        if path.suffix == ".json" and path.parent == model_dir:
            files[name] = _without_timings(json.loads(path.read_text()))
        else:
            files[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def _metadata(run: Path, task: str, artifact: str) -> dict[str, Any]:
    outputs = json.loads((run / task / "executor_output.json").read_text())
    return outputs["artifacts"][artifact]["artifacts"][0]["metadata"]


def test_every_task_runs_again_and_reproduces_the_same_content(runs: dict[str, Any]) -> None:
    first, second = runs["first"], runs["second"]
    tasks = [{p.name for p in run.iterdir()} for run in (first, second)]
    assert tasks[0] - tasks[1] == {"make-config"}  # from the cache: no folder in the second run
    assert {"prepare-data", "finetune", "embed", "deploy", "index"} <= tasks[1] <= tasks[0]

    pd.testing.assert_frame_equal(_notes(first), _notes(second))
    pd.testing.assert_frame_equal(*(pd.read_parquet(r / "mine-pairs" / "pairs" / "pairs.parquet")
                                    for r in (first, second)))
    files = [_model_files(r / "finetune" / "model") for r in (first, second)]
    assert any(name.endswith(".safetensors") for name in files[0]) and files[0] == files[1]

    emb = [pd.read_parquet(r / "embed" / "embeddings" / "embeddings.parquet") for r in (first, second)]
    assert emb[0]["note_id"].tolist() == emb[1]["note_id"].tolist() == _notes(first)["note_id"].tolist()
    assert np.array_equal(np.stack(emb[0]["vector"]), np.stack(emb[1]["vector"]))
    versions = [json.loads((r / "finetune" / "model" / "notellm.json").read_text())["model_version"]
                for r in (first, second)]
    assert [set(e["model_version"]) for e in emb] == [{versions[0]}, {versions[1]}]
    assert versions[0].rsplit("-", 1)[1] == versions[1].rsplit("-", 1)[1]  # same weights hash, new time

    assert _without_timings(_metadata(first, "evaluate", "metrics")) == _without_timings(
        _metadata(second, "evaluate", "metrics"))
    drift = [json.loads((r / "check-drift" / "details").read_text()) for r in (first, second)]
    assert drift[0]["passed"] == drift[1]["passed"] and drift[0]["metrics"] == drift[1]["metrics"]


def test_the_rerun_passes_the_gate_on_equal_recall_and_serves_the_new_version(runs: dict[str, Any]) -> None:
    from notellm.deploy import read_record

    first, second = runs["first"], runs["second"]
    scored = [task_outputs(r, "evaluate") for r in (first, second)]
    version = json.loads((first / "finetune" / "model" / "notellm.json").read_text())["model_version"]
    assert scored[1]["recall"] == scored[0]["recall"]
    decision = (second / "gate" / "decision").read_text()
    assert f"against the serving model {version}: lead +0.00 points" in decision  # re-embedded: same hits
    assert task_outputs(second, "gate")["Output"] is True

    record = read_record(runs["workspace"] / "serving")
    assert record["model_version"] == _metadata(second, "index", "stats")["model_version"] != version
    indexed = [_metadata(r, "index", "stats") for r in (first, second)]
    assert indexed[1]["previous"] == indexed[0]["collection"] != indexed[1]["collection"]
    assert indexed[1]["reused"] == "False"  # another model version: a new collection, not the first's


def test_each_run_leaves_every_note_once_in_milvus_and_feast(runs: dict[str, Any]) -> None:
    notes = len(_notes(runs["first"]))
    first, second = runs["stores"]
    for stores, collections in ((first, 1), (second, 2)):  # keep_collections=2: the first stays for rollback
        milvus = stores["milvus"]
        assert milvus["count"] == notes and len(milvus["collections"]) == collections
        assert set(milvus["collections"].values()) == {(notes, True)}
        assert stores["online"] == [(notes, notes * stores["features_per_note"])]
        assert stores["offline_rows"] == stores["offline_keys"] == first["offline_rows"]
    assert second["milvus"]["serving"] != first["milvus"]["serving"]
    assert set(second["milvus"]["collections"]) == {first["milvus"]["serving"], second["milvus"]["serving"]}
