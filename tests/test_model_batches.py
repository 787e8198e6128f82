"""Training batches hold distinct notes (a repeated note is a false negative at cosine 1)."""

from __future__ import annotations

import numpy as np
import pytest

from notellm.config import MiningConfig
from notellm.model.batches import distinct_batches, epoch_batches
from notellm.model.training import _schedule
from notellm.model_config import TrainingConfig


@pytest.fixture(scope="module")
def movielens_train_pairs() -> np.ndarray:
    from notellm.datasets.movielens import load_movielens
    from notellm.mining import mine_pairs, split_pairs

    _, events = load_movielens()
    cfg = MiningConfig()
    pairs = split_pairs(mine_pairs(events, cfg), cfg)
    return pairs[pairs["split"] == "train"][["note_id_a", "note_id_b"]].to_numpy(dtype=object)


def _distinct(pairs: np.ndarray, batch: np.ndarray) -> bool:
    notes = [*pairs[batch, 0], *pairs[batch, 1]]
    return len(set(notes)) == len(notes)


def test_every_batch_of_a_movielens_epoch_has_distinct_notes(movielens_train_pairs):
    pairs = movielens_train_pairs
    schedule = _schedule(pairs, TrainingConfig(batch_pairs=16, epochs=2), 16, world=1)
    for epoch in (0, 1):
        batches = [b for e, b in schedule if e == epoch]
        assert all(_distinct(pairs, b) for b in batches)
        used = np.concatenate(batches)
        assert len(used) == len(set(used.tolist())) >= 0.99 * len(pairs)  # each pair once; almost all used
        assert sum(len(b) == 16 for b in batches) >= len(batches) - 1
    # without the rule about half of the batches held a note twice
    order = np.random.default_rng([0, 0]).permutation(len(pairs))
    naive = [order[i:i + 16] for i in range(0, len(order) - 15, 16)]
    assert np.mean([not _distinct(pairs, b) for b in naive]) > 0.3


def test_distributed_batches_are_full_and_distinct_across_ranks(movielens_train_pairs):
    pairs = movielens_train_pairs
    batches = epoch_batches(pairs, 16, 2, seed=0, epoch=0)
    assert all(len(b) == 32 and _distinct(pairs, b) for b in batches)
    assert [b.tolist() for b in batches[:3]] == [b.tolist() for b in epoch_batches(pairs, 16, 2, 0, 0)[:3]]


def test_full_only_and_self_pairs():
    a, b = ["x", "x", "y", "z", "q"], ["p", "q", "y", "w", "r"]  # ("y", "y") is no pair
    batches = distinct_batches(a, b, 2, np.random.default_rng(0), full_only=True)
    assert all(len(batch) == 2 for batch in batches)
    assert 2 not in {int(i) for batch in batches for i in batch}
