"""Notes into token ids: the Note Compression Prompt (category and hashtag tasks) and the baseline prompts.

Layouts (DESIGN.md; ``prompt.layout``):

- ``official`` (the official NoteLLM code): ``[BOS]<compression instruction> <note as JSON> The compression
  word is:"[EMB]". <task guidance> <output>[EOS]``: everything before [EMB] is the same for the category
  task, the hashtag task and embedding, so training pools the prompt that embedding pools.
- ``paper`` (the paper's text): ``[BOS]<task instruction> <note as JSON> The compression word is:"[EMB]".
  <guidance> <output>[EOS]``; the hashtag task's instruction holds j and its note has no topics.

With ``hide_category`` the note's category is in no training or generation prompt's input (topics, title,
content), so the category task is not a copy of the input (MovieLens lists every genre in its content); with
``embed_whole_note`` the embedding prompt still shows it, and under the official layout training pools that
embedding prompt and reads the task prompt (which differs from it by the category's words only) for CSFT.
User text is tokenized with ``split_special_tokens=True``, so a literal "[EMB]" (or any other special token
text) in a note can never become a special id: every prompt holds exactly one ``[EMB]``, the real one.
"""

from __future__ import annotations

import json
import random
import re
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


def hide_word(text: str, word: str) -> str:
    """``text`` without ``word`` as a whole word (any case), with the list separator (", " or " and ") that
    follows it, or else the one before it; spaces left doubled are collapsed."""
    w, sep = re.escape(word.strip()), r"(?:,\s*|\s+and\s+)"
    pattern = rf"(?<!\w){w}(?!\w){sep}|{sep}{w}(?!\w)|(?<!\w){w}(?!\w)"
    return re.sub(r"  +", " ", re.sub(pattern, "", text, flags=re.IGNORECASE))


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
        title, content, tags = note.title, note.content, list(note.hashtags)
        if hide_category and note.category.strip():
            title, content = hide_word(title, note.category), hide_word(content, note.category)
            tags = [h for h in tags if h.strip().casefold() != note.category.strip().casefold()]
        fields = {t.title_key: self._clip(title, self.cfg.title_max)}
        if topics:
            fields[t.topic_key] = t.hashtag_separator.join(tags[:self.cfg.max_input_hashtags])
        fields[t.content_key] = self._clip(content, self.cfg.content_max)
        return json.dumps(fields, ensure_ascii=False)

    def choose_task(self, note: Note, salt: int = 0) -> tuple[Task, tuple[str, ...]]:
        """Category task, or (with probability r, seeded per note) the hashtag task with its j hashtags."""
        rng = random.Random(f"{self.cfg.seed}:{salt}:{note.note_id}")
        if not note.hashtags or rng.random() >= self.cfg.hashtag_task_share:
            return "category", ()
        j = rng.randint(1, min(self.cfg.max_output_hashtags, len(note.hashtags)))
        return "hashtags", tuple(rng.sample(note.hashtags, j))

    def _prefix(self, note: Note, task: Task, j: int, *, embedding: bool = False) -> list[int]:
        """Ids up to and including [EMB] for the chosen prompt kind and task (layout official: any task);
        ``embedding``: the prompt embedding pools (the whole note under ``embed_whole_note``)."""
        t, kind = self.cfg.template, self.cfg.kind
        if kind == "notellm":
            if self.cfg.layout == "official":
                instruction, topics = t.compression_instruction, True
            elif task == "category":
                instruction, topics = t.category_instruction, True
            else:
                instruction, topics = t.hashtag_instruction.format(j=j), False
            hide = self.cfg.hide_category and not (embedding and self.cfg.embed_whole_note)
            body = self.note_json(note, topics=topics, hide_category=hide)
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
        return self._prefix(note, "category", 0, embedding=True)

    def training_pool_ids(self, note: Note, example: Example) -> list[int] | None:
        """The ids training pools for ``note`` when they are not ``example``'s prefix: the embedding prompt,
        under the official layout when it shows what the task prompt hides (``embed_whole_note`` with
        ``hide_category``), so that training pools what embedding pools. None: pool ``example`` itself."""
        if self.cfg.layout != "official":  # the paper layout pools each task's own prompt
            return None
        whole = self.embedding_ids(note)
        return None if example.input_ids[:len(whole)] == whole else whole

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
