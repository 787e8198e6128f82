"""NoteLLM: the encoder, its tokenizer and prompt builder, and the settings they were made with."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from notellm.model.backbones import add_emb_token, load_backbone
from notellm.model.encoder import NoteEncoder
from notellm.model.prompt import NotePrompter
from notellm.model_config import ModelConfig, PromptConfig


@dataclass
class NoteLLM:
    encoder: NoteEncoder
    tokenizer: PreTrainedTokenizerBase
    prompter: NotePrompter
    model_cfg: ModelConfig
    prompt_cfg: PromptConfig
    model_version: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.encoder.tau.device

    @property
    def dim(self) -> int:
        return self.encoder.dim

    @property
    def known_categories(self) -> list[str] | None:
        """Categories seen in training (recorded in notellm.json), for flagging illegal generations."""
        return self.meta.get("categories")

    def to(self, device: str | torch.device) -> NoteLLM:
        self.encoder.to(device)
        return self


def build_model(model_cfg: ModelConfig, prompt_cfg: PromptConfig, *, seed: int = 0) -> NoteLLM:
    """A fresh (untrained) NoteLLM: the backbone with [EMB] added and a seeded projection."""
    backbone, tokenizer = load_backbone(model_cfg.backbone)
    emb_id = add_emb_token(backbone, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = NoteEncoder(backbone, emb_id, model_cfg.dim, model_cfg.tau_init, model_cfg.share_prefix)
    encoder.eval()
    return NoteLLM(encoder, tokenizer, NotePrompter(tokenizer, prompt_cfg, emb_id), model_cfg, prompt_cfg,
                   model_version=f"{model_cfg.backbone.replace('/', '_')}-{prompt_cfg.kind}-untrained")
