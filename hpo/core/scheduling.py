"""Pause and continue: which paused configuration a worker continues, or whether it starts one.

A configuration runs in *segments*, each an Optuna trial with the configuration's params:

- the first segment is asked from the sampler as usual; ``UNTIL_ATTR`` says where it pauses
  (absent: it runs to its end);
- a segment that reached its ``until`` step (its first evaluation at or after it) is told
  PRUNED with ``PAUSED_AT_ATTR`` = that ``until``, after its adapter and optimizer state were
  saved: samplers read it as a trial pruned there, which it is until someone continues it;
- a continuation is a trial enqueued with the same params and ``CONTINUES_ATTR`` = the paused
  segment's number; it loads that segment's state, reports the earlier values again (free)
  and trains on, so the configuration's last segment holds its whole curve on the fidelity
  axis. A retried segment (``RETRIED_FROM_ATTR``) belongs to the configuration it retries.

``next_work`` is a pure function of the study's configurations: run it under the study's
lock and claim what it returns (enqueue the continuation) in the same critical section, and
no two workers continue one paused trial, because a configuration whose latest segment is
WAITING or RUNNING is no longer paused.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, assert_never

from optuna.trial import FrozenTrial, TrialState

from hpo.core.progress import is_record
from hpo.core.spec import (
    MAX_STEP,
    AdaptiveSchedulerSpec,
    AshaSchedulerSpec,
    NoSchedulerSpec,
    PBTSchedulerSpec,
    SchedulerSpec,
    TopKSchedulerSpec,
)
from hpo.core.storage import COOLED_ATTR, PAUSED_AT_ATTR, RETRIED_FROM_ATTR

UNTIL_ATTR = "hpo_until"
CONTINUES_ATTR = "hpo_continues"
# One-sided 95% normal quantile: a rung is trusted on the lower bound of its agreement.
CONFIDENCE_Z = 1.645

Status = Literal["running", "paused", "complete", "stopped"]


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
    """

    number: int
    params: dict[str, Any]
    values: tuple[tuple[int, float], ...]
    status: Status
    last_trial: int
    unpaused: bool
    paused_rung: int | None = None
    cooled: tuple[tuple[int, float], ...] = ()

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


def configurations(trials: Iterable[FrozenTrial]) -> list[Config]:
    """Group a study's trials (segments) into configurations, in order of their first trial."""
    roots: dict[int, int] = {}
    chains: dict[int, list[FrozenTrial]] = {}
    for trial in sorted((t for t in trials if not is_record(t)), key=lambda t: t.number):
        # A parent always has a smaller number than the segments that continue or retry it.
        parent = trial.user_attrs.get(CONTINUES_ATTR, trial.user_attrs.get(RETRIED_FROM_ATTR))
        root = roots[trial.number] = trial.number if parent is None else roots.get(parent, parent)
        chains.setdefault(root, []).append(trial)
    configs = []
    for number, segments in chains.items():
        latest = segments[-1]
        # A continuation re-reports its parent's values: the latest segment with any holds
        # the curve so far (a just-enqueued continuation has none yet).
        carrier = next((s for s in reversed(segments) if s.intermediate_values), latest)
        configs.append(
            Config(
                number=number,
                params=dict(latest.params or segments[0].params),
                values=tuple(sorted(carrier.intermediate_values.items())),
                status=_status(latest),
                last_trial=latest.number,
                unpaused=segments[0].user_attrs.get(UNTIL_ATTR) is None
                and not any(PAUSED_AT_ATTR in s.user_attrs for s in segments),
                paused_rung=latest.user_attrs.get(PAUSED_AT_ATTR),
                cooled=tuple(
                    sorted(
                        (s.user_attrs[PAUSED_AT_ATTR], s.user_attrs[COOLED_ATTR])
                        for s in segments
                        if COOLED_ATTR in s.user_attrs and PAUSED_AT_ATTR in s.user_attrs
                    )
                ),  # fmt: skip
            )
        )
    return configs


def _status(trial: FrozenTrial) -> Status:
    if trial.state in (TrialState.RUNNING, TrialState.WAITING):
        return "running"
    if trial.state == TrialState.COMPLETE:
        return "complete"
    if trial.state == TrialState.PRUNED and PAUSED_AT_ATTR in trial.user_attrs:
        return "paused"
    return "stopped"


