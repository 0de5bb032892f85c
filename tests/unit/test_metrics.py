"""Generation metrics against values worked out by hand."""

from __future__ import annotations

import pytest

from worker.metrics import (
    contains,
    exact_match,
    mean_score,
    normalize,
    regex_match,
    rouge_l,
    token_f1,
)


def test_normalisation_drops_case_punctuation_and_articles() -> None:
    assert normalize("  The Eiffel Tower, in PARIS!  ") == "eiffel tower in paris"


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("Paris.", "paris", 1.0),
        ("It is Paris", "Paris", 0.0),
        ("the cat", "a cat", 1.0),
    ],
)
def test_exact_match(prediction: str, reference: str, expected: float) -> None:
    assert exact_match(prediction, reference) == expected


def test_token_f1_by_hand() -> None:
    # prediction tokens: [paris, is, capital]; reference: [capital, is, paris, france]
    # overlap 3 -> precision 3/3, recall 3/4 -> F1 = 2 * 1 * 0.75 / 1.75 = 6/7
    assert token_f1("Paris is the capital", "The capital is Paris, France") == pytest.approx(6 / 7)
    assert token_f1("Berlin", "Paris") == 0.0
    assert token_f1("", "") == 1.0


def test_rouge_l_by_hand() -> None:
    # LCS of [a b c d] and [a c d e] is [a c d] (3): P = 3/4, R = 3/4, F = 0.75
    assert rouge_l("a b c d", "a c d e") == pytest.approx(0.75)
    assert rouge_l("x y", "a b") == 0.0


def test_contains_and_regex() -> None:
    assert contains("The answer is Paris, of course.", "paris") == 1.0
    assert contains("Lyon", "Paris") == 0.0
    answer = regex_match(r"####\s*(-?\d+)")
    assert answer("so 3 + 4 = 7 #### 7", "work... #### 7") == 1.0
    assert answer("#### 8", "#### 7") == 0.0
    assert answer("no final answer", "#### 7") == 0.0
    assert answer("#### 42", "42") == 1.0  # a bare reference is the answer itself


def test_mean_over_examples() -> None:
    assert mean_score("exact_match", ["a", "b", "c", "d"], ["a", "x", "c", "y"]) == 0.5
