"""Counts that add up: configurations against the budget, their segments, and trials queued
again apart from failed ones (``hpo.core.tally``); ``hpo run``'s live view built on them."""

from __future__ import annotations

import datetime as dt
from typing import Any

from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial
from rich.console import Console

from hpo.core.records import CONTINUES_ATTR, PAUSED_AT_ATTR, RETRIED_FROM_ATTR, YIELDED_ATTR
from hpo.core.records.keys import FAIL_REASON_ATTR, INFEASIBLE_RECORD_ATTR
from hpo.core.schemas import TrialPublic
from hpo.core.tally import Tally, tally
from hpo.live import ProgressPipes, Steps, progress_view, short_configuration
from service.dashboard_storage import SEGMENT_LABEL, labelled


def _trial(number: int, state: TrialState, **attrs: Any) -> FrozenTrial:
    trial = create_trial(
        state=state,
        value=0.5 if state == TrialState.COMPLETE else None,
        params={"learning_rate": 1e-3},
        distributions={"learning_rate": FloatDistribution(1e-5, 1e-2, log=True)},
        user_attrs=attrs,
    )
    trial.number = number
    return trial


def _scheduled_study() -> list[FrozenTrial]:
    """The issue's study in small: three configurations paused at a rung, each continued by a
    later segment (two to the end, one pruned there); a trial a stopped worker left, failed
    and queued again; an infeasible record."""
    paused = [_trial(n, TrialState.PRUNED, **{PAUSED_AT_ATTR: 64}) for n in range(3)]
    continued = [
        _trial(3, TrialState.COMPLETE, **{CONTINUES_ATTR: 0}),
        _trial(4, TrialState.COMPLETE, **{CONTINUES_ATTR: 1}),
        _trial(5, TrialState.PRUNED, **{CONTINUES_ATTR: 2}),
    ]
    stopped = _trial(6, TrialState.FAIL, **{FAIL_REASON_ATTR: "shutdown"})
    retry = _trial(7, TrialState.WAITING, **{RETRIED_FROM_ATTR: 6})
    record = _trial(8, TrialState.PRUNED, **{INFEASIBLE_RECORD_ATTR: 5})
    return [*paused, *continued, stopped, retry, record]


def test_segments_and_retries_do_not_count_as_configurations() -> None:
    counted = tally(_scheduled_study(), budget=4, scheduled=True)
    assert counted == Tally(
        budget=4,
        scheduled=True,
        configurations=4,  # 0, 1, 2 and the stopped 6 (its retry 7 is the same one)
        complete=2,
        pruned=1,
        paused=3,
        waiting=1,
        failed=0,
        interrupted=1,
    )
    assert counted.budget_line() == "configurations 4/4"
    assert counted.detail_line() == (
        "6 segments (2 complete, 1 pruned, 3 paused), 1 interrupted (continued or queued "
        "again), 0 failed"
    )


def test_a_segment_that_gave_its_worker_up_is_interrupted_not_a_result() -> None:
    """A trial preempted (or stopped with its worker) pauses with its state kept; the trial
    continuing it is the configuration's result."""
    yielded = _trial(0, TrialState.PRUNED, **{YIELDED_ATTR: "preempted at 64 examples"})
    continued = _trial(1, TrialState.COMPLETE, **{CONTINUES_ATTR: 0})
    counted = tally([yielded, continued], budget=1, scheduled=False)
    assert (counted.complete, counted.pruned, counted.interrupted) == (1, 0, 1)
    assert counted.budget_line() == "trials 1/1"


def test_the_budget_line_never_passes_the_budget() -> None:
    # two workers may each end the last trial: the count passes the budget, the line does not
    ended = [_trial(n, TrialState.COMPLETE) for n in range(3)]
    assert tally(ended, budget=2, scheduled=False).budget_line() == "trials 2/2"
    failed = _trial(3, TrialState.FAIL)  # no retry of it: failed for good
    assert tally([*ended, failed], budget=4, scheduled=False).detail_line() == (
        "3 complete, 0 pruned, 1 failed"
    )


def test_rest_trials_count_like_optunas() -> None:
    study = _scheduled_study()
    public = [TrialPublic.of(t) for t in study]
    assert tally(public, budget=4, scheduled=True) == tally(study, budget=4, scheduled=True)


def test_eta_follows_the_rate_of_the_steps_seen() -> None:
    steps = Steps(step=10, total=100, first_step=10, first_at=50.0, at=50.0)
    assert steps.eta() is None  # one report: no rate yet
    steps.step, steps.at = 30, 60.0  # 20 steps in 10 s
    assert steps.eta() == 35.0
    assert Steps(step=5, total=None, first_step=1, first_at=0.0, at=1.0).eta() is None


def test_a_configuration_in_short() -> None:
    params = {"learning_rate": 0.00039, "lora_r": 8, "lora_method": "dora", "lora_alpha_ratio": 2}
    assert short_configuration(params) == "lr 0.00039, lora_r 8, lora_method dora, lar 2"


def test_the_live_view_fits_80_columns_with_every_header_whole() -> None:
    running = _trial(9, TrialState.RUNNING)
    running.params = {f"a_long_searched_name_{i}": 0.123456 for i in range(6)}
    running.datetime_start = dt.datetime.now()
    console = Console(width=80, record=True, color_system=None)
    console.print(
        progress_view(
            "a-study-with-a-long-name",
            "exact_match",
            tally([running], budget=10, scheduled=False),
            [running],
            0.5,
            elapsed=75,
            alive=2,
            workers=2,
            pipes=ProgressPipes(),
        )
    )
    text = console.export_text()
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "…" not in text
    header = next(line for line in text.splitlines() if "configuration" in line)
    assert header.split() == ["#", "configuration", "step", "exact_match", "elapsed", "ETA"]
    assert "best exact_match 0.5000" in text and "1m15s" in text


def test_the_dashboard_labels_segments_that_optunas_state_misnames() -> None:
    """optuna-dashboard shows Optuna's state: a paused segment reads "Pruned", a trial its
    stopped worker left "Fail". Each gets a `segment` label; the list keeps its order."""
    study = _scheduled_study()
    shown = labelled(study)
    assert [t.number for t in shown] == [t.number for t in study]
    labels = {t.number: t.user_attrs.get(SEGMENT_LABEL) for t in shown}
    assert labels[0] == "paused at 64 examples; continued as trial 3"
    assert labels[6] == "interrupted; queued again as trial 7"
    assert {n for n, label in labels.items() if label is None} == {3, 4, 5, 7, 8}
    assert all(SEGMENT_LABEL not in t.user_attrs for t in study)  # the storage's own untouched
    waiting = _trial(9, TrialState.PRUNED, **{PAUSED_AT_ATTR: 128})
    assert labelled([waiting])[0].user_attrs[SEGMENT_LABEL] == (
        "paused at 128 examples; continues later"
    )
    reason = "preempted: the fleet is full and another owner waits at 64 examples"
    gave_up = _trial(10, TrialState.PRUNED, **{YIELDED_ATTR: reason})
    continuation = _trial(11, TrialState.RUNNING, **{CONTINUES_ATTR: 10})
    assert labelled([gave_up, continuation])[0].user_attrs[SEGMENT_LABEL] == (
        f"{reason}; continued as trial 11"
    )