# --- decisions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    """Sample a new configuration; pause at the first evaluation at or after ``until`` (None:
    run it to its end)."""

    until: int | None


@dataclass(frozen=True)
class Continue:
    """Continue configuration ``config`` from its paused segment ``trial`` up to ``until``."""

    config: int
    trial: int
    until: int | None


@dataclass(frozen=True)
class Idle:
    """Nothing to do now. ``done``: nothing runs either, so nothing ever will."""

    done: bool


Decision = Start | Continue | Idle


def next_work(
    configs: Sequence[Config],
    scheduler: SchedulerSpec,
    *,
    can_start: bool,
    minimize: bool = True,
) -> Decision:
    """What a worker asking for work does: continue the most advanced promotable paused
    configuration, else start a new one, else wait.

    Args:
        configs: The study's configurations (``configurations(study trials)``), read under the
            study's lock.
        scheduler: The study's ``search.scheduler``.
        can_start: Whether the budget allows another configuration.
        minimize: The objective's direction.
    """
    rungs = scheduled_rungs(configs, scheduler)
    sign = 1.0 if minimize else -1.0
    ready = []
    standings: dict[int, _Standing] = {}
    for config in configs:
        if config.status != "paused" or config.paused_rung is None:
            continue
        rung = config.paused_rung
        if rung not in standings:
            standings[rung] = _standing(configs, rung, sign)
        standing = standings[rung]
        if _key(config) in standing.advanced:  # a twin with these params already went on
            continue
        if rung not in rungs:  # its rung was dropped (adaptive): nothing ranks it there now
            ready.append((-config.last_step, 0.0, config.number, config))
            continue
        score = sign * _score(config, rung)
        rank = bisect.bisect_left(standing.scores, score)
        if _promotable(rank, len(standing.scores), scheduler, can_start=can_start):
            ready.append((-rung, score, config.number, config))
    if ready:
        config = min(ready)[3]
        return Continue(config.number, config.last_trial, _next_rung(rungs, config.last_step))
    if can_start:
        return Start(first_until(configs, scheduler, rungs))
    return Idle(done=not any(c.status == "running" for c in configs))


def first_until(
    configs: Sequence[Config], scheduler: SchedulerSpec, rungs: tuple[int, ...] | None = None
) -> int | None:
    """Where a new configuration's first segment pauses (None: it runs to its end)."""
    rungs = scheduled_rungs(configs, scheduler) if rungs is None else rungs
    audit = isinstance(scheduler, AdaptiveSchedulerSpec) and _audit_turn(configs, scheduler)
    return None if audit or not rungs else rungs[0]


@dataclass(frozen=True)
class _Standing:
    """A rung's ranking. Configurations are ranked by params, not by trial: a sampler that
    proposes a configuration again (likely on categorical spaces) adds no information, and
    its twins must not crowd others out of the promotions, nor train the same thing twice.

    Attributes:
        scores: The best signed score of each distinct configuration that reached the rung,
            ascending (lower is better).
        advanced: Params of configurations of which a twin went on past the rung.
    """

    scores: list[float]
    advanced: frozenset[tuple[tuple[str, Any], ...]]


def _standing(configs: Sequence[Config], rung: int, sign: float) -> _Standing:
    best: dict[tuple[tuple[str, Any], ...], float] = {}
    advanced = set()
    for c in configs:
        value = c.score_at(rung)
        if value is None:
            continue
        key = _key(c)
        best[key] = min(best.get(key, math.inf), sign * value)
        waiting_here = c.status == "paused" and c.paused_rung == rung
        if c.status != "stopped" and not waiting_here:
            advanced.add(key)
    return _Standing(sorted(best.values()), frozenset(advanced))


def _key(config: Config) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(config.params.items()))


