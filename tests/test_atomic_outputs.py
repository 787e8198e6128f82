"""A step that dies or fails halfway through writing leaves the previous complete output (or none) where the
next step reads, never a partial parquet table or model directory: killed mid-write (SIGKILL) or out of
disk quota (a real file-size limit)."""

from __future__ import annotations

import contextlib
import resource
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_model_train import notes, pairs  # noqa: F401 - module fixtures
from test_reliability_training import NOTELLM, write_workspace

from notellm import steps
from notellm.config import MiningConfig, load_config
from notellm.contracts import EMBEDDINGS, EVENTS, NOTES, PAIRS, read_table, write_table
from notellm.mining import run_mining
from notellm.model.modeldir import load_model, save_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# `notellm ARGS` with one writer cut: it writes its file, truncates it to half and SIGKILLs its own process.
DIE_MID_WRITE = """
import importlib, os, signal, sys
module, name = sys.argv.pop(1).split(":")
owner = importlib.import_module(module)
real = getattr(owner, name)
def cut(obj, path, *args, **kwargs):
    real(obj, path, *args, **kwargs)
    os.truncate(path, os.path.getsize(path) // 2)
    os.kill(os.getpid(), signal.SIGKILL)
setattr(owner, name, cut)
from notellm.cli import app
app()
"""


def killed_mid_write(cwd: Path, writer: str, *args: str | Path) -> list[Path]:
    """Run ``notellm ARGS`` with ``writer`` ("module:function") cut; return the hidden leftovers in cwd."""
    done = subprocess.run([*NOTELLM[:2], DIE_MID_WRITE, writer, *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    return sorted(p for p in cwd.rglob(".*") if ".tmp" in p.name)


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """A real quota: writing a file past ``limit`` bytes fails with EFBIG (Python ignores SIGXFSZ)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file()}


@pytest.fixture
def events_dir(tmp_path, notes_df, events_df) -> Path:
    write_table(notes_df, tmp_path / "data" / "notes.parquet", NOTES)
    write_table(events_df, tmp_path / "data" / "events.parquet", EVENTS)
    return tmp_path / "data"


def test_mine_killed_mid_write_keeps_the_previous_pairs(tmp_path, events_dir):
    out = tmp_path / "mining"
    run_mining(events_dir, out, MiningConfig())
    before = snapshot(out)
    leftovers = killed_mid_write(tmp_path, "pyarrow.parquet:write_table", "mine", "--data", events_dir,
                                 "--out", out)
    assert [p.parent for p in leftovers] == [out] and leftovers[0].name.startswith(".pairs.parquet.")
    assert 0 < leftovers[0].stat().st_size < len(before["pairs.parquet"])  # it died mid-write...
    assert snapshot(out) == {**before, leftovers[0].name: leftovers[0].read_bytes()}  # ...beside the old one
    assert len(read_table(out / "pairs.parquet", PAIRS)) > 0  # the next step reads the previous table whole


@pytest.mark.parametrize("previous", [True, False], ids=["over-previous", "first-write"])
def test_mine_out_of_quota_leaves_the_previous_table_or_none(tmp_path, events_dir, previous):
    out = tmp_path / "mining"
    if previous:
        run_mining(events_dir, out, MiningConfig())
    before = snapshot(out) if out.exists() else {}
    with file_size_limit(256), pytest.raises(OSError, match="too large"):
        run_mining(events_dir, out, MiningConfig())
    assert (snapshot(out) if out.exists() else {}) == before  # no partial table, no temp file


@pytest.fixture(scope="module")
def trained(tmp_path_factory, notes, pairs) -> Path:  # noqa: F811
    root = tmp_path_factory.mktemp("trained")
    write_workspace(root, notes, pairs)
    steps.finetune(load_config(root / "config.yaml"), root / "data", root / "mining", root / "model")
    return root


def test_train_killed_mid_write_keeps_the_previous_model(trained, tmp_path):
    shutil.copytree(trained, tmp_path, dirs_exist_ok=True)
    out = tmp_path / "model"
    version = load_model(out).model_version
    before = snapshot(out)
    leftovers = killed_mid_write(tmp_path, "notellm.model.modeldir:save_file", "train", "--notes",
                                 tmp_path / "data", "--pairs", tmp_path / "mining", "--out", out, "--config",
                                 tmp_path / "config.yaml", "--set", "training.seed=1")
    assert [p.parent for p in leftovers] == [tmp_path] and leftovers[0].name.startswith(".model.")
    written = snapshot(leftovers[0])
    assert "backbone/model.safetensors" in written and "notellm.json" not in written  # cut mid-directory
    assert snapshot(out) == before
    cfg = load_config(tmp_path / "config.yaml")
    steps.embed(cfg, out, tmp_path / "data", tmp_path / "embeddings")  # the next step: the previous model
    embedded = read_table(tmp_path / "embeddings" / "embeddings.parquet", EMBEDDINGS)
    assert set(embedded["model_version"]) == {version}


@pytest.mark.parametrize("previous", [True, False], ids=["over-previous", "first-write"])
def test_model_out_of_quota_leaves_the_previous_directory_or_none(trained, tmp_path, previous):
    target = tmp_path / "model"
    if previous:
        shutil.copytree(trained / "model", target)
    model = load_model(trained / "model")
    # backbone/model.safetensors (about 430 kB) hits the limit; safetensors raises its own error class
    with file_size_limit(100_000), pytest.raises(Exception, match="File too large"):
        save_model(model, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["model"] if previous else [])
    if previous:
        assert snapshot(target) == snapshot(trained / "model")
