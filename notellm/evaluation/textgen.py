"""Metrics of the generated text (paper section 5.1): categories and hashtags.

- Category: accuracy (generated == the note's category) and illegal rate (share of generated
  categories outside the known set). Both compare after stripping surrounding whitespace.
- Hashtags: corpus BLEU-4 (sacrebleu, 0-100) and ROUGE-1/2/L F-measures (rouge-score, 0-1, averaged
  over notes). Predictions and references are strings or lists of hashtags (a list is joined by
  spaces). Both metrics see the same tokens: lower-cased runs of letters/digits, with each CJK
  character its own token (rouge-score's default tokenizer would drop non-ASCII text entirely).
  BLEU uses sacrebleu's effective order: n-gram orders with no n-grams anywhere in the corpus are
  left out, so a corpus of one- or two-word hashtag lists still gets a score (with 4-grams present it
  is plain corpus BLEU-4). ROUGE-2 of a one-word text is 0 (it has no bigrams).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(f"[{_CJK}]|[^\\W_{_CJK}]+")


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens; punctuation (``#``, ``-``, ``'``) separates and is dropped."""
    return _TOKEN.findall(text.lower())


class _Tokenizer:
    """The ``tokenize`` interface rouge-score expects."""

    def tokenize(self, text: str) -> list[str]:
        return tokenize(text)


def _as_text(value: str | Iterable[str]) -> str:
    if isinstance(value, str):
        return value
    return " ".join(str(v) for v in value)


def _check_lengths(predicted: Sequence, reference: Sequence) -> None:
    if len(predicted) != len(reference):
        raise ValueError(f"{len(predicted)} predictions but {len(reference)} references")
    if not predicted:
        raise ValueError("no predictions to score")


def category_metrics(predicted: Sequence[str], reference: Sequence[str],
                     categories: Iterable[str]) -> dict:
    """``accuracy`` and ``illegal_rate`` (fractions) of generated categories, and ``n``."""
    _check_lengths(predicted, reference)
    known = {c.strip() for c in categories}
    pred = [p.strip() for p in predicted]
    correct = sum(p == r.strip() for p, r in zip(pred, reference, strict=True))
    illegal = sum(p not in known for p in pred)
    n = len(pred)
    return {"accuracy": correct / n, "illegal_rate": illegal / n, "n": n}


def hashtag_metrics(predicted: Sequence[str | Sequence[str]],
                    reference: Sequence[str | Sequence[str]]) -> dict:
    """``bleu4`` (0-100), ``rouge1``, ``rouge2``, ``rougeL`` (mean F-measures, 0-1) and ``n``."""
    import sacrebleu
    from rouge_score import rouge_scorer

    _check_lengths(predicted, reference)
    hyps = [" ".join(tokenize(_as_text(p))) for p in predicted]
    refs = [" ".join(tokenize(_as_text(r))) for r in reference]
    bleu = sacrebleu.metrics.BLEU(tokenize="none", effective_order=True).corpus_score(hyps, [refs])
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=_Tokenizer())
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for hyp, ref in zip(hyps, refs, strict=True):
        for name, score in scorer.score(ref, hyp).items():
            totals[name] += score.fmeasure
    n = len(hyps)
    return {"bleu4": float(bleu.score), **{k: v / n for k, v in totals.items()}, "n": n}
