"""Notes into token ids: the Note Compression Prompt (category and hashtag tasks) and the baseline prompts.

Layout (DESIGN.md):
``[BOS]<instruction> <note as JSON> The compression word is:"[EMB]". <guidance> <output>[EOS]``.
User text is tokenized with ``split_special_tokens=True``, so a literal "[EMB]" (or any other special token
text) in a note can never become a special id: every prompt holds exactly one ``[EMB]``, the real one.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from transformers import PreTrainedTokenizerBase

from notellm.errors import ConfigError, DataError
from notellm.model_config import EMB_TOKEN, PromptConfig

IGNORE_INDEX = -100
Task = Literal["category", "hashtags"]


@dataclass(frozen=True)
class Note:
    note_id: str
    title: str
    content: str
    hashtags: tuple[str, ...] = ()
    category: str = ""


@dataclass(frozen=True)
class Example:
    """One tokenized prompt; ``labels`` is -100 everywhere but the output tokens (None: no output)."""

    input_ids: list[int]
    labels: list[int] | None
    task: Task


def _text(value: object, row: int, column: str, file: str | Path | None) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, (str, int, np.integer)) and not isinstance(value, bool):
        return str(value)
    raise DataError(f"expected a string, got {type(value).__name__} {value!r}", file=file, row=row,
                    column=column)


def notes_from_frame(notes: pd.DataFrame, *, file: str | Path | None = None) -> list[Note]:
    """Read notes (note_id, title, content; hashtags and category optional) or raise a DataError."""
    missing = [c for c in ("note_id", "title", "content") if c not in notes.columns]
    if missing:
        raise DataError(f"a notes table needs the column(s) {missing}; found {list(notes.columns)}",
                        file=file, column=missing[0])
    out = []
    hashtags = notes["hashtags"] if "hashtags" in notes.columns else [()] * len(notes)
    categories = notes["category"] if "category" in notes.columns else [""] * len(notes)
    for row, (nid, title, content, tags, cat) in enumerate(
            zip(notes["note_id"], notes["title"], notes["content"], hashtags, categories)):
        note_id = _text(nid, row, "note_id", file)
        if not note_id.strip():
            raise DataError("empty value", file=file, row=row, column="note_id")
        title, content = _text(title, row, "title", file), _text(content, row, "content", file)
        if not title.strip() and not content.strip():
            raise DataError("the note has no text (title and content are empty)", file=file, row=row,
                            column="content")
        if tags is None or (isinstance(tags, float) and np.isnan(tags)):
            tags = ()
        if isinstance(tags, str) or not all(isinstance(t, str) for t in tags):
            raise DataError(f"expected a list of strings, got {tags!r}", file=file, row=row,
                            column="hashtags")
        out.append(Note(note_id, title, content, tuple(t for t in tags if t.strip()),
                        _text(cat, row, "category", file)))
    return out


class NotePrompter:
    """Builds token ids for one tokenizer and one PromptConfig."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, cfg: PromptConfig, emb_token_id: int) -> None:
        self.tokenizer, self.cfg, self.emb_id = tokenizer, cfg, emb_token_id
        if tokenizer.convert_tokens_to_ids(EMB_TOKEN) != emb_token_id:
            raise ValueError(f"the tokenizer's {EMB_TOKEN} id differs from {emb_token_id}")
        t = cfg.template
        self._before_emb, self._after_emb = t.compression.split(EMB_TOKEN)
        self._bos = [tokenizer.bos_token_id] if cfg.add_bos and tokenizer.bos_token_id is not None else []
        self._eos = tokenizer.eos_token_id
        self._cache: dict[str, list[int]] = {}

    def tokens(self, text: str) -> list[int]:
        """Token ids of plain text: never special tokens, never a BOS."""
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True).input_ids

    def _fixed(self, text: str) -> list[int]:
        if text not in self._cache:
            self._cache[text] = self.tokens(text)
        return self._cache[text]

    def _clip(self, text: str, limit: int) -> str:
        text = text.strip()
        if self.cfg.length_unit == "chars":
            return text[:limit]
        ids = self.tokens(text)
        return text if len(ids) <= limit else self.tokenizer.decode(ids[:limit]).rstrip("\ufffd")

    def note_json(self, note: Note, *, topics: bool, hide_category: bool) -> str:
        t = self.cfg.template
        fields = {t.title_key: self._clip(note.title, self.cfg.title_max)}
        if topics:
            tags = [h for h in note.hashtags if not (hide_category and h == note.category)]
            fields[t.topic_key] = t.hashtag_separator.join(tags[:self.cfg.max_input_hashtags])
        fields[t.content_key] = self._clip(note.content, self.cfg.content_max)
        return json.dumps(fields, ensure_ascii=False)

    def choose_task(self, note: Note, salt: int = 0) -> tuple[Task, tuple[str, ...]]:
        """Category task, or (with probability r, seeded per note) the hashtag task with its j hashtags."""
        rng = random.Random(f"{self.cfg.seed}:{salt}:{note.note_id}")
        if not note.hashtags or rng.random() >= self.cfg.hashtag_task_share:
            return "category", ()
        j = rng.randint(1, min(self.cfg.max_output_hashtags, len(note.hashtags)))
        return "hashtags", tuple(rng.sample(note.hashtags, j))

    def _prefix(self, note: Note, task: Task, j: int) -> list[int]:
        """Ids up to and including [EMB] for the chosen prompt kind and task."""
        t, kind = self.cfg.template, self.cfg.kind
        if kind == "notellm":
            instruction = t.category_instruction if task == "category" else t.hashtag_instruction.format(j=j)
            body = self.note_json(note, topics=task == "category",
                                  hide_category=self.cfg.hide_category_in_topics)
            ids = self._fixed(instruction) + self.tokens(t.separator + body + t.separator + self._before_emb)
        elif kind == "prompteol":
            ids = self.tokens(t.prompteol.format(note=self.note_json(note, topics=True, hide_category=False)))
        else:  # repllama: the note then EOS, pooled at the EOS
            ids = self.tokens(t.repllama.format(note=self.note_json(note, topics=True, hide_category=False)))
            ids = ids + [self._eos]
        return self._bos + ids + [self.emb_id]

    def _guidance(self, task: Task, j: int) -> list[int]:
        t = self.cfg.template
        guidance = t.category_guidance if task == "category" else t.hashtag_guidance.format(j=j)
        return self._fixed(self._after_emb + t.separator + guidance)

    def embedding_ids(self, note: Note) -> list[int]:
        """The category prompt without its output (DESIGN.md), ending at [EMB]: all that pooling needs."""
        return self._prefix(note, "category", 0)

    def generation_ids(self, note: Note, task: Task, j: int = 1) -> list[int]:
        """Prompt up to the output guidance, for generating the category or j hashtags."""
        if self.cfg.kind != "notellm":
            raise ConfigError(f"generation needs prompt kind 'notellm', not {self.cfg.kind!r}")
        return self._prefix(note, task, j) + self._guidance(task, j)

    def training_example(self, note: Note, salt: int = 0, with_output: bool = True) -> Example:
        """A training prompt: the task chosen per note, with the output as CSFT labels if asked."""
        if self.cfg.kind != "notellm":
            return Example(self.embedding_ids(note), None, "category")
        task, chosen = self.choose_task(note, salt)
        j = len(chosen)
        prefix = self._prefix(note, task, j)
        if not with_output:
            return Example(prefix, None, task)
        t = self.cfg.template
        output = note.category.strip() if task == "category" else t.hashtag_separator.join(chosen)
        head = prefix + self._guidance(task, j)
        out_ids = self.tokens(t.output_prefix + output) + [self._eos] if output else []
        return Example(head + out_ids, [IGNORE_INDEX] * len(head) + out_ids, task)
