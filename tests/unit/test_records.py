"""The trial record protocol (``hpo.core.records``): readers and writers on real Optuna trials,
``segment_status``, and the rule that no other module spells a key."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState, create_trial

from hpo.core import records
from hpo.core.schemas import TrialPublic

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def study() -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(storage=optuna.storages.InMemoryStorage())


def test_what_a_worker_writes_every_reader_reads_back(study: optuna.Study) -> None:
    trial = study.ask()
    records.record_worker(trial, worker="host-1-a", hostname="host", device="cuda:0")
    records.set_setup_seconds(trial, 1.234567)
    records.record_progress(
        trial,
        train_seconds=9.87654321,
        eval_seconds=0.5,
        examples_seen=256,
        examples_trained=192,
        tokens_seen=4096,
    )
    records.record_scores(trial, {"eval_loss": 0.123456789, "test_accuracy": 0.5})
    records.set_final_train_loss(trial, 1.5)
    records.set_initial_train_loss(trial, 2.5)
    records.set_eval_loss_curve(trial, {64: 0.9, 128: 0.8})
    records.set_resolved_targets(trial, {"v_proj", "q_proj"})
    records.set_rank_pattern(trial, {"layers.0.q_proj": 4})
    records.set_sample_answer(trial, "x" * 600)
    records.set_generation_seconds(trial, 0.25)
    records.set_resumed_value(trial, 0.7)
    records.set_artifact_error(trial, "adapter", "OSError: disk full")
    records.record_device_time(trial, 12.345678, gpu=True, peak_memory_mb=1024.56)
    study.tell(trial, 0.1)
    frozen = study.trials[0]
    for record in (frozen, frozen.user_attrs, TrialPublic.of(frozen)):
        assert records.worker(record) == "host-1-a"
        assert (records.hostname(record), records.device(record)) == ("host", "cuda:0")
        assert records.setup_seconds(record) == 1.2346
        assert records.train_seconds(record) == 9.8765
        assert records.eval_seconds(record) == 0.5
        assert records.examples_seen(record) == 256
        assert records.examples_trained(record) == 192
        assert records.tokens_seen(record) == 4096
        assert records.score(record, "eval_loss") == 0.123457
        assert records.score(record, "test_accuracy") == 0.5
        assert records.score(record, "rouge_l") is None
        assert records.final_train_loss(record) == 1.5
        assert records.initial_train_loss(record) == 2.5
        assert records.eval_loss_curve(record) == {64: 0.9, 128: 0.8}
        assert records.resolved_targets(record) == ["q_proj", "v_proj"]
        assert records.rank_pattern(record) == {"layers.0.q_proj": 4}
        assert records.sample_answer(record) == "x" * records.MAX_SAMPLE_CHARS
        assert records.generation_seconds(record) == 0.25
        assert records.resumed_value(record) == 0.7
        assert records.artifact_error(record, "adapter") == "OSError: disk full"
        assert records.artifact_error(record, "tensorboard") is None
        assert records.device_seconds(record) == 12.3457
        assert records.gpu_seconds(record) == 12.3457
        assert records.peak_memory_mb(record) == 1024.6


def test_a_trial_that_recorded_nothing_reads_as_absent(study: optuna.Study) -> None:
    trial = study.ask()
    records.record_device_time(trial, 3.0, gpu=False)
    study.tell(trial, 1.0)
    frozen = study.trials[0]
    assert records.gpu_seconds(frozen) is None and records.peak_memory_mb(frozen) is None
    for reader in (
        records.until,
        records.continues,
        records.paused_at,
        records.slot,
        records.fail_reason,
        records.reason,
        records.retried_from,
        records.lineage,
        records.examples_seen,
        records.eval_loss_curve,
    ):
        assert reader(frozen) is None, reader.__name__
    assert records.device_seconds({}) == 0.0
    assert not records.is_greedy(frozen) and not records.is_infeasible_record(frozen)
    assert records.starts_configuration(frozen)


def test_a_live_trial_reads_what_it_wrote(study: optuna.Study) -> None:
    study.enqueue_trial({}, user_attrs=records.segment_attrs(until=64))
    trial = study.ask()
    records.record_failure(trial, reason="oom", error="OutOfMemoryError: CUDA")
    assert records.until(trial) == 64
    assert records.fail_reason(trial) == "oom" and records.error(trial) == "OutOfMemoryError: CUDA"
    assert records.reason(trial) == "oom"


def _trial(state: TrialState, **attrs: Any) -> FrozenTrial:
    return create_trial(
        state=state,
        value=1.0 if state == TrialState.COMPLETE else None,
        user_attrs=attrs,
    )


@pytest.mark.parametrize(
    ("state", "attrs", "status"),
    [
        (TrialState.RUNNING, {}, "running"),
        (TrialState.WAITING, {records.CONTINUES_ATTR: 0}, "running"),
        (TrialState.COMPLETE, {records.CONTINUES_ATTR: 0}, "complete"),
        (TrialState.PRUNED, {records.PAUSED_AT_ATTR: 64}, "paused"),
        (TrialState.PRUNED, {records.PRUNE_REASON_ATTR: "pruner"}, "stopped"),
        (TrialState.PRUNED, {records.INFEASIBLE_RECORD_ATTR: 3}, "stopped"),
        (TrialState.FAIL, {records.PAUSED_AT_ATTR: 64}, "stopped"),
    ],
)
def test_segment_status(state: TrialState, attrs: dict[str, Any], status: str) -> None:
    if state in (TrialState.RUNNING, TrialState.WAITING):
        trial = create_trial(state=TrialState.COMPLETE, value=1.0, user_attrs=attrs)
        trial.state = state
    else:
        trial = _trial(state, **attrs)
    assert records.segment_status(trial) == status
    assert records.segment_status(TrialPublic.of(trial)) == status  # the REST shape: state by name


def test_a_paused_segment_and_its_continuation(study: optuna.Study) -> None:
    first = study.ask()
    records.set_until(first, 64)
    records.set_cooled_score(first, 0.42)
    records.mark_paused(first, at=64, reason="paused at 70 examples (rung 64)")
    study.tell(first, state=TrialState.PRUNED)
    lineage = {"parent": 0, "step": 64, "perturbations": []}
    attrs = records.segment_attrs(until=128, continues=0, slot=1, lineage=lineage)
    study.enqueue_trial({}, user_attrs=attrs)
    paused, continuation = study.trials
    assert records.segment_status(paused) == "paused"
    assert (records.paused_at(paused), records.cooled_score(paused)) == (64, 0.42)
    assert records.prune_reason(paused) == "paused at 70 examples (rung 64)"
    assert records.reason(paused) == records.prune_reason(paused)
    assert (records.until(continuation), records.continues(continuation)) == (128, 0)
    assert records.parent(continuation) == 0 and not records.starts_configuration(continuation)
    assert (records.slot(continuation), records.lineage(continuation)) == (1, lineage)
    assert records.segment_attrs(until=None) == {}


def test_a_retry_carries_the_segment_but_not_the_outcome() -> None:
    failed = {
        records.UNTIL_ATTR: 64,
        records.CONTINUES_ATTR: 2,
        records.FAIL_REASON_ATTR: "stalled",
        records.ERROR_ATTR: "no progress",
        records.PAUSED_AT_ATTR: 64,
        records.COOLED_ATTR: 0.3,
        records.PRUNE_REASON_ATTR: "x",
    }
    retry = records.retry_attrs(5, failed)
    assert retry == {
        records.UNTIL_ATTR: 64,
        records.CONTINUES_ATTR: 2,
        records.RETRIED_FROM_ATTR: 5,
    }
    assert records.retried_from(retry) == 5 and records.parent(retry) == 2
    assert records.retry_attrs(7) == {records.RETRIED_FROM_ATTR: 7}
    assert records.parent({records.RETRIED_FROM_ATTR: 7}) == 7


def test_an_infeasible_record(study: optuna.Study) -> None:
    study.add_trial(
        create_trial(
            state=TrialState.PRUNED, user_attrs=records.infeasible_record_attrs(4, reason="oom")
        )
    )
    record = study.trials[0]
    assert records.is_infeasible_record(record) and records.infeasible_record_of(record) == 4
    assert records.fail_reason(record) == "oom"
    assert records.segment_status(record) == "stopped"


def test_writers_through_the_storage_by_trial_id(study: optuna.Study) -> None:
    trial = study.ask()
    stored = records.StoredTrial(study._storage, trial._trial_id)
    records.record_failure(stored, reason="stale: no heartbeat")
    assert records.fail_reason(study.trials[0]) == "stale: no heartbeat"
    assert records.error(study.trials[0]) is None


def test_study_attributes_and_baseline(study: optuna.Study) -> None:
    for key, value in records.study_attrs(owner="alice", objective="eval_loss").items():
        study.set_user_attr(key, value)
    assert not records.has_baseline(study.user_attrs)
    records.set_baseline(study, "eval_loss", 2.5)
    records.set_baseline(study, "contains", 0.25)
    assert records.has_baseline(study.user_attrs)
    assert records.baseline(study.user_attrs) == {"eval_loss": 2.5, "contains": 0.25}
    assert study.user_attrs[records.OWNER_ATTR] == "alice"
    assert records.baseline_key("eval_loss") == records.BASELINE_PREFIX + "eval_loss"


def test_a_warm_start_ranking_keeps_its_scores() -> None:
    attrs = records.warm_start_ranking_attrs([{"lora_r": 8}, {"lora_r": 4}], [0.0, 0.75])
    ranking = records.warm_start_ranking(attrs)
    assert records.warm_start_scores(attrs, len(ranking)) == [0.0, 0.75]
    # stored before scores were (or a damaged list): evenly spaced by position
    older = {records.WARM_START_RANKING_ATTR: attrs[records.WARM_START_RANKING_ATTR]}
    assert records.warm_start_scores(older, 3) == [0.0, 0.5, 1.0]
    assert records.warm_start_scores({**attrs, records.WARM_START_SCORES_ATTR: [True]}, 1) == [0.0]


def test_greedy_and_enqueued(study: optuna.Study) -> None:
    study.enqueue_trial({}, user_attrs={**records.greedy_attrs(), **records.enqueued_attrs("bob")})
    assert records.is_greedy(study.trials[0]) and records.enqueued_by(study.trials[0]) == "bob"


def test_every_key_constant_is_a_key() -> None:
    constants = {v for k, v in vars(records).items() if k.endswith("_ATTR")}
    assert constants | {records.BASELINE_PREFIX} == records.KEYS
    assert set(records.OUTCOME_ATTRS) <= records.KEYS


# --- no key literal outside the records package ----------------------------------------------

SCANNED = ("hpo", "worker", "service")
RECORDS = ROOT / "hpo" / "core" / "records"  # the package: every module in it
# Strings starting with "hpo_" that are not user-attribute keys, and what each is.
NOT_KEYS = {
    "hpo_": "tokens.TOKEN_PREFIX: every API token starts with it",
    "hpo_token": "dashboard.COOKIE: the dashboard's session cookie",
    "hpo_studies": "db.py: our table",
    "hpo_studies.id": "db.py: a foreign key to it",
    "hpo_tokens": "db.py: our table",
    "hpo_owners": "db.py: our table",
    "hpo_artifacts": "db.py: our table",
    "hpo_workers": "db.py: our table",
    "hpo_token_check": "admission.TOKEN_CHECK: where a request's token check is kept in its scope",
    "hpo_alembic_version": "migrate.VERSION_TABLE: our migrations' version table",
}
# Optuna's user-attribute writers, and the position of the key among their arguments.
SETTERS = {"set_user_attr": 0, "set_trial_user_attr": 1, "set_study_user_attr": 1}
READERS = {"get", "pop", "setdefault"}
# Keys of one word ("error", "worker", "owner", ...) are everyday words: checked only where
# they are used as keys (rule 2); the longer ones are checked wherever they appear (rule 3).
DISTINCTIVE = frozenset(k for k in records.KEYS if "_" in k)


def _is_attrs(node: ast.AST) -> bool:
    """``x.user_attrs``, ``user_attrs``, ``storage.get_trial_user_attrs(...)``, ``.keys()``
    of those."""
    if isinstance(node, ast.Attribute):
        return node.attr == "user_attrs"
    if isinstance(node, ast.Name):
        return node.id == "user_attrs"
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        name = node.func.attr
        return name.endswith("_user_attrs") or (name == "keys" and _is_attrs(node.func.value))
    return False


def _spelt(node: ast.AST | None) -> bool:
    return isinstance(node, ast.JoinedStr) or (
        isinstance(node, ast.Constant) and isinstance(node.value, str)
    )


def _key_positions(tree: ast.AST) -> list[ast.AST]:
    """Every expression used as a user-attribute key (rule 2)."""
    keys: list[ast.AST] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            at = SETTERS.get(node.func.attr)
            if at is not None:
                keys += node.args[at : at + 1] + [k.value for k in node.keywords if k.arg == "key"]
            if node.func.attr in READERS and _is_attrs(node.func.value):
                keys += node.args[:1]
            keys += [
                k
                for kw in node.keywords
                if kw.arg == "user_attrs" and isinstance(kw.value, ast.Dict)
                for k in kw.value.keys
                if k is not None
            ]
        elif isinstance(node, ast.Subscript) and _is_attrs(node.value):
            keys.append(node.slice)
        elif isinstance(node, ast.Compare) and any(
            isinstance(op, ast.In | ast.NotIn) for op in node.ops
        ):
            if _is_attrs(node.comparators[0]):
                keys.append(node.left)
        elif isinstance(node, ast.BinOp) and (_is_attrs(node.left) or _is_attrs(node.right)):
            for side in (node.left, node.right):
                if isinstance(side, ast.Set | ast.Tuple | ast.List):
                    keys += side.elts
    return keys


def _starts_hpo(nodes: list[ast.expr]) -> bool:
    return any(isinstance(n, ast.Constant) and str(n.value).startswith("hpo_") for n in nodes)


def violations(source: str) -> list[str]:
    """Where ``source`` spells a user-attribute key, as ``line: 'text' (rule)``."""
    tree = ast.parse(source)
    found = {
        (node.lineno, ast.unparse(node), "2: a literal key")
        for node in _key_positions(tree)
        if _spelt(node)
    }
    nodes = list(ast.walk(tree))
    # An f-string's parts are checked as one string: f"hpo_{x}" is not the token prefix.
    parts = {id(v) for n in nodes if isinstance(n, ast.JoinedStr) for v in n.values}
    for node in nodes:
        if isinstance(node, ast.JoinedStr) and _starts_hpo(node.values[:1]):
            found.add((node.lineno, ast.unparse(node), "1: an hpo_ string"))
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            continue
        if id(node) in parts:
            continue
        if node.value.startswith("hpo_") and node.value not in NOT_KEYS:
            found.add((node.lineno, repr(node.value), "1: an hpo_ string"))
        elif node.value in DISTINCTIVE:
            found.add((node.lineno, repr(node.value), "3: a records key"))
    first: dict[tuple[int, str], str] = {}  # one line per spelling, under its first rule
    for line, text, rule in sorted(found):
        first.setdefault((line, text), rule)
    return [f"{line}: {text} (rule {rule})" for (line, text), rule in first.items()]


def test_the_scanner_finds_each_way_of_spelling_a_key() -> None:
    source = """
