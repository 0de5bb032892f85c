"""Noisy neighbour: a normal 4-trial study's wall time alone, and beside a hostile owner.

    python -m bench.noisy_neighbour [--rows 1 2 3 4 5 9] [--crowd 1000] [--trials 4]
                                    [--workers 2] [--timeout 600]
    python -m bench.noisy_neighbour --saturated [--workers 2]

Each phase starts its own PostgreSQL cluster, `hpo serve` and W `hpo worker` CPU processes
(loopback only), then stops them all. Alone: owner `normal` registers a study of N trials on
the tiny built-in model and the workers start. Hostile: owner `hostile` first registers the
issue's rows (1: a `(a+)+b` regex objective over completions of 36 `a`s; 2: a chat template
that loops 99,999^2 times; 3: a FIFO as `dataset_info.json`; 4: a FIFO swapped in for the
arrow data after registration; 5: a GGUF header rewritten after registration to claim 2^28
strings in a sparse 2 GiB file; 9: `--crowd` ordinary studies), then `normal` registers the
same study and the workers start. A phase that does not finish in `--timeout` seconds is
reported as such; every request has a timeout and every process is killed at the end.
Writes bench/results/noisy-neighbour.{md,json}. ``--saturated``: owner `holder` keeps every
worker busy with endless trials and owner `later` registers a 1-trial study; how soon its
trial starts (in the holder's report intervals) and what each preemption cost the holder
(bench/results/noisy-neighbour-saturated.{md,json}).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import optuna
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import func, select

from bench import commit, machine, save
from bench.fair_share_scan import time_study_choice
from hpo.core import records
from hpo.core.db import Database, StudyRecord
from hpo.core.migrate import upgrade
from hpo.core.optuna_tables import studies as optuna_studies
from hpo.core.optuna_tables import trials as optuna_trials
from tests.pg import PostgresCluster, _free_port
from tests.specs import study_spec
from tests.workers import small_study, wait_healthy

LEAN = {"path": "builtin:demo-text", "max_train_examples": 64, "max_eval_examples": 16}
LOOPING_TEMPLATE = (
    "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}"
    "{% for m in messages %}{{ m['content'] }}{% endfor %}"
)
REQUEST_TIMEOUT_S = 30.0


def normal_study(name: str, trials: int) -> dict[str, Any]:
    return small_study(name, dataset=LEAN, budget={"max_trials": trials}, pruner={"type": "none"})


# --- the hostile owner's studies (the issue's rows) ----------------------------------------


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def _saved(folder: Path) -> Path:
    import datasets

    data = datasets.Dataset.from_dict({"text": ["ada has two cups ."] * 16})
    datasets.DatasetDict({"train": data}).save_to_disk(str(folder))
    return folder


def _fifo_in_place_of(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _gguf(path: Path, *, strings: int | None) -> None:
    """A GGUF header; with ``strings``, one entry claiming that many, in a sparse 2 GiB file."""
    entries = b""
    if strings is not None:
        key = b"tokenizer.ggml.tokens"
        entries = struct.pack("<Q", len(key)) + key + struct.pack("<IIQ", 9, 8, strings)
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, int(strings is not None)) + entries)
    if strings is not None:
        os.truncate(path, 2 * 2**30)


def hostile_rows(rows: set[int], data: Path, models: Path, cache: Path) -> list[tuple[str, Any]]:
    """(row, spec) to register, each with what to do once it is registered (or None)."""
    once = {"budget": {"max_trials": 1, "max_failures_in_a_row": 1}, "pruner": {"type": "none"}}
    out: list[tuple[str, Any]] = []
    if 1 in rows:
        a36 = [{"prompt": f"say {i}", "completion": "a" * 36} for i in range(8)]
        spec = study_spec(
            "row1-regex",
            mode="decode",
            model={"name_or_path": "builtin:tiny-llama"},
            dataset={"path": _jsonl(data / "a.jsonl", a36), "validation_fraction": 0.5},
            training={"max_new_tokens": 4},
            evaluation={"generation": {"max_examples": 4}},
            space={"temperature": {"type": "float", "low": 0.5, "high": 1.0}},
            objective={"metric": "regex", "pattern": "(a+)+b"},
            **once,
        )
        out.append(("1", (spec, None)))
    if 2 in rows:
        from worker import builtin

        folder = models / "looping"
        shutil.copytree(builtin.resolve("builtin:tiny-llama", cache), folder)
        (folder / "chat_template.jinja").write_text(LOOPING_TEMPLATE)
        chat = [
            {
                "messages": [
                    {"role": "user", "content": "two cups?"},
                    {"role": "assistant", "content": "two cups ."},
                ]
            }
        ] * 8
        dataset = {"path": _jsonl(data / "chat.jsonl", chat)}
        spec = small_study(
            "row2-template", model={"name_or_path": str(folder)}, dataset=dataset, **once
        )
        out.append(("2", (spec, None)))
    if 3 in rows:
        folder = _saved(data / "info-fifo")
        _fifo_in_place_of(folder / "train" / "dataset_info.json")
        out.append(("3", (small_study("row3-fifo", dataset={"path": str(folder)}, **once), None)))
    if 4 in rows:
        folder = _saved(data / "arrow-fifo")
        (arrow,) = folder.rglob("*.arrow")
        spec = small_study("row4-fifo", dataset={"path": str(folder)}, **once)
        out.append(("4", (spec, lambda: _fifo_in_place_of(arrow))))
    if 5 in rows:
        gguf = models / "model.gguf"
        _gguf(gguf, strings=None)
        spec = small_study("row5-gguf", model={"name_or_path": str(gguf)}, **once)
        out.append(("5", (spec, lambda: _gguf(gguf, strings=2**28))))
    return out


# --- one phase ------------------------------------------------------------------------------


def _post(base: str, token: str, spec: dict[str, Any]) -> str:
    try:
        response = httpx.post(
            f"{base}/studies",
            json=spec,
            timeout=REQUEST_TIMEOUT_S,
            headers={"Authorization": f"Bearer {token}"},
        )
    except httpx.HTTPError as exc:
        return type(exc).__name__
    return str(response.status_code)


def _token(env: dict[str, str], owner: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "hpo", "token", "create", owner],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def _spawn(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:  # own process group: a stuck worker's children die with it
        return subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # SIGTERM ignored: a stalled worker
            proc.wait()


def _scan_figures(url: str, *, grace_period: float) -> dict[str, Any]:
    """A worker's study choice with every study registered: statements, time, normal's place."""
    with Database(url) as db:
        choice = time_study_choice(db, grace_period=grace_period, repeats=5)
    place = next((i + 1 for i, s in enumerate(choice.order) if s.owner == "normal"), None)
    return {
        "studies_in_order": len(choice.order),
        "normal_place": place,
        "statements": choice.statements,
        "median_ms": statistics.median(choice.times) * 1000,
    }


def _trials_by_owner(url: str) -> dict[str, dict[str, int]]:
    query = (
        select(StudyRecord.owner, optuna_trials.c.state, func.count())
        .select_from(optuna_trials)
        .join(optuna_studies, optuna_studies.c.study_id == optuna_trials.c.study_id)
        .join(StudyRecord, StudyRecord.name == optuna_studies.c.study_name)
        .group_by(StudyRecord.owner, optuna_trials.c.state)
    )
    out: dict[str, dict[str, int]] = {}
    with Database(url) as db, db.engine.connect() as conn:
        for owner, state, n in conn.execute(query):
            out.setdefault(owner, {})[state.lower()] = n
    return out


@contextmanager
def _stack(workdir: Path, **extra_env: str) -> Iterator[tuple[str, str, dict[str, str], list]]:
    """PostgreSQL, `hpo serve` on a free port: (database URL, API URL, the environment, the
    processes to stop, where to add workers); everything is stopped at the end."""
    data, models, cache = workdir / "data", workdir / "models", workdir / "cache"
    data.mkdir(parents=True)
    models.mkdir()
    cluster = PostgresCluster()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        url = cluster.url()
        upgrade(url)
        env = dict(
            os.environ,
            HPO_DATABASE_URL=url,
            HPO_ARTIFACT_DIR=str(workdir / "artifacts"),
            HPO_CACHE_DIR=str(cache),
            HPO_DATA_ROOTS=json.dumps([str(data)]),
            HPO_MODEL_ROOTS=json.dumps([str(models)]),
            HPO_HEARTBEAT_INTERVAL="2",
            HPO_GRACE_PERIOD="20",
            PYTHONUNBUFFERED="1",
            **extra_env,
        )
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        procs.append(
            _spawn(
                [sys.executable, "-m", "hpo", "serve", "--port", str(port), "--no-migrate"],
                env,
                workdir / "api.log",
            )
        )
        wait_healthy(base)
        yield url, base, env, procs
    finally:
        _stop(procs)
        cluster.stop()


def _start_workers(n: int, env: dict[str, str], procs: list, workdir: Path) -> None:
    worker = [sys.executable, "-m", "hpo", "worker", "--device", "cpu", "--cpu-threads", "1"]
    for i in range(n):
        procs.append(_spawn(worker, env, workdir / f"worker{i}.log"))


def run_phase(
    *, rows: set[int], crowd: int, trials: int, workers: int, timeout: float, workdir: Path
) -> dict[str, Any]:
    """One phase; ``rows`` empty: the normal study alone."""
    result: dict[str, Any] = {"rows": sorted(rows), "crowd": crowd if 9 in rows else 0}
    limit = {"HPO_MAX_ACTIVE_STUDIES_PER_OWNER": str(crowd + 10)}
    with _stack(workdir, **limit) as (url, base, env, procs):
        data, models, cache = workdir / "data", workdir / "models", workdir / "cache"
        hostile, normal = _token(env, "hostile"), _token(env, "normal")
        registered: dict[str, str] = {}
        for row, (spec, after) in hostile_rows(rows, data, models, cache):
            registered[f"row {row}"] = _post(base, hostile, spec)
            if after is not None:
                after()
        if 9 in rows:
            started = time.monotonic()
            specs = [normal_study(f"crowd-{i}", trials) for i in range(crowd)]
            with ThreadPoolExecutor(8) as pool:
                codes = list(pool.map(lambda s: _post(base, hostile, s), specs))
            others = Counter(c for c in codes if c != "201")
            registered["row 9"] = f"{codes.count('201')} of {crowd} accepted" + (
                f" (others: {dict(others)})" if others else ""
            )
            result["crowd_registration_s"] = time.monotonic() - started
        result["hostile_registrations"] = registered
        result["normal_registration"] = _post(base, normal, normal_study("normal", trials))
        if result["normal_registration"] == "201":
            result["scan"] = _scan_figures(url, grace_period=20)
        started = time.monotonic()
        _start_workers(workers, env, procs, workdir)
        result["normal_wall_s"] = None
        while result["normal_registration"] == "201" and time.monotonic() - started < timeout:
            if _study(base, normal, "normal").get("trials", {}).get("finished", 0) >= trials:
                result["normal_wall_s"] = time.monotonic() - started
                break
            time.sleep(1)
        result["trials_by_owner"] = _trials_by_owner(url)
    return result


def _study(base: str, token: str, name: str) -> dict[str, Any]:
    try:
        response = httpx.get(
            f"{base}/studies/{name}", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        return dict(response.json())
    except (httpx.HTTPError, ValueError):
        return {}


# --- the saturated fleet ----------------------------------------------------------------------


def run_saturated(*, workers: int, timeout: float, workdir: Path) -> dict[str, Any]:
    """Owner `holder` fills every worker with endless trials; owner `later` then registers a
    1-trial study. Its first trial's start after its registration, in the holder's report
    intervals, and what each preemption cost the holder (examples trained again)."""
    result: dict[str, Any] = {"min_slice_s": SATURATED_SLICE_S}
    with _stack(workdir, HPO_MIN_SLICE_S=str(SATURATED_SLICE_S)) as (url, base, env, procs):
        holder, later = _token(env, "holder"), _token(env, "later")
        hold = small_study(
            "hold",
            dataset=LEAN,
            training={"max_steps": 100_000, "max_seq_length": 32},
            pruner={"type": "none"},
            budget={"max_trials": workers, "max_trial_s": timeout},
            evaluation={"every_examples": SATURATED_EVERY},
        )
        result["holder_registration"] = _post(base, holder, hold)
        _start_workers(workers, env, procs, workdir)
        # The steady state of a full fleet: the holder's trials are past their minimum slice.
        _poll(lambda: _reporting(url, "hold", reports=2) >= workers, timeout)
        time.sleep(SATURATED_SLICE_S)
        registered = dt.datetime.now(dt.UTC).replace(tzinfo=None)  # Optuna's naive UTC
        result["later_registration"] = _post(base, later, normal_study("quick", 1))
        _poll(lambda: _study(base, later, "quick").get("status") == "completed", timeout)
        _poll(lambda: _continued(url), timeout)
        result |= _preemption_figures(url, registered)
    return result


SATURATED_SLICE_S = 5
SATURATED_EVERY = 512  # a report every 64 steps: a second or two on the tiny model


def _poll(done: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not reached in {timeout:.0f} s")
        time.sleep(0.5)


def _trials(url: str, name: str) -> list[FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)


def _reporting(url: str, name: str, *, reports: int) -> int:
    return sum(
        1
        for t in _trials(url, name)
        if t.state == TrialState.RUNNING and len(t.intermediate_values) >= reports
    )


def _continued(url: str) -> bool:
    """Every yielded segment's continuation has reported past it."""
    held = _trials(url, "hold")
    yielded = [t for t in held if records.yielded(t) is not None]
    return bool(yielded) and all(
        any(
            records.continues(c) == y.number
            and max(c.intermediate_values, default=0) > max(y.intermediate_values)
            for c in held
        )
        for y in yielded
    )


