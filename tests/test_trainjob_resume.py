"""A TrainJob's node killed after a checkpoint and started again resumes from the shared claim: the rendered
command (``notellm.k8s_jobs.train_command``: checkpoints in the job's folder on the claim, ``training.resume=
true``) run as is under torchrun with the ``PET_*`` settings the runtime gives a node, the whole process group
SIGKILLed (a pod going away), then the same command again. Reuses the SIGKILL test's workspace and checks
(tests/test_reliability_training.py, which also compares the weights with an uninterrupted run)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_model_train import notes, pairs  # noqa: F401 - module fixtures
from test_reliability_training import _step, _visible_checkpoints_are_whole, wait_for_checkpoint, write_workspace

from notellm.k8s_jobs import job_name, train_command
from notellm.model.checkpoints import list_checkpoints

TOTAL, EVERY = 16, 2
BIN = Path(sys.executable).parent


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (torchrun starts its workers in sessions of their own)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents.setdefault(int(stat[stat.rindex(")") + 2:].split()[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo += parents.get(found[-1], [])
    return found


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
    except (FileNotFoundError, ProcessLookupError):
        return None


def _node_env() -> dict[str, str]:
    """A single node's environment as the torch-distributed runtime sets it (a free local master port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1",
            "PET_NNODES": "1", "PET_NPROC_PER_NODE": "1", "PET_NODE_RANK": "0", "PET_MASTER_ADDR": "127.0.0.1",
            "PET_MASTER_PORT": str(port)}


@pytest.mark.slow
def test_a_restarted_trainjob_resumes_from_the_checkpoints_on_the_claim(tmp_path, notes, pairs):  # noqa: F811
    if not (BIN / "torchrun").exists() or not (BIN / "notellm").exists() or not Path("/proc/self/stat").exists():
        pytest.skip("needs torchrun and notellm beside this Python, and /proc")
    # what finetune_on_trainer puts on the claim: notes, pairs, config.yaml in the job's folder
    step = tmp_path / "step"
    write_workspace(step, notes, pairs, max_steps=TOTAL, epochs=TOTAL // 4, checkpoint_every=EVERY)
    work = tmp_path / "claim" / job_name("notellm-train", "run-1")
    shutil.copytree(step / "data", work / "notes")
    shutil.copytree(step / "mining", work / "pairs")
    shutil.copyfile(step / "config.yaml", work / "config.yaml")
    command = train_command(str(work), str(work / "config.yaml"))
    assert command[:3] == ["torchrun", "--no-python", "notellm"]
    ckpt, out = work / "checkpoints", work / "model"

    with open(tmp_path / "killed.log", "w") as log:
        node = subprocess.Popen(command, env=_node_env(), cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_checkpoint(node, ckpt, 2 * EVERY, tmp_path / "killed.log", timeout_s=120)
        finally:
            pids = _tree(node.pid)
            for pid in pids:  # the pod goes away: torchrun and its worker at once
                os.kill(pid, signal.SIGKILL)
            node.wait(timeout=60)
    assert len(pids) >= 2, "torchrun started no worker"
    for pid in pids[1:]:  # the worker is gone too (a zombie until it is reaped, at most)
        deadline = time.monotonic() + 10
        while (state := _state(pid)) not in (None, "Z", "X"):
            assert time.monotonic() < deadline, f"worker {pid} still runs ({state})"
            time.sleep(0.05)
    assert not out.exists()
    _visible_checkpoints_are_whole(ckpt)
    last = list_checkpoints(ckpt)[-1]
    done = _step(last)
    assert 2 * EVERY <= done < TOTAL
    saved_curve = json.loads((last / "progress.json").read_text())["curve"]

    again = subprocess.run(command, env=_node_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    metrics = json.loads((out / "notellm.json").read_text())["metrics"]
    assert metrics["steps"] == TOTAL and metrics["steps_this_run"] == TOTAL - done
    curve = json.loads((out / "loss_curve.json").read_text())
    assert [r["step"] for r in curve] == list(range(1, TOTAL + 1))  # none repeated, none lost
    assert curve[:done] == saved_curve  # the killed run's steps, carried over from the claim
