"""A saturated generation metric: every trial scores the same, the tie-break chooses the best."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from hpo.cli import app
from hpo.core import records
from hpo.core.settings import Settings
from tests.conftest import ApiServer
from tests.workers import small_study, trials
from worker.loop import Worker

pytestmark = pytest.mark.slow
# A reference no 4-token answer of the untrained tiny model contains: `contains` is 0 for all.
ANSWER = " the quick brown fox jumps over the lazy dog and keeps on running far away"


@pytest.fixture
def rooted(pg_settings: Settings, tmp_path: Path) -> Any:
    settings = pg_settings.model_copy(update={"data_roots": [tmp_path]})
    with ApiServer(settings) as api:
        yield api


def test_a_saturated_metric_reports_the_lowest_eval_loss_as_best(
    rooted: ApiServer, tmp_path: Path
) -> None:
    data = tmp_path / "answers.jsonl"
    rows = [{"prompt": f"Question {i}:", "completion": ANSWER} for i in range(24)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rates = [1e-5, 3e-3, 3e-2]  # unlike rates: unlike validation losses
    spec = small_study(
        "saturated",
        dataset={"path": str(data), "max_eval_examples": 4},
        training={"max_steps": 3, "max_seq_length": 32, "max_new_tokens": 4},
        space={"learning_rate": {"type": "categorical", "choices": rates}},
        objective={"metric": "contains"},
        pruner={"type": "none"},
        budget={"max_trials": len(rates)},
        evaluation={"every_examples": 8, "generation": {"max_examples": 4}},
    )
    with rooted.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
        for rate in rates:  # each rate once, in this order
            queued = client.post(
                "/studies/saturated/trials", json={"params": {"learning_rate": rate}}
            )
            assert queued.status_code == 201, queued.text
        Worker(rooted.settings, idle_exit=0.5, cpu_threads=1).run(handle_signals=False)
        study = client.get("/studies/saturated").json()
        best = client.get("/studies/saturated/best").json()
        env = {"HPO_API_URL": rooted.base_url, "HPO_TOKEN": rooted.token("alice")}
        shown = CliRunner().invoke(app, ["study", "show", "saturated"], env=env)
    done = trials(rooted.settings, "saturated")
    assert [t.state for t in done] == [TrialState.COMPLETE] * len(rates), [
        t.user_attrs.get("error") for t in done
    ]
    assert {t.value for t in done} == {0.0}  # saturated: every trial scores the same
    losses = {t.number: records.tie_break(t) for t in done}
    assert all(losses[t.number] == t.user_attrs["eval_loss"] for t in done)
    lowest = min(losses, key=lambda n: losses[n])
    assert lowest != 0, "the earliest trial would be best without the tie-break"
    assert study["spec"]["search"]["objective"]["tie_break"] == "eval_loss"
    assert (study["best_trial"], study["best_ties"]) == (lowest, len(rates))
    assert best["number"] == lowest
    assert shown.exit_code == 0, shown.output
    assert "contains saturated: 3 complete trials" in shown.output
    assert "lowest eval_loss" in shown.output