def _preemption_figures(url: str, registered: dt.datetime) -> dict[str, Any]:
    held = _trials(url, "hold")
    (quick,) = _trials(url, "quick")
    yielded = [t for t in held if records.yielded(t) is not None]
    intervals, lost = [], []
    for segment in yielded:
        assert segment.datetime_start is not None and segment.datetime_complete is not None
        training = (segment.datetime_complete - segment.datetime_start).total_seconds() - (
            records.setup_seconds(segment) or 0.0
        )
        intervals.append(training / len(segment.intermediate_values))
        # The continuation resumes at the last report, where the checkpoint was saved.
        lost.append((records.examples_seen(segment) or 0) - max(segment.intermediate_values))
    assert quick.datetime_start is not None
    wait = (quick.datetime_start - registered).total_seconds()
    interval = statistics.median(intervals)
    return {
        "yielded_segments": len(yielded),
        "failed": sum(t.state == TrialState.FAIL for t in held),
        "later_first_trial_after_s": wait,
        "report_interval_s": interval,
        "later_wait_in_report_intervals": wait / interval,
        "lost_examples_per_preemption": lost,
        "lost_report_intervals_per_preemption": [n / SATURATED_EVERY for n in lost],
    }


def _wall(phase: dict[str, Any], timeout: float) -> str:
    wall = phase["normal_wall_s"]
    return f"{wall:.0f} s" if wall is not None else f"did not finish in {timeout:.0f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[9], choices=[1, 2, 3, 4, 5, 9])
    parser.add_argument("--crowd", type=int, default=1000)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument(
        "--saturated", action="store_true", help="Only the saturated-fleet scenario."
    )
    args = parser.parse_args()
    if args.saturated:
        saturated(args.workers, args.timeout)
        return
    common = {
        "crowd": args.crowd,
        "trials": args.trials,
        "workers": args.workers,
        "timeout": args.timeout,
    }
    with tempfile.TemporaryDirectory() as tmp:
        alone = run_phase(rows=set(), workdir=Path(tmp) / "alone", **common)
        hostile = run_phase(rows=set(args.rows), workdir=Path(tmp) / "hostile", **common)
    ratio = (
        hostile["normal_wall_s"] / alone["normal_wall_s"]
        if hostile["normal_wall_s"] and alone["normal_wall_s"]
        else None
    )
    result = {
        "commit": commit(),
        "machine": machine("loopback", f"{args.workers} CPU workers"),
        "args": vars(args),
        "alone": alone,
        "hostile": hostile,
        "ratio": ratio,
    }
    scan = hostile.get("scan") or {}
    lines = [
        "# Noisy neighbour",
        "",
        f"Commit `{result['commit']}`, {result['machine']}. Owner `normal` runs a "
        f"{args.trials}-trial study on the tiny built-in model; owner `hostile` runs rows "
        f"{', '.join(map(str, sorted(args.rows)))} of issue 20 beside it.",
        "",
        "| phase | normal study's wall time | trials by owner |",
        "|---|---|---|",
        f"| alone | {_wall(alone, args.timeout)} | {alone['trials_by_owner']} |",
        f"| beside the hostile owner | {_wall(hostile, args.timeout)} | "
        f"{hostile['trials_by_owner']} |",
        "",
        f"Ratio: {f'{ratio:.2f}x' if ratio else 'n/a'} (target: within 1.5x).",
        "",
        f"Hostile registrations: {hostile['hostile_registrations']}"
        + (
            f" ({hostile['crowd_registration_s']:.0f} s)"
            if "crowd_registration_s" in hostile
            else ""
        )
        + f"; the normal study's: {hostile['normal_registration']}.",
        "",
        f"A worker's study choice with every study registered: {scan.get('statements')} SQL "
        f"statement(s), {scan.get('median_ms', float('nan')):.0f} ms (median of 5), the normal "
        f"study at place {scan.get('normal_place')} of {scan.get('studies_in_order')}.",
    ]
    save("noisy-neighbour", result, "\n".join(lines) + "\n")
    print("\n".join(lines))


