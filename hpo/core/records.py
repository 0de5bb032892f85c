"""The trial record protocol: every user attribute this project keeps on Optuna trials and
studies, with typed readers and writers. No other module spells a key
(``tests/unit/test_records.py`` fails on a key literal anywhere else in hpo/, worker/ and
service/), as each Optuna pruner keeps its own keys private to its module.

A worker writes a trial's record while it runs it; schedulers, the budget, the simulator, the
API, the CLI and the plots read it. The keys, by what they describe:

- segment: where a segment pauses (``hpo_until``), the paused segment it continues
  (``hpo_continues``), the rung it paused at, its state kept (``hpo_paused_at``), and its
  score there after a cool-down branch (``hpo_cooled_score``). ``segment_status`` decodes a
  trial's state and these into running / paused / complete / stopped.
- outcome: why it failed or was pruned, its error, the trial it retries, the out-of-memory
  trial an infeasible record stands for, an artifact that could not be stored.
- cost: device (and GPU), setup, train, evaluation and generation seconds, examples seen and
  trained, tokens seen, peak memory.
- lineage: PBT's member slot and exploit lineage, the value a continuation resumed with and
  the first training loss its divergence check compares with.
- run: who ran it (worker, hostname, device), what it measured (its scores by metric name,
  final train loss, evaluation loss curve, a sample answer), what it resolved on the model
  (LoRA targets, AdaLoRA ranks), who enqueued it, and a decode study's greedy baseline.
- study (study user attributes): owner, objective, fidelity, the untuned model's scores.

Readers take a ``FrozenTrial``, a live ``optuna.Trial``, a REST ``TrialPublic`` or a plain
mapping of user attributes (a SQL row's) and return None where the attribute is absent.
Writers take anything with ``set_user_attr`` (``optuna.Trial``, ``FrozenTrial``,
``optuna.Study`` for study attributes, ``StoredTrial`` for a trial by id), or return the
attributes to enqueue a trial with. The ``*_ATTR`` names are the keys themselves, for SQL over
Optuna's tables and for tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from optuna.storages import BaseStorage
from optuna.trial import TrialState

# --- keys -----------------------------------------------------------------------------------

# segment
UNTIL_ATTR = "hpo_until"
CONTINUES_ATTR = "hpo_continues"
PAUSED_AT_ATTR = "hpo_paused_at"
COOLED_ATTR = "hpo_cooled_score"
# outcome
FAIL_REASON_ATTR = "fail_reason"
PRUNE_REASON_ATTR = "prune_reason"
ERROR_ATTR = "error"
RETRIED_FROM_ATTR = "retried_from"
# A PRUNED copy of an out-of-memory trial that only tells samplers the config is infeasible;
# it is not a trial that ran and does not count against the budget.
INFEASIBLE_RECORD_ATTR = "infeasible_record_of"
ARTIFACT_ERROR_SUFFIX = "_error"  # "<artifact kind>_error": why an artifact was not stored
# cost
DEVICE_SECONDS_ATTR = "device_seconds"
GPU_SECONDS_ATTR = "gpu_seconds"
SETUP_SECONDS_ATTR = "setup_seconds"
TRAIN_SECONDS_ATTR = "train_seconds"
EVAL_SECONDS_ATTR = "eval_seconds"
GENERATION_SECONDS_ATTR = "generation_seconds"
EXAMPLES_SEEN_ATTR = "examples_seen"
# What a segment trained (a continuation only the rest): cost on the fidelity axis.
EXAMPLES_TRAINED_ATTR = "examples_trained"
TOKENS_SEEN_ATTR = "tokens_seen"
PEAK_MEMORY_ATTR = "peak_memory_mb"
# lineage
SLOT_ATTR = "hpo_pbt_slot"
LINEAGE_ATTR = "hpo_pbt_lineage"
RESUMED_VALUE_ATTR = "resumed_value"
INITIAL_LOSS_ATTR = "initial_train_loss"
# run
WORKER_ATTR = "worker"
HOSTNAME_ATTR = "hostname"
DEVICE_ATTR = "device"
FINAL_LOSS_ATTR = "final_train_loss"
EVAL_LOSS_CURVE_ATTR = "eval_loss_curve"
SAMPLE_ANSWER_ATTR = "sample_answer"
# LoRA targets resolved on the model ("attention" -> module names).
RESOLVED_TARGETS_ATTR = "lora_target_modules_resolved"
# An AdaLoRA trial's rank per module where it ended.
RANK_PATTERN_ATTR = "adalora_rank_pattern"
# The first trial of every decode study: greedy decoding (no searched setting applies), the
# baseline a searched setting must beat. Earliest among equals, it stays the best on a tie.
GREEDY_ATTR = "greedy_baseline"
ENQUEUED_BY_ATTR = "enqueued_by"
# study user attributes
OWNER_ATTR = "owner"
OBJECTIVE_ATTR = "objective"
FIDELITY_ATTR = "fidelity"
FIDELITY = "step = training examples seen"
BASELINE_PREFIX = "baseline_"  # + a metric: the untuned model's score

# What a trial says about its own end; a retry starts without them.
OUTCOME_ATTRS = (FAIL_REASON_ATTR, ERROR_ATTR, PRUNE_REASON_ATTR, PAUSED_AT_ATTR, COOLED_ATTR)
# Every fixed key above (scores are keyed by metric name, artifact errors by kind).
KEYS = frozenset(
    {
        UNTIL_ATTR,
        CONTINUES_ATTR,
        PAUSED_AT_ATTR,
        COOLED_ATTR,
        FAIL_REASON_ATTR,
        PRUNE_REASON_ATTR,
        ERROR_ATTR,
        RETRIED_FROM_ATTR,
        INFEASIBLE_RECORD_ATTR,
        DEVICE_SECONDS_ATTR,
        GPU_SECONDS_ATTR,
        SETUP_SECONDS_ATTR,
        TRAIN_SECONDS_ATTR,
        EVAL_SECONDS_ATTR,
        GENERATION_SECONDS_ATTR,
        EXAMPLES_SEEN_ATTR,
        EXAMPLES_TRAINED_ATTR,
        TOKENS_SEEN_ATTR,
        PEAK_MEMORY_ATTR,
        SLOT_ATTR,
        LINEAGE_ATTR,
        RESUMED_VALUE_ATTR,
        INITIAL_LOSS_ATTR,
        WORKER_ATTR,
        HOSTNAME_ATTR,
        DEVICE_ATTR,
        FINAL_LOSS_ATTR,
        EVAL_LOSS_CURVE_ATTR,
        SAMPLE_ANSWER_ATTR,
        RESOLVED_TARGETS_ATTR,
        RANK_PATTERN_ATTR,
        GREEDY_ATTR,
        ENQUEUED_BY_ATTR,
        OWNER_ATTR,
        OBJECTIVE_ATTR,
        FIDELITY_ATTR,
        BASELINE_PREFIX,
    }
)

SECONDS_DIGITS = 4
SCORE_DIGITS = 6
MAX_SAMPLE_CHARS = 500

# --- what readers and writers take ----------------------------------------------------------


class HasUserAttrs(Protocol):
    """A trial as any layer holds it: ``FrozenTrial``, ``optuna.Trial``, ``TrialPublic``."""

    @property
    def user_attrs(self) -> dict[str, Any]: ...


class HasState(HasUserAttrs, Protocol):
    """A trial with its state: Optuna's ``TrialState``, or its lowercase name (REST)."""

    @property
    def state(self) -> TrialState | str: ...


