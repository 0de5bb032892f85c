"""``hpo run SPEC``: a study on this machine as one process, with no server, no token and no
``HPO_DATABASE_URL``: it prints the best trial and writes its configuration, and a run stopped
with SIGINT continues, when started again, to exactly its budget."""

from __future__ import annotations

import json
import logging
import os
import pty
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from typer.testing import CliRunner

from hpo.cli import app
from hpo.core import records
from hpo.core.db import Database
from hpo.core.records import GREEDY_ATTR
from hpo.core.settings import Settings
from hpo.core.spec import StudySpec
from hpo.core.storage import make_storage
from hpo.core.studies import create_study
from tests.conftest import ApiServer
from tests.specs import minimal_spec
from worker.builtin import resolve as resolve_builtin
from worker.loop import Worker

DEADLINE_S = 600  # worker start-up (torch, the tiny model) on a loaded 2-core box


def _spec(name: str, trials: int) -> dict[str, object]:
    return {
        "name": name,
        "train": {
            "model": {"name_or_path": "builtin:tiny-llama"},
            "dataset": {
                "path": "builtin:demo-text",
                "max_train_examples": 48,
                "max_eval_examples": 16,
            },
            "training": {"max_seq_length": 32},
        },
        "search": {
            "space": {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
            "budget": {"max_trials": trials},
        },
    }


def _hpo_run(folder: Path, spec: Path, cache: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPO_")}
    env.update(COLUMNS="80", HPO_CACHE_DIR=str(cache))
    return subprocess.Popen(
        [sys.executable, "-m", "hpo", "run", str(spec), "--workers", "2"],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(proc: subprocess.Popen[str]) -> str:
    out, _ = proc.communicate(timeout=3 * DEADLINE_S)
    return out


def _trials(folder: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    storage = optuna.storages.RDBStorage(f"sqlite:///{folder / 'hpo.db'}")
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    finally:
        storage.engine.dispose()


def _finished(trials: list[optuna.trial.FrozenTrial]) -> int:
    """Configurations ended: a segment that yielded its worker is carried on by another."""
    return sum(
        t.state in (TrialState.COMPLETE, TrialState.PRUNED) and records.yielded(t) is None
        for t in trials
    )


@pytest.mark.slow
def test_run_prints_best_exports_it_and_resumes_after_sigint(
    tmp_path: Path, model_cache_dir: Path
) -> None:
    first = tmp_path / "first.yaml"
    first.write_text(yaml.safe_dump(_spec("first", trials=2)))
    proc = _hpo_run(tmp_path, first, model_cache_dir)
    out = _finish(proc)
    assert proc.returncode == 0, out
    assert (tmp_path / "hpo.db").is_file()  # the embedded default, in the working folder
    best = re.search(r"^best eval_loss (\S+) \(trial (\d+)\)$", out, re.MULTILINE)
    assert best is not None, out
    exported = Path(re.search(r"^best configuration: (.+)$", out, re.MULTILINE)[1])  # type: ignore[index]
    config = yaml.safe_load(exported.read_text())
    assert config["study"] == "first"
    assert config["trial"] == int(best[2])
    assert f"{config['value']:.4f}" == best[1]
    assert config["training_arguments"]["learning_rate"] > 0
    adapter = Path(re.search(r"^best adapter: (.+)$", out, re.MULTILINE)[1])  # type: ignore[index]
    assert adapter.is_file()
    served = Settings(
        database_url=f"sqlite:///{tmp_path / 'hpo.db'}",
        auth="disabled",
        artifact_dir=tmp_path / "artifacts",
    )
    with ApiServer(served) as api:  # the same database under the service: the adapter
        zipped = tmp_path / "best.zip"
        got = CliRunner().invoke(
            app,
            ["study", "download", "first", "--out", str(zipped)],
            env={"HPO_API_URL": api.base_url},
        )
    assert got.exit_code == 0, got.output
    assert zipped.read_bytes() == adapter.read_bytes()

    second = tmp_path / "second.yaml"
    longer = _spec("second", trials=3)
    longer["train"]["training"] = {"max_seq_length": 32, "max_steps": 60}  # type: ignore[index]
    longer["train"]["evaluation"] = {"every_examples": 64}  # type: ignore[index]
    second.write_text(yaml.safe_dump(longer))
    proc = _hpo_run(tmp_path, second, model_cache_dir)
    deadline = time.monotonic() + DEADLINE_S
    while not any(
        t.state == TrialState.RUNNING and t.intermediate_values
        for t in _trials_or_none(tmp_path, "second")
    ):
        assert proc.poll() is None, _finish(proc)
        assert time.monotonic() < deadline, "no trial reported"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out = _finish(proc)
    assert proc.returncode == 130, out
    assert "Traceback" not in out
    assert "run the same command to continue" in out
    assert "interrupted" in out and "0 failed" in out
    stopped = _trials(tmp_path, "second")
    assert not [t for t in stopped if t.state == TrialState.RUNNING]
    assert _finished(stopped) < 3
    assert not [t for t in stopped if t.state == TrialState.FAIL]
    interrupted = [t for t in stopped if records.yielded(t) is not None]
    assert interrupted, "the trial training at Ctrl-C did not pause"
    for t in interrupted:  # paused where it was, its state kept: a queued trial continues it
        queued = [w for w in stopped if records.continues(w) == t.number]
        assert [w.state for w in queued] == [TrialState.WAITING]
        assert queued[0].system_attrs["fixed_params"] == t.params

    proc = _hpo_run(tmp_path, second, model_cache_dir)
    out = _finish(proc)
    assert proc.returncode == 0, out
    assert out.startswith("continuing second")
    resumed = _trials(tmp_path, "second")
    assert _finished(resumed) == 3
    assert not [t for t in resumed if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    for t in interrupted:  # continued from its checkpoint, to its end
        (continued,) = [w for w in resumed if records.continues(w) == t.number]
        assert continued.state in (TrialState.COMPLETE, TrialState.PRUNED)
        assert records.resumed_value(continued) is not None
        # its curve goes on from the step the interrupted trial reached, not from 0
        assert max(continued.intermediate_values) > max(t.intermediate_values, default=0)
        assert records.examples_seen(continued) == 60 * 8


def _trials_or_none(folder: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    """The study's trials, or none while ``hpo run`` has not registered it yet."""
    try:
        return _trials(folder, name)
    except (KeyError, optuna.exceptions.StorageInternalError):
        return []


@pytest.mark.slow
def test_a_decode_study_starts_from_greedy_and_never_reports_worse(
    pg_settings: Settings, tmp_path: Path
) -> None:
    data = tmp_path / "sums.jsonl"
    rows = [
        {"prompt": f"{a} plus {b} is", "completion": f" {a + b}"}
        for a in range(6)
        for b in range(4)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = pg_settings.model_copy(update={"data_roots": [tmp_path]})
    spec = minimal_spec(
        "sums-decode",
        mode="decode",
        dataset={"path": str(data), "max_eval_examples": 8},
        training={"max_new_tokens": 4, "max_seq_length": 32},
        evaluation={"generation": {"max_examples": 4}},
        space={
            "temperature": {"type": "float", "low": 0.1, "high": 1.5},
            "top_p": {"type": "float", "low": 0.5, "high": 1.0},
        },
        objective={"metric": "contains"},
        sampler={"type": "random", "seed": 0},
        budget={"max_trials": 3},
    )
    storage = make_storage(settings)
    with Database(settings.database_url) as db, db.session() as session:
        create_study(
            session, storage, spec=StudySpec.model_validate(spec), owner="alice", settings=settings
        )
    Worker(settings, max_trials=3, cpu_threads=1).run(handle_signals=False)
    study = optuna.load_study(study_name="sums-decode", storage=storage)
    done = study.get_trials(deepcopy=False)
    storage.engine.dispose()
    assert [t.state for t in done] == [TrialState.COMPLETE] * 3, done[-1].user_attrs
    greedy, *searched = done
    assert greedy.user_attrs[GREEDY_ATTR] is True
    assert greedy.params == {}
    assert all("temperature" in t.params for t in searched)
    assert study.user_attrs["baseline_contains"] == greedy.value
    assert study.metric_names == ["contains"]  # optuna-dashboard's axes name the metric

    with ApiServer(settings) as api:
        env = {"HPO_API_URL": api.base_url, "HPO_TOKEN": api.token("alice"), "COLUMNS": "200"}
        shown = CliRunner().invoke(app, ["study", "show", "sums-decode"], env=env)
        best = CliRunner().invoke(app, ["study", "best", "sums-decode", "--json"], env=env)
    assert shown.exit_code == 0, shown.output
    assert f"greedy decoding (baseline): contains {greedy.value:.4g}" in shown.output
    best_trial = json.loads(best.output)
    assert best_trial["value"] >= greedy.value
    if not any(t.value > greedy.value for t in searched):  # nothing beat greedy: it is the best
        assert best_trial["number"] == greedy.number
        assert "greedy decoding (nothing beat it)" in shown.output


def test_an_idle_worker_says_it_is_waiting(
    pg_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hpo.worker")
    Worker(pg_settings, idle_exit=0.5, poll_interval=0.1).run(handle_signals=False)
    waiting = [r.getMessage() for r in caplog.records if '"event": "waiting"' in r.getMessage()]
    assert len(waiting) == 1  # once per idle spell, not once per poll


ROW = re.compile(  # a running trial's row: number, configuration, step/total, last value, ...
    r"^\s*(?P<number>\d+)\s+lr \S+\s+(?P<step>\d+)/(?P<total>\d+)\s+(?P<value>\d+\.\d+)\s+"
    r"\S+\s+\S+\s*$"
)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _hpo_run_in_a_terminal(folder: Path, spec: Path, cache: Path) -> tuple[int, str]:
    """``hpo run`` as a person runs it, in a terminal (rich redraws its live view there
    only): its exit status and all it printed, escapes left out."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPO_")}
    env.update(COLUMNS="80", LINES="40", TERM="xterm", HPO_CACHE_DIR=str(cache))
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpo", "run", str(spec), "--workers", "1"],
        cwd=folder,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the terminal's last writer has gone
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    proc.wait(timeout=DEADLINE_S)
    return proc.returncode, ANSI.sub("", b"".join(chunks).decode(errors="replace"))


@pytest.mark.slow
def test_run_reads_data_anywhere_shows_steps_and_is_read_back_without_a_server(
    tmp_path: Path, model_cache_dir: Path
) -> None:
    """A user's own data file in another folder, given by its absolute path, with no HPO_*
    roots set: the run completes, its live view shows each running trial's step of how many
    and its last report, and `hpo study show/trials/download` then read hpo.db in the same
    folder with no server and no token."""
    data = tmp_path / "elsewhere" / "rows.jsonl"
    data.parent.mkdir()
    data.write_bytes(resolve_builtin("builtin:demo-text", model_cache_dir).read_bytes())
    work = tmp_path / "work"
    work.mkdir()
    spec = _spec("anywhere", trials=1)
    spec["train"]["dataset"]["path"] = str(data)  # type: ignore[index]
    # Workers send their progress at most once a second: 600 steps run several seconds even
    # on a fast CPU (60 ran in one, and the view never saw a step), a report every 20 steps
    # gives the rows a value from the first one on.
    spec["train"]["training"] = {"max_seq_length": 32, "max_steps": 600}  # type: ignore[index]
    spec["train"]["evaluation"] = {"every_examples": 160}  # type: ignore[index]
    spec_file = work / "anywhere.yaml"
    spec_file.write_text(yaml.safe_dump(spec))

    status, out = _hpo_run_in_a_terminal(work, spec_file, model_cache_dir)
    assert status == 0, out
    lines = out.replace("\r", "\n").splitlines()
    rows = [m for m in map(ROW.match, lines) if m is not None]
    assert rows, out[-4000:]
    assert {m["total"] for m in rows} == {"600"}
    assert all(0 < int(m["step"]) <= 600 for m in rows)
    assert "finished trials 1/1: 1 complete, 0 pruned, 0 failed" in lines
    report = Path(re.search(r"report \(open it in a browser\): (\S+)", out)[1])  # type: ignore[index]
    assert report.read_text().count("plotly.js v") == 1  # one page, plotly.js inlined once

    env = {k: v for k, v in os.environ.items() if not k.startswith("HPO_")}
    env["COLUMNS"] = "200"

    def hpo_study(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "hpo", "study", *args],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=DEADLINE_S,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    assert "trials 1/1: 1 complete, 0 pruned, 0 failed" in hpo_study("show", "anywhere")
    listed = json.loads(hpo_study("trials", "anywhere", "--json"))
    assert [t["state"] for t in listed] == ["complete"]
    hpo_study("download", "anywhere", "--out", "best.zip")
    adapter = Path(re.search(r"best adapter: (\S+)", out)[1])  # type: ignore[index]
    assert (work / "best.zip").read_bytes() == adapter.read_bytes()
