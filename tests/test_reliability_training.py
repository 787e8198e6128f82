"""`notellm train` killed with SIGKILL after a checkpoint resumes there, repeats no finished step and ends
with the model of an uninterrupted run of the same seed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_model_train import MODEL, cfg, notes, pairs  # noqa: F401 - notes, pairs: module fixtures

from notellm import steps
from notellm.config import load_config
from notellm.contracts import NOTES, PAIRS, write_table
from notellm.model.checkpoints import list_checkpoints

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NOTELLM = [sys.executable, "-c", "from notellm.cli import app; app()"]
TOTAL, EVERY = 32, 2  # 8 epochs of 4 steps; a checkpoint every 2 steps
CHECKPOINT_FILES = {"progress.json", "state.pt", "trainable.safetensors"}


def write_workspace(root: Path, notes: pd.DataFrame, pairs: pd.DataFrame, **training) -> list[str]:
    """Notes, pairs and a config in ``root``; returns the `notellm train` arguments that read them."""
    dated = notes.assign(event_timestamp=pd.Timestamp("2024-01-01"))
    write_table(dated, root / "data" / "notes.parquet", NOTES)
    write_table(pairs, root / "mining" / "pairs.parquet", PAIRS)
    config = {"model": MODEL.model_dump(mode="json"), "training": cfg(**training).model_dump(mode="json")}
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return ["--notes", str(root / "data"), "--pairs", str(root / "mining"),
            "--config", str(root / "config.yaml")]


def _step(checkpoint: Path) -> int:
    return int(checkpoint.name.split("-")[1])


def _visible_checkpoints_are_whole(directory: Path) -> None:
    """Every ``step-*`` a reader can see holds all its files (atomic writes, out-of-sight deletes)."""
    for entry in directory.glob("step-*") if directory.is_dir() else []:
        try:
            names = {p.name for p in entry.iterdir()}
        except FileNotFoundError:  # renamed away between the listing and the look inside
            continue
        assert names == CHECKPOINT_FILES, f"{entry.name} seen half-written or half-deleted: {sorted(names)}"


def wait_for_checkpoint(process: subprocess.Popen, directory: Path, step: int, log: Path,
                        timeout_s: float) -> None:
    """Until ``directory`` holds a checkpoint of at least ``step``, checking that every visible one is whole;
    fails with the log's tail if the process exits or ``timeout_s`` passes first."""
    deadline = time.monotonic() + timeout_s
    while not (found := list_checkpoints(directory)) or _step(found[-1]) < step:
        _visible_checkpoints_are_whole(directory)
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"no checkpoint within {timeout_s:.0f} s"
        time.sleep(0.01)


def test_sigkill_after_a_checkpoint_resumes_without_repeating_steps(tmp_path, notes, pairs):  # noqa: F811
    args = write_workspace(tmp_path, notes, pairs, max_steps=TOTAL, epochs=TOTAL // 4, checkpoint_every=EVERY)
    out, ckpt = tmp_path / "model", tmp_path / "model.checkpoints"
    with open(tmp_path / "killed.log", "w") as log:
        killed = subprocess.Popen([*NOTELLM, "train", *args, "--out", str(out)], cwd=tmp_path,
                                  stdout=log, stderr=subprocess.STDOUT)
        # wait for the third checkpoint, so the first has been pruned while we watched
        wait_for_checkpoint(killed, ckpt, 3 * EVERY, tmp_path / "killed.log", timeout_s=300)
        os.kill(killed.pid, signal.SIGKILL)
        assert killed.wait(timeout=60) == -signal.SIGKILL
    assert not out.exists()  # the killed run never got to write its model
    _visible_checkpoints_are_whole(ckpt)
    last = list_checkpoints(ckpt)[-1]
    done = _step(last)
    assert 3 * EVERY <= done < TOTAL
    saved_curve = json.loads((last / "progress.json").read_text())["curve"]
    saved_weights = load_file(last / "trainable.safetensors")
    (ckpt / f".step-{done + EVERY:07d}.cut.tmp").mkdir()  # what a kill during a checkpoint write leaves
    (ckpt / f".step-{done + EVERY:07d}.cut.tmp" / "trainable.safetensors").write_bytes(b"\0" * 10)

    # the re-run: what `notellm train ... --set training.resume=true` calls, here (saves a start-up)
    steps.finetune(load_config(tmp_path / "config.yaml", ["training.resume=true"]), tmp_path / "data",
                   tmp_path / "mining", out)
    reference = tmp_path / "reference"
    steps.finetune(load_config(tmp_path / "config.yaml"), tmp_path / "data", tmp_path / "mining", reference)

    metrics = json.loads((out / "notellm.json").read_text())["metrics"]
    assert metrics["steps"] == TOTAL and metrics["steps_this_run"] == TOTAL - done
    curve = json.loads((out / "loss_curve.json").read_text())
    assert [r["step"] for r in curve] == list(range(1, TOTAL + 1))  # each step once: none repeated or lost
    assert curve[:done] == saved_curve  # the finished steps' rows (timings too) come from the killed run
    expected = json.loads((reference / "loss_curve.json").read_text())
    for ours, theirs in zip(curve, expected, strict=True):
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5, abs=1e-6), ours["step"]
    for name in ("head.safetensors", "backbone/model.safetensors"):
        ours, theirs = load_file(out / name), load_file(reference / name)
        assert ours.keys() == theirs.keys()
        for key in ours:
            torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=1e-6, msg=f"{name}: {key}")
    # the steps after the checkpoint did run: the head moved on from the checkpoint's
    assert not torch.allclose(load_file(out / "head.safetensors")["projection.weight"],
                              saved_weights["projection.weight"])
    assert not [p.name for p in ckpt.iterdir() if p.name.startswith(".")]  # the cut write was cleaned up
