"""Model kinds: notellm.json names the kind; an unknown kind or a pickle is refused with the file named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from notellm.challenger import NOTELLM, SENTENCE_TRANSFORMERS, SentenceEncoder, model_kind
from notellm.errors import DataError


def _model_dir(root: Path, meta: dict) -> Path:
    root.mkdir()
    (root / "notellm.json").write_text(json.dumps(meta))
    return root


def test_the_kind_comes_from_notellm_json(tmp_path: Path) -> None:
    assert model_kind(_model_dir(tmp_path / "old", {"model_version": "v"})) == NOTELLM  # before the challenger
    assert model_kind(_model_dir(tmp_path / "st", {"kind": SENTENCE_TRANSFORMERS})) == SENTENCE_TRANSFORMERS
    with pytest.raises(DataError, match="unknown model kind 'onnx'") as info:
        model_kind(_model_dir(tmp_path / "onnx", {"kind": "onnx"}))
    assert "notellm.json" in str(info.value)
    with pytest.raises(DataError, match="cannot read the model metadata"):
        model_kind(tmp_path)


def test_a_sentence_transformers_directory_with_a_pickle_is_refused(tmp_path: Path) -> None:
    directory = _model_dir(tmp_path / "st", {"kind": SENTENCE_TRANSFORMERS, "model_version": "v"})
    (directory / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(DataError, match="pickle"):
        SentenceEncoder(directory)
