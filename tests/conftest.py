"""Shared fixtures: a tiny valid table of each kind, in contract form."""

from __future__ import annotations

import os

# Tests run offline and on few cores: no model hub, one thread per process (also for kfp.local tasks,
# which inherit the environment). Oversubscribed threads made small torch ops ~100x slower here.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pandas as pd  # noqa: E402
import pytest


@pytest.fixture
def notes_df() -> pd.DataFrame:
    return pd.DataFrame({
        "note_id": ["n1", "n2", "n3"],
        "title": ["Pasta at home", "Alps in winter", "Quick pasta"],
        "content": ["Fresh pasta, two ways.", "Three days of snow.", "Ten minutes, one pan."],
        "hashtags": [["pasta", "cooking"], ["alps", "ski"], ["pasta"]],
        "category": ["food", "travel", "food"],
        "event_timestamp": pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-03"]),
    })


@pytest.fixture
def events_df() -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": ["u1", "u1", "u2", "u2"],
        "note_id": ["n1", "n3", "n2", "n1"],
        "ts": pd.to_datetime(["2024-02-01 10:00", "2024-02-01 10:01", "2024-02-02 09:00",
                              "2024-02-02 09:05"]),
        "action": ["view", "click", "click", "click"],
    })


@pytest.fixture
def pairs_df() -> pd.DataFrame:
    return pd.DataFrame({"note_id_a": ["n1", "n2"], "note_id_b": ["n3", "n1"], "score": [0.5, 0.25],
                         "split": ["train", "test"]})


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: on a small shared machine spinning threads slow tiny batches 5-10x."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
