"""Batches of related pairs in which no note occurs twice.

With one prompt per note per epoch, a note twice in one batch has the same embedding in both places and
is a negative at cosine 1 for its own partner: a false negative the contrastive loss can never fix.
Pairs that clash with a batch being filled are deferred to a later batch (order otherwise kept).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def distinct_batches(a: Sequence[str], b: Sequence[str], size: int, rng: np.random.Generator, *,
                     full_only: bool = False) -> list[np.ndarray]:
    """Shuffled batches of pair indices, each holding every note at most once.

    ``full_only``: keep only batches of exactly ``size`` pairs (fixed shapes, e.g. one slice per rank);
    otherwise keep every batch of at least two pairs (one pair has no in-batch negative). The pairs left
    out are those that could not be placed without a repeat.
    """
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    remaining = [i for i in rng.permutation(len(a)) if a[i] != b[i]]  # a self-pair is no pair
    batches = []
    while remaining:
        batch: list[int] = []
        seen: set[str] = set()
        deferred: list[int] = []
        for pos, i in enumerate(remaining):
            if len(batch) == size:
                deferred.extend(remaining[pos:])
                break
            if a[i] in seen or b[i] in seen:
                deferred.append(i)
            else:
                batch.append(i)
                seen.update((a[i], b[i]))
        if len(batch) == size if full_only else len(batch) > 1:
            batches.append(np.array(batch))
        elif full_only:
            break  # no full batch can be made from what is left
        remaining = deferred
    return batches


def epoch_batches(pairs: np.ndarray, batch_pairs: int, world: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The global batches of one training epoch, no note twice in one: ``batch_pairs * world`` pairs each
    under several processes (fixed shapes); in one process the last few may be smaller (at least two pairs).

    A function of (seed, epoch) only, so a resumed run finds the same batches. Rank r trains on
    ``batch[r * batch_pairs:(r + 1) * batch_pairs]``; negatives are gathered across ranks, so the whole
    global batch holds distinct notes.
    """
    rng = np.random.default_rng([seed, epoch])
    return distinct_batches(pairs[:, 0], pairs[:, 1], batch_pairs * world, rng, full_only=world > 1)
