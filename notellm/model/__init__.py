"""The NoteLLM model: backbones, prompts, encoder, losses, training, embedding, generation.

Public API, imported lazily (so ``notellm.model.losses`` alone does not pull in transformers)::

    from notellm.model import train, load_model, embed_notes, write_embeddings, generate_for_notes
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "NoteLLM": "bundle", "build_model": "bundle", "embed_notes": "embed", "write_embeddings": "embed",
    "generate_for_notes": "generate", "load_backbone": "backbones", "load_model": "modeldir",
    "save_model": "modeldir", "train": "training", "train_model": "training",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
