"""The challenger (all-MiniLM-L6-v2 fine-tuned on the train pairs) and the two kinds of model directory.

The pipeline trains NoteLLM and, cheaply, this challenger; the gate deploys whichever serves best. A model
directory names its kind in ``notellm.json``:

- ``notellm`` (or no ``kind``: directories written by NoteLLM training): :mod:`notellm.model.modeldir`.
- ``sentence-transformers``: a sentence-transformers directory (modules.json, config, safetensors weights,
  tokenizer, pooling) plus ``notellm.json`` with ``kind``, ``model_version``, ``dim``, ``base``, ``text``,
  ``training`` and ``metrics``.

The text a sentence-transformers model embeds for a note is :func:`notellm.evaluation.minilm.note_text`:
title, content and ``#hashtags``, one per line, empty parts left out, no category; the MiniLM baselines
were trained and evaluated on exactly this text. A plain-text request is a note whose content is that
text, so it is embedded as sent.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from notellm.errors import DataError
from notellm.io import atomic_dir, write_json

if TYPE_CHECKING:
    from notellm.model.bundle import NoteLLM
    from notellm.model.prompt import Note

MODEL_JSON = "notellm.json"
NOTELLM, SENTENCE_TRANSFORMERS = "notellm", "sentence-transformers"
KINDS = (NOTELLM, SENTENCE_TRANSFORMERS)
BASE = "all-MiniLM-L6-v2"
TEXT_FORMAT = "title, content and #hashtags, one per line (notellm.evaluation.minilm.note_text)"


def read_meta(directory: str | Path) -> dict[str, Any]:
    """The directory's notellm.json; a DataError naming the file when it is missing or invalid."""
    path = Path(directory) / MODEL_JSON
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the model metadata: {exc}", file=path) from exc
    if not isinstance(meta, dict):
        raise DataError("the model metadata is not a JSON object", file=path)
    return meta


def model_kind(directory: str | Path) -> str:
    """``notellm`` or ``sentence-transformers`` (from notellm.json's ``kind``; absent means notellm)."""
    if not Path(directory).is_dir():
        raise DataError("model directory not found", file=Path(directory))
    kind = read_meta(directory).get("kind", NOTELLM)
    if kind not in KINDS:
        raise DataError(f"unknown model kind {kind!r}; expected one of {list(KINDS)}",
                        file=Path(directory) / MODEL_JSON)
    return kind


class SentenceEncoder:
    """A sentence-transformers model directory, loaded: vectors for notes; it cannot generate."""

    def __init__(self, directory: str | Path, device: str = "cpu") -> None:
        from notellm.evaluation.minilm import load_minilm
        from notellm.model.modeldir import refuse_pickles

        directory = Path(directory)
        refuse_pickles(directory)
        self.meta = read_meta(directory)
        self.model_version = str(self.meta["model_version"])
        self.model = load_minilm(directory, device=device)
        self.dim = int(self.model.get_sentence_embedding_dimension())
        if int(self.meta.get("dim", self.dim)) != self.dim:
            raise DataError(f"notellm.json says dim {self.meta['dim']}, the model's vectors have {self.dim}",
                            file=directory / MODEL_JSON)

    @staticmethod
    def texts(notes: pd.DataFrame | Sequence[Note]) -> list[str]:
        """The text of each note (:func:`notellm.evaluation.minilm.note_text`)."""
        from notellm.evaluation.minilm import note_text

        if isinstance(notes, pd.DataFrame):
            return [note_text(row) for row in notes.to_dict("records")]
        return [note_text({"title": n.title, "content": n.content, "hashtags": n.hashtags}) for n in notes]

    def embed(self, notes: pd.DataFrame | Sequence[Note], batch_size: int = 32) -> np.ndarray:
        """L2-normalised float32 vectors (notes x dim), in the input order."""
        from notellm.evaluation.minilm import minilm_embed

        return minilm_embed(self.texts(notes), self.model, batch_size)

    def token_count(self, notes: Sequence[Note]) -> int:
        """Tokens the model reads for ``notes`` (special tokens included, truncated at its max length)."""
        encoded = self.model.tokenizer(self.texts(notes), truncation=True,
                                       max_length=self.model.get_max_seq_length())
        return sum(len(ids) for ids in encoded["input_ids"])


def load_encoder(directory: str | Path) -> NoteLLM | SentenceEncoder:
    """Either kind of model directory, loaded (safetensors only)."""
    if model_kind(directory) == SENTENCE_TRANSFORMERS:
        return SentenceEncoder(directory)
    from notellm.model import load_model

    return load_model(directory)


def encode_notes(encoder: NoteLLM | SentenceEncoder, notes: pd.DataFrame | Sequence[Note],
                 batch_size: int = 32, bf16: str = "auto") -> np.ndarray:
    """L2-normalised vectors of notes (a notes table or :class:`~notellm.model.prompt.Note` s) under either
    kind of model."""
    if isinstance(encoder, SentenceEncoder):
        return encoder.embed(notes, batch_size)
    from notellm.model import embed_notes

    return embed_notes(encoder, notes, batch_size, bf16=bf16)


def train_challenger(notes: pd.DataFrame, train_pairs: pd.DataFrame, out_dir: str | Path, *,
                     max_steps: int = 0, epochs: int = 1, batch_size: int = 32, lr: float = 2e-5,
                     seed: int = 0) -> dict[str, Any]:
    """Fine-tune all-MiniLM-L6-v2 on ``train_pairs`` (MNRL, :func:`notellm.evaluation.minilm.finetune_minilm`)
    for ``epochs`` or at most ``max_steps`` steps (0: no limit); write the servable model directory
    atomically.

    Returns the run's numbers: model_version, dim, steps, pairs_seen, first_loss, final_loss.
    """
    from notellm.evaluation.minilm import finetune_minilm

    losses: list[float] = []
    model = finetune_minilm(notes, train_pairs, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                            max_steps=max_steps or None, on_step=lambda _, loss: losses.append(loss))
    metrics = {"steps": len(losses), "pairs_seen": int(model.pairs_seen), "first_loss": losses[0],
               "final_loss": losses[-1], "dim": int(model.get_sentence_embedding_dimension())}
    with atomic_dir(out_dir) as tmp:
        model.save(str(tmp))
        digest = hashlib.sha256()
        for path in sorted(tmp.rglob("*.safetensors")):
            digest.update(path.read_bytes())
        version = f"minilm-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}-{digest.hexdigest()[:8]}"
        training = {"loss": "MultipleNegativesRankingLoss", "epochs": epochs, "max_steps": max_steps,
                    "batch_size": batch_size, "lr": lr, "seed": seed}
        write_json({"kind": SENTENCE_TRANSFORMERS, "model_version": version, "dim": metrics["dim"],
                    "base": BASE, "text": TEXT_FORMAT, "training": training, "metrics": metrics},
                   tmp / MODEL_JSON)
        for path in tmp.rglob("*"):  # a server may run as another user
            if path.is_file():
                path.chmod(0o644)
    return {"model_version": version, **metrics}
