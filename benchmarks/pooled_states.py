"""How much of an untrained backbone's pooled state depends on the note, per prompt kind.

    .venv/bin/python benchmarks/pooled_states.py                       # MovieLens notes from `notellm results`
    .venv/bin/python benchmarks/pooled_states.py --notes notes.parquet --n 200

For each prompt kind the raw pooled states of ``--n`` notes are centred on the mean of the first half; the
second half's centred norm is the part of the state that varies from note to note, the part contrastive
training can start from. A pooled token whose state barely moves with the note (a small centred norm
beside the raw norm) leaves training little to separate; docs/quality.md reads the numbers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from notellm.model.bundle import build_model
from notellm.model.centering import mean_pairwise_cosine
from notellm.model.prompt import notes_from_frame
from notellm.model.runtime import make_batch
from notellm.model_config import ModelConfig, PromptConfig


def pooled(kind: str, notes: list, backbone: str, end: str) -> tuple[str, np.ndarray]:
    """The pooled token's text and the raw float32 pooled states of ``notes`` for one prompt kind;
    ``end`` (RepLLaMA only): the tokenizer's eos, or none (the note's last token is pooled)."""
    model = build_model(ModelConfig(backbone=backbone), PromptConfig(kind=kind))
    ids = [model.prompter.embedding_ids(n) for n in notes]
    if kind == "repllama" and end == "none":
        ids = [row[:-2] + row[-1:] for row in ids]  # drop the eos before [EMB]
    states = []
    with torch.inference_mode():
        for start in range(0, len(ids), 16):
            batch = make_batch(ids[start:start + 16], model.tokenizer.pad_token_id, device="cpu")
            states.append(model.encoder.pooled_states(**batch).numpy())
    return model.tokenizer.decode(ids[0][-2:-1]), np.concatenate(states)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notes", type=Path, default=Path("workspace/results/data/notes.parquet"))
    parser.add_argument("--n", type=int, default=96, help="notes (half fit the centre, half are measured)")
    parser.add_argument("--backbone", default="smollm2-135m")
    args = parser.parse_args()
    notes = notes_from_frame(pd.read_parquet(args.notes))[:args.n]
    half = len(notes) // 2
    print("| prompt kind | pooled token | raw norm | raw mean pairwise cosine | centred norm | centred / raw |")
    print("|---|---|---:|---:|---:|---:|")
    for kind, end in (("notellm", "eos"), ("prompteol", "eos"), ("repllama", "eos"), ("repllama", "none")):
        token, h = pooled(kind, notes, args.backbone, end)
        centred = h[half:] - h[:half].mean(axis=0)
        raw = np.linalg.norm(h[half:], axis=1).mean()
        unit = h[half:] / np.linalg.norm(h[half:], axis=1, keepdims=True)
        spread = np.linalg.norm(centred, axis=1).mean()
        print(f"| {kind} | `{token.strip()}` | {raw:.1f} | {mean_pairwise_cosine(unit):.3f} | {spread:.1f} "
              f"| {spread / raw:.2f} |")


if __name__ == "__main__":
    main()
