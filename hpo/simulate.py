"""Simulate a study on recorded learning curves: W asynchronous workers, a simulated clock.

Each simulated worker asks trials through the same sampler/pruner factory the real worker
uses, replays the configuration's recorded validation curve point by point (each point costs
its recorded or modelled device-seconds), reports each point, stops when pruned and tells the
final value. Deterministic for a given seed.
"""

from __future__ import annotations

import heapq
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Protocol

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.trial import TrialState

from hpo.core.factory import load_study, suggest_params
from hpo.core.progress import beats
from hpo.core.spec import SearchSpace, SearchSpec

CurvePoint = tuple[float, float]  # (cost in device-seconds, objective value after it)
STUDY = "simulated"


class NotRecorded(KeyError):
    """The objective has no curve for these params: the trial fails at no cost."""


# A sampler that ignores failed trials and converges (GP) can propose the same unrecorded
# configuration forever; a worker that got this many in a row stops.
MAX_UNRECORDED_IN_A_ROW = 100


class CurveObjective(Protocol):
    """Anything with a search space and a recorded curve per configuration.

    ``curve(params)`` returns the points a trial with ``params`` would report, in order, or
    raises ``NotRecorded``; ``search_space`` is the space (spec distributions) the curves are
    defined on.
    """

    @property
    def search_space(self) -> SearchSpace: ...

    def curve(self, params: dict[str, Any]) -> list[CurvePoint]: ...


@dataclass
class SimTrial:
    number: int
    worker: int
    params: dict[str, Any]
    state: str
    value: float | None
    cost: float
    start: float
    end: float


@dataclass
class Simulation:
    """The outcome: trials in the order they ended, and best-so-far against cost."""

    trials: list[SimTrial] = field(default_factory=list)
    total_cost: float = 0.0
    # (cumulative device-seconds, best value) each time the best improved
    best_curve: list[tuple[float, float]] = field(default_factory=list)
    # workers that stopped early: their sampler kept proposing unrecorded configurations
    stalled_workers: int = 0

    def cost_to_reach(self, target: float, *, minimize: bool = True) -> float:
        """Device-seconds spent when a trial first finished at or better than ``target``."""
        for cost, best in self.best_curve:
            if not beats(target, best, minimize=minimize):
                return cost
        return math.inf

    def best_at(self, budget: float) -> float | None:
        """The best value known once ``budget`` device-seconds were spent."""
        known = [best for cost, best in self.best_curve if cost <= budget]
        return known[-1] if known else None


@dataclass(order=True)
class _Event:
    time: float
    worker: int
    trial: Any = field(compare=False, default=None)
    point: int = field(compare=False, default=0)


def simulate(
    search: SearchSpec,
    objective: CurveObjective,
    *,
    workers: int,
    seed: int,
    max_cost: float | None = None,
) -> Simulation:
    """Run ``search``'s sampler and pruner against ``objective`` with ``workers`` workers.

    A trial's value is its curve's last point, as a worker reports its final evaluation.
    Stops after ``search.budget.max_trials`` finished trials or once ``max_cost``
    device-seconds were spent, whichever comes first.
    """
    search = search.model_copy(
        update={"sampler": search.sampler.model_copy(update={"seed": seed})}
    )
    storage = optuna.storages.InMemoryStorage()
    direction = search.objective.direction
    minimize = direction == "minimize"
    optuna.create_study(storage=storage, study_name=STUDY, direction=direction)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        # Worker w samples exactly as a real worker whose seed offset is w would.
        studies = [load_study(STUDY, search, storage, seed_offset=w) for w in range(workers)]
    sim = Simulation()
    curves: dict[int, list[CurvePoint]] = {}
    started: dict[int, float] = {}
    in_flight: dict[int, tuple[float, float]] = {}  # worker -> (point start, point cost)
    finished = 0
    queue: list[_Event] = []
    best: float | None = None

    def spent(now: float) -> float:
        return sim.total_cost + sum(now - start for start, _ in in_flight.values())

    def start_trial(worker: int, now: float) -> None:
        for _ in range(MAX_UNRECORDED_IN_A_ROW):
            trial = studies[worker].ask()
            try:
                curves[trial.number] = objective.curve(suggest_params(trial, search))
                break
            except NotRecorded:
                studies[worker].tell(trial, state=TrialState.FAIL)
        else:
            sim.stalled_workers += 1
            return
        started[trial.number] = now
        schedule(worker, trial, 0, now)

    def schedule(worker: int, trial: optuna.Trial, point: int, now: float) -> None:
        cost = curves[trial.number][point][0]
        in_flight[worker] = (now, cost)
        heapq.heappush(queue, _Event(now + cost, worker, trial, point))

    def end_trial(event: _Event, state: TrialState, value: float | None) -> None:
        nonlocal finished, best
        study = studies[event.worker]
        study.tell(event.trial, value if state == TrialState.COMPLETE else None, state=state)
        finished += 1
        cost = sum(c for c, _ in curves[event.trial.number][: event.point + 1])
        sim.trials.append(
            SimTrial(event.trial.number, event.worker, event.trial.params, state.name.lower(),
                     value, cost, started[event.trial.number], event.time)
        )  # fmt: skip
        if (
            state == TrialState.COMPLETE
            and value is not None
            and beats(value, best, minimize=minimize)
        ):
            best = value
            sim.best_curve.append((spent(event.time), best))

    for worker in range(workers):
        start_trial(worker, 0.0)
    while queue:
        event = heapq.heappop(queue)
        cost, value = curves[event.trial.number][event.point]
        del in_flight[event.worker]
        sim.total_cost += cost
        event.trial.report(value, step=event.point + 1)
        last = event.point + 1 == len(curves[event.trial.number])
        if last:
            end_trial(event, TrialState.COMPLETE, value)
        elif event.trial.should_prune():
            end_trial(event, TrialState.PRUNED, None)
        else:
            schedule(event.worker, event.trial, event.point + 1, event.time)
            continue
        running = len(in_flight)
        over_budget = max_cost is not None and spent(event.time) >= max_cost
        if finished + running < search.budget.max_trials and not over_budget:
            start_trial(event.worker, event.time)
    return sim
