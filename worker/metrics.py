"""Generation metrics, offline (no hub-hosted metric scripts): normalised exact match and token
F1 as SQuAD defines them, ROUGE-L (Google's rouge-score), and two answer-format checks. A spec's
pattern runs on RE2 over bounded text (``hpo.core.patterns``), never on Python's ``re``."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from rouge_score import rouge_scorer

from hpo.core.patterns import bounded, compile_pattern

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (SQuAD's normalisation)."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize(prediction) == normalize(reference))


def token_f1(prediction: str, reference: str) -> float:
    predicted, expected = normalize(prediction).split(), normalize(reference).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


_ROUGE = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(prediction: str, reference: str) -> float:
    return float(_ROUGE.score(reference, prediction)["rougeL"].fmeasure)


def contains(prediction: str, reference: str) -> float:
    expected = normalize(reference)
    return float(bool(expected) and expected in normalize(prediction))


def _answer(pattern: Any, text: str) -> str | None:
    match = pattern.search(bounded(text))
    if match is None:
        return None
    return match.group(1) if match.groups() else match.group(0)


def regex_match(pattern: str) -> Callable[[str, str], float]:
    """1 when the pattern's answer (its first group, else the whole match) in the prediction
    equals the one in the reference (or the whole reference, when it has none)."""
    compiled = compile_pattern(pattern)

    def score(prediction: str, reference: str) -> float:
        predicted = _answer(compiled, prediction)
        expected = _answer(compiled, reference) or reference
        return float(predicted is not None and normalize(predicted) == normalize(expected))

    return score


Score = Callable[[str, str], float]  # (prediction, reference) -> score in [0, 1]


def _patterned(pattern: str | None) -> Score:
    assert pattern is not None  # the spec requires one (``Metric.pattern``)
    return regex_match(pattern)


def _fixed(score: Score) -> Callable[[str | None], Score]:
    return lambda _pattern: score


# Each generation metric of ``hpo.core.spec.METRICS`` (``generates``): the objective's pattern
# to the metric's scorer.
SCORERS: dict[str, Callable[[str | None], Score]] = {
    "exact_match": _fixed(exact_match),
    "token_f1": _fixed(token_f1),
    "rouge_l": _fixed(rouge_l),
    "regex": _patterned,
    "contains": _fixed(contains),
}


def scorer(metric: str, pattern: str | None = None) -> Score:
    return SCORERS[metric](pattern)


def mean_score(
    metric: str, predictions: Sequence[str], references: Sequence[str], pattern: str | None = None
) -> float:
    score = scorer(metric, pattern)
    return sum(score(p, r) for p, r in zip(predictions, references, strict=True)) / max(
        1, len(predictions)
    )
