"""``hpo demo``: a whole study on this machine, on the embedded SQLite default, in minutes."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
from rich import box
from rich.console import Console
from rich.live import Live
from rich.table import Table

from hpo.core.artifacts import recorded
from hpo.core.db import Database
from hpo.core.migrate import upgrade
from hpo.core.optuna_tables import trial_id
from hpo.core.progress import TrialCounts, best_trial, trial_counts
from hpo.core.settings import Settings
from hpo.core.spec import DEFAULT_SEARCH_SPACE, StudySpec
from hpo.core.storage import make_storage
from hpo.core.studies import create_study


def demo_spec(name: str, *, trials: int) -> StudySpec:
    """The six core hyperparameters on the tiny local Llama and the demo text."""
    return StudySpec.model_validate(
        {
            "name": name,
            "description": "hpo demo: LoRA on a tiny local Llama (CPU)",
            "train": {
                "model": {"name_or_path": "builtin:tiny-llama"},
                "dataset": {
                    "path": "builtin:demo-text",
                    "max_train_examples": 384,
                    "max_eval_examples": 96,
                },
                "training": {"max_seq_length": 40},
                "evaluation": {"every_examples": 128},
            },
            "search": {
                "space": {
                    **DEFAULT_SEARCH_SPACE,
                    "learning_rate": {"type": "float", "low": 1e-4, "high": 2e-2, "log": True},
                    "per_device_train_batch_size": {"type": "categorical", "choices": [8, 16, 32]},
                },
                "sampler": {"type": "tpe", "n_startup_trials": 6},
                "pruner": {"type": "successive_halving"},  # the demo shows early stopping
                "budget": {"max_trials": trials},
            },
        }
    )


@dataclass
class DemoResult:
    study: str
    database_url: str
    counts: TrialCounts
    best_value: float | None
    best_params: dict[str, object] | None
    adapter: Path | None


def _table(
    name: str,
    counts: TrialCounts,
    best: float | None,
    elapsed: float,
    total: int,
    *,
    alive: int,
    workers: int,
) -> Table:
    # Until a worker has imported torch and built the model and data, nothing runs: say so.
    starting = alive and not counts.running and not counts.finished
    table = Table(
        title=f"study {name}",
        box=box.SIMPLE_HEAD,
        collapse_padding=True,  # with the box above, fits 80 columns
        caption="workers starting: importing torch, building the tiny model and the data"
        if starting
        else None,
    )
    for col in (
        "finished",
        "complete",
        "pruned",
        "failed",
        "running",
        "workers",
        "best loss",
        "elapsed",
    ):
        table.add_column(col, justify="right")
    table.add_row(
        f"{counts.finished}/{total}",
        str(counts.complete),
        str(counts.pruned),
        str(counts.fail),
        str(counts.running),
        f"{alive}/{workers}",
        "-" if best is None else f"{best:.4f}",
        f"{elapsed:.0f}s",
    )
    return table


def run_demo(
    *, workdir: Path, database_url: str | None, workers: int, trials: int, console: Console
) -> DemoResult:
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    base = Settings()
    settings = base.model_copy(
        update={
            "database_url": Settings(
                database_url=database_url or f"sqlite:///{workdir / 'hpo.db'}"
            ).database_url,
            "artifact_dir": workdir / "artifacts",
            "auth": "disabled",
        }
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    upgrade(settings.database_url)
    name = "demo-" + dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    spec = demo_spec(name, trials=trials)
    storage = make_storage(settings)
    db = Database(settings.database_url)
    with db.session() as session:  # the same code path as POST /studies
        record_id = create_study(session, storage, spec=spec, owner="local", settings=settings).id
    # soft_wrap: a path broken over two lines cannot be copied
    console.print(f"study {name} · {trials} trials · {workdir}", soft_wrap=True, markup=False)
    plural = "s" if workers != 1 else ""
    console.print(
        f"starting {workers} CPU worker{plural} "
        "(the first trial builds the tiny model and the data)..."
    )

    env = dict(
        os.environ,
        HPO_DATABASE_URL=settings.database_url,
        HPO_ARTIFACT_DIR=str(settings.artifact_dir),
        HPO_CACHE_DIR=str(settings.cache_dir),
    )
    threads = max(1, (os.cpu_count() or 1) // workers)
    procs = []
    for i in range(workers):
        log = (workdir / f"worker-{i}.log").open("ab")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "hpo", "worker", "--study", name, "--device", "cpu",
                 "--cpu-threads", str(threads), "--idle-exit", "2"],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        )  # fmt: skip
    study_id = storage.get_study_id_from_name(name)
    started = time.monotonic()
    try:
        with Live(console=console, refresh_per_second=4) as live:
            while True:
                counts = trial_counts(storage, study_id)
                best = best_trial(storage, study_id)
                alive = sum(p.poll() is None for p in procs)
                live.update(
                    _table(name, counts, best.value if best else None,
                           time.monotonic() - started, trials, alive=alive, workers=workers)
                )  # fmt: skip
                if not alive:
                    break
                time.sleep(0.5)
        console.print()
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(timeout=30)
    best = best_trial(storage, study_id)
    adapter = None
    if best is not None:
        with db.session() as session:
            stored = recorded(session, study_id=record_id, trial_id=trial_id(best))
            adapter = settings.artifact_dir / stored.artifact_id if stored else None
    db.close()
    return DemoResult(
        study=name,
        database_url=settings.database_url,
        counts=trial_counts(storage, study_id),
        best_value=best.value if best else None,
        best_params=best.params if best else None,
        adapter=adapter,
    )
