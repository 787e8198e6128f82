"""NoteLLM's losses: generative-contrastive learning (GCL), CSFT, and their weighted mean.

GCL follows the official NoteLLM code: the 2B notes of B pairs form one similarity matrix (cosine times
e^tau); each note's positive is its partner and every other note of the batch is a negative (both
directions, since both notes of a pair are rows). Under torch.distributed the embeddings of all ranks are
gathered first; the local ones keep their gradient.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0; this rank's slice keeps its autograd graph."""
    if world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.detach().contiguous())
    parts[dist.get_rank()] = tensor
    return torch.cat(parts, dim=0)


def gcl_loss(emb_a: torch.Tensor, emb_b: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """In-batch contrastive loss over the 2B L2-normalised notes of B pairs (a_i, b_i)."""
    if emb_a.shape != emb_b.shape:
        raise ValueError(f"pair halves differ in shape: {tuple(emb_a.shape)} vs {tuple(emb_b.shape)}")
    b = emb_a.shape[0]
    notes = torch.cat([emb_a, emb_b], dim=0)
    logits = (notes @ notes.T) * logit_scale
    self_mask = torch.eye(2 * b, dtype=torch.bool, device=notes.device)
    logits = logits.masked_fill(self_mask, float("-inf"))  # a note is never its own candidate
    idx = torch.arange(b, device=notes.device)
    partners = torch.cat([idx + b, idx])
    return F.cross_entropy(logits, partners)


def csft_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the output tokens (logits already gathered at those positions)."""
    if targets.numel() == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), targets)


def combined_loss(gcl: torch.Tensor, csft: torch.Tensor | None, alpha: float) -> torch.Tensor:
    """(L_gcl + alpha * L_csft) / (1 + alpha); with no CSFT term, L_gcl."""
    if csft is None or alpha == 0:
        return gcl
    return (gcl + alpha * csft) / (1 + alpha)
