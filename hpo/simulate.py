"""Simulate a study on recorded learning curves: W asynchronous workers, a simulated clock.

Each simulated worker asks trials through the same sampler/pruner factory the real worker
uses, replays the configuration's recorded validation curve point by point (each point costs
its recorded or modelled device-seconds), reports each point, stops when pruned, pauses where
the scheduler says and tells the final value. Deterministic for a given seed.
"""

from __future__ import annotations

import heapq
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.trial import TrialState

from hpo.core import records
from hpo.core.errors import SpecError
from hpo.core.factory import load_study, suggest_params
from hpo.core.progress import beats
from hpo.core.schedulers import Idle, Resumption, Scheduler, Start, build_scheduler
from hpo.core.spec import SearchSpace, SearchSpec
from hpo.core.warm_start import Ranked, WarmConfig

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
class Segment:
    """One stretch of a configuration's training: one Optuna trial, one worker.

    It trained the curve's points ``first_step`` .. ``last_step`` (1-based steps), paying only
    for those: a continued configuration never trains a point twice.
    """

    trial: int
    worker: int
    first_step: int
    last_step: int
    cost: float
    start: float
    end: float


@dataclass
class SimTrial:
    """One configuration: ``complete``, ``pruned``, or ``paused`` when the run ended."""

    number: int  # its first segment's trial number
    worker: int  # the worker of its first segment
    params: dict[str, Any]
    state: str
    value: float | None
    cost: float  # device-seconds over all its segments
    start: float
    end: float
    segments: list[Segment] = field(default_factory=list)


@dataclass
class Simulation:
    """The outcome: configurations in the order they ended, and best-so-far against cost."""

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
    point: int = field(compare=False, default=0)  # index into the curve; its step is point + 1
    until: int | None = field(compare=False, default=None)
    config: int = field(compare=False, default=0)


def simulate(
    search: SearchSpec,
    objective: CurveObjective,
    *,
    workers: int,
    seed: int,
    max_cost: float | None = None,
    warm: Sequence[WarmConfig] = (),
    ranking: Sequence[Ranked] = (),
    target: float | None = None,
    first: Sequence[dict[str, Any]] = (),
    sampler: Callable[[optuna.samplers.BaseSampler, int], optuna.samplers.BaseSampler]
    | None = None,
    scheduler: Scheduler | None = None,
) -> Simulation:
    """Run ``search``'s sampler, pruner and scheduler against ``objective`` with ``workers``
    workers.

    A configuration's value is its curve's last point, as a worker reports its final
    evaluation. With a scheduler, a worker asking for work does what its ``decide`` says
    over the study's trials, exactly as a real worker would under the study's lock: a paused
    configuration continues in a new segment (a trial that re-reports its earlier values for
    free) from the point where it stopped. Stops once ``search.budget.max_trials``
    configurations (not segments) started and none can continue, once ``max_cost``
    device-seconds were spent, once the study's own ``timeout_s`` (simulated wall clock) or
    ``max_gpu_hours`` (device seconds) is spent (the scheduler is told what they leave), or
    once a configuration completed at or better than ``target``, whichever comes first.

    ``warm``: configurations from earlier studies (``hpo.core.warm_start``), enqueued first as
    registration enqueues them; ``ranking``: their consensus ranking, stored as registration
    stores it (a ``search.warm_start`` study's workers follow it until the first result);
    ``first``: an initial design, enqueued next;
    ``sampler(spec_sampler, worker)``: the sampler a worker uses in place of the spec's, for
    benchmark candidates a spec cannot name yet; ``scheduler``: likewise, in place of the
    spec's (which must be replayable too).

    Raises:
        SpecError: The scheduler changes hyperparameters mid-run (PBT), or scores with a
            cool-down branch: a recorded curve cannot say what would have happened.
        ValueError: ``first`` with a scheduler (continuations are enqueued trials too).
    """
    replayable = _replayable(search, with_initial_design=bool(first))
    scheduler = scheduler or replayable
    search = search.model_copy(
        update={"sampler": search.sampler.model_copy(update={"seed": seed})}
    )
    studies = _worker_studies(search, workers, ranking, sampler)
    replay = _Replay(search, scheduler, objective, studies, seed=seed, max_cost=max_cost)
    queued = [(c.params, records.warm_start_attrs(c.source)) for c in warm]
    queued += [(params, {}) for params in first]
    if scheduler.pauses:  # a worker claims a queued trial before any decision: see ask_for_work
        replay.pending = queued
    else:
        for params, attrs in queued:
            studies[0].enqueue_trial(params, user_attrs=attrs)
    return replay.play(target)


