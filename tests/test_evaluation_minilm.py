"""The MiniLM baselines on the real all-MiniLM-L6-v2 weights (installed package, CPU)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from notellm.errors import DataError
from notellm.evaluation.minilm import finetune_minilm, load_minilm, minilm_embed, note_text
from notellm.model.batches import distinct_batches
from notellm.evaluation.retrieval import recall_at_k


def test_note_text_joins_title_content_hashtags():
    row = {"title": "Toy Story (1995)", "content": " A film. ", "hashtags": np.array(["Animation", "Comedy"])}
    assert note_text(row) == "Toy Story (1995)\nA film.\n#Animation #Comedy"
    assert note_text({"title": "T", "content": "", "hashtags": []}) == "T"


def test_pair_batches_have_no_repeated_note():
    a = ["x", "x", "x", "y", "z", "w"]
    b = ["p", "q", "r", "s", "t", "u"]
    batches = distinct_batches(a, b, 3, np.random.default_rng(0))
    for batch in batches:
        notes = [a[i] for i in batch] + [b[i] for i in batch]
        assert len(set(notes)) == len(notes) and 2 <= len(batch) <= 3
    used = sorted(i for batch in batches for i in batch)
    assert len(used) == len(set(used))
    # "x" is in three pairs, so at least three batches are needed; only singleton batches are dropped
    assert len(batches) >= 2 and len(used) >= 5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def toy():
    """24 notes of made-up words; pairs relate note i to note i+12, which shares no words with it."""
    rng = np.random.default_rng(0)
    syllables = ["ka", "lo", "mi", "zu", "re", "ta", "po", "ne", "vi", "sa", "du", "fe"]
    words = ["".join(rng.choice(syllables, 3)) for _ in range(200)]
    n = 24
    notes = pd.DataFrame({"note_id": [f"n{i}" for i in range(n)],
                          "title": [" ".join(rng.choice(words, 3)) for _ in range(n)],
                          "content": "", "hashtags": [[] for _ in range(n)], "category": "x"})
    pairs = pd.DataFrame({"note_id_a": [f"n{i}" for i in range(12)],
                          "note_id_b": [f"n{i + 12}" for i in range(12)], "score": 1.0, "split": "train"})
    return notes, pairs


@pytest.fixture(scope="module")
def minilm():
    return load_minilm()


def test_zero_shot_embeddings_are_unit_vectors(minilm):
    vectors = minilm_embed(["a comedy about toys", "a funny film about toys", "tax law reform"], minilm)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]


@pytest.mark.slow
def test_finetuning_learns_the_training_pairs(toy, tmp_path):
    notes, pairs = toy
    model = load_minilm()
    before = minilm_embed(notes, model)
    losses = []
    model = finetune_minilm(notes, pairs, epochs=10, batch_size=12, lr=1e-4, seed=0, model=model,
                            out_dir=tmp_path / "minilm-ft", on_step=lambda step, loss: losses.append(loss))
    after = minilm_embed(notes, model)
    assert len(losses) == 10 and losses[-1] < losses[0]
    assert np.abs(after - before).max() > 1e-2
    recall_before = recall_at_k(pairs.note_id_a, pairs.note_id_b, notes.note_id, before, ks=(1,))
    recall_after = recall_at_k(pairs.note_id_a, pairs.note_id_b, notes.note_id, after, ks=(1,))
    assert recall_after["recall"][1] >= recall_before["recall"][1] + 0.3
    reloaded = minilm_embed(notes, load_minilm(tmp_path / "minilm-ft"))
    np.testing.assert_allclose(reloaded, after, atol=1e-5)


def test_finetuning_refuses_test_pairs_and_unknown_notes(toy, minilm):
    notes, pairs = toy
    leaky = pairs.assign(split=["train"] * 11 + ["test"])
    with pytest.raises(DataError, match="only training pairs") as err:
        finetune_minilm(notes, leaky, model=minilm)
    assert err.value.row == 11
    unknown = pairs.assign(note_id_b=["n12"] * 11 + ["ghost"])
    with pytest.raises(DataError, match="'ghost'"):
        finetune_minilm(notes, unknown, model=minilm)
