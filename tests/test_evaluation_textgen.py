"""Generation metrics on hand-checked examples."""

from __future__ import annotations

import pytest

from notellm.evaluation.textgen import category_metrics, hashtag_metrics, tokenize

CATEGORIES = ["Drama", "Comedy", "Action"]


def test_category_accuracy_and_illegal_rate():
    result = category_metrics(["Drama", " Comedy ", "Cooking", "Action"],
                              ["Drama", "Comedy", "Drama", "Comedy"], CATEGORIES)
    assert result == {"accuracy": 0.5, "illegal_rate": 0.25, "n": 4}


def test_category_lengths_must_match():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        category_metrics(["Drama", "Drama"], ["Drama"], CATEGORIES)
    with pytest.raises(ValueError, match="no predictions"):
        category_metrics([], [], CATEGORIES)


def test_identical_hashtags_score_full_marks():
    tags = [["Action", "Adventure", "Sci-Fi"], ["Comedy"], "#Film-Noir #Thriller"]
    result = hashtag_metrics(tags, tags)
    assert result["bleu4"] == pytest.approx(100)
    assert result["rouge1"] == pytest.approx(1) and result["rougeL"] == pytest.approx(1)
    # "comedy" alone has no bigram, so its ROUGE-2 is 0: mean of (1, 0, 1)
    assert result["rouge2"] == pytest.approx(2 / 3)
    assert result["n"] == 3


def test_disjoint_hashtags_score_zero():
    result = hashtag_metrics([["war", "western"], "horror"], [["comedy", "romance"], "musical"])
    assert result == {"bleu4": 0.0, "rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0, "n": 2}


def test_partial_overlap_by_hand():
    # hypothesis "a b c d", reference "a b x d": unigrams 3/4; bigrams 1/3 (a b); LCS "a b d" = 3
    result = hashtag_metrics(["a b c d"], ["a b x d"])
    assert result["rouge1"] == pytest.approx(0.75)
    assert result["rouge2"] == pytest.approx(1 / 3)
    assert result["rougeL"] == pytest.approx(0.75)
    # BLEU: precisions 3/4, 1/3, and no matching 3- or 4-gram: 0 < score < unigram precision
    assert 0 < result["bleu4"] < 75


def test_tokenizer_keeps_non_ascii_text():
    assert tokenize("#Sci-Fi, Children's") == ["sci", "fi", "children", "s"]
    assert tokenize("美食 Café") == ["美", "食", "café"]
    result = hashtag_metrics(["美食分享"], ["美食分享"])
    assert result["rouge1"] == pytest.approx(1) and result["bleu4"] == pytest.approx(100)
