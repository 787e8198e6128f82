"""A new user's route end to end: text-rich notes with long descriptions and related-note links (no behaviour
log, no split) -> `notellm data import` -> `notellm run` (tiny backbone, real kfp.local, Feast, Milvus Lite)
-> `notellm serve` -> `notellm recommend`. One full run (jsonl); the other formats are checked to import to
identical tables and reach the same pairs in test_ready_pairs.py. Also the truncation report's numbers."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner
from user_notes import save, user_catalogue

from notellm.cli import app
from notellm.config import PromptConfig
from notellm.text_budget import describe, truncation_stats

STEPS = ["make-config", "prepare-data", "note-features", "mine-pairs", "finetune", "finetune-challenger",
         "embed", "evaluate", "check-drift", "gate", "deploy", "index"]
SETTINGS = ["data.dataset=files", "evaluation.ks=[10,50]", "evaluation.gate_k=50",
            "evaluation.generation_notes=3", "training.threads=1", "embedding.threads=1",
            "drift.sample_size=100"]


def test_truncation_stats_count_notes_and_units_cut():
    notes = pd.DataFrame({"title": ["short", "a title that is long"], "content": ["  12345  ", "x" * 25]})
    stats = truncation_stats(notes, None, PromptConfig(length_unit="chars", content_max=10, title_max=10))
    assert stats == {"unit": "chars", "content_max": 10, "notes": 2, "content_truncated": 1,
                     "content_cut_mean": 15.0, "content_cut_max": 15, "content_length_max": 25,
                     "content_kept_share": 1 - 15 / 30, "title_truncated": 1}
    assert describe(stats).startswith("1 of 2 notes had their content truncated to 10 chars (cut 15 on")
    short = truncation_stats(notes.head(1), None, PromptConfig(length_unit="chars", content_max=10))
    assert describe(short) == "no note was truncated (content budget 10 chars, longest note 5)"


@pytest.mark.slow
def test_a_users_notes_and_links_import_run_serve_and_recommend(tmp_path: Path):
    from notellm.model import load_model
    from pipelines.local import local_server

    notes, links, _ = user_catalogue()  # 120 notes of 150-400 words, 333 undirected links
    notes_path, links_path = save(notes, tmp_path / "notes.jsonl"), save(links, tmp_path / "links.jsonl")
    runner, workspace = CliRunner(), tmp_path / "ws"
    imported = runner.invoke(app, ["data", "import", "--notes", str(notes_path), "--pairs", str(links_path),
                                   "--out", str(tmp_path / "data")])
    assert imported.exit_code == 0, imported.output

    args = ["run", "--workspace", str(workspace), "-p", "backbone=tiny-random", "-p", "max_steps=2",
            "-p", "batch_pairs=4", "-p", "min_gain=-1", "-p", "challenger=false"]
    for setting in [*SETTINGS, f"data.notes_path={notes_path}", f"data.pairs_path={links_path}"]:
        args += ["--set", setting]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    # Quiet: one line per step with its time and status, no kfp.local chatter or local no-op warnings.
    progress = [line for line in result.output.splitlines() if re.match(r"^[a-z-]+ +\d+\.\d s  ok", line)]
    assert sorted(line.split()[0] for line in progress) == sorted(STEPS)  # evaluate, check-drift: any order
    assert "666 pairs: " in result.output and "333 ready pairs" in result.output
    for noise in ("Executing task", "have no effect", "non-Python base image", "executor_input"):
        assert noise not in result.output
    assert "Executing task" in (workspace / "run.log").read_text()

    summary = (workspace / "summary.md").read_text()
    model = load_model(next((workspace / "serving" / "models").iterdir()))
    truncation = truncation_stats(notes, model.tokenizer, model.prompt_cfg)
    assert truncation["content_truncated"] > 100  # long descriptions against the 128-token budget
    assert describe(truncation) in summary.replace("\n", " ")
    assert "- ready pairs: " in summary and "## Related notes" in summary

    run_dir = max((workspace / "runs").iterdir(), key=lambda p: p.stat().st_mtime)
    pairs = pd.read_parquet(run_dir / "mine-pairs" / "pairs" / "pairs.parquet")
    assert len(pairs) == 2 * len(links) and set(pairs["split"]) == {"train", "val", "test"}
    query = pairs.loc[pairs["split"] == "test", "note_id_a"].iloc[0]
    with local_server(workspace) as url:
        answer = runner.invoke(app, ["recommend", query, "--k", "5", "--url", url])
    assert answer.exit_code == 0, answer.output
    listed = re.findall(r"note-\d{4}", answer.output)
    assert len(listed) == 5 and query not in listed and set(listed) <= set(notes["note_id"])
