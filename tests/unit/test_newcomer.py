"""Newcomer paper cuts: a misspelt hyperparameter gets a suggestion, a trials table is never
cut at 80 columns, the printed ``hpo`` command is one the shell can run, and a worker for a
study that does not exist says so."""

from __future__ import annotations

import io
import shutil
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError
from rich.console import Console
from typer.testing import CliRunner

from hpo import cli_study
from hpo.cli import app
from hpo.core.schemas import TrialPublic
from hpo.core.spec import SearchSpec
from hpo.local import hpo_command

SEARCHED = [
    "learning_rate",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "warmup_ratio",
    "lora_r",
    "weight_decay",
]


def test_an_unknown_hyperparameter_names_the_closest_one() -> None:
    space = {"warmup_ration": {"type": "float", "low": 0.0, "high": 0.1}}
    with pytest.raises(ValidationError, match="did you mean 'warmup_ratio'"):
        SearchSpec.model_validate({"space": space})


def test_no_suggestion_for_a_name_like_none() -> None:
    space = {"zzzz": {"type": "float", "low": 0.0, "high": 0.1}}
    with pytest.raises(ValidationError) as raised:
        SearchSpec.model_validate({"space": space})
    assert "did you mean" not in str(raised.value)


def test_the_trials_table_cuts_no_name_in_80_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    trial = TrialPublic.model_validate(
        {
            "number": 0,
            "state": "pruned",
            "params": dict.fromkeys(SEARCHED, 0.001234),
            "value": 0.5,
            "intermediate_values": {},
            "datetime_start": None,
            "datetime_complete": None,
            "duration_s": 1.0,
            "user_attrs": {"prune_reason": "below the median at 128 examples"},
        }
    )
    out = io.StringIO()
    monkeypatch.setattr(cli_study, "console", Console(file=out, width=80))
    cli_study.print_whole(cli_study.trials_table("eval_loss", SEARCHED, [trial]))
    text = out.getvalue()
    assert "…" not in text
    for name in [*SEARCHED, "duration (s)", "below the median at 128 examples"]:
        assert name in text


def test_adalora_ranks_in_short_fit_80_columns_and_wide_shows_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The finding: 120 modules' ranks made a column ~500 characters wide and the header
    read `exact_ma...`; in short they read as their mean and the modules cut to 0."""
    # the issue's: mean rank 8 (its budget kept), 25 of 120 modules cut to 0
    ranks = {f"model.layers.{i // 4}.self_attn.{'qkvo'[i % 4]}_proj": 0 for i in range(25)}
    ranks |= {f"model.layers.{i // 4}.mlp.{i}_proj": 12 for i in range(25, 90)}
    ranks |= {f"model.layers.{i // 4}.mlp.{i}_up": 6 for i in range(90, 120)}
    trial = TrialPublic.model_validate(
        {
            "number": 3,
            "state": "complete",
            "params": {"lora_method": "adalora"},
            "value": 0.75,
            "intermediate_values": {},
            "datetime_start": None,
            "datetime_complete": None,
            "duration_s": 812.4,
            "user_attrs": {"adalora_rank_pattern": ranks},
        }
    )
    searched = ["lora_method"]
    out = io.StringIO()
    monkeypatch.setattr(cli_study, "console", Console(file=out, width=80))
    cli_study.print_whole(cli_study.trials_table("exact_match", searched, [trial]))
    text = out.getvalue()
    assert max(map(len, text.splitlines())) <= 80
    assert "…" not in text
    assert "exact_match" in text and "mean 8, 25/120 off" in text
    out.truncate(0)
    cli_study.print_whole(cli_study.trials_table("exact_match", searched, [trial], wide=True))
    assert "o_proj 0,0,0,0,0,0" in out.getvalue()  # every rank, the table as wide as it needs


def test_the_printed_hpo_command_runs_in_a_shell() -> None:
    command = hpo_command()
    if command == "hpo":
        assert shutil.which("hpo") is not None
    else:  # the virtualenv is not on the PATH: its own hpo, by full path
        assert command == str(Path(sys.executable).parent / "hpo")
        assert Path(command).is_file()


def test_a_worker_for_no_such_study_is_an_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    upgraded = CliRunner().invoke(app, ["db", "upgrade", "--database-url", url])
    assert upgraded.exit_code == 0, upgraded.output
    result = CliRunner().invoke(app, ["worker", "--database-url", url, "--study", "nope"])
    assert result.exit_code == 1
    assert "no study named 'nope'" in result.output
