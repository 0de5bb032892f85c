"""How many project files a reader opens to follow two paths through the code (issue 21):

    python -m bench.code_paths [--sqlite]

(a) POST /studies, from the request to the database: the real app (``service.app``) through
    FastAPI's TestClient, with a bearer token, on a throwaway PostgreSQL (``tests/pg.py``;
    ``--sqlite``: a SQLite file instead).
(b) One trial from its claim to its reported loss and the trial's end: the worker's own loop
    (``worker.loop.Worker.run`` with ``max_trials=1``, in-process) on the study (a) created,
    the built-in tiny Llama on CPU.

Each path runs twice, traced each time: the first call pays for what a process does once
(the model and the data loaded, caches filled), the second is the steady state.

Counting rule. ``sys.setprofile`` and ``threading.setprofile`` record every Python function
call in every thread while a path runs. A project source file (under ``hpo/``, ``worker/``,
``service/``) counts when a function defined in it runs: its code is part of the path a
reader follows. ``__init__.py`` files do not count (ours are empty). A module of constants
counts only if a function in it runs, so modules read for their constants alone do not
count (the reader sees the name at the use). Module-level code (imports) does not count:
everything is imported before tracing starts.

A narrower figure, the call chain: the files with a function on the call stack when the
path reaches the database (any SQL statement) or reports a value (``optuna.Trial.report``).
These are the files one follows from the entry point down to the storage, without the
helpers each step calls on the side; it takes every statement, the reads and locks along the
way included.

The narrowest, the issue's literal reading ("follow POST /studies to the database and one
trial from claim to reported loss"): the files on the call stack at one named landmark,
each a union over the times the landmark is hit in the run:

- ``study row``: the ``INSERT INTO hpo_studies`` of POST /studies, our registration row.
  It is the statement that makes the study exist for the API, the CLI and the workers
  (Optuna's ``INSERT INTO studies`` comes just before it from the same function and is
  shown beside it as ``optuna study``).
- ``claim``: the ``INSERT INTO trials`` that creates the worker's RUNNING trial (the
  study has no queued trial, so the claim is a new trial); ``report``:
  ``optuna.Trial.report`` of the trial's validation loss; ``claim to report``: the two
  together, the issue's "from claim to reported loss".
- ``tell``: every SQL statement issued under Optuna's ``_tell_with_warning``, the trial's
  final state and value written.

Writes bench/results/code-paths.{md,json}.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

import optuna
from fastapi.testclient import TestClient

from bench import ROOT, commit, machine, save
from hpo.core.db import Database
from hpo.core.migrate import upgrade
from hpo.core.settings import Settings
from hpo.core.storage import make_storage
from hpo.core.tokens import create_token
from service.app import create_app
from tests.pg import PostgresCluster
from tests.workers import small_study
from worker.loop import Worker

PROJECT = tuple(str(ROOT / folder) + "/" for folder in ("hpo", "worker", "service"))
# Where a path reaches the database or reports: the call stack there is its call chain.
SQL = ("sqlalchemy/engine/base.py", "_execute_context")
REPORT = ("optuna/trial/_trial.py", "report")
LANDMARKS = {SQL, REPORT}
TELL = ("optuna/study/_tell.py", "_tell_with_warning")
# The named landmarks of the narrowest figure: SQL statements by their start, and the tell.
STATEMENTS = {
    "INSERT INTO hpo_studies ": "study row",
    "INSERT INTO studies ": "optuna study",
    "INSERT INTO trials ": "claim",
}


class Tracer:
    """Project functions called while ``recording`` (all threads), and the project files on
    the stack at each landmark."""

    def __init__(self) -> None:
        self.functions: dict[str, set[str]] = defaultdict(set)
        self.chain: set[str] = set()
        self.stops: dict[str, set[str]] = defaultdict(set)
        self._recording = False
        self._kind: dict[CodeType, str | None] = {}  # "project", "landmark", "tell" or None

    def install(self) -> None:
        sys.setprofile(self._profile)
        threading.setprofile(self._profile)

    def uninstall(self) -> None:
        sys.setprofile(None)
        threading.setprofile(None)

    @contextmanager
    def recording(self) -> Iterator[None]:
        self.functions, self.chain, self.stops = defaultdict(set), set(), defaultdict(set)
        self._recording = True
        try:
            yield
        finally:
            self._recording = False

    def _classify(self, code: CodeType) -> str | None:
        path = code.co_filename
        if path.startswith(PROJECT) and not path.endswith("__init__.py"):
            return "project" if code.co_name != "<module>" else None
        where = ("/".join(Path(path).parts[-3:]), code.co_name)
        if where in LANDMARKS:
            return "landmark"
        return "tell" if where == TELL else None

    def _profile(self, frame: FrameType, event: str, arg: Any) -> None:
        if event != "call" or not self._recording:
            return
        code = frame.f_code
        kind = self._kind.get(code, "?")
        if kind == "?":
            kind = self._kind[code] = self._classify(code)
        if kind == "project":
            self.functions[_relative(code.co_filename)].add(code.co_qualname)
        elif kind == "landmark":
            self._note_chain(frame)

    def _note_chain(self, landmark: FrameType) -> None:
        files, names = set(), set()
        frame: FrameType | None = landmark
        while frame is not None:
            kind = self._kind.get(frame.f_code)
            if kind == "project":
                files.add(_relative(frame.f_code.co_filename))
            elif kind == "tell":
                names.add("tell")
            frame = frame.f_back
        self.chain |= files
        if landmark.f_code.co_name == REPORT[1]:
            names.add("report")
        else:
            sql = str(landmark.f_locals.get("statement", ""))
            names.update(name for start, name in STATEMENTS.items() if sql.startswith(start))
        for name in names:
            self.stops[name] |= files

    def result(self) -> dict[str, Any]:
        return {
            "files": {path: sorted(names) for path, names in sorted(self.functions.items())},
            "chain": sorted(self.chain),
            "landmarks": self._landmarks(),
        }

    def _landmarks(self) -> dict[str, list[str]]:
        stops = dict(self.stops)
        if "claim" in stops and "report" in stops:  # the "from claim to reported loss"
            stops["claim to report"] = stops["claim"] | stops["report"]
        return {name: sorted(files) for name, files in sorted(stops.items())}


def _relative(path: str) -> str:
    return str(Path(path).relative_to(ROOT))


def study(name: str) -> dict[str, Any]:
    """The tests' small study, smaller: a trial of a few seconds on CPU."""
    return small_study(
        name,
        dataset={"path": "builtin:demo-text", "max_train_examples": 64, "max_eval_examples": 16},
        evaluation={"every_examples": 32},
        sampler={"type": "random", "seed": 0},
        pruner={"type": "none"},
        budget={"max_trials": 4},
    )


