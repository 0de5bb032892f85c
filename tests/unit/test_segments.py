"""What a worker does next in a scheduled study (hpo.core.schedulers) and how a segment ends
(worker.callbacks.FidelityCallback): pure decisions and one callback, no database."""

from __future__ import annotations

import threading
from typing import Any

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial
from pydantic import ValidationError
from transformers import TrainerControl, TrainerState, TrainingArguments

from hpo.core.records import (
    CONTINUES_ATTR,
    LINEAGE_ATTR,
    PAUSED_AT_ATTR,
    RETRIED_FROM_ATTR,
    SLOT_ATTR,
    UNTIL_ATTR,
)
from hpo.core.schedulers import Idle, Start
from hpo.core.schedulers.dispatch import (
    Segment,
    continuation,
    decide,
    first_segment_attrs,
    started,
    starts_configuration,
)
from hpo.core.schedulers.pbt import ContinueMember, Lineage, Perturbation
from hpo.core.schedulers.rungs import Continue
from hpo.core.spec import SearchSpec, StudySpec
from tests.specs import minimal_spec
from worker.callbacks import FidelityCallback, Interruptions

SPACE = {"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True}}


def search(scheduler: dict[str, Any], max_trials: int = 3) -> SearchSpec:
    return SearchSpec.model_validate(
        {"space": SPACE, "scheduler": scheduler, "budget": {"max_trials": max_trials}}
    )


def trial(
    number: int, lr: float, values: dict[int, float], state: TrialState, **attrs: Any
) -> FrozenTrial:
    made = create_trial(
        state=state,
        params={"learning_rate": lr},
        distributions={"learning_rate": FloatDistribution(1e-5, 1e-2, log=True)},
        value=list(values.values())[-1] if state == TrialState.COMPLETE else None,
        intermediate_values=values,
        user_attrs=attrs,
    )
    made.number = number
    return made


def paused(number: int, lr: float, value: float, **attrs: Any) -> FrozenTrial:
    return trial(
        number, lr, {64: value}, TrialState.PRUNED, **{UNTIL_ATTR: 64, PAUSED_AT_ATTR: 64, **attrs}
    )


TOP_1 = {"type": "top_k", "at_steps": 64, "k": 1, "min_scored": 2}


def test_the_budget_counts_configurations_not_segments() -> None:
    trials = [
        paused(0, 1e-3, 2.0),
        paused(1, 1e-4, 3.0),
        trial(2, 1e-3, {64: 2.0, 128: 1.5}, TrialState.COMPLETE, **{CONTINUES_ATTR: 0}),
        trial(3, 3e-3, {}, TrialState.FAIL),  # failed before it reported: not a configuration
    ]
    assert started(trials, search(TOP_1)) == 2
    assert decide(trials, search(TOP_1, max_trials=3), max_trials=3, seed=0) == Start(until=64)
    # the budget is spent, 1 is not the best at its rung and nothing runs: the study is done
    assert decide(trials, search(TOP_1, max_trials=2), max_trials=2, seed=0) == Idle(done=True)


def test_with_no_new_configuration_allowed_the_best_paused_one_continues() -> None:
    trials = [paused(0, 1e-3, 2.0), paused(1, 1e-4, 1.0)]
    decision = decide(trials, search(TOP_1, max_trials=2), max_trials=2, seed=0)
    assert decision == Continue(config=1, trial=1, until=None)
    queued = continuation(decision, trials)
    assert queued.params == {"learning_rate": 1e-4}
    assert queued.attrs == {CONTINUES_ATTR: 1}


def test_a_pbt_continuation_carries_its_member_and_lineage() -> None:
    change = Perturbation("learning_rate", 1e-4, 1.2e-4, "x1.2")
    lineage = Lineage(parent=1, step=64, perturbations=(change,))
    decision = ContinueMember(
        slot=0, trial=1, params={"learning_rate": 1.2e-4}, until=128, lineage=lineage
    )
    queued = continuation(decision, [])
    assert queued.params == {"learning_rate": 1.2e-4}
    assert queued.attrs == {
        CONTINUES_ATTR: 1,
        UNTIL_ATTR: 128,
        SLOT_ATTR: 0,
        LINEAGE_ATTR: lineage.to_attr(),
    }
    assert Segment.of(queued.attrs) == Segment(until=128, continues=1)


def test_a_first_segment_pauses_at_the_first_rung_and_a_pbt_member_gets_a_slot() -> None:
    assert first_segment_attrs([], search({"type": "asha", "min_steps": 32})) == {UNTIL_ATTR: 32}
    pbt = search({"type": "pbt", "population_size": 3, "interval_steps": 50})
    member = trial(0, 1e-3, {}, TrialState.RUNNING, **{SLOT_ATTR: 0, UNTIL_ATTR: 50})
    assert first_segment_attrs([member], pbt) == {UNTIL_ATTR: 50, SLOT_ATTR: 1}
    # adaptive measures first: its first configurations run to their end unpaused
    assert first_segment_attrs([], search({"type": "adaptive", "min_steps": 32})) == {}


def test_a_pbt_population_never_grows_past_the_budget() -> None:
    pbt = search({"type": "pbt", "population_size": 2, "interval_steps": 50}, max_trials=2)
    members = [trial(n, 1e-3, {}, TrialState.RUNNING, **{SLOT_ATTR: n}) for n in range(2)]
    assert decide(members[:1], pbt, max_trials=2, seed=0) == Start(until=50)
    assert decide(members, pbt, max_trials=2, seed=0) == Idle(done=False)


def test_queued_trials_that_start_a_configuration_are_told_apart_from_segments() -> None:
    assert starts_configuration(trial(0, 1e-3, {}, TrialState.WAITING))
    assert not starts_configuration(trial(1, 1e-3, {}, TrialState.WAITING, **{CONTINUES_ATTR: 0}))
    assert not starts_configuration(
        trial(2, 1e-3, {}, TrialState.WAITING, **{RETRIED_FROM_ATTR: 0})
    )


def test_studies_check_what_a_scheduler_needs() -> None:
    asha = {"type": "asha", "min_steps": 64}
    assert StudySpec.model_validate(minimal_spec(scheduler=asha)).search.scheduler.type == "asha"
    generating = {"metric": "exact_match"}
    assert StudySpec.model_validate(minimal_spec(scheduler=asha, objective=generating))
    with pytest.raises(ValidationError, match="report_examples is 0"):
        StudySpec.model_validate(
            minimal_spec(
                scheduler=asha,
                objective=generating,
                evaluation={"generation": {"report_examples": 0}},
            )
        )
    with pytest.raises(ValidationError, match="must be at least"):
        StudySpec.model_validate(
            minimal_spec(
                space=SPACE,
                budget={"max_trials": 4},
                scheduler={"type": "pbt", "population_size": 8, "interval_steps": 64},
            )
        )


def _callback(trial: optuna.Trial, *, until: int | None) -> FidelityCallback:
    return FidelityCallback(
        trial,
        metric="eval_loss",
        every_examples=8,
        examples_per_step=8,
        max_examples=32,
        interruptions=Interruptions(threading.Event()),
        until=until,
    )


def _evaluate_at(callback: FidelityCallback, step: int) -> TrainerControl:
    args = TrainingArguments(output_dir="unused", report_to="none", use_cpu=True)
    state, control = TrainerState(), TrainerControl()
    state.global_step = step
    callback.on_step_end(args, state, control)
    callback.on_evaluate(args, state, control, metrics={"eval_loss": 1.0 / step})
    return control


def test_a_segment_pauses_at_its_first_report_at_or_past_until() -> None:
    trial = optuna.create_study().ask()
    callback = _callback(trial, until=16)
    assert not _evaluate_at(callback, 1).should_training_stop
    control = _evaluate_at(callback, 2)
    assert control.should_save and control.should_training_stop
    assert callback.paused_at == 16


def test_training_that_ends_at_a_report_is_neither_paused_nor_pruned() -> None:
    """A trial whose last scheduled report is its end has its result: pausing it would
    leave nothing to continue, pruning it would throw a finished result away."""
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=0.0))
    callback = _callback(study.ask(), until=32)
    control = _evaluate_at(callback, 4)
    assert not control.should_training_stop
    assert callback.paused_at is None
    assert callback.reported == {32: 0.25}
    with pytest.raises(optuna.TrialPruned):  # the same pruner does prune before the end
        _evaluate_at(_callback(study.ask(), until=None), 1)
