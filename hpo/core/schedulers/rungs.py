"""What the rung schedulers (none, ASHA, top-k, adaptive) share: configurations as chains of
segments, ranked at rungs; the most advanced promotable paused one continues.

A retried segment (``records.retried_from``) belongs to the configuration it retries. Each
subclass says where its rungs are (``rungs``) and who continues (``promotable``).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from hpo.core import records
from hpo.core.records import SegmentStatus
from hpo.core.records import is_infeasible_record as is_record
from hpo.core.schedulers.base import Continuation, Decision, Idle, Start
from hpo.core.spec import MAX_STEP


@dataclass(frozen=True)
class Config:
    """One configuration: all its segments as one curve.

    Attributes:
        number: Its first segment's trial number, the configuration's id.
        params: Its hyperparameters.
        values: ``(step, value)`` reported so far over all segments, ascending steps.
        status: Of its latest segment: running (RUNNING or WAITING), paused, complete, or
            stopped (failed or pruned for good).
        last_trial: The number of its latest segment: the one a continuation loads.
        unpaused: Started to run to its end with no rung: an unselected sample of how early
            scores relate to final ones.
        paused_rung: While paused, the rung it paused at (its segment's ``until``).
        cooled: ``(rung, score)`` after a cool-down branch, for rungs it paused at with one.
        ties: ``(step, eval_loss)`` recorded beside a generation objective's reports
            (``records.eval_loss_curve``): what ranks equal scores at a rung, lower first.
        tie: Once complete, its final tie-break score (``records.tie_break``).
        seconds: Device seconds over all its segments that ended (``records.device_seconds``).
    """

    number: int
    params: dict[str, Any]
    values: tuple[tuple[int, float], ...]
    status: SegmentStatus
    last_trial: int
    unpaused: bool
    paused_rung: int | None = None
    cooled: tuple[tuple[int, float], ...] = ()
    ties: tuple[tuple[int, float], ...] = ()
    tie: float | None = None
    seconds: float = 0.0

    @property
    def last_step(self) -> int:
        return self.values[-1][0] if self.values else 0

    @property
    def final(self) -> float | None:
        """The configuration's value: its last report once complete."""
        return self.values[-1][1] if self.status == "complete" and self.values else None

    def value_at(self, step: int) -> float | None:
        """The score at a rung: the first report at or after ``step``."""
        i = bisect.bisect_left(self.values, step, key=lambda point: point[0])
        return self.values[i][1] if i < len(self.values) else None

    def score_at(self, rung: int) -> float | None:
        """What ranks it at a rung: the cooled score where it has one, else ``value_at``."""
        return dict(self.cooled).get(rung, self.value_at(rung))

    def tie_at(self, step: int) -> float:
        """What ranks it among equal scores at a rung: the tie-break curve's first point at or
        after ``step`` (infinite without one: last among equals)."""
        i = bisect.bisect_left(self.ties, step, key=lambda point: point[0])
        return self.ties[i][1] if i < len(self.ties) else math.inf


def configurations(trials: Iterable[FrozenTrial]) -> list[Config]:
    """Group a study's trials (segments) into configurations, in order of their first trial."""
    roots: dict[int, int] = {}
    chains: dict[int, list[FrozenTrial]] = {}
    for trial in sorted((t for t in trials if not is_record(t)), key=lambda t: t.number):
        # A parent always has a smaller number than the segments that continue or retry it.
        parent = records.parent(trial)
        root = roots[trial.number] = trial.number if parent is None else roots.get(parent, parent)
        chains.setdefault(root, []).append(trial)
    return [_config(number, segments) for number, segments in chains.items()]


def _config(number: int, segments: list[FrozenTrial]) -> Config:
    latest = segments[-1]
    # A continuation re-reports its parent's values: the latest segment with any holds the
    # curve so far (a just-enqueued continuation has none yet).
    carrier = next((s for s in reversed(segments) if s.intermediate_values), latest)
    cooled = (
        (rung, score)
        for s in segments
        if (score := records.cooled_score(s)) is not None
        and (rung := records.paused_at(s)) is not None
    )
    return Config(
        number=number,
        params=dict(latest.params or segments[0].params),
        values=tuple(sorted(carrier.intermediate_values.items())),
        status=records.segment_status(latest),
        last_trial=latest.number,
        unpaused=records.until(segments[0]) is None
        and not any(records.paused_at(s) is not None for s in segments),
        paused_rung=records.paused_at(latest),
        cooled=tuple(sorted(cooled)),
        ties=tuple(sorted((records.eval_loss_curve(carrier) or {}).items())),
        tie=records.tie_break(latest) if latest.state == TrialState.COMPLETE else None,
        seconds=sum(records.device_seconds(s) for s in segments),
    )


@dataclass(frozen=True)
class Continue:
    """Continue configuration ``config`` from its paused segment ``trial`` up to ``until``."""

    config: int
    trial: int
    until: int | None

    def continuation(self, trials: Sequence[FrozenTrial]) -> Continuation:
        parent = next(t for t in trials if t.number == self.trial)
        attrs = records.segment_attrs(continues=self.trial, until=self.until)
        return Continuation(dict(parent.params), attrs)


@dataclass(frozen=True)
class _Standing:
    """A rung's ranking. Configurations are ranked by params, not by trial: a sampler that
    proposes a configuration again (likely on categorical spaces) adds no information, and
    its twins must not crowd others out of the promotions, nor train the same thing twice.

    Attributes:
        scores: The best ``rank_key`` of each distinct configuration that reached the rung,
            ascending (lower is better).
        advanced: Params of configurations of which a twin went on past the rung.
    """

    scores: list[RankKey]
    advanced: frozenset[tuple[tuple[str, Any], ...]]


RankKey = tuple[float, float]  # (signed score, tie-break): lower is better


def rank_key(config: Config, rung: int, sign: float) -> RankKey | None:
    """How ``config`` ranks at ``rung``: its signed score, then its tie-break there (a
    saturated generation metric ranks on the validation loss behind it)."""
    value = config.score_at(rung)
    return None if value is None else (sign * value, config.tie_at(rung))


def _standing(configs: Sequence[Config], rung: int, sign: float) -> _Standing:
    best: dict[tuple[tuple[str, Any], ...], RankKey] = {}
    advanced = set()
    for c in configs:
        ranked = rank_key(c, rung, sign)
        if ranked is None:
            continue
        key = params_key(c)
        best[key] = min(best.get(key, (math.inf, math.inf)), ranked)
        waiting_here = c.status == "paused" and c.paused_rung == rung
        if c.status != "stopped" and not waiting_here:
            advanced.add(key)
    return _Standing(sorted(best.values()), frozenset(advanced))


def params_key(config: Config) -> tuple[tuple[str, Any], ...]:
    """A configuration's params as a key: twins (same params) share it."""
    return tuple(sorted(config.params.items()))


def geometric_rungs(min_steps: int, reduction_factor: int) -> tuple[int, ...]:
    """``min_steps * reduction_factor**k`` up to the largest step a spec allows."""
    rungs = []
    step = min_steps
    while step <= MAX_STEP:
        rungs.append(step)
        step *= reduction_factor
    return tuple(rungs)


def _next_rung(rungs: tuple[int, ...], step: int) -> int | None:
    return next((r for r in rungs if r > step), None)


def _score(config: Config, rung: int, sign: float) -> RankKey:
    ranked = rank_key(config, rung, sign)
    assert ranked is not None, "a configuration paused at a rung has a score there"
    return ranked


class RungScheduler:
    """Continue the most advanced promotable paused configuration, else start a new one,
    else wait. Subclasses say where the rungs are and who continues."""

    pauses = True
    cools_down = False
    enqueue_refusal: str | None = None
    replay_refusal: str | None = None

    def __init__(self, *, minimize: bool = True) -> None:
        self.minimize = minimize

    def rungs(self, configs: Sequence[Config]) -> tuple[int, ...]:
        """The steps where trials pause now, ascending; empty: none pauses."""
        raise NotImplementedError

    def promotable(self, rank: int, scored: int, *, can_start: bool) -> bool:
        """Whether the ``rank``-th best of ``scored`` configurations at a rung continues."""
        raise NotImplementedError

    def audits(self, configs: Sequence[Config]) -> bool:
        """Whether the next configuration runs unpaused, to measure the rungs."""
        return False

    def started(self, trials: Sequence[FrozenTrial]) -> int:
        """One that failed before it reported anything is not a configuration, as a failed
        trial does not count without a scheduler."""
        return sum(not (c.status == "stopped" and not c.values) for c in configurations(trials))

    def decide(
        self,
        trials: Sequence[FrozenTrial],
        *,
        can_start: bool,
        seed: int,
        left: float | None = None,
    ) -> Decision:
        return self.next_work(configurations(trials), can_start=can_start, left=left)

    def next_work(
        self, configs: Sequence[Config], *, can_start: bool, left: float | None = None
    ) -> Decision:
        """``decide`` on the study's configurations (``configurations(trials)``); ``left``
        only the forecast reads."""
        rungs = self.rungs(configs)
        sign = 1.0 if self.minimize else -1.0
        ready = []
        standings: dict[int, _Standing] = {}
        for config in configs:
            if config.status != "paused" or config.paused_rung is None:
                continue
            rung = config.paused_rung
            if rung not in standings:
                standings[rung] = _standing(configs, rung, sign)
            standing = standings[rung]
            if params_key(config) in standing.advanced:  # a twin already went on
                continue
            if rung not in rungs:  # its rung was dropped (adaptive): nothing ranks it there
                ready.append((-config.last_step, (0.0, 0.0), config.number, config))
                continue
            score = _score(config, rung, sign)
            rank = bisect.bisect_left(standing.scores, score)
            if self.promotable(rank, len(standing.scores), can_start=can_start):
                ready.append((-rung, score, config.number, config))
        if ready:
            config = min(ready)[3]
            return Continue(config.number, config.last_trial, _next_rung(rungs, config.last_step))
        if can_start:
            return Start(self.first_until(configs, rungs))
        return Idle(done=not any(c.status == "running" for c in configs))

    def first_until(
        self, configs: Sequence[Config], rungs: tuple[int, ...] | None = None
    ) -> int | None:
        """Where a new configuration's first segment pauses (None: it runs to its end)."""
        rungs = self.rungs(configs) if rungs is None else rungs
        return None if self.audits(configs) or not rungs else rungs[0]

    def first_attrs(
        self, trials: Sequence[FrozenTrial], decision: Start | None = None
    ) -> dict[str, Any]:
        until = self.first_until(configurations(trials)) if decision is None else decision.until
        return records.segment_attrs(until=until)

    def done_reason(self, max_trials: int) -> str:
        return f"max_trials={max_trials} configurations ran; no paused one continues"


def share_promotable(rank: int, scored: int, reduction_factor: int, *, can_start: bool) -> bool:
    """Successive halving's rule: the best ``1/reduction_factor`` continue.

    Once no new configuration may start, no more arrive to fill a rung: each rung's best
    continues even below a full share, so a study always ends with one trained to its end.
    """
    share = scored // reduction_factor
    return rank < (share if can_start else max(1, share))
