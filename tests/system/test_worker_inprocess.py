"""The worker loop in-process: model reuse, base weights untouched, failure streaks, NaN."""

from __future__ import annotations

import math
import threading
from typing import Any

import optuna
import pytest
import torch
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState
from peft import LoraConfig, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers import TrainerControl, TrainerState, TrainingArguments

from hpo.core.db import Database
from hpo.core.optuna_tables import trial_id
from hpo.core.settings import Settings
from hpo.core.spec import StudySpec
from hpo.core.storage import make_storage
from hpo.core.studies import create_study
from tests.conftest import ApiServer
from tests.workers import small_study
from worker.callbacks import Diverged, FidelityCallback, Interruptions
from worker.loop import Worker
from worker.trainer import trial_hparams
from worker.training import train_trial

pytestmark = pytest.mark.slow


def _register(settings: Settings, spec: dict[str, Any]) -> None:
    storage = make_storage(settings)
    with Database(settings.database_url) as db, db.session() as session:
        create_study(
            session, storage, spec=StudySpec.model_validate(spec), owner="alice", settings=settings
        )
    storage.engine.dispose()


def _base_weights(worker: Worker) -> dict[str, torch.Tensor]:
    model = worker.ctx.models._loaded.model
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


CLASSIFIER = {
    "model": {"name_or_path": "builtin:tiny-encoder", "task": "sequence-classification"},
    "dataset": {
        "path": "builtin:demo-classification",
        "label_field": "label",
        "max_train_examples": 128,
        "max_eval_examples": 32,
    },
    "objective": {"metric": "eval_accuracy"},
}


@pytest.mark.parametrize("task", [{}, CLASSIFIER], ids=["causal-lm", "classification"])
def test_base_model_loaded_once_and_left_untouched(
    pg_settings: Settings, task: dict[str, Any]
) -> None:
    """A classifier's head is trained whole (PEFT's modules_to_save): the next trial must not
    start from this one's head either."""
    spec = small_study("reuse", budget={"max_trials": 5}, pruner={"type": "none"}, **task)
    _register(pg_settings, spec)
    worker = Worker(pg_settings, max_trials=1, cpu_threads=1)
    worker.run(handle_signals=False)
    before = _base_weights(worker)
    worker.max_trials = 5
    assert worker.run(handle_signals=False) == 5
    assert worker.ctx.models.load_count == 1
    after = _base_weights(worker)
    assert before.keys() == after.keys()
    assert not [k for k in after if "lora" in k]
    assert all(torch.equal(before[k], after[k]) for k in before)
    done = optuna.load_study(study_name="reuse", storage=pg_settings.database_url).trials
    assert [t.state for t in done] == [optuna.trial.TrialState.COMPLETE] * 5


def test_repeated_same_error_fails_the_study(pg_api: ApiServer) -> None:
    spec = small_study(
        "broken",
        dataset={"path": "builtin:demo-text", "text_field": "body"},
        budget={"max_trials": 10, "max_failures_in_a_row": 3},
    )
    with pg_api.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
        ran = Worker(pg_api.settings, idle_exit=0.5, cpu_threads=1).run(handle_signals=False)
        assert ran == 3
        study = client.get("/studies/broken").json()
        assert study["status"] == "failed"
        assert "3 trials in a row failed" in study["status_reason"]
        assert "no field 'body'" in study["status_reason"]
        failed = client.get("/studies/broken/trials", params={"state": "fail"}).json()
        assert failed["count"] == 3
        assert {t["user_attrs"]["fail_reason"] for t in failed["data"]} == {"error"}


def test_non_finite_eval_loss_prunes_with_a_reason(pg_settings: Settings) -> None:
    study = optuna.create_study(storage=pg_settings.database_url)
    trial = study.ask()
    callback = FidelityCallback(
        trial,
        metric="eval_loss",
        every_examples=8,
        examples_per_step=8,
        max_examples=64,
        interruptions=Interruptions(threading.Event()),
    )
    state = TrainerState()
    state.global_step = 1
    control = TrainerControl()
    args = TrainingArguments(output_dir="unused", report_to="none", use_cpu=True)
    callback.on_step_end(args, state, control)
    assert control.should_evaluate
    with pytest.raises(Diverged, match="nan"):
        callback.on_evaluate(args, state, control, metrics={"eval_loss": math.nan})
    assert trial.user_attrs["prune_reason"].startswith("non_finite_loss")


