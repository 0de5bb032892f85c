"""``hpo study ...``: the REST API from the terminal (tables for people, --json for scripts)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from hpo.client import ApiError, Client

study_app = typer.Typer(no_args_is_help=True, help="Studies over the REST API (HPO_API_URL).")
console = Console()
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


@contextmanager
def _client() -> Iterator[Client]:
    url = os.environ.get("HPO_API_URL", "http://127.0.0.1:8000")
    try:
        with Client(url, os.environ.get("HPO_TOKEN")) as client:
            yield client
    except ApiError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def _emit(value: BaseModel | list[Any], as_json: bool, human: Callable[[], None]) -> None:
    if as_json:
        data = (
            [v.model_dump(mode="json") for v in value]
            if isinstance(value, list)
            else value.model_dump(mode="json")
        )
        typer.echo(json.dumps(data, indent=2))
    else:
        human()


def _load_spec(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        typer.echo(f"error: cannot read {path}: {exc.strerror}", err=True)
        raise typer.Exit(1) from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        typer.echo(f"error: {path} is not valid {path.suffix[1:] or 'YAML'}: {exc}", err=True)
        raise typer.Exit(1) from None
    if not isinstance(data, dict):
        typer.echo(f"error: {path} must hold one object (a study spec)", err=True)
        raise typer.Exit(1)
    return data


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


@study_app.command("create")
def create(
    spec_file: Annotated[Path, typer.Option("-f", "--file")], as_json: AsJson = False
) -> None:
    """Register the study in a YAML or JSON spec file."""
    with _client() as client:
        study = client.create_study(_load_spec(spec_file))
    _emit(study, as_json, lambda: console.print(f"created study [bold]{study.name}[/]"))


@study_app.command("list")
def list_(as_json: AsJson = False, offset: int = 0, limit: int = 50) -> None:
    """Your studies."""
    with _client() as client:
        page = client.list_studies(offset=offset, limit=limit)

    def human() -> None:
        table = Table("name", "status", "created")
        for s in page.data:
            table.add_row(s.name, s.status, s.created_at.strftime("%Y-%m-%d %H:%M"))
        console.print(table)
        console.print(f"{len(page.data)} of {page.count}")

    _emit(page, as_json, human)


@study_app.command("show")
def show(name: str, as_json: AsJson = False) -> None:
    """Status, trial counts and the best trial of a study."""
    with _client() as client:
        study = client.get_study(name)

    def human() -> None:
        t = study.trials
        console.print(f"[bold]{study.name}[/] {study.status} {study.status_reason or ''}")
        console.print(
            f"trials: {t.finished}/{study.spec.search.budget.max_trials} finished "
            f"({t.complete} complete, {t.pruned} pruned), {t.fail} failed, {t.running} running"
        )
        metric = study.spec.search.objective.metric
        console.print(f"best {metric}: {study.best_value} {study.best_params or ''}")

    _emit(study, as_json, human)


@study_app.command("trials")
def trials(name: str, as_json: AsJson = False, state: str | None = None) -> None:
    """All trials of a study."""
    with _client() as client:
        found = (
            client.all_trials(name)
            if state is None
            else client.trials(name, state=state, limit=500).data
        )

    def human() -> None:
        table = Table("#", "state", "value", "params", "reason")
        for t in found:
            reason = t.user_attrs.get("fail_reason") or t.user_attrs.get("prune_reason") or ""
            table.add_row(str(t.number), t.state, "" if t.value is None else f"{t.value:.4f}",
                          json.dumps(t.params), reason)  # fmt: skip
        console.print(table)

    _emit(found, as_json, human)


@study_app.command("best")
def best(name: str, as_json: AsJson = False) -> None:
    """The best trial's value and parameters."""
    with _client() as client:
        trial = client.best(name)

    def human() -> None:
        console.print(f"trial {trial.number}: {trial.value}")
        for key, value in trial.params.items():
            console.print(f"  {key} = {value}")

    _emit(trial, as_json, human)


def _lifecycle(action: str) -> Callable[[str, bool], None]:
    def command(name: str, as_json: AsJson = False) -> None:
        with _client() as client:
            study = client.set_state(name, action)
        _emit(study, as_json, lambda: console.print(f"{study.name}: {study.status}"))

    command.__doc__ = f"{action.capitalize()} a study."
    return command


for _action in ("pause", "resume", "stop"):
    study_app.command(_action)(_lifecycle(_action))


@study_app.command("delete")
def delete(name: str) -> None:
    """Delete a study and its trials."""
    with _client() as client:
        client.delete(name)
    console.print(f"deleted {name}")


@study_app.command("enqueue")
def enqueue(
    name: str,
    param: Annotated[list[str], typer.Option("--param", help="k=v; repeat for each.")],
    as_json: AsJson = False,
) -> None:
    """Queue a configuration to be tried first."""
    params: dict[str, Any] = {}
    for item in param:
        key, sep, value = item.partition("=")
        if not sep or not key:
            typer.echo(f"error: --param takes k=v, but got {item!r}", err=True)
            raise typer.Exit(1)
        params[key] = _parse_value(value)
    with _client() as client:
        queued = client.enqueue(name, params)
    _emit(queued, as_json, lambda: console.print(f"queued {json.dumps(queued.params)}"))


@study_app.command("plot")
def plot(name: str, out: Annotated[Path, typer.Option("--out")]) -> None:
    """Best-so-far against cumulative device hours, and parameter importances, as a PNG."""
    from hpo.plots import plot_study

    with _client() as client:
        study = client.get_study(name)
        found = client.all_trials(name)
    plot_study(study.spec, found, out)
    console.print(f"wrote {out}")