def scheduled_rungs(configs: Sequence[Config], scheduler: SchedulerSpec) -> tuple[int, ...]:
    """The steps where trials pause now, ascending; empty: none pauses."""
    if isinstance(scheduler, NoSchedulerSpec):
        return ()
    if isinstance(scheduler, AshaSchedulerSpec):
        return geometric_rungs(scheduler.min_steps, scheduler.reduction_factor)
    if isinstance(scheduler, TopKSchedulerSpec):
        return (scheduler.at_steps,)
    if isinstance(scheduler, AdaptiveSchedulerSpec):
        return trusted_rungs(configs, scheduler)
    if isinstance(scheduler, PBTSchedulerSpec):
        raise ValueError("PBT decides with hpo.core.pbt, not by rungs.")
    assert_never(scheduler)


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


def _score(config: Config, rung: int) -> float:
    value = config.score_at(rung)
    assert value is not None, "a configuration paused at a rung has a score there"
    return value


def _promotable(rank: int, scored: int, scheduler: SchedulerSpec, *, can_start: bool) -> bool:
    """Whether the ``rank``-th best of ``scored`` configurations at a rung continues.

    Once no new configuration may start, no more arrive to fill a rung: each rung's best
    continues even below a full share, so a study always ends with one trained to its end.
    """
    if isinstance(scheduler, TopKSchedulerSpec):
        return rank < scheduler.k and (scored >= scheduler.min_scored or not can_start)
    assert isinstance(scheduler, AshaSchedulerSpec | AdaptiveSchedulerSpec)
    share = scored // scheduler.reduction_factor
    return rank < (share if can_start else max(1, share))


# --- adaptivity: measure how well each rung predicts the end ---------------------------------


@dataclass(frozen=True)
class Agreement:
    """How a rung's scores rank against final scores, over configurations that went past it
    unpaused: Spearman's rho, its lower confidence bound (None below ``min_pairs``) and n."""

    rung: int
    rho: float | None
    lower: float | None
    pairs: int


def rung_agreement(
    configs: Sequence[Config], rungs: Sequence[int], *, min_pairs: int
) -> list[Agreement]:
    """Agreement of each rung with the end, from complete configurations that ran unpaused
    (so no rung selected them) and went past the rung; a twin (same params) counts once."""
    distinct = {_key(c): c for c in reversed(configs) if c.status == "complete" and c.unpaused}
    sample = list(distinct.values())
    out = []
    for rung in rungs:
        pairs = [(v, c.final) for c in sample if c.last_step > rung
                 if (v := c.value_at(rung)) is not None and c.final is not None]  # fmt: skip
        rho = spearman([a for a, _ in pairs], [b for _, b in pairs]) if len(pairs) > 2 else None
        lower = None
        if rho is not None and len(pairs) >= min_pairs:
            lower = fisher_lower_bound(rho, len(pairs))
        out.append(Agreement(rung, rho, lower, len(pairs)))
    return out


def trusted_rungs(configs: Sequence[Config], scheduler: AdaptiveSchedulerSpec) -> tuple[int, ...]:
    """The candidate rungs whose agreement's lower bound reaches ``min_agreement``: rank
    correlation does not depend on the direction of the objective."""
    candidates = geometric_rungs(scheduler.min_steps, scheduler.reduction_factor)
    longest = max((c.last_step for c in configs), default=0)
    agreements = rung_agreement(
        configs, [r for r in candidates if r < longest], min_pairs=scheduler.min_pairs
    )
    return tuple(
        a.rung for a in agreements if a.lower is not None and a.lower >= scheduler.min_agreement
    )


def _audit_turn(configs: Sequence[Config], scheduler: AdaptiveSchedulerSpec) -> bool:
    """Whether the next configuration runs unpaused to keep measuring: the first
    ``min_pairs``, then every ``audit_every``-th."""
    unpaused = sum(c.unpaused and c.status != "stopped" for c in configs)
    return unpaused < scheduler.min_pairs or len(configs) % scheduler.audit_every == 0


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None when either side is flat."""
    rx, ry = _ranks(xs), _ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else None


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def fisher_lower_bound(rho: float, n: int) -> float:
    """One-sided 95% lower bound of Spearman's rho from ``n`` pairs (Fisher z with the
    Fieller-Hartley-Pearson variance 1.06 / (n - 3))."""
    z = math.atanh(max(-0.9999, min(0.9999, rho)))
    return math.tanh(z - CONFIDENCE_Z * math.sqrt(1.06 / (n - 3)))