class Writable(Protocol):
    """Where a writer writes: ``optuna.Trial``, ``FrozenTrial``, ``optuna.Study`` (study
    attributes), ``StoredTrial``."""

    def set_user_attr(self, key: str, value: Any) -> None: ...


Attrs = HasUserAttrs | Mapping[str, Any]


@dataclass(frozen=True)
class StoredTrial:
    """A trial by id in a storage, for writers: what the storage's own sweeps write on."""

    storage: BaseStorage
    trial_id: int

    def set_user_attr(self, key: str, value: Any) -> None:
        self.storage.set_trial_user_attr(self.trial_id, key, value)


def _attrs(record: Attrs) -> Mapping[str, Any]:
    return record if isinstance(record, Mapping) else record.user_attrs


def _int(record: Attrs, key: str) -> int | None:
    value = _attrs(record).get(key)
    return None if value is None else int(value)


def _float(record: Attrs, key: str) -> float | None:
    value = _attrs(record).get(key)
    return None if value is None else float(value)


def _str(record: Attrs, key: str) -> str | None:
    value = _attrs(record).get(key)
    return None if value is None else str(value)


def _seconds(value: float) -> float:
    return round(value, SECONDS_DIGITS)


# --- segment --------------------------------------------------------------------------------

SegmentStatus = Literal["running", "paused", "complete", "stopped"]


