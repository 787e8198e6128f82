"""The loss curve of a training run: its summary metrics and a PNG plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def summarize(curve: list[dict[str, Any]]) -> dict[str, Any]:
    """First/final loss, the mean of the last 10% of logged steps, final tau and validation recall."""
    losses = [r["loss"] for r in curve if "loss" in r]
    tail = losses[-max(1, len(losses) // 10):]
    out: dict[str, Any] = {"first_loss": losses[0] if losses else None,
                           "final_loss": losses[-1] if losses else None,
                           "final_loss_mean_last10pct": float(np.mean(tail)) if losses else None,
                           "tau": curve[-1]["tau"] if curve else None}
    val = [r["val_recall"] for r in curve if "val_recall" in r]
    if val:
        out["val_recall"] = val[-1]
    return out


def plot_curve(curve: list[dict[str, Any]], path: Path) -> None:
    """Losses per step (and validation recall on a second axis) as a PNG."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    for key in ("loss", "gcl", "csft"):
        rows = [r for r in curve if key in r]
        if rows:
            ax.plot([r["step"] for r in rows], [r[key] for r in rows], label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(loc="upper left")
    val = [r for r in curve if "val_recall" in r]
    if val:
        ax2 = ax.twinx()
        ax2.plot([r["step"] for r in val], [r["val_recall"] for r in val], "k--o", label="val recall")
        ax2.set_ylabel("val recall")
        ax2.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
