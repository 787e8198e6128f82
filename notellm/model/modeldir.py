"""The model directory of DESIGN.md: write it, and load it back without unpickling anything.

```
<dir>/notellm.json        prompt settings, d, backbone id, configs, metrics, model_version
<dir>/head.safetensors    projection.weight (d x hidden; absent when d is the hidden size), tau, and center
                          (hidden; subtracted from the pooled state before the projection; absent in
                          directories written before centring, read as zeros)
<dir>/tokenizer/          the tokenizer with [EMB]
<dir>/backbone/           merged weights (config.json + model*.safetensors)
                          or a LoRA adapter (adapter_config.json + adapter_model.safetensors)
```
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from notellm.errors import DataError
from notellm.io import atomic_dir, write_json
from notellm.model.backbones import add_emb_token, load_backbone
from notellm.model.bundle import NoteLLM
from notellm.model.encoder import NoteEncoder
from notellm.model.prompt import NotePrompter
from notellm.model_config import EMB_TOKEN, ModelConfig, PromptConfig

MODEL_JSON, HEAD, TOKENIZER, BACKBONE = "notellm.json", "head.safetensors", "tokenizer", "backbone"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def head_tensors(encoder: NoteEncoder) -> dict[str, torch.Tensor]:
    tensors = {"tau": encoder.tau.detach().reshape(1).float().cpu().contiguous(),
               "center": encoder.center.detach().float().cpu().contiguous()}
    if isinstance(encoder.projection, torch.nn.Linear):
        tensors["projection.weight"] = encoder.projection.weight.detach().float().cpu().contiguous()
    return tensors


def new_model_version(encoder: NoteEncoder) -> str:
    """notellm-<UTC time>-<first 8 hex digits of a hash of the head weights>."""
    digest = hashlib.sha256()
    for name, tensor in sorted(head_tensors(encoder).items()):
        digest.update(name.encode())
        digest.update(tensor.numpy().tobytes())
    return f"notellm-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}-{digest.hexdigest()[:8]}"


def write_model_files(model: NoteLLM, directory: Path, *, merge: bool = True,
                      extra: dict[str, Any] | None = None) -> None:
    """Write the model into an existing (temporary) directory; LoRA is merged in place when ``merge``."""
    encoder = model.encoder
    if isinstance(encoder.backbone, PeftModel) and merge:
        encoder.backbone = encoder.backbone.merge_and_unload()
    adapter = isinstance(encoder.backbone, PeftModel)
    encoder.backbone.save_pretrained(directory / BACKBONE, safe_serialization=True)
    model.tokenizer.save_pretrained(directory / TOKENIZER)
    save_file(head_tensors(encoder), str(directory / HEAD))
    meta = {**model.meta, **(extra or {}),
            "format_version": FORMAT_VERSION, "model_version": model.model_version,
            "backbone": model.model_cfg.backbone, "backbone_format": "adapter" if adapter else "merged",
            "dim": model.dim, "emb_token": EMB_TOKEN, "emb_token_id": encoder.emb_token_id,
            "model": model.model_cfg.model_dump(mode="json"),
            "prompt": model.prompt_cfg.model_dump(mode="json")}
    write_json(meta, directory / MODEL_JSON)
    for path in directory.rglob("*"):  # safetensors writes owner-only files; a server may run as another user
        if path.is_file():
            path.chmod(0o644)


def save_model(model: NoteLLM, out_dir: str | Path, *, merge: bool = True,
               extra: dict[str, Any] | None = None) -> Path:
    """Write the whole model directory atomically (it appears complete or not at all)."""
    with atomic_dir(out_dir) as tmp:
        write_model_files(model, tmp, merge=merge, extra=extra)
    return Path(out_dir)


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise DataError(f"the model directory lacks {what}", file=path)
    return path


def refuse_pickles(directory: Path) -> None:
    """A DataError naming the first file under ``directory`` that could hold a pickle (nothing is unpickled)."""
    for path in sorted(directory.rglob("*")):
        if path.is_file() and path.name.lower().endswith(PICKLE_SUFFIXES):
            raise DataError("refusing to load a model directory that holds a pickle file "
                            f"(allowed: safetensors and json); remove {path.name}", file=path)


def load_model(directory: str | Path, device: str | torch.device | None = None) -> NoteLLM:
    """Load a model directory written by :func:`save_model` / training (safetensors only)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError("model directory not found", file=directory)
    refuse_pickles(directory)
    meta_path = _require(directory / MODEL_JSON, MODEL_JSON)
    try:
        meta = json.loads(meta_path.read_text())
        model_cfg = ModelConfig.model_validate(meta["model"])
        prompt_cfg = PromptConfig.model_validate(meta["prompt"])
        fmt, emb_id = meta["backbone_format"], int(meta["emb_token_id"])
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"not a valid {MODEL_JSON}: {exc}", file=meta_path) from exc
    head = load_file(str(_require(directory / HEAD, HEAD)))
    tok_dir = directory / TOKENIZER
    _require(tok_dir / "tokenizer_config.json", f"{TOKENIZER}/tokenizer_config.json")
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    bb_dir = directory / BACKBONE
    if fmt == "adapter":
        _require(bb_dir / "adapter_config.json", f"{BACKBONE}/adapter_config.json")
        _require(bb_dir / "adapter_model.safetensors", f"{BACKBONE}/adapter_model.safetensors")
        base, base_tok = load_backbone(model_cfg.backbone)
        add_emb_token(base, base_tok)
        backbone = PeftModel.from_pretrained(base, bb_dir).merge_and_unload()
    else:
        _require(bb_dir / "config.json", f"{BACKBONE}/config.json")
        if not any(bb_dir.glob("model*.safetensors")):
            raise DataError("the model directory lacks backbone/model.safetensors",
                            file=bb_dir / "model.safetensors")
        backbone = AutoModelForCausalLM.from_pretrained(bb_dir, dtype=torch.float32, use_safetensors=True)
    if tokenizer.convert_tokens_to_ids(EMB_TOKEN) != emb_id:
        raise DataError(f"the tokenizer's {EMB_TOKEN} id differs from {emb_id} in {MODEL_JSON}", file=tok_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    dim = meta.get("dim") if "projection.weight" in head else None
    encoder = NoteEncoder(backbone, emb_id, dim, float(head["tau"][0]), model_cfg.share_prefix)
    if "projection.weight" in head:
        encoder.projection.weight.data.copy_(head["projection.weight"])
    if "center" in head:
        encoder.center.copy_(head["center"])
    encoder.eval()
    model = NoteLLM(encoder, tokenizer, NotePrompter(tokenizer, prompt_cfg, emb_id), model_cfg, prompt_cfg,
                    model_version=meta["model_version"], meta=meta)
    return model.to(device) if device is not None else model
