"""The results table, plots and flat metrics."""

from __future__ import annotations

import numpy as np
import pytest

from notellm.evaluation.report import (
    flat_metrics,
    plot_loss_curve,
    plot_recall_curves,
    results_table,
    write_results_table,
)
from notellm.evaluation.retrieval import recall_from_ranks

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
KS = (10, 100, 1000)


@pytest.fixture
def results():
    return {
        "MiniLM zero-shot": {"retrieval": recall_from_ranks(np.array([1, 50, 500, 2000]), ks=KS)},
        "NoteLLM": {
            "retrieval": recall_from_ranks(np.array([1, 5, 80, 900]), ks=KS),
            "category": {"accuracy": 0.6, "illegal_rate": 0.05, "n": 20},
            "hashtags": {"bleu4": 12.5, "rouge1": 0.4, "rouge2": 0.1, "rougeL": 0.35, "n": 20},
        },
    }


def test_table_rows_columns_and_blanks(results):
    lines = results_table(results).splitlines()
    assert lines[0] == ("| Method | R@10 (%) | R@100 (%) | R@1000 (%) | Pairs | Category acc. (%) "
                        "| Illegal (%) | BLEU-4 | ROUGE-L |")
    # R@10 of ranks (1, 50, 500, 2000) is 1/4: 25.00 ± sqrt(.25 * .75 / 4) = 21.65
    assert lines[2] == ("| MiniLM zero-shot | 25.00 ± 21.65 | 50.00 ± 25.00 | 75.00 ± 21.65 | 4 "
                        "|  |  |  |  |")
    assert lines[3] == ("| NoteLLM | 50.00 ± 25.00 | 75.00 ± 21.65 | 100.00 ± 0.00 | 4 | 60.00 | 5.00 "
                        "| 12.50 | 35.00 |")


def test_columns_no_method_has_are_left_out():
    table = results_table({"only retrieval": {"retrieval": recall_from_ranks(np.array([3]), ks=(5,))}})
    assert table.splitlines()[0] == "| Method | R@5 (%) | Pairs |"


def test_files_are_written(results, tmp_path):
    assert write_results_table(results, tmp_path / "t" / "results.md").read_text() == results_table(results)
    recall_png = plot_recall_curves(results, tmp_path / "recall.png")
    loss_png = plot_loss_curve(list(range(1, 201)), list(np.linspace(3, 1, 200)), tmp_path / "loss.png")
    for path in (recall_png, loss_png):
        assert path.read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loss.png", "recall.png", "t"]  # no temp files
    with pytest.raises(ValueError, match="3 steps but 2 losses"):
        plot_loss_curve([1, 2, 3], [1.0, 2.0], tmp_path / "bad.png")


def test_flat_metrics(results):
    flat = flat_metrics(results)
    assert flat["minilm_zero_shot_recall_at_100"] == 0.5
    assert flat["minilm_zero_shot_recall_at_100_se"] == 0.25
    assert flat["notellm_category_accuracy"] == 0.6 and flat["notellm_rougeL"] == 0.35
    assert flat["notellm_pairs"] == 4.0
    assert "minilm_zero_shot_bleu4" not in flat
    assert all(isinstance(v, float) for v in flat.values())
    with pytest.raises(ValueError, match="share the metric prefix"):
        flat_metrics({"NoteLLM": results["NoteLLM"], "notellm": results["NoteLLM"]})
