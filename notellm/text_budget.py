"""How much of the notes the prompt's length budget cuts (``prompt.title_max`` / ``prompt.content_max``).

Long notes are clipped to the budget before they enter the prompt; :func:`truncation_stats` counts the notes
clipped and by how much, in the prompt's own unit (tokens of the model's tokenizer, or characters), so that a
run on long notes says so.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from notellm.model_config import PromptConfig


def _lengths(texts: list[str], tokenizer: Any, unit: str) -> np.ndarray:
    if unit == "chars":
        return np.array([len(t) for t in texts], dtype=np.int64)
    ids = tokenizer(texts, add_special_tokens=False, split_special_tokens=True).input_ids if texts else []
    return np.array([len(i) for i in ids], dtype=np.int64)


def truncation_stats(notes: pd.DataFrame, tokenizer: Any, cfg: PromptConfig) -> dict[str, Any]:
    """Notes whose content (and title) exceed the prompt's budget, and the share of content they lose.

    ``content_cut_mean``/``content_cut_max`` are the units cut from a clipped content; ``content_kept_share``
    is the share of all content units (over every note) that reaches the prompt.
    """
    unit = cfg.length_unit
    content = _lengths(notes["content"].astype(str).str.strip().tolist(), tokenizer, unit)
    title = _lengths(notes["title"].astype(str).str.strip().tolist(), tokenizer, unit)
    cut = np.maximum(content - cfg.content_max, 0)
    clipped = cut > 0
    return {"unit": unit, "content_max": cfg.content_max, "notes": int(len(content)),
            "content_truncated": int(clipped.sum()),
            "content_cut_mean": float(cut[clipped].mean()) if clipped.any() else 0.0,
            "content_cut_max": int(cut.max()) if len(cut) else 0,
            "content_length_max": int(content.max()) if len(content) else 0,
            "content_kept_share": float(1 - cut.sum() / content.sum()) if content.sum() else 1.0,
            "title_truncated": int((title > cfg.title_max).sum())}


def describe(stats: dict[str, Any]) -> str:
    """One sentence for a run's summary."""
    if not stats.get("content_truncated") and not stats.get("title_truncated"):
        return (f"no note was truncated (content budget {stats['content_max']} {stats['unit']}, longest note "
                f"{stats['content_length_max']})")
    return (f"{stats['content_truncated']:,} of {stats['notes']:,} notes had their content truncated to "
            f"{stats['content_max']} {stats['unit']} (cut {stats['content_cut_mean']:.0f} on average, "
            f"{stats['content_cut_max']:,} at most; {100 * stats['content_kept_share']:.0f}% of all content "
            f"reaches the prompt), {stats['title_truncated']:,} titles to the title budget; raise "
            "prompt.content_max to keep more (longer prompts, slower steps)")
