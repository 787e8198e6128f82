"""Training checkpoints: trainable weights (safetensors), optimizer/scheduler/RNG state, data position.

``state.pt`` is read back with ``torch.load(weights_only=True)``, which rebuilds only tensors and plain
containers (no arbitrary objects), and it lives in the checkpoint directory, never in a model directory.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from notellm.errors import ConfigError, DataError
from notellm.io import atomic_dir

_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class Resumed:
    step: int
    curve: list[dict[str, Any]]


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in module.named_parameters() if p.requires_grad}


def save_checkpoint(directory: Path, *, step: int, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, curve: list[dict[str, Any]], fingerprint: str, keep: int) -> Path:
    """Write ``directory/step-NNNNNNN`` atomically and keep only the newest ``keep`` checkpoints.

    Older checkpoints are renamed out of sight before they are deleted, so a reader (or a resume after a
    kill) never finds a half-deleted ``step-*``; leftovers of writes cut short by a kill go too.
    """
    target = directory / f"step-{step:07d}"
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    with atomic_dir(target) as tmp:
        save_file(trainable_state(module), str(tmp / "trainable.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng},
                   tmp / "state.pt")
        (tmp / "progress.json").write_text(json.dumps(
            {"step": step, "fingerprint": fingerprint, "curve": curve}, indent=1))
    for old in list_checkpoints(directory)[:-keep]:
        doomed = Path(tempfile.mkdtemp(prefix=f".{old.name}.", suffix=".old", dir=directory))
        os.replace(old, doomed)
    for stale in directory.glob(".step-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return target


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not directory.is_dir():
        return []
    found = {int(m.group(1)): p for p in directory.iterdir()
             if (m := _STEP_DIR.match(p.name)) and (p / "progress.json").is_file()}
    return [found[step] for step in sorted(found)]


def load_checkpoint(path: Path, *, module: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    fingerprint: str) -> Resumed:
    """Restore weights, optimizer, scheduler and RNG; refuse a checkpoint made with other settings."""
    for name in ("trainable.safetensors", "state.pt", "progress.json"):
        if not (path / name).is_file():
            raise DataError(f"the checkpoint lacks {name}", file=path / name)
    progress = json.loads((path / "progress.json").read_text())
    if progress["fingerprint"] != fingerprint:
        raise ConfigError(f"checkpoint {path} was made with other model/prompt/data settings; "
                          "resume with the same settings or start without resume")
    weights = load_file(str(path / "trainable.safetensors"))
    params = dict(module.named_parameters())
    wanted = {n for n, p in params.items() if p.requires_grad}
    if set(weights) != wanted:
        differ = len(set(weights) ^ wanted)
        raise DataError(f"checkpoint weights do not match the model ({differ} names differ)",
                        file=path / "trainable.safetensors")
    try:
        state = torch.load(path / "state.pt", weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        raise DataError("refusing to unpickle the checkpoint state: it holds objects other than tensors and "
                        "plain containers", file=path / "state.pt") from exc
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return Resumed(step=int(progress["step"]), curve=progress["curve"])
