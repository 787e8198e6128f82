"""Embed a notes table with a NoteLLM: batched, longest first, under inference_mode; write the table."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from notellm.contracts import EMBEDDINGS, write_table
from notellm.model.bundle import NoteLLM
from notellm.model.prompt import Note, notes_from_frame
from notellm.model.runtime import autocast, make_batch, set_threads, use_bf16

log = logging.getLogger(__name__)


def embed_notes(model: NoteLLM, notes: pd.DataFrame | list[Note], batch_size: int = 32, *,
                bf16: str = "auto", progress: bool = False) -> np.ndarray:
    """L2-normalised float32 vectors, one row per note, in the input order."""
    if isinstance(notes, pd.DataFrame):
        notes = notes_from_frame(notes)
    ids = [model.prompter.embedding_ids(n) for n in notes]
    out = np.zeros((len(ids), model.dim), dtype=np.float32)
    order = np.argsort([-len(s) for s in ids], kind="stable")  # similar lengths share a batch: less padding
    was_training = model.encoder.training
    model.encoder.eval()
    pad = model.tokenizer.pad_token_id
    enabled = use_bf16(bf16, model.device)
    try:
        with torch.inference_mode(), autocast(model.device, enabled):
            starts = range(0, len(ids), batch_size)
            for start in tqdm(starts, desc="embed", unit="batch", disable=not progress):
                rows = order[start:start + batch_size]
                batch = make_batch([ids[i] for i in rows], pad, device=model.device)
                out[rows] = model.encoder(**batch).embeddings.float().cpu().numpy()
    finally:
        model.encoder.train(was_training)
    return out


def write_embeddings(model: NoteLLM, notes: pd.DataFrame, path: str | Path, batch_size: int = 32, *,
                     bf16: str = "auto", threads: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Embed ``notes`` and write the embeddings table (note_id, vector, model_version) atomically.

    Returns the run's numbers: notes, dim, seconds, notes_per_s, model_version, path.
    """
    set_threads(threads)
    parsed = notes_from_frame(notes)
    start = time.perf_counter()
    vectors = embed_notes(model, parsed, batch_size, bf16=bf16, progress=progress)
    seconds = time.perf_counter() - start
    table = pd.DataFrame({"note_id": [n.note_id for n in parsed], "vector": list(vectors),
                          "model_version": model.model_version})
    write_table(table, path, EMBEDDINGS)
    stats = {"notes": len(parsed), "dim": model.dim, "seconds": round(seconds, 3),
             "notes_per_s": round(len(parsed) / seconds, 2) if seconds > 0 else None,
             "model_version": model.model_version, "path": str(path)}
    log.info("embedded %d notes in %.1f s (%.1f notes/s)", len(parsed), seconds, stats["notes_per_s"] or 0)
    return stats
