"""GCL, CSFT and their mix against direct computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from notellm.model.backbones import add_emb_token, load_backbone
from notellm.model.encoder import NoteEncoder
from notellm.model.losses import combined_loss, csft_loss, gcl_loss
from notellm.model.prompt import IGNORE_INDEX


def direct_gcl(a: np.ndarray, b: np.ndarray, scale: float) -> float:
    """For each of the 2B notes: -log softmax of its partner among all 2B-1 other notes; the mean."""
    notes = np.concatenate([a, b])
    n, half = len(notes), len(a)
    total = 0.0
    for i in range(n):
        partner = (i + half) % n
        logits = {j: scale * float(notes[i] @ notes[j]) for j in range(n) if j != i}
        denom = sum(math.exp(v) for v in logits.values())
        total += -(logits[partner] - math.log(denom))
    return total / n


@pytest.mark.parametrize("pairs", [1, 2, 5])
def test_gcl_matches_direct_computation(pairs):
    gen = torch.Generator().manual_seed(pairs)
    a = F.normalize(torch.randn(pairs, 8, generator=gen, dtype=torch.float64), dim=-1)
    b = F.normalize(torch.randn(pairs, 8, generator=gen, dtype=torch.float64), dim=-1)
    tau = torch.tensor(3.0, dtype=torch.float64)
    got = gcl_loss(a, b, tau.exp())
    assert got.item() == pytest.approx(direct_gcl(a.numpy(), b.numpy(), math.exp(3.0)), rel=1e-9)


def test_gcl_rewards_aligned_pairs_and_trains_tau():
    gen = torch.Generator().manual_seed(0)
    a = F.normalize(torch.randn(4, 16, generator=gen), dim=-1)
    noise = F.normalize(torch.randn(4, 16, generator=gen), dim=-1)
    tau = torch.tensor(3.0, requires_grad=True)
    aligned = gcl_loss(a, a, tau.exp())
    assert aligned < gcl_loss(a, noise, tau.exp())
    aligned.backward()
    assert tau.grad is not None and tau.grad < 0  # a sharper scale lowers the loss of perfect pairs
    with pytest.raises(ValueError, match="shape"):
        gcl_loss(a, a[:3], tau.exp())


def test_csft_matches_the_backbones_own_loss_on_output_tokens():
    model, tok = load_backbone("tiny-random")
    emb = add_emb_token(model, tok)
    encoder = NoteEncoder(model, emb, dim=8)
    ids = torch.tensor([[1, 40, 41, 42, emb, 43, 44, 45, 2], [1, 50, 51, emb, 52, 53, 2, 0, 0]])
    mask = (torch.arange(9) < torch.tensor([[9], [7]])).long()
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, 6:9] = ids[0, 6:9]
    labels[1, 4:7] = ids[1, 4:7]
    got = encoder(ids, mask, labels).csft_loss
    expected = model(input_ids=ids, attention_mask=mask, labels=labels).loss  # HF: mean over label tokens
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    logits = model(input_ids=ids, attention_mask=mask).logits
    direct = np.mean([-torch.log_softmax(logits[r, t - 1], -1)[ids[r, t]].item()
                      for r, t in [(0, 6), (0, 7), (0, 8), (1, 4), (1, 5), (1, 6)]])
    assert got.item() == pytest.approx(direct, rel=1e-5)
    assert csft_loss(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long)).item() == 0.0


def test_combined_loss_is_the_weighted_mean():
    gcl, csft = torch.tensor(2.0), torch.tensor(5.0)
    assert combined_loss(gcl, csft, 0.01).item() == pytest.approx((2.0 + 0.01 * 5.0) / 1.01)
    assert combined_loss(gcl, csft, 0.0).item() == 2.0
    assert combined_loss(gcl, None, 0.01).item() == 2.0