def post_studies(tracer: Tracer, settings: Settings) -> list[dict[str, Any]]:
    """Path (a), twice: two POST /studies of the same study under different names."""
    with Database(settings.database_url) as db, db.session() as session:
        token = create_token(session, name="paths", owner="alice")
    runs = []
    with TestClient(create_app(settings)) as client:
        client.headers["Authorization"] = f"Bearer {token}"
        assert client.get("/healthz").status_code == 200
        for name in ("paths-0", "paths-1"):
            with tracer.recording():
                response = client.post("/studies", json=study(name))
            assert response.status_code == 201, response.text
            runs.append(tracer.result())
    return runs


def one_trial(tracer: Tracer, settings: Settings) -> list[dict[str, Any]]:
    """Path (b), twice: the worker runs one trial of ``paths-1``, then one more."""
    worker = Worker(settings, studies=["paths-1"], max_trials=1, idle_exit=30, cpu_threads=1)
    runs = []
    for limit in (1, 2):
        worker.max_trials = limit
        with tracer.recording():
            ran = worker.run(handle_signals=False)
        assert ran == limit, f"the worker ran {ran} trials"
        runs.append(tracer.result())
    trials = optuna.load_study(study_name="paths-1", storage=settings.database_url).trials
    states = [t.state.name for t in trials]
    assert states == ["COMPLETE", "COMPLETE"], states
    assert all(t.intermediate_values for t in trials), "a trial reported no loss"
    return runs


def markdown(data: dict[str, Any]) -> str:
    lines = [
        "# Project files on two code paths",
        "",
        f"Commit {data['commit']}, {data['machine']}, database: {data['database']}. "
        "`python -m bench.code_paths`; the counting rule is in the module's docstring: a "
        "file counts when a function defined in it runs (``__init__.py`` files and "
        "module-level code excluded); *call chain*: the files on the stack where the path "
        "issues SQL or reports a value; *at the landmark*: the files on the stack where the "
        "path does the one thing the issue names (the study's row inserted, the trial's loss "
        "reported, the trial's final tell).",
        "",
        "| path | run | files with a function run | files on the call chain | at the landmark |",
        "|---|---|---|---|---|",
    ]
    for path, runs in data["paths"].items():
        for label, run in zip(("first", "second"), runs, strict=True):
            stops = ", ".join(f"{name} {len(files)}" for name, files in run["landmarks"].items())
            lines.append(
                f"| {path} | {label} | {len(run['files'])} | {len(run['chain'])} | {stops} |"
            )
    for path, runs in data["paths"].items():
        run = runs[1]
        lines += ["", f"## {path} (second run)", ""]
        lines += [f"At {name}: {_names(files)}  " for name, files in run["landmarks"].items()]
        lines += ["Call chain: " + _names(run["chain"]), ""]
        for file, names in run["files"].items():
            lines.append(f"- `{file}` ({len(names)}): {', '.join(names)}")
        only_first = sorted(set(runs[0]["files"]) - set(run["files"]))
        if only_first:
            lines += ["", "First run only: " + _names(only_first)]
    return "\n".join(lines) + "\n"


def _names(files: list[str]) -> str:
    return ", ".join(f"`{f}`" for f in files) or "-"


def _database(use_sqlite: bool, workdir: Path) -> tuple[str, Callable[[], None]]:
    if use_sqlite:
        return f"sqlite:///{workdir / 'hpo.db'}", lambda: None
    cluster = PostgresCluster()
    return cluster.url(), cluster.stop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sqlite", action="store_true", help="SQLite instead of PostgreSQL")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tracer = Tracer()
    tracer.install()  # before any thread starts: threads inherit it
    with tempfile.TemporaryDirectory(prefix="hpo-paths-") as tmp:
        url, stop = _database(args.sqlite, Path(tmp))
        try:
            upgrade(url)
            make_storage(Settings(database_url=url)).engine.dispose()
            settings = Settings(
                database_url=url,
                auth="enabled",
                artifact_dir=Path(tmp) / "artifacts",
                cache_dir=Path(tmp) / "cache",
            )
            started = time.perf_counter()
            paths = {
                "POST /studies": post_studies(tracer, settings),
                "one trial": one_trial(tracer, settings),
            }
        finally:
            tracer.uninstall()
            stop()
    data = {
        "commit": commit(),
        "machine": machine(f"Python {sys.version.split()[0]}"),
        "database": "SQLite" if args.sqlite else "PostgreSQL (tests/pg.py)",
        "seconds": round(time.perf_counter() - started, 1),
        "paths": paths,
    }
    save("code-paths", data, markdown(data))
    print(markdown(data).split("\n\n## ")[0])


if __name__ == "__main__":
    main()
