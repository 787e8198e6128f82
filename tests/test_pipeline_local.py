"""The whole pipeline through kfp.local (tiny-random backbone, small synthetic data): both sides of the gate.

Run 1 forces the gate open (min_gain -1): deploy and index run, every artifact exists and is valid, the
collection answers a search. Run 2, in the same workspace, demands a gain no model can reach: the gate
stops, deploy and index are skipped, the serving record still names run 1's model, and the gate compared
against that serving model (re-embedding the notes with it) on the val pairs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from tiny_pipeline import PARAMS

from pipelines.local import run_local, summarize, task_outputs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pipeline")


@pytest.fixture(scope="module")
def deployed_run(workspace: Path) -> Path:
    return run_local(workspace, min_gain=-1.0, **PARAMS)


@pytest.fixture(scope="module")
def stopped_run(workspace: Path, deployed_run: Path) -> Path:
    return run_local(workspace, min_gain=1.0, **PARAMS)


def test_every_artifact_exists_and_is_valid(deployed_run: Path) -> None:
    from notellm.contracts import EMBEDDINGS, NOTES, PAIRS, read_table
    from notellm.model import load_model

    notes = read_table(deployed_run / "note-features" / "notes" / "notes.parquet", NOTES)
    pairs = read_table(deployed_run / "mine-pairs" / "pairs" / "pairs.parquet", PAIRS)
    emb = read_table(deployed_run / "embed" / "embeddings" / "embeddings.parquet", EMBEDDINGS)
    assert len(notes) == 150 and set(pairs["split"]) == {"train", "val", "test"}
    assert set(emb["note_id"]) == set(notes["note_id"])
    model = load_model(deployed_run / "finetune" / "model")
    assert model.dim == len(emb["vector"].iloc[0]) == 128
    html = (deployed_run / "check-drift" / "report").read_text()
    assert html.lstrip().lower().startswith("<!doctype html") or html.lstrip().lower().startswith("<html")
    assert "<img" in (deployed_run / "finetune" / "loss_curve").read_text()
    assert "| NoteLLM" in (deployed_run / "evaluate" / "table").read_text()
    assert json.loads((deployed_run / "check-drift" / "details").read_text())["passed"] in (True, False)
    assert task_outputs(deployed_run, "gate")["Output"] is True
    assert task_outputs(deployed_run, "gate")["winner"] == "notellm"


def test_deploy_and_index_serve_the_new_model(workspace: Path, deployed_run: Path) -> None:
    from notellm.deploy import read_record
    from notellm.kfp_io import config_from_yaml
    from notellm.vectorstore import NoteIndex

    record = read_record(workspace / "serving")
    model_json = json.loads((deployed_run / "finetune" / "model" / "notellm.json").read_text())
    assert record is not None and record["model_version"] == model_json["model_version"]
    assert Path(record["model_dir"], "notellm.json").exists()
    # First through the local KServe server (its own process opens the Milvus Lite database) ...
    summary = summarize(workspace, deployed_run)
    assert "Related notes" in summary and summary.count("(") >= 15
    # ... then directly (Milvus Lite lets one process at a time open the database).
    cfg = config_from_yaml(task_outputs(deployed_run, "make-config")["Output"])
    notes = pd.read_parquet(deployed_run / "note-features" / "notes" / "notes.parquet")
    with NoteIndex(cfg.index) as store:
        assert store.count() == len(notes)
        hits = store.related([notes["note_id"].iloc[0]], 5)[0]
    assert len(hits) == 5 and notes["note_id"].iloc[0] not in {h.note_id for h in hits}


def test_failing_gate_skips_deploy_and_index(workspace: Path, deployed_run: Path, stopped_run: Path) -> None:
    from notellm.deploy import read_record

    assert task_outputs(stopped_run, "gate")["Output"] is False
    assert not (stopped_run / "deploy").exists() and not (stopped_run / "index").exists()
    first = json.loads((deployed_run / "finetune" / "model" / "notellm.json").read_text())["model_version"]
    assert read_record(workspace / "serving")["model_version"] == first
    decision = (stopped_run / "gate" / "decision").read_text()
    assert "not deployed" in decision and "val R@50" in decision
    assert f"against the serving model {first}" in decision and "the serving model stays" in decision
