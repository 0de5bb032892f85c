"""``hpo report``'s page needs nothing from the network: plotly.js is inlined once, and
every figure is Optuna's own (the browser test sees them drawn)."""

from __future__ import annotations

import re

from hpo.core.schemas import TrialPublic
from hpo.core.spec import StudySpec
from hpo.report import report_html
from tests.specs import minimal_spec

SPEC = StudySpec.model_validate(
    minimal_spec("reported", space={"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-2}})
)


def _trial(number: int, state: str, value: float | None) -> TrialPublic:
    return TrialPublic(
        number=number,
        state=state,
        params={"learning_rate": 1e-3 * (number + 1)},
        value=value,
        intermediate_values={64: 2.0 - number / 10, 128: 1.5 - number / 10},
        datetime_start=None,
        datetime_complete=None,
        duration_s=1.0,
        user_attrs={},
    )


def test_one_page_with_plotly_inlined_once_and_no_remote_script() -> None:
    trials = [_trial(0, "complete", 1.2), _trial(1, "pruned", None), _trial(2, "complete", 1.1)]
    page = report_html(SPEC, trials, best=trials[2], baseline=2.5)
    assert page.count("plotly.js v") == 1
    assert not re.search(r"<script[^>]+src=", page)  # nothing loaded from elsewhere
    assert page.count("Plotly.newPlot") == 3  # curves, objective over trials, importances
    assert "eval_loss, untuned model" in page


def test_before_two_complete_trials_the_importances_say_what_they_need() -> None:
    page = report_html(SPEC, [_trial(0, "complete", 1.2)], best=None)
    assert page.count("Plotly.newPlot") == 2
    assert "needs two complete trials that differ" in page
    assert "no trial has completed yet" in page
