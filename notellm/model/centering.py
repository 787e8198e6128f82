"""Centre the pooled states: the mean pooled state of training notes, fixed once, kept in the model directory.

Without it a causal LM's pooled states are anisotropic (one shared direction), every cosine is about 1 and
the contrastive loss starts near chance. Training fits the centre before its first step; embedding and the
server apply it through :class:`notellm.model.encoder.NoteEncoder` (``head.safetensors``: ``center``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from notellm.model.bundle import NoteLLM
from notellm.model.prompt import Note
from notellm.model.runtime import make_batch


def fit_center(model: NoteLLM, notes: Sequence[Note], max_notes: int, *, seed: int = 0,
               batch_size: int = 16) -> torch.Tensor:
    """Set ``model.encoder.center`` to the mean float32 pooled state of up to ``max_notes`` of ``notes``
    (a seeded sample, embedding prompts, no autocast) and return it."""
    if not notes or max_notes < 1:
        raise ValueError("fit_center needs at least one note")
    pick = np.random.default_rng(seed).permutation(len(notes))[:max_notes]
    ids = [model.prompter.embedding_ids(notes[i]) for i in sorted(pick)]
    encoder = model.encoder
    was_training = encoder.training
    encoder.eval()
    total = torch.zeros_like(encoder.center)
    try:
        with torch.inference_mode():
            for start in range(0, len(ids), batch_size):
                batch = make_batch(ids[start:start + batch_size], model.tokenizer.pad_token_id,
                                   device=model.device)
                total += encoder.pooled_states(**batch).sum(dim=0)
    finally:
        encoder.train(was_training)
    encoder.center.copy_(total / len(ids))
    return encoder.center


def fit_center_on_pairs(model: NoteLLM, notes: Sequence[Note], pairs: np.ndarray, max_notes: int, *,
                        seed: int = 0) -> torch.Tensor:
    """:func:`fit_center` on the notes of ``pairs`` (rows of note ids a, b; the training pairs), in the
    order they first occur: what training fits, so an untrained baseline gets the same centre."""
    by_id = {n.note_id: n for n in notes}
    seen = dict.fromkeys([*pairs[:, 0], *pairs[:, 1]])
    return fit_center(model, [by_id[n] for n in seen], max_notes, seed=seed)


def mean_pairwise_cosine(vectors: np.ndarray) -> float:
    """Mean cosine over distinct pairs of L2-normalised rows (near 1: anisotropic; near 0: spread out)."""
    n = len(vectors)
    if n < 2:
        return float("nan")
    total = np.square(vectors.sum(axis=0)).sum() - np.square(vectors).sum()
    return float(total / (n * (n - 1)))
