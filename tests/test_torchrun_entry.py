"""The training entry point a TrainJob runs (``torchrun --no-python notellm train``) on two gloo ranks
trains to the same weights as one process with the same global batch and seed (negatives gathered across
ranks; tests/test_model_distributed.py covers the gather itself and the loss curves)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from notellm.contracts import write_table

BIN = Path(sys.executable).parent
SETTINGS = ["model.backbone=tiny-random", "model.dim=8", "model.lora_dropout=0.0", "training.max_steps=3",
            "training.alpha=0.0", "training.warmup_ratio=0.0", "training.lr=0.01", 'training.bf16="off"',
            "training.threads=1"]


def _train(prefix: list[str], out: Path, data: Path, batch_pairs: int) -> None:
    sets = [a for s in [*SETTINGS, f"training.batch_pairs={batch_pairs}"] for a in ("--set", s)]
    done = subprocess.run([*prefix, str(BIN / "notellm"), "train", "--notes", str(data), "--pairs", str(data),
                           "--out", str(out), *sets], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_torchrun_two_ranks_train_the_same_weights_as_one_process(tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    ids = [f"n{i}" for i in range(16)]
    write_table(pd.DataFrame({"note_id": ids, "title": [f"note {i}" for i in range(16)],
                              "content": ["words " * (i % 5) for i in range(16)], "hashtags": [["a", "b"]] * 16,
                              "category": ["a", "b"] * 8, "event_timestamp": pd.Timestamp("2024-01-01")}),
                tmp_path / "notes.parquet", "notes")
    write_table(pd.DataFrame({"note_id_a": ids, "note_id_b": [ids[(i + 3) % 16] for i in range(16)],
                              "score": 1.0, "split": "train"}), tmp_path / "pairs.parquet", "pairs")
    _train([str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "--no-python"],
           tmp_path / "ddp", tmp_path, batch_pairs=2)
    _train([], tmp_path / "one", tmp_path, batch_pairs=4)
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.safetensors"))
    assert files and files == sorted(p.relative_to(tmp_path / "ddp") for p in (tmp_path / "ddp").rglob("*.safetensors"))
    for name in files:
        one, ddp = load_file(tmp_path / "one" / name), load_file(tmp_path / "ddp" / name)
        assert one.keys() == ddp.keys()
        # float32 on both sides, but the all-reduce sums gradients in another order and Adam (lr 1e-2) divides
        # by sqrt(v): a near-zero gradient's step moves by up to ~1e-5 (seen: 1 of 8,192 elements off by
        # 1.1e-5). 5e-5 absolute is 0.5% of one optimizer step (lr 1e-2).
        for key in one:
            np.testing.assert_allclose(ddp[key], one[key], rtol=0, atol=5e-5, err_msg=f"{name}:{key}")
