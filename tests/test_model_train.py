"""Train a tiny-random NoteLLM end to end: save, load, embed, generate, resume; bad model directories."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from notellm.contracts import EMBEDDINGS, read_table
from notellm.errors import ConfigError, DataError
from notellm.model.bundle import build_model
from notellm.model.embed import embed_notes, write_embeddings
from notellm.model.generate import generate_for_notes, parse_category, parse_hashtags
from notellm.model.modeldir import load_model
from notellm.model.training import train, train_model
from notellm.model_config import ModelConfig, PromptConfig, TrainingConfig

GENRES = ["Drama", "Comedy", "Action", "Horror"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def notes() -> pd.DataFrame:
    return pd.DataFrame({
        "note_id": [f"n{i}" for i in range(20)],
        "title": [f"Movie {i} (19{80 + i})" for i in range(20)],
        "content": ["" if i % 3 else f"a story of {GENRES[i % 4].lower()} number {i}" for i in range(20)],
        "hashtags": [[GENRES[i % 4], GENRES[(i + 1) % 4]] for i in range(20)],
        "category": [GENRES[i % 4] for i in range(20)],
    })


@pytest.fixture(scope="module")
def pairs() -> pd.DataFrame:
    train = [(f"n{i}", f"n{(i + 4) % 16}") for i in range(16)]  # same genre: i and i+4
    val = [("n16", "n17"), ("n18", "n19"), ("n17", "n16")]
    return pd.DataFrame({"note_id_a": [a for a, _ in train + val], "note_id_b": [b for _, b in train + val],
                         "score": 1.0, "split": ["train"] * len(train) + ["val"] * len(val)})


MODEL = ModelConfig(backbone="tiny-random", dim=16, lora_r=4, lora_alpha=8)


def cfg(**changes) -> TrainingConfig:
    return TrainingConfig(**{"max_steps": 4, "batch_pairs": 4, "lr": 5e-3, "projection_lr": 5e-3,
                             "warmup_ratio": 0.0, "log_every": 1, **changes})


@pytest.fixture(scope="module")
def trained(tmp_path_factory, notes, pairs):
    out = tmp_path_factory.mktemp("train") / "model"
    model, metrics = train_model(notes, pairs, MODEL, PromptConfig(), cfg(val_every=2), out, progress=False)
    return model, metrics, out


def test_train_writes_the_model_directory(trained):
    _, metrics, out = trained
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {"notellm.json", "head.safetensors", "backbone/config.json", "backbone/model.safetensors",
            "tokenizer/tokenizer.json", "loss_curve.json", "loss_curve.png"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pkl"))]
    meta = json.loads((out / "notellm.json").read_text())
    assert meta["model_version"] == metrics["model_version"] and meta["model_version"].startswith("notellm-")
    assert meta["backbone"] == "tiny-random" and meta["backbone_format"] == "merged" and meta["dim"] == 16
    assert meta["prompt"]["hashtag_task_share"] == 0.4 and meta["training"]["max_steps"] == 4
    assert meta["categories"] == sorted(GENRES) and meta["metrics"]["steps"] == 4
    curve = json.loads((out / "loss_curve.json").read_text())
    assert [r["step"] for r in curve] == [1, 2, 3, 4]
    assert all(r["loss"] == pytest.approx((r["gcl"] + 0.01 * r["csft"]) / 1.01) for r in curve)
    assert 0 <= metrics["val_recall"] <= 1 and [r["step"] for r in curve if "val_recall" in r] == [2, 4]
    assert metrics["train_pairs"] == 16 and metrics["val_pairs"] == 3 and metrics["notes_per_s"] > 0


def test_reload_gives_identical_vectors_and_an_embeddings_table(trained, notes, tmp_path):
    model, _, out = trained
    before = embed_notes(model, notes, batch_size=4)
    loaded = load_model(out)
    after = embed_notes(loaded, notes, batch_size=7)
    np.testing.assert_allclose(after, before, atol=1e-6)
    assert loaded.encoder.tau.item() == pytest.approx(model.encoder.tau.item())
    untrained = embed_notes(build_model(MODEL, PromptConfig()), notes)
    assert not np.allclose(untrained, after, atol=1e-3)  # training moved the vectors
    stats = write_embeddings(loaded, notes, tmp_path / "emb.parquet", batch_size=8, progress=False)
    table = read_table(tmp_path / "emb.parquet", EMBEDDINGS)
    assert list(table["note_id"]) == list(notes["note_id"])
    assert set(table["model_version"]) == {loaded.model_version}
    np.testing.assert_allclose(np.stack(table["vector"]), after, atol=1e-6)
    assert stats["notes"] == 20 and stats["dim"] == 16 and stats["notes_per_s"] > 0


def _mean_pairwise_cosine(vectors: np.ndarray) -> float:
    sims = vectors @ vectors.T
    return float(sims[~np.eye(len(vectors), dtype=bool)].mean())


def test_centring_spreads_the_vectors_and_survives_a_reload(notes, pairs, tmp_path):
    """Issue 13: pooled states share one direction; the stored centre removes it, identically after a reload.

    Trained at a small learning rate (2e-4): at 25x that the tiny model's pooled mean drifts away from
    the centre fixed before training (the metric ``mean_pairwise_cosine`` shows such a drift)."""
    from safetensors.torch import load_file

    out = tmp_path / "model"
    model, metrics = train_model(notes, pairs, MODEL, PromptConfig(), cfg(lr=2e-4, projection_lr=1e-3), out,
                                 progress=False)
    assert metrics["mean_pairwise_cosine"] < 0.5
    center = load_file(str(out / "head.safetensors"))["center"]
    assert center.shape == (model.encoder.center.numel(),) and center.abs().sum() > 0
    vectors = embed_notes(model, notes, batch_size=4)
    assert _mean_pairwise_cosine(vectors) < 0.5
    loaded = load_model(out)
    assert np.array_equal(embed_notes(loaded, notes, batch_size=4), vectors)  # bit-identical
    loaded.encoder.center.zero_()  # the same model without its centre: the shared direction is back
    assert _mean_pairwise_cosine(embed_notes(loaded, notes, batch_size=4)) > _mean_pairwise_cosine(vectors) + 0.2


def test_untrained_baselines_get_the_centre_training_fits(notes, pairs, tmp_path):
    """The zero-shot rows (results table, evaluate step) are centred exactly as training centres NoteLLM."""
    import torch

    from notellm.config import Config
    from notellm.results import untrained_model

    train_model(notes, pairs, MODEL, PromptConfig(), cfg(max_steps=1), tmp_path / "model", progress=False)
    trained_center = load_model(tmp_path / "model").encoder.center
    base = Config(model=MODEL, training=cfg(max_steps=1))
    untrained = untrained_model(base, notes, pairs[pairs["split"] == "train"])
    assert torch.equal(untrained.encoder.center, trained_center) and trained_center.abs().sum() > 0
    off = untrained_model(base.model_copy(update={"model": MODEL.model_copy(update={"center_notes": 0})}),
                          notes, pairs[pairs["split"] == "train"])
    assert not off.encoder.center.any()


def test_generation_is_batch_independent_and_flags_illegal_categories(trained, notes):
    model = load_model(trained[2])
    frame = generate_for_notes(model, notes.head(5), num_hashtags=2, max_new_tokens=6, batch_size=5)
    assert list(frame.columns) == ["note_id", "category_text", "category", "category_illegal",
                                   "hashtags_text", "hashtags"]
    assert frame["category_illegal"].tolist() == [c not in GENRES for c in frame["category"]]
    alone = generate_for_notes(model, notes.iloc[[3]], num_hashtags=2, max_new_tokens=6)
    assert alone.iloc[0]["category_text"] == frame.iloc[3]["category_text"]  # left padding is harmless
    assert alone.iloc[0]["hashtags_text"] == frame.iloc[3]["hashtags_text"]
    only = generate_for_notes(model, notes.head(2), tasks=["category"], known_categories=["x"],
                              max_new_tokens=2)
    assert only["category_illegal"].all() and "hashtags" not in only


def test_parse_generated_text():
    assert parse_category(" Drama.\nmore text") == "Drama"
    assert parse_category('"Comedy"') == "Comedy" and parse_category("  ") == ""
    assert parse_hashtags(" travel, food，#ski, food\nsea", 3) == ["travel", "food", "ski"]
    assert parse_hashtags("a、b") == ["a", "b"]


def test_resume_gives_the_same_next_step(notes, pairs, tmp_path):
    full = cfg(max_steps=4, checkpoint_every=2, checkpoint_dir=tmp_path / "ck")
    train(notes, pairs, MODEL, PromptConfig(), full, tmp_path / "a", progress=False)
    first = json.loads((tmp_path / "a" / "loss_curve.json").read_text())
    shutil.copytree(tmp_path / "ck", tmp_path / "ck-copy")
    step2 = tmp_path / "ck-copy" / "step-0000002"
    assert sorted(p.name for p in step2.iterdir()) == ["progress.json", "state.pt", "trainable.safetensors"]
    metrics = train(notes, pairs, MODEL, PromptConfig(), full, tmp_path / "b", resume_from=step2,
                    progress=False)
    second = json.loads((tmp_path / "b" / "loss_curve.json").read_text())
    assert metrics["steps_this_run"] == 2
    assert [r["step"] for r in second] == [1, 2, 3, 4]
    for a, b in zip(first, second):  # steps 1-2 come from the checkpoint, 3-4 are recomputed: identical
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-7)
    np.testing.assert_allclose(embed_notes(load_model(tmp_path / "b"), notes),
                               embed_notes(load_model(tmp_path / "a"), notes), atol=1e-6)
    with pytest.raises(ConfigError, match="other model/prompt/data settings"):
        train(notes, pairs, MODEL.model_copy(update={"dim": 8}), PromptConfig(), full, tmp_path / "c",
              resume_from=step2, progress=False)
    with pytest.raises(ConfigError, match="nothing to do"):
        train(notes, pairs, MODEL, PromptConfig(), full.model_copy(update={"max_steps": 2}), tmp_path / "d",
              resume_from=step2, progress=False)


def test_adapter_directory_and_checkpointing(notes, pairs, tmp_path):
    plain = MODEL.model_copy(update={"lora_dropout": 0.0})
    adapter = plain.model_copy(update={"merge_lora": False, "gradient_checkpointing": True})
    fp32 = cfg(bf16="off")  # bf16 rounding differs between a shared prefix and recomputed activations
    model, _ = train_model(notes, pairs, adapter, PromptConfig(), fp32, tmp_path / "adapter", progress=False)
    assert (tmp_path / "adapter" / "backbone" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "adapter" / "backbone" / "model.safetensors").exists()
    np.testing.assert_allclose(embed_notes(load_model(tmp_path / "adapter"), notes),
                               embed_notes(model, notes), atol=1e-5)
    # recomputing activations (and so not sharing the prefix) changes no loss when nothing is random
    train(notes, pairs, plain, PromptConfig(), fp32, tmp_path / "plain", progress=False)
    curves = [[r["loss"] for r in json.loads((tmp_path / d / "loss_curve.json").read_text())]
              for d in ("adapter", "plain")]
    np.testing.assert_allclose(curves[0], curves[1], rtol=1e-4)


def test_full_finetuning_without_csft_and_a_baseline_prompt(notes, pairs, tmp_path):
    full = MODEL.model_copy(update={"finetune": "full", "dim": None, "gradient_checkpointing": True})
    metrics = train(notes, pairs, full, PromptConfig(kind="repllama"), cfg(max_steps=2, alpha=0.0),
                    tmp_path / "full", progress=False)
    curve = json.loads((tmp_path / "full" / "loss_curve.json").read_text())
    assert "csft" not in curve[0] and curve[0]["loss"] == curve[0]["gcl"]
    model = load_model(tmp_path / "full")
    assert model.dim == 64 and model.prompt_cfg.kind == "repllama" and metrics["steps"] == 2


def test_bad_inputs_get_clear_errors(trained, notes, pairs, tmp_path):
    with pytest.raises(DataError, match="content"):
        train(notes.drop(columns=["content"]), pairs, MODEL, PromptConfig(), cfg(), tmp_path / "x")
    with pytest.raises(DataError, match="no text"):
        train(notes.assign(title=""), pairs, MODEL, PromptConfig(), cfg(), tmp_path / "x")
    with pytest.raises(DataError, match="unknown note_id 'ghost'"):
        train(notes, pairs.assign(note_id_b="ghost"), MODEL, PromptConfig(), cfg(), tmp_path / "x")
    with pytest.raises(DataError, match="no training pairs"):
        train(notes, pairs.assign(split="test"), MODEL, PromptConfig(), cfg(), tmp_path / "x")
    with pytest.raises(ConfigError, match="unknown backbone"):
        train(notes, pairs, ModelConfig(backbone="nope"), PromptConfig(), cfg(), tmp_path / "x")
    assert not (tmp_path / "x").exists()

    broken = tmp_path / "broken"
    shutil.copytree(trained[2], broken)
    (broken / "head.safetensors").unlink()
    with pytest.raises(DataError, match="lacks head.safetensors") as err:
        load_model(broken)
    assert err.value.file.endswith("head.safetensors")
    shutil.rmtree(broken)
    shutil.copytree(trained[2], broken)
    (broken / "backbone" / "pytorch_model.bin").write_bytes(b"not even a pickle")
    with pytest.raises(DataError, match="pickle") as err:
        load_model(broken)
    assert err.value.file.endswith("pytorch_model.bin")
    with pytest.raises(DataError, match="not found"):
        load_model(tmp_path / "missing")
