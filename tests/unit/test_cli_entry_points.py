"""The CLI's help reads as plain text, the trials table, and a client without the server."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

import click
import pytest
import typer
from typer.testing import CliRunner

from hpo.cli import app
from hpo.cli_study import trials_table
from hpo.core.schemas import TrialPublic


def _command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            paths += _command_paths(command, (*prefix, name))
        else:
            paths.append((*prefix, name))
    return paths


COMMANDS = _command_paths(typer.main.get_group(app))


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(("hpo", *p)))
def test_help_is_plain_text(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "``" not in result.output  # reST literals from docstrings
    assert not [w for w in result.output.split() if w.startswith("{") and w != w.upper()]


def test_study_help_names_the_environment() -> None:
    result = CliRunner().invoke(app, ["study", "--help"], env={"COLUMNS": "200"})
    assert "HPO_API_URL" in result.output
    assert "HPO_TOKEN" in result.output
    assert "hpo token create" in result.output


def _trial(number: int, state: str, **fields: object) -> TrialPublic:
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    return TrialPublic.model_validate(
        {
            "number": number,
            "state": state,
            "params": {},
            "value": None,
            "intermediate_values": {},
            "datetime_start": start,
            "datetime_complete": None,
            "duration_s": None,
            "user_attrs": {},
            **fields,
        }
    )


def test_trials_table_has_a_column_per_hyperparameter() -> None:
    found = [
        _trial(
            0,
            "complete",
            params={"learning_rate": 0.00123456, "lora_r": 8},
            value=0.5,
            duration_s=12.345,
        ),
        _trial(
            1,
            "pruned",
            params={"learning_rate": 0.1, "lora_r": 4},
            value=0.9,
            duration_s=3.0,
            user_attrs={"prune_reason": "diverged"},
        ),
        _trial(2, "fail", params={"learning_rate": 0.01}, user_attrs={"fail_reason": "oom"}),
    ]
    table = trials_table("eval_loss", ["learning_rate", "lora_r"], found)
    headers = [column.header for column in table.columns]
    assert headers == [
        "#",
        "state",
        "eval_loss",
        "learning_rate",
        "lora_r",
        "duration (s)",
        "reason",
    ]
    rows = [list(row) for row in zip(*(column.cells for column in table.columns), strict=True)]
    assert rows == [
        ["0", "complete", "0.5", "0.001235", "8", "12.3", ""],
        ["1", "pruned", "0.9", "0.1", "4", "3.0", "diverged"],
        ["2", "fail", "", "0.01", "", "", "oom"],
    ]


def test_the_client_needs_neither_the_server_nor_the_database() -> None:
    script = (
        "import sys, hpo.client; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'service', 'worker', 'fastapi', 'starlette', 'uvicorn', 'sqlalchemy', 'optuna', "
        "'alembic', 'torch'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
