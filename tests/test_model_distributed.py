"""torch.distributed on two real gloo ranks (spawned CPU processes): gathering with gradient, DDP training.

Both are slow (each rank imports torch, the second also transformers).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from notellm.model.losses import gather_with_grad


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(worker, *args) -> dict:
    """Run ``worker(rank, *args)`` on two spawned ranks; return {rank: result}."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_entry, args=(worker, rank, port, queue, args)) for rank in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return results


def _entry(worker, rank: int, port: int, queue, args) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    try:
        queue.put((rank, worker(rank, *args)))
    except BaseException as exc:
        queue.put((rank, exc))
        raise


def _gather(rank: int):
    dist.init_process_group("gloo")
    try:
        local = torch.full((2, 3), float(rank + 1), requires_grad=True)
        gathered = gather_with_grad(local)
        (gathered * torch.arange(1.0, 5.0)[:, None]).sum().backward()
        return gathered.detach().numpy(), local.grad.numpy()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_gather_keeps_the_local_gradient():
    results = _run(_gather)
    expected = np.concatenate([np.full((2, 3), 1.0), np.full((2, 3), 2.0)])
    for rank in (0, 1):
        gathered, grad = results[rank]
        np.testing.assert_array_equal(gathered, expected)
        # weights 1..4 hit rows 0-1 (rank 0) and 2-3 (rank 1): each rank gets its own slice's gradient only
        np.testing.assert_array_equal(grad, np.repeat(np.arange(1.0, 5.0)[2 * rank:2 * rank + 2, None], 3, 1))


def _data():
    import pandas as pd

    notes = pd.DataFrame({"note_id": [f"n{i}" for i in range(16)], "title": [f"note {i}" for i in range(16)],
                          "content": ["words " * (i % 5) for i in range(16)],
                          "hashtags": [["a", "b"]] * 16, "category": ["a", "b"] * 8})
    pairs = pd.DataFrame({"note_id_a": [f"n{i}" for i in range(16)],
                          "note_id_b": [f"n{(i + 3) % 16}" for i in range(16)], "score": 1.0,
                          "split": "train"})
    return notes, pairs


def _configs(batch_pairs: int):
    from notellm.model_config import ModelConfig, PromptConfig, TrainingConfig

    return (ModelConfig(backbone="tiny-random", dim=8, lora_dropout=0.0), PromptConfig(),
            TrainingConfig(max_steps=3, batch_pairs=batch_pairs, alpha=0.0, warmup_ratio=0.0, lr=1e-2,
                           bf16="off"))  # float32: bf16 rounding depends on how the batch is split


def _ddp_train(rank: int, out: str):
    from notellm.model.training import train

    notes, pairs = _data()
    return train(notes, pairs, *_configs(2), out, progress=False)


@pytest.mark.slow
def test_ddp_training_equals_one_process_with_the_global_batch(tmp_path: Path):
    from notellm.model.training import train

    results = _run(_ddp_train, str(tmp_path / "ddp"))
    assert results[0]["world_size"] == 2 and "model_dir" in results[0] and "model_dir" not in results[1]
    assert (tmp_path / "ddp" / "notellm.json").is_file()
    notes, pairs = _data()
    single = train(notes, pairs, *_configs(4), tmp_path / "single", progress=False)
    ddp_curve = [r["loss"] for r in json.loads((tmp_path / "ddp" / "loss_curve.json").read_text())]
    one_curve = [r["loss"] for r in json.loads((tmp_path / "single" / "loss_curve.json").read_text())]
    # negatives gathered from both ranks and gradients scaled back: the same losses, step after step
    np.testing.assert_allclose(ddp_curve, one_curve, rtol=1e-4)
    assert single["steps"] == results[0]["steps"] == 3