def segment_status(trial: HasState) -> SegmentStatus:
    """What a trial (one segment of a configuration) is now, as schedulers read it.

    - ``running``: RUNNING or WAITING (claimed or queued: it will report);
    - ``paused``: PRUNED with ``hpo_paused_at``: it reached its rung and its state was kept,
      so a scheduler may continue it (samplers read it as pruned there);
    - ``complete``: COMPLETE;
    - ``stopped``: FAIL, or PRUNED for good (a pruner, divergence, an infeasible record).

    Args:
        trial: A ``FrozenTrial`` (the schedulers, the simulator), or a REST ``TrialPublic``
            whose ``state`` is the lowercase name of Optuna's state.
    """
    state = trial.state if isinstance(trial.state, TrialState) else TrialState[trial.state.upper()]
    if state in (TrialState.RUNNING, TrialState.WAITING):
        return "running"
    if state == TrialState.COMPLETE:
        return "complete"
    if state == TrialState.PRUNED and PAUSED_AT_ATTR in trial.user_attrs:
        return "paused"
    return "stopped"


def until(record: Attrs) -> int | None:
    """Pause at the first evaluation at or after this many examples (None: run to the end)."""
    return _int(record, UNTIL_ATTR)


def continues(record: Attrs) -> int | None:
    """The number of the paused segment whose state this one loads (None: a fresh start)."""
    return _int(record, CONTINUES_ATTR)


def paused_at(record: Attrs) -> int | None:
    """The rung a segment paused at, its state kept (None: it did not pause)."""
    return _int(record, PAUSED_AT_ATTR)


def cooled_score(record: Attrs) -> float | None:
    """A paused segment's score at its rung after a cool-down branch."""
    return _float(record, COOLED_ATTR)


def parent(record: Attrs) -> int | None:
    """The segment this one continues or retries (None: it starts its configuration)."""
    found = continues(record)
    return found if found is not None else retried_from(record)


def starts_configuration(record: Attrs) -> bool:
    """Whether a trial starts a configuration rather than continue or retry a segment."""
    return parent(record) is None


