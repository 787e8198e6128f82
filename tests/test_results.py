"""The results table: every method a setting of one trainer and evaluation, cached and resumable."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from notellm.config import Config
from notellm.errors import ConfigError
from notellm.results import (
    ALL_METHODS,
    CORE_METHODS,
    METHODS,
    RECIPE,
    _cached_run,
    _paragraph,
    _pct,
    collapsed,
    compare,
    data_digest,
    prepare,
    recall_interval,
    resolve_methods,
    results_config,
    run_results,
    tune_on_val,
    tuning_section,
    with_overrides,
)

SMALL = ["data.dataset=synthetic", "data.synthetic.users=120", "data.synthetic.notes=150",
         "data.synthetic.events=3000", "model.backbone=tiny-random", "model.dim=16", "model.lora_r=4",
         "training.max_steps=2", "training.batch_pairs=4", "training.threads=1", "prompt.content_max=12",
         "evaluation.generation_notes=3"]
TWO = ["zero-shot", "notellm"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_methods_are_settings_of_one_trainer():
    base = Config()
    for name, method in METHODS.items():
        with_overrides(base, method.overrides)  # every override is a valid config setting
        assert set(method.overrides) <= {"prompt.kind", "training.alpha", "model.dim"}, name
    llm_trained = {n: m.overrides for n, m in METHODS.items() if m.encoder == "llm" and m.trained}
    assert llm_trained == {"prompteol-cse": {"prompt.kind": "prompteol", "training.alpha": 0.0},
                           "repllama": {"prompt.kind": "repllama", "training.alpha": 0.0},
                           "notellm-wo-csft": {"prompt.kind": "notellm", "training.alpha": 0.0},
                           "notellm": {"prompt.kind": "notellm"}}


def test_resolve_methods():
    assert resolve_methods(None) == CORE_METHODS and resolve_methods(["all"]) == ALL_METHODS
    assert set(CORE_METHODS) < set(ALL_METHODS)
    assert resolve_methods(["notellm", "minilm"]) == ["minilm", "notellm"]  # table order
    with pytest.raises(ConfigError, match="'nope'"):
        resolve_methods(["notellm", "nope"])


def test_results_config_layers_recipe_file_and_overrides(tmp_path):
    cfg = results_config()
    assert cfg.training.max_steps == RECIPE["training.max_steps"] and cfg.training.bf16 == "auto"
    assert results_config(overrides=["training.max_steps=7"]).training.max_steps == 7
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  max_steps: 5\n  lr: 0.001\n")
    from_file = results_config(path)
    assert from_file.training.max_steps == 5 and from_file.training.lr == 0.001
    assert from_file.training.batch_pairs == RECIPE["training.batch_pairs"]
    assert results_config(path, ["training.max_steps=9"]).training.max_steps == 9
    with pytest.raises(ConfigError, match="unknown setting 'nope'"):
        with_overrides(cfg, {"training.nope": 1})


def test_compare_uses_the_paired_standard_error():
    rng = np.random.default_rng(0)
    a = rng.integers(1, 300, size=2000)
    same = compare(a, a, 100)
    assert same["diff"] == 0 and same["se"] == 0 and same["verdict"] == "tie"
    b = np.where(rng.random(2000) < 0.03, 500, a)  # B loses 3% of A's hits
    result = compare(a, b, 100)
    d = (a <= 100).astype(float) - (b <= 100)
    assert result["diff"] == pytest.approx(d.mean())
    assert result["se"] == pytest.approx(d.std(ddof=1) / np.sqrt(2000))
    assert result["verdict"] == "ahead" and compare(b, a, 100)["verdict"] == "behind"
    noisy = np.where(rng.random(2000) < 0.5, rng.integers(1, 300, size=2000), a)
    close = compare(a, noisy, 100)
    assert (close["verdict"] == "tie") == (abs(close["diff"]) <= 2 * close["se"])
    with pytest.raises(ValueError, match="same pairs"):
        compare(a, a[:10], 100)


def test_compare_with_shared_queries_uses_the_cluster_bootstrap():
    """Issue 13: 2,000 pairs from 40 queries are far less evidence than 2,000 independent pairs."""
    rng = np.random.default_rng(0)
    queries = [f"q{i // 50}" for i in range(2000)]
    targets = [f"t{i}" for i in rng.integers(0, 400, size=2000)]
    a = np.repeat(rng.integers(1, 300, size=40), 50)
    b = np.where(np.repeat(rng.random(40) < 0.1, 50), 500, a)  # B loses every pair of 4 queries
    naive = compare(a, b, 100)
    clustered = compare(a, b, 100, queries=queries, targets=targets)
    assert clustered["diff"] == naive["diff"] and clustered["se"] > 3 * naive["se"]
    assert clustered["high"] - clustered["low"] > 3 * (naive["high"] - naive["low"])
    assert (clustered["verdict"] == "tie") == (clustered["low"] <= 0 <= clustered["high"])


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    ws = tmp_path_factory.mktemp("results")
    cfg = results_config(overrides=SMALL)
    summary = run_results(cfg, ws, TWO, ws / "docs" / "results.md", progress=False)
    return ws, cfg, summary


def _result(ws, name):
    return json.loads((ws / "methods" / name / "result.json").read_text())


@pytest.mark.slow
def test_table_end_to_end(table):
    ws, _, summary = table
    assert summary["ran"] == TWO and summary["cached"] == []
    pairs = pd.read_parquet(ws / "mining" / "pairs.parquet")
    n_test = int((pairs["split"] == "test").sum())
    metrics = summary["metrics"]
    for slug in ("zero_shot", "notellm"):
        assert metrics[f"{slug}_pairs"] == n_test
        r = [metrics[f"{slug}_recall_at_{k}"] for k in (10, 100, 1000)]
        assert 0 <= r[0] <= r[1] <= r[2] == 1.0  # 150 notes: every target is in the top 1000
        assert 0 <= metrics[f"{slug}_val_recall_at_100"] <= 1
    generation = {"notellm_category_accuracy", "notellm_illegal_rate", "notellm_bleu4", "notellm_rougeL"}
    assert generation <= set(metrics)
    assert "zero_shot_bleu4" not in metrics
    trained = _result(ws, "notellm")
    assert trained["train"]["steps"] == 2 and [r["step"] for r in trained["curve"]] == [1, 2]
    assert len(trained["retrieval"]["test"]["ranks"]) == n_test and trained["retrieval"]["val"]["ranks"]
    assert trained["dim"] == 16 and _result(ws, "zero-shot")["dim"] == 64  # untrained: raw hidden state
    verdict = summary["verdicts"]["zero-shot"]
    assert verdict["verdict"] == ("tie" if verdict["low"] <= 0 <= verdict["high"]
                                  else "ahead" if verdict["diff"] > 0 else "behind")
    assert verdict["low"] < verdict["diff"] < verdict["high"]
    md = (ws / "docs" / "results.md").read_text()
    assert "Status: **complete**" in md and "not yet run" not in md
    assert "| NoteLLM |" in md and "Zero-shot LLM" in md and "python -m notellm.results" in md
    assert f"{100 * metrics['notellm_recall_at_100']:.2f} ±" in md
    header = next(line for line in md.splitlines() if line.startswith("| Method | R@10"))
    assert "R@100 unseen targets (%)" in header and "Budget (pairs seen)" in header and "| Prompt |" in header
    row = next(line for line in md.splitlines() if line.startswith("| NoteLLM |"))
    assert "| 8 (" in row and "notellm (official)" in row  # 2 steps of 4 pairs; the prompt's layout
    assert "95% interval" in md
    for png in ("results_recall_at_k.png", "results_loss_curves.png"):
        assert (ws / "docs" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png in md


@pytest.mark.slow
def test_table_resumes_and_reruns_only_what_changed(table):
    ws, cfg, first = table
    stamp = (ws / "methods" / "notellm" / "result.json").stat().st_mtime_ns
    again = run_results(cfg, ws, TWO, ws / "docs" / "results.md", progress=False)
    assert again["ran"] == [] and again["cached"] == TWO and again["metrics"] == first["metrics"]
    assert (ws / "methods" / "notellm" / "result.json").stat().st_mtime_ns == stamp

    # Interrupted after training: the model directory is reused, nothing is retrained.
    model_stamp = (ws / "methods" / "notellm" / "model" / "notellm.json").stat().st_mtime_ns
    (ws / "methods" / "notellm" / "result.json").unlink()
    resumed = run_results(cfg, ws, TWO, ws / "docs" / "results.md", progress=False)
    assert resumed["ran"] == ["notellm"]
    assert (ws / "methods" / "notellm" / "model" / "notellm.json").stat().st_mtime_ns == model_stamp
    assert resumed["metrics"]["notellm_recall_at_100"] == first["metrics"]["notellm_recall_at_100"]

    # A training setting only reruns the trained method; force reruns what is asked for.
    longer = with_overrides(cfg, {"training.max_steps": 3})
    changed = run_results(longer, ws, TWO, ws / "docs" / "results.md", progress=False)
    assert changed["ran"] == ["notellm"] and changed["cached"] == ["zero-shot"]
    assert _result(ws, "notellm")["train"]["steps"] == 3
    forced = run_results(longer, ws, ["zero-shot"], ws / "docs" / "results.md", force=True, progress=False)
    assert forced["ran"] == ["zero-shot"]

    # The same settings over other data (a user's files changed in place) rerun too.
    notes, pairs, _ = prepare(longer, ws)
    digest = data_digest(notes, pairs)
    assert not _cached_run("zero-shot", longer, notes, pairs, ws / "methods" / "zero-shot", digest,
                           splits=("test", "val"), force=False, progress=False)[1]
    assert _cached_run("zero-shot", longer, notes, pairs.iloc[1:], ws / "methods" / "zero-shot",
                       data_digest(notes, pairs.iloc[1:]), splits=("test", "val"), force=False,
                       progress=False)[1]


@pytest.mark.slow
def test_tune_on_val_never_ranks_the_test_pairs(table):
    ws, cfg, _ = table
    cfg = with_overrides(cfg, {"training.max_steps": 1})
    summary = tune_on_val(cfg, ws, {"training.projection_lr": [1e-3, 1e-2]}, progress=False)
    trials = summary["trials"]
    assert sorted(t["overrides"]["training.projection_lr"] for t in trials) == [1e-3, 1e-2]
    assert trials[0]["val_recall_at_100"] >= trials[1]["val_recall_at_100"]
    assert summary["best"] == trials[0]["overrides"]
    for trial in trials:
        result = json.loads((ws / "tuning" / "notellm" / trial["dir"] / "result.json").read_text())
        assert list(result["retrieval"]) == ["val"] and "category" not in result
    assert json.loads((ws / "tuning" / "notellm" / "tuning.json").read_text())["best"] == summary["best"]
    # A list of trials (one change at a time): the cached 1e-2 trial is reused, {} is the recipe itself.
    cached = {t["dir"]: (ws / "tuning" / "notellm" / t["dir"] / "result.json").stat().st_mtime_ns
              for t in trials}
    listed = tune_on_val(cfg, ws, [{}, {"training.projection_lr": 1e-2}], progress=False)
    assert sorted(map(json.dumps, (t["overrides"] for t in listed["trials"]))) == [
        "{\"training.projection_lr\": 0.01}", "{}"]
    reused = next(t for t in listed["trials"] if t["overrides"])
    assert reused["dir"] == next(t["dir"] for t in trials if t["overrides"]["training.projection_lr"] == 1e-2)
    assert (ws / "tuning" / "notellm" / reused["dir"] / "result.json").stat().st_mtime_ns == cached[reused["dir"]]
    notes, pairs, _ = prepare(cfg, ws)
    section = tuning_section(table[1], ws, data_digest(notes, pairs), pairs)
    assert "## Tuning on val" in section and section.count("| NoteLLM |") == 3  # 1e-3, 1e-2 and {} (= 1e-3)
    # The listing's ± is the cluster bootstrap of the table's columns, not the per-pair binomial error.
    result = json.loads((ws / "tuning" / "notellm" / reused["dir"] / "result.json").read_text())
    mean, se = recall_interval(result, "val", 100, pairs)
    assert reused["stderr"] == se and f"| {_pct(mean, se)} |" in section
    assert se != recall_interval(result, "val", 100, None)[1]
    assert "`training.max_steps=1` `training.projection_lr=0.01` |" in section
    assert tuning_section(table[1], ws, "other data", pairs) == ""
    assert reused["val_recall_at_100"] == next(t["val_recall_at_100"] for t in trials
                                               if t["overrides"]["training.projection_lr"] == 1e-2)


def test_results_tune_option_rejects_bad_json(tmp_path):
    from typer.testing import CliRunner

    from notellm.cli import app

    out = CliRunner().invoke(app, ["results", "--workspace", str(tmp_path), "--tune", "{lr: 1}"])
    assert out.exit_code == 2 and "--tune is not JSON" in out.output
    two = CliRunner().invoke(app, ["results", "--workspace", str(tmp_path), "--tune", "[{}]", "-m", "notellm",
                                   "-m", "repllama"])
    assert two.exit_code == 2 and "one row at a time" in two.output
    assert not any(tmp_path.iterdir())


def test_results_tune_option_prints_the_trials(tmp_path):
    from typer.testing import CliRunner

    from notellm.cli import app

    args = ["results", "--workspace", str(tmp_path), "--tune", '[{}, {"training.lr": 0.001}]']
    for setting in SMALL:
        args += ["--set", setting]
    out = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert "val Recall@100" in out.output and "(recipe)" in out.output and '{"training.lr": 0.001}' in out.output
    summary = json.loads((tmp_path / "tuning" / "notellm" / "tuning.json").read_text())
    assert sorted(t["overrides"].get("training.lr", 0) for t in summary["trials"]) == [0, 0.001]
    assert not (tmp_path / "methods").exists()  # the table's rows are not touched


@pytest.mark.slow
def test_pipeline_baselines_are_the_tables_settings(table):
    from notellm.steps import _baseline_vectors

    ws, cfg, _ = table
    notes, pairs, _ = prepare(cfg, ws)
    train = pairs[pairs["split"] == "train"].head(3)  # the untrained rows are centred on training notes
    notes = notes[notes["note_id"].isin({*train["note_id_a"], *train["note_id_b"]})]
    zero_shot = np.asarray(_baseline_vectors(cfg, "zero-shot", notes, train))
    prompteol = np.asarray(_baseline_vectors(cfg, "prompteol", notes, train))
    assert zero_shot.shape == prompteol.shape == (len(notes), 64)  # untrained rows: the raw hidden state, not model.dim
    assert not np.allclose(zero_shot, prompteol)  # the two prompts pool different tokens


def test_collapsed_rows_are_named_in_the_paragraph():
    def row(cosine: float | None, loss: float = 3.1) -> dict:
        return {"train": {"mean_pairwise_cosine": cosine, "final_loss_mean_last10pct": loss, "steps": 2},
                "retrieval": {"test": {"ranks": [1, 5, 200]}}}

    results = {"repllama": row(0.98, 3.429), "notellm": row(0.28), "prompteol-cse": row(None),
               "zero-shot": row(0.99)}  # an untrained row is never "collapsed in training"
    assert collapsed(list(results), results) == {"repllama": 0.98}
    cfg = with_overrides(Config(), {"training.batch_pairs": 16})
    text = _paragraph(cfg, ["repllama", "notellm"], results, {}, {}, 100)
    assert "Collapsed in training" in text and "RepLLaMA (cosine 0.98" in text and "3.429" in text
    assert "ln 31 = 3.434" in text
    assert "Collapsed" not in _paragraph(cfg, ["notellm"], {"notellm": row(0.28)}, {}, {}, 100)
