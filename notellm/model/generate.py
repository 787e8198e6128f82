"""Generate a note's category and hashtags (greedy, repetition penalty 1.2) and parse the text."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from notellm.model.bundle import NoteLLM
from notellm.model.prompt import Note, Task, notes_from_frame
from notellm.model.runtime import make_batch


def parse_category(text: str) -> str:
    """The first line of the output, without surrounding quotes or a final full stop."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line.strip().strip("\"'“”").rstrip("。.").strip()


def parse_hashtags(text: str, limit: int | None = None) -> list[str]:
    """Hashtags split on commas (ASCII or CJK), '#' and line breaks; unique, in order."""
    seen: list[str] = []
    for part in re.split(r"[,，、#\n]", text):
        tag = part.strip().strip("\"'“”").rstrip("。.").strip()
        if tag and tag not in seen:
            seen.append(tag)
    return seen[:limit] if limit else seen


def _generate(model: NoteLLM, prompts: list[list[int]], batch_size: int, max_new_tokens: int,
              repetition_penalty: float, progress: bool, desc: str) -> list[str]:
    lm = model.encoder.backbone
    tok = model.tokenizer
    texts: list[str] = []
    with torch.inference_mode():
        for start in tqdm(range(0, len(prompts), batch_size), desc=desc, unit="batch", disable=not progress):
            chunk = prompts[start:start + batch_size]
            batch = make_batch(chunk, tok.pad_token_id, padding_side="left", device=model.device)
            out = lm.generate(**batch, do_sample=False, max_new_tokens=max_new_tokens,
                              repetition_penalty=repetition_penalty, eos_token_id=tok.eos_token_id,
                              pad_token_id=tok.pad_token_id)
            texts.extend(tok.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True))
    return texts


def generate_for_notes(model: NoteLLM, notes: pd.DataFrame | list[Note], *,
                       tasks: Sequence[Task] = ("category", "hashtags"),
                       num_hashtags: int | Iterable[int] = 3,
                       known_categories: Iterable[str] | None = None, batch_size: int = 16,
                       max_new_tokens: int = 24, repetition_penalty: float = 1.2,
                       progress: bool = False) -> pd.DataFrame:
    """One row per note: note_id, and per task the raw text and the parsed category / hashtags.

    ``category_illegal`` is True where the category is outside ``known_categories`` (default: the
    categories seen in training), None when no set is known.
    """
    if isinstance(notes, pd.DataFrame):
        notes = notes_from_frame(notes)
    frame = pd.DataFrame({"note_id": [n.note_id for n in notes]})
    if "category" in tasks:
        raw = _generate(model, [model.prompter.generation_ids(n, "category") for n in notes], batch_size,
                        max_new_tokens, repetition_penalty, progress, "category")
        frame["category_text"] = raw
        frame["category"] = [parse_category(t) for t in raw]
        known = set(known_categories) if known_categories is not None else (
            set(model.known_categories) if model.known_categories else None)
        frame["category_illegal"] = [None if known is None else c not in known for c in frame["category"]]
    if "hashtags" in tasks:
        counts = [num_hashtags] * len(notes) if isinstance(num_hashtags, int) else list(num_hashtags)
        if len(counts) != len(notes) or min(counts, default=1) < 1:
            raise ValueError("num_hashtags must be a positive int or one positive int per note")
        prompts = [model.prompter.generation_ids(n, "hashtags", j) for n, j in zip(notes, counts)]
        raw = _generate(model, prompts, batch_size, max_new_tokens, repetition_penalty, progress, "hashtags")
        frame["hashtags_text"] = raw
        frame["hashtags"] = [parse_hashtags(t, j) for t, j in zip(raw, counts)]
    return frame