def segment_attrs(
    *,
    until: int | None = None,
    continues: int | None = None,
    slot: int | None = None,
    lineage: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The user attributes a segment is claimed or enqueued with (None: left out).

    Args:
        until: Where it pauses.
        continues: The paused segment whose state it loads.
        slot: Its PBT member.
        lineage: After a PBT exploit: the donor, its step and each perturbation.
    """
    attrs = {
        CONTINUES_ATTR: continues,
        UNTIL_ATTR: until,
        SLOT_ATTR: slot,
        LINEAGE_ATTR: None if lineage is None else dict(lineage),
    }
    return {k: v for k, v in attrs.items() if v is not None}


def set_until(trial: Writable, until: int) -> None:
    trial.set_user_attr(UNTIL_ATTR, until)


def mark_paused(trial: Writable, *, at: int, reason: str | None = None) -> None:
    """Record that a segment paused at rung ``at`` (its state already kept) and why (the
    simulator gives no reason); the trial is then told PRUNED."""
    trial.set_user_attr(PAUSED_AT_ATTR, at)
    if reason is not None:
        trial.set_user_attr(PRUNE_REASON_ATTR, reason)


def set_cooled_score(trial: Writable, score: float) -> None:
    trial.set_user_attr(COOLED_ATTR, score)


# --- outcome --------------------------------------------------------------------------------


def fail_reason(record: Attrs) -> str | None:
    """Why a trial failed: ``oom``, ``shutdown``, ``stalled``, ``stale: ...``, ..."""
    return _str(record, FAIL_REASON_ATTR)


def prune_reason(record: Attrs) -> str | None:
    """Why a trial was pruned or paused, in words."""
    return _str(record, PRUNE_REASON_ATTR)


def reason(record: Attrs) -> str | None:
    """Why a trial ended where it did: its fail reason, else its prune reason."""
    return fail_reason(record) or prune_reason(record)


def error(record: Attrs) -> str | None:
    """The exception a failed trial raised, as ``Type: message``."""
    return _str(record, ERROR_ATTR)


def retried_from(record: Attrs) -> int | None:
    """The number of the failed trial this one retries."""
    return _int(record, RETRIED_FROM_ATTR)


def infeasible_record_of(record: Attrs) -> int | None:
    """The out-of-memory trial an infeasible record stands for."""
    return _int(record, INFEASIBLE_RECORD_ATTR)


def is_infeasible_record(record: Attrs) -> bool:
    """Whether a trial only tells samplers a config is infeasible (not a trial that ran)."""
    return INFEASIBLE_RECORD_ATTR in _attrs(record)


def artifact_error(record: Attrs, kind: str) -> str | None:
    """Why an artifact of ``kind`` (adapter, tensorboard, checkpoint) was not stored."""
    return _str(record, f"{kind}{ARTIFACT_ERROR_SUFFIX}")


def record_failure(trial: Writable, *, reason: str, error: str | None = None) -> None:
    """Why a trial failed, and the error when there is one; set before it is told FAIL."""
    trial.set_user_attr(FAIL_REASON_ATTR, reason)
    if error is not None:
        trial.set_user_attr(ERROR_ATTR, error)


def set_prune_reason(trial: Writable, reason: str) -> None:
    trial.set_user_attr(PRUNE_REASON_ATTR, reason)


def set_artifact_error(trial: Writable, kind: str, error: str) -> None:
    trial.set_user_attr(f"{kind}{ARTIFACT_ERROR_SUFFIX}", error)


def retry_attrs(number: int, carried: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The user attributes of a retry of trial ``number``: ``carried`` (the failed trial's,
    e.g. where its segment pauses) without what it said about its own end."""
    kept = {k: v for k, v in (carried or {}).items() if k not in OUTCOME_ATTRS}
    return {**kept, RETRIED_FROM_ATTR: number}


def infeasible_record_attrs(number: int, *, reason: str) -> dict[str, Any]:
    """The user attributes of the infeasible record of trial ``number``."""
    return {INFEASIBLE_RECORD_ATTR: number, FAIL_REASON_ATTR: reason}


# --- cost -----------------------------------------------------------------------------------


def device_seconds(record: Attrs) -> float:
    """Seconds the trial held its device (0 before it recorded any): what budgets sum."""
    return _float(record, DEVICE_SECONDS_ATTR) or 0.0


def gpu_seconds(record: Attrs) -> float | None:
    return _float(record, GPU_SECONDS_ATTR)


def setup_seconds(record: Attrs) -> float | None:
    """Seconds before the first training step: model, data, adapter, Trainer."""
    return _float(record, SETUP_SECONDS_ATTR)


def train_seconds(record: Attrs) -> float | None:
    return _float(record, TRAIN_SECONDS_ATTR)


def eval_seconds(record: Attrs) -> float | None:
    return _float(record, EVAL_SECONDS_ATTR)


def generation_seconds(record: Attrs) -> float | None:
    return _float(record, GENERATION_SECONDS_ATTR)


def examples_seen(record: Attrs) -> int | None:
    """Training examples seen, a continuation's earlier segments included: the fidelity."""
    return _int(record, EXAMPLES_SEEN_ATTR)


def examples_trained(record: Attrs) -> int | None:
    """Training examples this segment trained itself (a continuation: only the rest)."""
    return _int(record, EXAMPLES_TRAINED_ATTR)


def tokens_seen(record: Attrs) -> int | None:
    return _int(record, TOKENS_SEEN_ATTR)


def peak_memory_mb(record: Attrs) -> float | None:
    return _float(record, PEAK_MEMORY_ATTR)


def record_device_time(
    trial: Writable, seconds: float, *, gpu: bool, peak_memory_mb: float | None = None
) -> None:
    """What a trial cost its device: seconds (also as GPU seconds on a GPU), peak memory."""
    trial.set_user_attr(DEVICE_SECONDS_ATTR, _seconds(seconds))
    if gpu:
        trial.set_user_attr(GPU_SECONDS_ATTR, _seconds(seconds))
    if peak_memory_mb is not None:
        trial.set_user_attr(PEAK_MEMORY_ATTR, round(peak_memory_mb, 1))


def set_setup_seconds(trial: Writable, seconds: float) -> None:
    trial.set_user_attr(SETUP_SECONDS_ATTR, _seconds(seconds))


def record_progress(
    trial: Writable,
    *,
    train_seconds: float,
    eval_seconds: float | None = None,
    examples_seen: int | None = None,
    examples_trained: int | None = None,
    tokens_seen: int | None = None,
) -> None:
    """How far training got and what it took (None: not measured, left out); a pruned or
    paused trial keeps these too."""
    if examples_seen is not None:
        trial.set_user_attr(EXAMPLES_SEEN_ATTR, examples_seen)
    if examples_trained is not None:
        trial.set_user_attr(EXAMPLES_TRAINED_ATTR, examples_trained)
    if tokens_seen is not None:
        trial.set_user_attr(TOKENS_SEEN_ATTR, tokens_seen)
    trial.set_user_attr(TRAIN_SECONDS_ATTR, _seconds(train_seconds))
    if eval_seconds is not None:
        trial.set_user_attr(EVAL_SECONDS_ATTR, _seconds(eval_seconds))


def set_generation_seconds(trial: Writable, seconds: float) -> None:
    trial.set_user_attr(GENERATION_SECONDS_ATTR, _seconds(seconds))


# --- lineage --------------------------------------------------------------------------------


def slot(record: Attrs) -> int | None:
    """The PBT member a segment belongs to."""
    return _int(record, SLOT_ATTR)


def lineage(record: Attrs) -> dict[str, Any] | None:
    """After a PBT exploit: ``{"parent", "step", "perturbations"}`` (``pbt.Lineage``)."""
    value = _attrs(record).get(LINEAGE_ATTR)
    return None if value is None else dict(value)


def resumed_value(record: Attrs) -> float | None:
    """A continuation's objective on the state it loaded, before any step."""
    return _float(record, RESUMED_VALUE_ATTR)


def initial_train_loss(record: Attrs) -> float | None:
    """The first finite training loss: a continuation's divergence check compares with it."""
    return _float(record, INITIAL_LOSS_ATTR)


def set_resumed_value(trial: Writable, value: float) -> None:
    trial.set_user_attr(RESUMED_VALUE_ATTR, value)


def set_initial_train_loss(trial: Writable, loss: float) -> None:
    trial.set_user_attr(INITIAL_LOSS_ATTR, loss)


# --- run ------------------------------------------------------------------------------------


def worker(record: Attrs) -> str | None:
    """The id of the worker that ran the trial (``host-pid-...``)."""
    return _str(record, WORKER_ATTR)


def hostname(record: Attrs) -> str | None:
    return _str(record, HOSTNAME_ATTR)


def device(record: Attrs) -> str | None:
    return _str(record, DEVICE_ATTR)


def record_worker(trial: Writable, *, worker: str, hostname: str, device: str) -> None:
    """Who runs the trial, where."""
    trial.set_user_attr(WORKER_ATTR, worker)
    trial.set_user_attr(HOSTNAME_ATTR, hostname)
    trial.set_user_attr(DEVICE_ATTR, device)


def score(record: Attrs, metric: str) -> float | None:
    """A score the trial measured, by metric name (``eval_loss``, ``test_accuracy``, ...)."""
    return _float(record, metric)


def record_scores(trial: Writable, scores: Mapping[str, float]) -> None:
    """Every score the trial measured, keyed by its metric's name."""
    for metric, value in scores.items():
        trial.set_user_attr(metric, round(value, SCORE_DIGITS))


def final_train_loss(record: Attrs) -> float | None:
    return _float(record, FINAL_LOSS_ATTR)


def set_final_train_loss(trial: Writable, loss: float) -> None:
    trial.set_user_attr(FINAL_LOSS_ATTR, loss)


def eval_loss_curve(record: Attrs) -> dict[int, float] | None:
    """``eval_loss`` by step (examples seen)."""
    value = _attrs(record).get(EVAL_LOSS_CURVE_ATTR)
    return None if value is None else {int(k): float(v) for k, v in value.items()}


def set_eval_loss_curve(trial: Writable, curve: Mapping[int, float] | Mapping[str, float]) -> None:
    # JSON keys are strings: stored so, it reads back as written.
    trial.set_user_attr(EVAL_LOSS_CURVE_ATTR, {str(k): v for k, v in curve.items()})


def sample_answer(record: Attrs) -> str | None:
    return _str(record, SAMPLE_ANSWER_ATTR)


def set_sample_answer(trial: Writable, answer: str) -> None:
    """One generated answer, cut at ``MAX_SAMPLE_CHARS``."""
    trial.set_user_attr(SAMPLE_ANSWER_ATTR, answer[:MAX_SAMPLE_CHARS])


def resolved_targets(record: Attrs) -> list[str] | None:
    """The LoRA target modules resolved on the model."""
    value = _attrs(record).get(RESOLVED_TARGETS_ATTR)
    return None if value is None else [str(v) for v in value]


def set_resolved_targets(trial: Writable, modules: Iterable[str]) -> None:
    trial.set_user_attr(RESOLVED_TARGETS_ATTR, sorted(modules))


def rank_pattern(record: Attrs) -> dict[str, int] | None:
    """An AdaLoRA trial's rank per module where it ended."""
    value = _attrs(record).get(RANK_PATTERN_ATTR)
    return None if value is None else {str(k): int(v) for k, v in value.items()}


def set_rank_pattern(trial: Writable, ranks: Mapping[str, int]) -> None:
    trial.set_user_attr(RANK_PATTERN_ATTR, dict(ranks))


def is_greedy(record: Attrs) -> bool:
    """Whether a decode study's trial is its greedy-decoding baseline."""
    return _attrs(record).get(GREEDY_ATTR) is True


def greedy_attrs() -> dict[str, Any]:
    """The user attributes of a decode study's first, greedy trial (enqueued)."""
    return {GREEDY_ATTR: True}


def enqueued_by(record: Attrs) -> str | None:
    return _str(record, ENQUEUED_BY_ATTR)


def enqueued_attrs(owner: str) -> dict[str, Any]:
    """The user attributes of a trial an owner enqueued."""
    return {ENQUEUED_BY_ATTR: owner}


# --- study ----------------------------------------------------------------------------------


def study_attrs(*, owner: str, objective: str) -> dict[str, str]:
    """A new study's user attributes: who owns it, what it optimises, its fidelity axis
    (for people browsing the database with Optuna's own tools)."""
    return {OWNER_ATTR: owner, OBJECTIVE_ATTR: objective, FIDELITY_ATTR: FIDELITY}


def baseline_key(metric: str) -> str:
    return f"{BASELINE_PREFIX}{metric}"


def baseline(study_user_attrs: Mapping[str, Any]) -> dict[str, float]:
    """The untuned model's scores by metric, from a study's user attributes."""
    return {
        key.removeprefix(BASELINE_PREFIX): float(value)
        for key, value in study_user_attrs.items()
        if key.startswith(BASELINE_PREFIX)
    }


def has_baseline(study_user_attrs: Mapping[str, Any]) -> bool:
    """Whether a trial already scored the untuned model (the first trial does)."""
    return any(key.startswith(BASELINE_PREFIX) for key in study_user_attrs)


def set_baseline(study: Writable, metric: str, value: float) -> None:
    study.set_user_attr(baseline_key(metric), value)
