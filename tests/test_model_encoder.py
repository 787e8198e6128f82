"""Backbones by name, the [EMB] row, and pooling that does not depend on padding or batch-mates."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from notellm.errors import ConfigError
from notellm.model.backbones import add_emb_token, load_backbone
from notellm.model.bundle import build_model
from notellm.model.embed import embed_notes
from notellm.model.encoder import pool_positions, shared_prefix_length
from notellm.model.prompt import Note
from notellm.model.runtime import make_batch
from notellm.model_config import EMB_TOKEN, ModelConfig, PromptConfig


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    return build_model(ModelConfig(backbone="tiny-random", dim=16), PromptConfig())


def test_tiny_random_is_fast_and_deterministic():
    start = time.perf_counter()
    m1, t1 = load_backbone("tiny-random")
    assert time.perf_counter() - start < 2.0
    m2, t2 = load_backbone("tiny-random")
    assert t1.get_vocab() == t2.get_vocab()
    for (n1, p1), (n2, p2) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_unknown_backbone_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown backbone 'gpt-17'.*smollm2-135m"):
        load_backbone("gpt-17")
    with pytest.raises(ConfigError, match="cannot load backbone"):
        load_backbone(str(tmp_path))  # a directory without a model


def test_emb_token_is_added_once_with_the_mean_embedding():
    model, tok = load_backbone("tiny-random")
    before = model.get_input_embeddings().weight.detach().clone()
    emb = add_emb_token(model, tok)
    assert emb == add_emb_token(model, tok) == len(tok) - 1
    assert tok.convert_ids_to_tokens(emb) == EMB_TOKEN
    weight = model.get_input_embeddings().weight
    assert weight.shape[0] == len(tok)
    torch.testing.assert_close(weight[emb], before.mean(dim=0))
    assert model.get_output_embeddings().weight.shape[0] == len(tok)


def test_pool_positions_for_both_padding_sides():
    emb = 9
    right = torch.tensor([[1, 5, emb, 0, 0], [1, 5, 6, 7, emb]])
    left = torch.tensor([[0, 0, 1, 5, emb], [1, 5, 6, 7, emb]])
    assert pool_positions(right, emb).tolist() == [1, 3]
    assert pool_positions(left, emb).tolist() == [3, 3]
    with pytest.raises(ValueError, match="must contain"):
        pool_positions(torch.tensor([[1, 2, 3]]), emb)
    with pytest.raises(ValueError, match="first token"):
        pool_positions(torch.tensor([[emb, 2, 3]]), emb)


NOTES = [Note("short", "Up", "", ("a",), "a"),
         Note("mid", "A medium title", "some words of content here", ("a", "b"), "b"),
         Note("long", "A much longer title for this note", "content " * 40, ("c",), "c")]


def test_same_note_same_vector_in_any_batch_and_padding(model):
    ids = [model.prompter.embedding_ids(n) for n in NOTES]
    pad = model.tokenizer.pad_token_id
    with torch.inference_mode():
        alone = model.encoder(**make_batch([ids[1]], pad)).embeddings[0]
        for side in ("right", "left"):
            for batch in ([ids[0], ids[1], ids[2]], [ids[2], ids[1]], [ids[1], ids[0]]):
                got = model.encoder(**make_batch(batch, pad, padding_side=side)).embeddings
                torch.testing.assert_close(got[batch.index(ids[1])], alone, atol=1e-5, rtol=1e-5)
    assert alone.shape == (16,)
    assert float(alone.norm()) == pytest.approx(1.0, abs=1e-6)


def test_embed_notes_keeps_input_order_whatever_the_batch_size(model):
    one = embed_notes(model, NOTES, batch_size=1)
    many = embed_notes(model, NOTES[::-1], batch_size=3)[::-1]
    np.testing.assert_allclose(one, many, atol=1e-5)
    assert one.dtype == np.float32 and one.shape == (3, 16)
    assert not np.allclose(one[0], one[1])  # different notes, different vectors
    assert not model.encoder.training


def test_literal_emb_text_does_not_move_the_pooled_vector(model):
    plain = Note("p", "Hello world", "", (), "c")
    tricky = Note("t", f"Hello {EMB_TOKEN} world", "", (), "c")
    ids = model.prompter.embedding_ids(tricky)
    assert pool_positions(torch.tensor([ids]), model.encoder.emb_token_id).item() == len(ids) - 2
    a, b = embed_notes(model, [plain, tricky])
    assert np.isfinite(b).all() and not np.allclose(a, b)


def test_shared_prefix_changes_nothing_but_the_work():
    from notellm.model.training import apply_finetuning

    model = build_model(ModelConfig(backbone="tiny-random", dim=16, lora_dropout=0.0),
                        PromptConfig(hashtag_task_share=0.5))
    apply_finetuning(model, model.model_cfg)
    notes = [Note(f"n{i}", f"title {i} " * (i % 4 + 1), "content " * i, ("a", "b", "c"), "a")
             for i in range(8)]
    examples = [model.prompter.training_example(n) for n in notes]
    assert {e.task for e in examples} == {"category", "hashtags"}
    batch = make_batch([e.input_ids for e in examples], model.tokenizer.pad_token_id,
                       labels=[e.labels for e in examples])
    assert shared_prefix_length(batch["input_ids"], batch["attention_mask"], 10_000) > 10
    results = []
    for share in (False, True):
        model.encoder.share_prefix = share
        model.encoder.zero_grad()
        out = model.encoder(**batch)
        (out.embeddings[:, 0].sum() + out.csft_loss).backward()
        grads = {n: p.grad.clone() for n, p in model.encoder.named_parameters() if p.grad is not None}
        results.append((out.embeddings.detach(), out.csft_loss.detach(), grads))
    (e0, c0, g0), (e1, c1, g1) = results
    torch.testing.assert_close(e1, e0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c1, c0)
    assert g0.keys() == g1.keys() and any("lora" in n for n in g0)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], atol=1e-4, rtol=1e-3)
