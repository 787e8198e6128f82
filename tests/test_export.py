"""``notellm export --format sentence-transformers``: the export loads in plain sentence-transformers, in a
process where ``notellm`` cannot be imported, and gives the platform's vectors on held-out notes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from notellm.cli import app

DIM = 16
#: loads the export with sentence-transformers alone: any import of notellm fails
LOAD_WITHOUT_NOTELLM = """
import importlib.abc, json, sys

class NoNotellm(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "notellm" or name.startswith("notellm."):
            raise ImportError(f"{name} must not be needed to load the export")
        return None

sys.meta_path.insert(0, NoNotellm())
import numpy as np
from sentence_transformers import SentenceTransformer

export, texts, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
model = SentenceTransformer(export, device="cpu")
np.save(out, model.encode(texts, batch_size=8, convert_to_numpy=True))
assert not any(m == "notellm" or m.startswith("notellm.") for m in sys.modules)
"""


def held_out_texts(root: Path) -> list[str]:
    """Titles and contents of synthetic notes (never seen by the export's own checks), and awkward texts.

    Contents are cut to their first 12 words: the platform clips a content to ``prompt.content_max`` tokens
    (128) and the export does not, so only texts within that limit get the same vector (see notellm.export).
    """
    from notellm.config import SyntheticConfig
    from notellm.contracts import NOTES, read_table
    from notellm.datasets.synthetic import write_synthetic

    write_synthetic(root / "raw", SyntheticConfig(users=5, notes=20, events=40, topics=3, seed=7))
    notes = read_table(root / "raw" / "notes.parquet", NOTES)
    return [*(" ".join(c.split()[:12]) for c in notes["content"][:12]), *notes["title"][:6], 'She said "hi"\nthen left.', "  path\\to\\file  ",
            "tabs\tand ünïcode ✓ 東京", "Heat (1995)"]


@pytest.mark.parametrize("centred", [False, True])
def test_export_loads_without_notellm_and_gives_the_platform_vectors(tmp_path, centred):
    import torch

    from notellm.model import embed_notes
    from notellm.model.bundle import build_model
    from notellm.model.modeldir import save_model
    from notellm.model.prompt import Note
    from notellm.model_config import ModelConfig, PromptConfig

    model = build_model(ModelConfig(backbone="tiny-random", dim=DIM), PromptConfig())
    if centred:  # the pooled-state centre (issue 13) becomes the Dense layer's bias
        with torch.no_grad():
            model.encoder.center.copy_(torch.linspace(-0.5, 0.5, model.encoder.center.numel()))
    save_model(model, tmp_path / "model")
    result = CliRunner().invoke(app, ["export", "--format", "sentence-transformers", str(tmp_path / "st"),
                                      "--model", str(tmp_path / "model")])
    assert result.exit_code == 0, result.output
    dense = json.loads((tmp_path / "st" / "2_Dense" / "config.json").read_text())
    assert dense["bias"] is centred and dense["out_features"] == DIM

    texts = held_out_texts(tmp_path)
    out = tmp_path / "vectors.npy"
    run = subprocess.run([sys.executable, "-I", "-c", LOAD_WITHOUT_NOTELLM, str(tmp_path / "st"),
                          json.dumps(texts), str(out)], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    exported = np.load(out)
    platform = embed_notes(model, [Note("", "", t) for t in texts])
    assert exported.shape == platform.shape == (len(texts), DIM)
    cosines = (exported * platform).sum(axis=1) / np.linalg.norm(exported, axis=1)
    assert cosines.min() >= 1 - 1e-5, cosines


def test_unknown_format_is_refused(tmp_path):
    result = CliRunner().invoke(app, ["export", "--format", "onnx", str(tmp_path / "out")])
    assert result.exit_code == 2 and "unknown export format 'onnx'" in result.output