def test_paused_and_stopped_studies_get_no_trials(pg_api: ApiServer) -> None:
    with pg_api.client() as client:
        for name in ("held", "halted"):
            assert client.post("/studies", json=small_study(name)).status_code == 201
        client.post("/studies/held/pause")
        client.post("/studies/halted/stop")
        assert Worker(pg_api.settings, idle_exit=0.2, cpu_threads=1).run(handle_signals=False) == 0
        client.post("/studies/held/resume")
        worker = Worker(pg_api.settings, max_trials=1, cpu_threads=1)
        assert worker.run(handle_signals=False) == 1
        assert client.get("/studies/held").json()["trials"]["finished"] == 1
        assert client.get("/studies/halted").json()["trials"]["finished"] == 0


@pytest.mark.parametrize(
    ("budget", "reason"),
    [
        ({"max_trials": 50, "max_gpu_hours": 1e-6}, "max_gpu_hours=1e-06 reached"),
        ({"max_trials": 50, "timeout_s": 1e-3}, "timeout_s=0.001 reached"),
    ],
)
def test_time_budgets_complete_the_study(
    pg_api: ApiServer, budget: dict[str, float], reason: str
) -> None:
    with pg_api.client() as client:
        assert client.post("/studies", json=small_study("timed", budget=budget)).status_code == 201
        ran = Worker(pg_api.settings, idle_exit=0.5, cpu_threads=1).run(handle_signals=False)
        study = client.get("/studies/timed").json()
    assert ran == (1 if "max_gpu_hours" in budget else 0)
    assert study["status"] == "completed"
    assert study["status_reason"].startswith(reason)


def _adapter_layers(model: torch.nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)]


def test_a_write_failing_right_after_the_adapter_is_attached_leaves_the_base_clean(
    pg_settings: Settings,
) -> None:
    """The first write after ``get_peft_model`` (the resolved LoRA targets) fails: the trial
    fails, and the next trial's cached base model carries none of its adapter's layers."""
    worker = Worker(pg_settings, cpu_threads=1)
    spec = StudySpec.model_validate(small_study("clean"))
    raw = worker.ctx.data.raw(spec.train.dataset, spec.train.model)
    loaded = worker.ctx.models.get(spec.train.model, label_names=raw.label_names)
    trial = optuna.create_study(storage=worker.storage).ask()
    # A finished trial refuses every write: the first one, right after the attach, fails.
    worker.storage.set_trial_state_values(trial_id(trial), TrialState.FAIL)
    params = {"learning_rate": 1e-3, "per_device_train_batch_size": 8, "lora_r": 4}
    with pytest.raises(UpdateFinishedTrialError):
        train_trial(
            trial,
            spec=spec,
            hparams=trial_hparams(spec, params),
            loaded=loaded,
            raw=raw,
            cache=worker.ctx.data,
            device=worker.ctx.device,
            stop=threading.Event(),
        )
    assert _adapter_layers(loaded.model) == []
    assert worker.ctx.models.get(spec.train.model, label_names=raw.label_names) is loaded
    worker.close()


def test_a_base_left_with_adapter_layers_is_loaded_again(pg_settings: Settings) -> None:
    worker = Worker(pg_settings, cpu_threads=1)
    spec = StudySpec.model_validate(small_study("dirty"))
    loaded = worker.ctx.models.get(spec.train.model)
    get_peft_model(loaded.model, LoraConfig(r=4, target_modules="all-linear"))  # never taken off
    again = worker.ctx.models.get(spec.train.model)
    assert again is not loaded and worker.ctx.models.load_count == 2
    assert _adapter_layers(again.model) == []
    worker.close()