trial.set_user_attr("fidelity", 1)
storage.set_trial_user_attr(trial_id, "worker", "w")
trial.set_user_attr(key="owner", value=2)
trial.set_user_attr(f"{kind}_error", "e")
x = trial.user_attrs["error"]
y = t.user_attrs.get("device")
if "hostname" in trial.user_attrs: pass
study.enqueue_trial({}, user_attrs={"objective": 1})
z = {"worker"} & trial.user_attrs.keys()
w = {"examples_seen": 1}
v = "hpo_anything"
u = f"hpo_{x}"
ok = ("hpo_tokens", "error", trial.set_user_attr(records.ERROR_ATTR, 1))
"""
    found = violations(source)
    assert [f.split(":")[0] for f in found] == [str(n) for n in range(2, 14)], found


def test_no_module_but_records_spells_a_user_attribute_key() -> None:
    """A user-attribute key (trial or study) is spelt only in ``hpo/core/records/``.

    Every ``.py`` file under hpo/, worker/ and service/ but those in it is parsed, and its string
    literals (plain and f-strings) are flagged by three rules:

    1. any string starting with ``hpo_``, the prefix of our own keys, except the few values in
       ``NOT_KEYS`` that are something else (table names, the token prefix, the cookie);
    2. any literal used as a key: the key argument of ``set_user_attr``,
       ``set_trial_user_attr`` and ``set_study_user_attr``; a subscript, ``.get``, ``.pop``
       or ``.setdefault`` of ``user_attrs`` (an attribute or variable of that name, or a
       ``get_*_user_attrs(...)`` call); the left side of ``in`` / ``not in`` against them; a
       set, tuple or list combined with their ``.keys()``; a key of a dict literal passed as
       ``user_attrs=``;
    3. any string equal to one of ``records.KEYS`` that contains an underscore
       (``examples_seen``, ``fail_reason``, ...), wherever it appears: such a key hidden in a
       dict that is written later (a metrics dict, a loop over ``{key: value}``) is still one.

    Not caught: a one-word key (``worker``, ``error``) hidden in a dict away from a key
    position, and keys built from variables (a metric's name is a key by design:
    ``records.record_scores``).
    """
    found = [
        f"{path.relative_to(ROOT)}:{v}"
        for folder in SCANNED
        for path in sorted((ROOT / folder).rglob("*.py"))
        if not path.is_relative_to(RECORDS)
        for v in violations(path.read_text())
    ]
    assert not found, "user-attribute keys spelt outside hpo/core/records/:\n" + "\n".join(found)