def saturated(workers: int, timeout: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        found = run_saturated(workers=workers, timeout=timeout, workdir=Path(tmp))
    result = {"commit": commit(), "machine": machine("loopback", f"{workers} CPU workers")}
    result |= found
    lost = found["lost_report_intervals_per_preemption"]
    lines = [
        "# Noisy neighbour: a saturated fleet",
        "",
        f"Commit `{result['commit']}`, {result['machine']}. Owner `holder` fills all "
        f"{workers} workers with trials of 100,000 steps (reports every {SATURATED_EVERY} "
        f"examples); once each has reported twice and run its minimum slice, owner `later` "
        "registers a 1-trial study. "
        f"HPO_MIN_SLICE_S={SATURATED_SLICE_S}.",
        "",
        "| figure | value | target |",
        "|---|---|---|",
        f"| later's first trial started after its registration | "
        f"{found['later_first_trial_after_s']:.1f} s | |",
        f"| the holder's report interval (median) | {found['report_interval_s']:.2f} s | |",
        f"| later's wait in report intervals | {found['later_wait_in_report_intervals']:.1f} "
        "| <= 2 |",
        f"| holder's segments that yielded | {found['yielded_segments']} | |",
        f"| holder's failed trials | {found['failed']} | 0 |",
        f"| examples trained again per preemption | {found['lost_examples_per_preemption']} "
        f"({', '.join(f'{n:g}' for n in lost)} report intervals) | <= 1 interval |",
    ]
    save("noisy-neighbour-saturated", result, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
