"""Results of the evaluation step: a markdown table, plots, and flat metrics for Kubeflow.

``results`` maps a method name to a dict with any of: ``retrieval`` (from
:func:`~notellm.evaluation.retrieval.recall_at_k`), ``category`` (from
:func:`~notellm.evaluation.textgen.category_metrics`) and ``hashtags`` (from
:func:`~notellm.evaluation.textgen.hashtag_metrics`). Every file is written atomically.
Plots use matplotlib's object API (no pyplot, no display needed).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from notellm.io import atomic_path

Results = Mapping[str, Mapping[str, Mapping]]


def _ks(results: Results) -> list[int]:
    return sorted({int(k) for r in results.values() if "retrieval" in r for k in r["retrieval"]["recall"]})


def _row_cells(result: Mapping[str, Mapping], ks: list[int]) -> dict[str, str]:
    """The table cells of one method; a metric the method lacks is an empty string."""
    cells = {f"R@{k} (%)": "" for k in ks}
    if "retrieval" in result:
        retrieval = result["retrieval"]
        recall = {int(key): v for key, v in retrieval["recall"].items()}
        stderr = {int(key): v for key, v in retrieval["stderr"].items()}
        for k in recall:
            cells[f"R@{k} (%)"] = f"{100 * recall[k]:.2f} ± {100 * stderr[k]:.2f}"
    cells["Pairs"] = str(result["retrieval"]["n"]) if "retrieval" in result else ""
    category, hashtags = result.get("category"), result.get("hashtags")
    cells["Category acc. (%)"] = f"{100 * category['accuracy']:.2f}" if category else ""
    cells["Illegal (%)"] = f"{100 * category['illegal_rate']:.2f}" if category else ""
    cells["BLEU-4"] = f"{hashtags['bleu4']:.2f}" if hashtags else ""
    cells["ROUGE-L"] = f"{100 * hashtags['rougeL']:.2f}" if hashtags else ""
    return cells


def results_table(results: Results) -> str:
    """Markdown table: one row per method; Recall@k (percent ± one standard error), the pairs evaluated,
    category accuracy and illegal rate (percent), BLEU-4 and ROUGE-L (0-100). A cell is blank where a
    method lacks the metric; a column that no method has is left out."""
    ks = _ks(results)
    rows = {method: _row_cells(result, ks) for method, result in results.items()}
    columns = list(_row_cells({}, ks))
    names = [name for name in columns if any(cells[name] for cells in rows.values())]
    lines = ["| Method | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for method, cells in rows.items():
        lines.append(f"| {method} | " + " | ".join(cells[name] for name in names) + " |")
    return "\n".join(lines) + "\n"


def write_results_table(results: Results, path: str | Path) -> Path:
    """Write :func:`results_table` to ``path`` (markdown), atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(results_table(results))
    return path


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return path


def plot_recall_curves(results: Results, path: str | Path, title: str = "Recall@k") -> Path:
    """PNG of the recall@k curve of every method with retrieval results (log-scaled k)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for method, result in results.items():
        if "retrieval" in result:
            curve = np.asarray(result["retrieval"]["curve"], dtype=float)
            ax.plot(np.arange(1, curve.size + 1), 100 * curve, label=method)
    ax.set_xscale("log")
    ax.set_xlabel("k")
    ax.set_ylabel("Recall@k (%)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if ax.lines:
        ax.legend()
    return _save(fig, path)


def plot_loss_curve(steps: Sequence[int], losses: Sequence[float], path: str | Path,
                    title: str = "Training loss") -> Path:
    """PNG of loss against step, with a moving average when there are many steps."""
    from matplotlib.figure import Figure

    if len(steps) != len(losses):
        raise ValueError(f"{len(steps)} steps but {len(losses)} losses")
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.plot(steps, losses, alpha=0.5 if len(losses) > 50 else 1.0, label="loss")
    if len(losses) > 50:
        window = max(2, len(losses) // 25)
        smooth = np.convolve(np.asarray(losses, dtype=float), np.ones(window) / window, mode="valid")
        ax.plot(np.asarray(steps)[window - 1:], smooth, label=f"mean of {window} steps")
        ax.legend()
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "method"


def flat_metrics(results: Results) -> dict[str, float]:
    """One ``{method}_{metric}`` -> float mapping (for a Kubeflow Metrics artifact): recall_at_k and its
    ``_se``, pairs, category_accuracy, illegal_rate, bleu4, rouge1, rouge2, rougeL."""
    flat: dict[str, float] = {}
    slugs: dict[str, str] = {}
    for method, result in results.items():
        slug = _slug(method)
        if slug in slugs:
            raise ValueError(f"methods {slugs[slug]!r} and {method!r} share the metric prefix {slug!r}")
        slugs[slug] = method
        if "retrieval" in result:
            retrieval = result["retrieval"]
            for k, value in retrieval["recall"].items():
                flat[f"{slug}_recall_at_{k}"] = float(value)
                flat[f"{slug}_recall_at_{k}_se"] = float(retrieval["stderr"][k])
            flat[f"{slug}_pairs"] = float(retrieval["n"])
        if "category" in result:
            flat[f"{slug}_category_accuracy"] = float(result["category"]["accuracy"])
            flat[f"{slug}_illegal_rate"] = float(result["category"]["illegal_rate"])
        if "hashtags" in result:
            for name in ("bleu4", "rouge1", "rouge2", "rougeL"):
                flat[f"{slug}_{name}"] = float(result["hashtags"][name])
    return flat
