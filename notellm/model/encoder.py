"""The note encoder: backbone + pooling at the token before [EMB] + bias-free projection + learnable tau.

Like tevatron's EncoderModel, one small module holds the pooling and the CSFT term; the contrastive
term lives in :mod:`notellm.model.losses`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from notellm.model.losses import csft_loss
from notellm.model.prompt import IGNORE_INDEX


@dataclass
class EncoderOutput:
    embeddings: torch.Tensor  # (batch, d), L2-normalised, float32
    csft_loss: torch.Tensor | None  # mean next-token loss over the output tokens


def pool_positions(input_ids: torch.Tensor, emb_token_id: int) -> torch.Tensor:
    """Index of the token just before the first [EMB] in each row (any padding side)."""
    is_emb = input_ids == emb_token_id
    if not bool(is_emb.any(dim=1).all()):
        raise ValueError("every sequence must contain the [EMB] token")
    first = is_emb.int().argmax(dim=1)
    if bool((first == 0).any()):
        raise ValueError("[EMB] must not be the first token: nothing precedes it to pool")
    return first - 1


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so left-padded rows get the same positions as right-padded."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def shared_prefix_length(input_ids: torch.Tensor, attention_mask: torch.Tensor, limit: int) -> int:
    """How many leading tokens every row shares (real tokens only, at most ``limit``)."""
    same = (input_ids == input_ids[:1]).all(dim=0) & attention_mask.bool().all(dim=0)
    return min(int(same.long().cumprod(dim=0).sum()), limit)


class NoteEncoder(nn.Module):
    """``share_prefix``: run the instruction prefix that all rows share once per batch and reuse its
    keys/values (same result, fewer tokens; off under gradient checkpointing, which drops caches).

    ``center`` (a float32 buffer of the hidden size) is subtracted from the pooled state before the
    projection: the mean pooled state of training notes, fixed before the first training step
    (:func:`notellm.model.centering.fit_center`; zeros until then). Raw pooled states of a causal LM share
    one dominant direction (mean pairwise cosine about 0.96 untrained), which makes every cosine about 1.
    It is stored as ``center`` in the model directory's ``head.safetensors``; an export must apply
    ``normalize(W @ (h - center))``, e.g. as a Dense layer with bias ``-W @ center``.
    """

    def __init__(self, backbone: PreTrainedModel, emb_token_id: int, dim: int | None, tau_init: float = 3.0,
                 share_prefix: bool = True):
        super().__init__()
        self.backbone = backbone
        self.emb_token_id = emb_token_id
        hidden = backbone.config.get_text_config().hidden_size
        self.projection: nn.Module = nn.Linear(hidden, dim, bias=False) if dim else nn.Identity()
        self.tau = nn.Parameter(torch.tensor(float(tau_init)))
        self.register_buffer("center", torch.zeros(hidden, dtype=torch.float32))
        self.dim = dim or hidden
        self.share_prefix = share_prefix

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.tau.exp()

    def _hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                limit: int) -> tuple[torch.Tensor, int]:
        """Last-layer hidden states from position ``start`` on, and ``start`` (the shared prefix length)."""
        decoder = self.backbone.get_decoder()
        positions = position_ids_from_mask(attention_mask)
        start = 0
        checkpointing = getattr(decoder, "gradient_checkpointing", False) and decoder.training
        if self.share_prefix and input_ids.shape[0] > 1 and not checkpointing:
            start = shared_prefix_length(input_ids, attention_mask, limit)
        if start < 2:
            return decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                           use_cache=False).last_hidden_state, 0
        cache = decoder(input_ids=input_ids[:1, :start], position_ids=positions[:1, :start],
                        use_cache=True).cache
        cache.batch_repeat_interleave(input_ids.shape[0])
        rest = decoder(input_ids=input_ids[:, start:], attention_mask=attention_mask,
                       position_ids=positions[:, start:], cache=cache, use_cache=True)
        return rest.last_hidden_state, start

    def pooled_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Raw float32 hidden states at the pooled positions (before centring and projection)."""
        pool_at = pool_positions(input_ids, self.emb_token_id)
        hidden, start = self._hidden(input_ids, attention_mask, int(pool_at.min()))
        return hidden[torch.arange(input_ids.shape[0], device=input_ids.device), pool_at - start].float()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor | None = None) -> EncoderOutput:
        pool_at = pool_positions(input_ids, self.emb_token_id)
        targets = labels[:, 1:] if labels is not None else None
        keep = targets != IGNORE_INDEX if targets is not None else None
        limit = int(pool_at.min())  # the pooled token and every position that predicts a label stay unshared
        if keep is not None and bool(keep.any()):
            limit = min(limit, int(keep.any(dim=0).long().argmax()))
        hidden, start = self._hidden(input_ids, attention_mask, limit)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        pooled = hidden[rows, pool_at - start]
        with torch.autocast(device_type=pooled.device.type, enabled=False):
            embeddings = F.normalize(self.projection(pooled.float() - self.center), dim=-1)
        loss = None
        if targets is not None:
            keep = keep[:, start:]
            logits = self.backbone.get_output_embeddings()(hidden[:, :-1][keep])  # only where a label is
            loss = csft_loss(logits, targets[:, start:][keep])
        return EncoderOutput(embeddings, loss)
