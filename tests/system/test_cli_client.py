"""The `hpo study` CLI and the Python client against the real API, with the examples."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hpo.client import ApiError, Client
from hpo.core.hyperparameters import SEARCHABLE
from tests.conftest import ApiServer
from worker.loop import Worker

ROOT = Path(__file__).resolve().parents[2]
CAUSAL_LM = ROOT / "examples" / "causal_lm_lora.yaml"  # searches lora_target_modules
ORDER = list(SEARCHABLE)  # the order of the trials table's hyperparameter columns


def hpo(
    api: ApiServer, token: str | None, *args: str, **env_vars: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HPO_TOKEN"}
    env.update(HPO_API_URL=api.base_url, **env_vars, **({"HPO_TOKEN": token} if token else {}))
    return subprocess.run(
        [sys.executable, "-m", "hpo", *args], env=env, capture_output=True, text=True, cwd=ROOT
    )


def test_study_commands(pg_api: ApiServer, tmp_path: Path) -> None:
    token = pg_api.token("alice")
    created = hpo(pg_api, token, "study", "create", "-f", str(CAUSAL_LM), "--json")
    assert created.returncode == 0, created.stderr
    name = json.loads(created.stdout)["name"]
    assert name == yaml.safe_load(CAUSAL_LM.read_text())["name"]

    listed = json.loads(hpo(pg_api, token, "study", "list", "--json").stdout)
    assert [s["name"] for s in listed["data"]] == [name]
    human = hpo(pg_api, token, "study", "list")
    assert name in human.stdout

    queued = hpo(
        pg_api,
        token,
        "study",
        "enqueue",
        name,
        "--param",
        "lora_r=8",
        "--param",
        "lora_target_modules=attention",
        "--json",
    )
    assert json.loads(queued.stdout)["params"] == {"lora_r": 8, "lora_target_modules": "attention"}

    assert json.loads(hpo(pg_api, token, "study", "pause", name, "--json").stdout)["status"] == (
        "paused"
    )
    assert hpo(pg_api, token, "study", "resume", name).returncode == 0

    Worker(pg_api.settings, studies=[name], max_trials=2, cpu_threads=1).run(handle_signals=False)
    shown = json.loads(hpo(pg_api, token, "study", "show", name, "--json").stdout)
    assert shown["trials"]["finished"] == 2
    assert shown["baseline"]["eval_loss"] > 0  # the untuned model, measured by the first trial
    assert "untuned model: eval_loss" in hpo(pg_api, token, "study", "show", name).stdout
    trials = json.loads(hpo(pg_api, token, "study", "trials", name, "--json").stdout)
    assert trials[0]["params"]["lora_r"] == 8
    table = hpo(pg_api, token, "study", "trials", name, COLUMNS="300").stdout.splitlines()
    header = re.split(r"\s{2,}", table[0].strip())  # columns two spaces apart, left-aligned
    searched = sorted(yaml.safe_load(CAUSAL_LM.read_text())["search"]["space"], key=ORDER.index)
    assert header == ["#", "state", "eval_loss", *searched, "duration (s)", "reason"]
    starts = [table[0].index(name) for name in header]
    spans = zip(starts, [*starts[1:], None], strict=True)
    first = dict(zip(header, (table[2][a:b].strip() for a, b in spans), strict=True))
    assert (first["#"], first["state"], first["lora_r"]) == ("0", trials[0]["state"], "8")
    assert float(first["duration (s)"]) == pytest.approx(trials[0]["duration_s"], abs=0.05)
    best = json.loads(hpo(pg_api, token, "study", "best", name, "--json").stdout)
    assert best["value"] == shown["best_value"]

    png = tmp_path / "plot.png"
    plotted = hpo(pg_api, token, "study", "plot", name, "--out", str(png))
    assert plotted.returncode == 0, plotted.stderr
    assert plotted.stderr == ""  # not Optuna's "A new study created in memory"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    exported = tmp_path / "best.yaml"
    assert hpo(pg_api, token, "study", "export", name, "--out", str(exported)).returncode == 0
    config = yaml.safe_load(exported.read_text())
    assert config["trial"] == best["number"]
    assert config["training_arguments"]["learning_rate"] == best["params"]["learning_rate"]
    assert config["lora_config"]["r"] == best["params"]["lora_r"]
    logs = tmp_path / "logs.zip"
    assert hpo(pg_api, token, "study", "logs", name, "0", "--out", str(logs)).returncode == 0
    assert logs.read_bytes()[:2] == b"PK"
    again = json.loads(hpo(pg_api, token, "study", "retrain", name, "--json").stdout)
    assert again["name"] == f"{name}-final"
    assert again["spec"]["search"]["budget"]["max_trials"] == 1
    assert again["spec"]["train"]["dataset"]["max_train_examples"] is None

    assert hpo(pg_api, token, "study", "delete", name).returncode == 0
    assert json.loads(hpo(pg_api, token, "study", "list", "--json").stdout)["count"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("study", "show", "nope"), "error: 404: study 'nope' not found"),
        (("study", "enqueue", "nope", "--param", "oops"), "error: --param takes k=v"),
        (("study", "create", "-f", "/does/not/exist.yaml"), "error: cannot read"),
    ],
)
def test_errors_are_one_line(pg_api: ApiServer, args: tuple[str, ...], message: str) -> None:
    result = hpo(pg_api, pg_api.token("alice"), *args)
    assert result.returncode == 1
    assert result.stderr.startswith(message)
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_401_without_a_token_says_how_to_get_one(pg_api: ApiServer) -> None:
    result = hpo(pg_api, None, "study", "list")
    assert result.returncode == 1
    assert result.stderr.startswith("error: 401: ")
    assert result.stderr.rstrip().endswith("set HPO_TOKEN (hpo token create NAME prints one)")
    assert len(result.stderr.strip().splitlines()) == 1
    rejected = hpo(pg_api, "hpo_not-a-token", "study", "list")
    assert rejected.returncode == 1
    assert "set HPO_TOKEN" not in rejected.stderr  # it is set: the server says what is wrong


def test_bad_spec_error_names_the_field(pg_api: ApiServer, tmp_path: Path) -> None:
    spec = tmp_path / "bad.json"
    bad = {
        "name": "x",
        "train": {"model": {"name_or_path": "m"}, "dataset": {"path": "d"}},
        "search": {"space": {"lora_r": {"type": "int", "low": 8, "high": 4}}},
    }
    spec.write_text(json.dumps(bad))
    result = hpo(pg_api, pg_api.token("alice"), "study", "create", "-f", str(spec))
    assert result.returncode == 1
    assert "body.search.space.lora_r.int: Value error, low must be < high" in result.stderr


def test_classification_example_runs(pg_api: ApiServer) -> None:
    spec = yaml.safe_load((ROOT / "examples" / "sequence_classification.yaml").read_text())
    with Client(pg_api.base_url, pg_api.token("alice")) as client:
        client.create_study(spec)
        cwd = Path.cwd()
        os.chdir(ROOT)  # example dataset paths are relative to the repo root
        try:
            ran = Worker(pg_api.settings, max_trials=2, cpu_threads=1).run(handle_signals=False)
        finally:
            os.chdir(cwd)
        assert ran == 2
        trials = client.all_trials(spec["name"])
        assert [t.state for t in trials] == ["complete", "complete"]
        # 100 validation reviews, 56 of one class: always guessing the commoner scores 0.56
        assert max(t.value for t in trials) > 0.8
        with pytest.raises(ApiError, match="409"):
            client.create_study(spec)


def test_token_create_on_an_unmigrated_database_says_so(tmp_path: Path) -> None:
    env = dict(os.environ, HPO_DATABASE_URL=f"sqlite:///{tmp_path / 'empty.db'}")
    result = subprocess.run(
        [sys.executable, "-m", "hpo", "token", "create", "bob"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "hpo db upgrade" in result.stderr
    assert "Traceback" not in result.stderr
    upgrade = subprocess.run([sys.executable, "-m", "hpo", "db", "upgrade"], env=env)
    assert upgrade.returncode == 0
    created = subprocess.run(
        [sys.executable, "-m", "hpo", "token", "create", "bob"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert created.returncode == 0
    assert created.stdout.startswith("hpo_")