def _worker_studies(
    search: SearchSpec,
    workers: int,
    ranking: Sequence[Ranked],
    sampler: Callable[[optuna.samplers.BaseSampler, int], optuna.samplers.BaseSampler] | None,
) -> list[optuna.Study]:
    """One in-memory study, seen by each worker through its own ``load_study``."""
    storage = optuna.storages.InMemoryStorage()
    direction = search.objective.direction
    created = optuna.create_study(storage=storage, study_name=STUDY, direction=direction)
    if ranking:
        params, scores = [r.params for r in ranking], [r.score for r in ranking]
        for key, value in records.warm_start_ranking_attrs(params, scores).items():
            created.set_user_attr(key, value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        # Worker w samples exactly as a real worker whose seed offset is w would.
        studies = [load_study(STUDY, search, storage, seed_offset=w) for w in range(workers)]
        if sampler is not None:
            for w, study in enumerate(studies):
                study.sampler = sampler(study.sampler, w)
    return studies


def _replayable(search: SearchSpec, *, with_initial_design: bool) -> Scheduler:
    """The study's scheduler, if recorded curves can replay it (see ``simulate``)."""
    scheduler = build_scheduler(search)
    if scheduler.replay_refusal is not None:
        raise SpecError(scheduler.replay_refusal, loc=("search", "scheduler"))
    if with_initial_design and scheduler.pauses:
        raise ValueError("an initial design and a scheduler's continuations share one queue.")
    if scheduler.cools_down:
        raise SpecError(
            "cool-down scores come from branches a recorded curve does not have.",
            loc=("search", "scheduler", "cooldown"),
        )
    return scheduler


class _Replay:
    """One simulation's state: the simulated workers, their events and the clock."""

    def __init__(
        self,
        search: SearchSpec,
        scheduler: Scheduler,
        objective: CurveObjective,
        studies: list[optuna.Study],
        *,
        seed: int,
        max_cost: float | None,
    ) -> None:
        self.search, self.scheduler, self.objective = search, scheduler, objective
        self.studies, self.seed, self.max_cost = studies, seed, max_cost
        self.minimize = search.objective.direction == "minimize"
        self.sim = Simulation()
        self.curves: dict[int, list[CurvePoint]] = {}  # configuration -> its curve
        self.records: dict[int, SimTrial] = {}
        self.config_of: dict[int, int] = {}  # segment's trial number -> its configuration
        self.in_flight: dict[int, tuple[float, float]] = {}  # worker -> (point start, cost)
        self.idle: set[int] = set()
        self.started = 0
        self.queue: list[_Event] = []
        self.best: float | None = None
        # with a pausing scheduler: configurations queued first (warm start), each enqueued
        # as it starts, so that a continuation's is the only trial waiting when it is asked
        self.pending: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def play(self, target: float | None = None) -> Simulation:
        """Run until no work is left, or until a configuration completed at or better than
        ``target``."""
        for worker in range(len(self.studies)):
            self.ask_for_work(worker, 0.0)
        while self.queue and not self.reached(target):
            event = heapq.heappop(self.queue)
            if self.train_point(event):
                continue
            self.ask_for_work(event.worker, event.time)
            # what ended may have made a paused configuration promotable
            for worker in sorted(self.idle):
                self.idle.discard(worker)
                self.ask_for_work(worker, event.time)
        for record in self.records.values():
            record.cost = sum(s.cost for s in record.segments)
        self.sim.trials = sorted(self.records.values(), key=lambda t: (t.end, t.number))
        return self.sim

    def reached(self, target: float | None) -> bool:
        if target is None or self.best is None:
            return False
        return not beats(target, self.best, minimize=self.minimize)

    def spent(self, now: float) -> float:
        return self.sim.total_cost + sum(now - start for start, _ in self.in_flight.values())

    def left(self, now: float) -> float | None:
        """Device seconds the study's own time or GPU-hour budget has left (a timeout's
        wall-clock seconds on every worker), None without one."""
        budget, lefts = self.search.budget, []
        if budget.max_gpu_hours is not None:
            lefts.append(budget.max_gpu_hours * 3600 - self.spent(now))
        if budget.timeout_s is not None:
            lefts.append((budget.timeout_s - now) * len(self.studies))
        return min(lefts) if lefts else None

    def ask_for_work(self, worker: int, now: float) -> None:
        if self.max_cost is not None and self.spent(now) >= self.max_cost:
            return
        left = self.left(now)
        if left is not None and left <= 0:  # the study's budget is spent: nothing new starts
            return
        # With no scheduler the decision does not depend on the trials: skip reading them.
        study = self.studies[worker]
        trials = study.get_trials(deepcopy=False) if self.scheduler.pauses else []
        if self.pending:  # a queued configuration is claimed before any decision, as a worker does
            self.start_config(worker, now, records.until(self.scheduler.first_attrs(trials)))
            return
        can_start = self.started < self.search.budget.max_trials
        decision = self.scheduler.decide(trials, can_start=can_start, seed=self.seed, left=left)
        if isinstance(decision, Start):
            self.start_config(worker, now, decision.until)
        elif isinstance(decision, Idle):
            self.idle.add(worker)
        else:
            self.continue_config(worker, now, decision)

    def start_config(self, worker: int, now: float, until: int | None) -> None:
        study = self.studies[worker]
        if self.pending:
            params, attrs = self.pending.pop(0)
            study.enqueue_trial(params, user_attrs=attrs)
        for _ in range(MAX_UNRECORDED_IN_A_ROW):
            trial = study.ask()
            try:
                curve = self.objective.curve(suggest_params(trial, self.search))
                break
            except NotRecorded:
                study.tell(trial, state=TrialState.FAIL)
        else:
            self.sim.stalled_workers += 1
            return
        if until is not None:
            records.set_until(trial, until)
        self.started += 1
        self.curves[trial.number] = curve
        self.records[trial.number] = SimTrial(
            trial.number, worker, trial.params, "running", None, 0.0, now, now
        )
        self.run_segment(worker, trial, trial.number, 0, until, now)

    def continue_config(self, worker: int, now: float, decision: Resumption) -> None:
        study = self.studies[worker]
        trials = study.get_trials(deepcopy=False)
        paused = trials[decision.trial]
        queued = decision.continuation(trials)
        study.enqueue_trial(queued.params, user_attrs=queued.attrs)
        trial = study.ask()  # pops the continuation: the only trial waiting
        suggest_params(trial, self.search)
        for step, value in sorted(paused.intermediate_values.items()):
            trial.report(value, step)  # the earlier segments, again: one curve, no cost
        config = self.config_of[decision.trial]
        point = max(paused.intermediate_values)
        self.run_segment(worker, trial, config, point, decision.until, now)

    def run_segment(
        self,
        worker: int,
        trial: optuna.Trial,
        config: int,
        point: int,
        until: int | None,
        now: float,
    ) -> None:
        self.config_of[trial.number] = config
        segment = Segment(trial.number, worker, point + 1, point, 0.0, now, now)
        self.records[config].segments.append(segment)
        self.records[config].state = "running"
        self.schedule(_Event(now, worker, trial, point, until, config))

    def schedule(self, event: _Event) -> None:
        cost = self.curves[event.config][event.point][0]
        self.in_flight[event.worker] = (event.time, cost)
        event.time += cost
        heapq.heappush(self.queue, event)

    def train_point(self, event: _Event) -> bool:
        """Train and report one point; whether the segment goes on (else it ended)."""
        cost, value = self.curves[event.config][event.point]
        del self.in_flight[event.worker]
        self.sim.total_cost += cost
        segment = self.records[event.config].segments[-1]
        segment.cost += cost
        segment.last_step = step = event.point + 1
        event.trial.report(value, step=step)
        if step == len(self.curves[event.config]):
            self.end_segment(event, "complete", value)
        elif event.trial.should_prune():
            self.end_segment(event, "pruned", None)
        elif event.until is not None and step >= event.until:
            self.end_segment(event, "paused", None)
        else:
            event.point += 1
            self.schedule(event)
            return True
        return False

    def end_segment(self, event: _Event, state: str, value: float | None) -> None:
        record = self.records[event.config]
        record.state, record.value, record.end = state, value, event.time
        record.segments[-1].end = event.time
        if state == "paused":
            assert event.until is not None, "a segment pauses at its until"
            records.mark_paused(event.trial, at=event.until)
        records.record_device_time(event.trial, record.segments[-1].cost, gpu=False)
        told = TrialState.COMPLETE if state == "complete" else TrialState.PRUNED
        self.studies[event.worker].tell(event.trial, value, state=told)
        if (
            state == "complete"
            and value is not None
            and beats(value, self.best, minimize=self.minimize)
        ):
            self.best = value
            self.sim.best_curve.append((self.spent(event.time), self.best))
