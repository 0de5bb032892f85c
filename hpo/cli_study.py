"""hpo study ...: the REST API from the terminal (tables for people, --json for scripts)."""

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
from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from hpo.client import ApiError, Client
from hpo.core import records
from hpo.core.budget import max_trials
from hpo.core.progress import saturation_note
from hpo.core.schedulers.dispatch import scheduled
from hpo.core.schemas import TrialPublic
from hpo.core.tally import interrupted_numbers, tally
from hpo.local_reads import local_client, local_database

DEFAULT_API_URL = "http://127.0.0.1:8000"
study_app = typer.Typer(
    no_args_is_help=True,
    help=(
        "Studies over the REST API.\n\n"
        "In a folder holding hpo.db (where hpo run ran) they read it directly: no server, no "
        "token. Elsewhere, or with HPO_API_URL set, they ask the service.\n\n"
        f"Environment: HPO_API_URL, the service's address (default {DEFAULT_API_URL}); "
        "HPO_TOKEN, a bearer token (hpo token create NAME prints one; not needed when the "
        "service runs with HPO_AUTH=disabled)."
    ),
)
console = Console()
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
StudyName = Annotated[str, typer.Argument(metavar="NAME", help="The study's name.")]
NO_TOKEN_HINT = "set HPO_TOKEN (hpo token create NAME prints one)"


@contextmanager
def _client() -> Iterator[Client]:
    url = os.environ.get("HPO_API_URL", DEFAULT_API_URL)
    token = os.environ.get("HPO_TOKEN") or None
    local = local_database(Path.cwd())
    try:
        if local is not None:  # what `hpo run` left here: read it with no server
            with local_client(local.parent) as client:
                yield client
            return
        with Client(url, token) as client:
            yield client
    except ApiError as exc:
        hint = f"; {NO_TOKEN_HINT}" if exc.status == 401 and token is None else ""
        typer.echo(f"error: {exc}{hint}", err=True)
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


def load_spec(path: Path) -> dict[str, Any]:
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
    spec_file: Annotated[
        Path, typer.Option("-f", "--file", metavar="FILE", help="The study spec (YAML or JSON).")
    ],
    as_json: AsJson = False,
) -> None:
    """Register the study in a YAML or JSON spec file."""
    with _client() as client:
        study = client.create_study(load_spec(spec_file))
    _emit(study, as_json, lambda: console.print(f"created study [bold]{study.name}[/]"))


@study_app.command("list")
def list_(
    as_json: AsJson = False,
    offset: Annotated[int, typer.Option(help="Skip this many studies.")] = 0,
    limit: Annotated[int, typer.Option(help="Show at most this many.")] = 50,
) -> None:
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
def show(name: StudyName, as_json: AsJson = False) -> None:
    """Status, trial counts and the best trial of a study."""
    with _client() as client:
        study = client.get_study(name)
        found = [] if as_json else client.all_trials(name)
    running = [t for t in found if t.state == "running"]

    def human() -> None:
        search = study.spec.search
        counted = tally(found, budget=max_trials(search), scheduled=scheduled(search))
        console.print(f"[bold]{study.name}[/] {study.status} {study.status_reason or ''}")
        console.print(f"{counted.budget_line()}: {counted.detail_line()}")
        metric = study.spec.search.objective.metric
        decode = study.spec.train.mode == "decode"
        if decode and study.best_params == {}:
            console.print(f"best {metric}: {study.best_value} greedy decoding (nothing beat it)")
        else:
            console.print(f"best {metric}: {study.best_value} {study.best_params or ''}")
        objective = study.spec.search.objective
        if study.best_value is not None and (
            note := saturation_note(metric, study.best_value, study.best_ties, objective.tie_break)
        ):
            console.print(note)
        if metric in study.baseline:
            label = "greedy decoding (baseline)" if decode else "untuned model"
            console.print(f"{label}: {metric} {study.baseline[metric]:.4g}")
        if study.warm_start_from is not None:
            sources = ", ".join(study.warm_start_from) or "no earlier study matched: started cold"
            console.print(f"warm start from: {sources}")
        for trial in running:  # where each running trial is: its last report
            if trial.intermediate_values:
                step = max(trial.intermediate_values)
                value = trial.intermediate_values[step]
                console.print(
                    f"trial {trial.number} running: {metric} {value:.4g} at {step} examples"
                )
            else:
                console.print(f"trial {trial.number} running: no report yet")

    _emit(study, as_json, human)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def print_whole(table: Table) -> None:
    """Print ``table`` without cutting a name or a value: as wide as it needs, where that is
    wider than the terminal (which then wraps the lines) rather than with ellipses."""
    natural = Measurement.get(console, console.options.update_width(10_000), table).maximum
    if natural <= console.width:
        console.print(table)
        return
    # Console.print caps its width at the console's: print through a wider one
    Console(
        file=console.file,
        width=natural,
        color_system="auto",
        force_terminal=console.is_terminal,
    ).print(table)


REASON_CHARS = 40  # a reason in the table, without --wide (an error may run to lines)


def _ranks(ranks: dict[str, int] | None, *, wide: bool) -> list[str]:
    """An AdaLoRA trial's final ranks: their mean and how many modules were cut to 0 (``mean
    8, 25/120 off``), or with ``wide`` each, per kind of module in layer order (q_proj 6,3)."""
    if not ranks:
        return [""]
    if not wide:
        off = sum(rank == 0 for rank in ranks.values())
        return [f"mean {sum(ranks.values()) / len(ranks):.3g}, {off}/{len(ranks)} off"]
    kinds: dict[str, list[str]] = {}
    for module, rank in ranks.items():
        kinds.setdefault(module.rsplit(".", 1)[-1], []).append(str(rank))
    return [" ".join(f"{kind} {','.join(r)}" for kind, r in kinds.items())]


def _reason(trial: TrialPublic, *, wide: bool) -> str:
    reason = _cell(records.reason(trial))
    if wide or len(reason) <= REASON_CHARS:
        return reason
    return reason[: REASON_CHARS - 1] + "…"


def trials_table(
    metric: str, searched: list[str], found: list[TrialPublic], *, wide: bool = False
) -> Table:
    """One row per trial: state, value, one column per searched hyperparameter, duration, why
    it failed or was pruned (or paused), and where an AdaLoRA trial's rank budget went (in
    short; ``wide``: every rank and whole reasons)."""
    adalora = any(records.rank_pattern(t) is not None for t in found)
    requeued = interrupted_numbers(found)
    headers = ["#", "state", metric, *searched, "duration (s)", "reason"]
    # a rule under the header and no edges: three characters fewer per column than a grid
    table = Table(box=box.SIMPLE_HEAD, collapse_padding=True, show_edge=False, pad_edge=False)
    for header in [*headers, "ranks"] if adalora else headers:
        table.add_column(header, no_wrap=True)
    for t in found:
        duration = "" if t.duration_s is None else f"{t.duration_s:.1f}"
        table.add_row(
            str(t.number),
            "interrupted" if t.number in requeued else t.state,
            _cell(t.value),
            *(_cell(t.params.get(key)) for key in searched),
            duration,
            _reason(t, wide=wide),
            *(_ranks(records.rank_pattern(t), wide=wide) if adalora else []),
        )
    return table


@study_app.command("trials")
def trials(
    name: StudyName,
    as_json: AsJson = False,
    state: Annotated[
        str | None,
        typer.Option(
            help="Only trials in this state: complete, pruned, paused, fail, running, waiting "
            "(paused trials are pruned to Optuna: 'pruned' lists them too)."
        ),
    ] = None,
    wide: Annotated[
        bool, typer.Option("--wide", help="Every AdaLoRA rank and whole reasons.")
    ] = False,
) -> None:
    """All trials of a study: state, value, parameters, duration and fail or prune reason
    (AdaLoRA's ranks in short: their mean and the modules cut to 0)."""
    with _client() as client:
        study = client.get_study(name)
        found = (
            client.all_trials(name)
            if state is None
            else client.trials(name, state=state, limit=500).data
        )
    search = study.spec.search
    _emit(
        found,
        as_json,
        lambda: print_whole(
            trials_table(
                search.objective.metric, list(search.space.distributions()), found, wide=wide
            )
        ),
    )


@study_app.command("best")
def best(name: StudyName, as_json: AsJson = False) -> None:
    """The best trial's value and parameters."""
    with _client() as client:
        trial = client.best(name)

    def human() -> None:
        greedy = " greedy decoding" if records.is_greedy(trial) else ""
        console.print(f"trial {trial.number}: {trial.value}{greedy}")
        for key, value in trial.params.items():
            console.print(f"  {key} = {value}")

    _emit(trial, as_json, human)


def _lifecycle(action: str) -> Callable[[str, bool], None]:
    def command(name: StudyName, as_json: AsJson = False) -> None:
        with _client() as client:
            study = client.set_state(name, action)
        _emit(study, as_json, lambda: console.print(f"{study.name}: {study.status}"))

    command.__doc__ = f"{action.capitalize()} a study."
    return command


for _action in ("pause", "resume", "stop"):
    study_app.command(_action)(_lifecycle(_action))


@study_app.command("delete")
def delete(name: StudyName) -> None:
    """Delete a study and its trials."""
    with _client() as client:
        client.delete(name)
    console.print(f"deleted {name}")


@study_app.command("enqueue")
def enqueue(
    name: StudyName,
    param: Annotated[
        list[str], typer.Option("--param", metavar="K=V", help="A value; repeat for each.")
    ],
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
def plot(
    name: StudyName,
    out: Annotated[Path, typer.Option("--out", metavar="FILE", help="Where to write the PNG.")],
) -> None:
    """Best-so-far against cumulative device hours, and parameter importances, as a PNG."""
    import optuna

    from hpo.plots import plot_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # its in-memory study says hello

    with _client() as client:
        study = client.get_study(name)
        found = client.all_trials(name)
    baseline = study.baseline.get(study.spec.search.objective.metric)
    plot_study(study.spec, found, out, baseline=baseline)
    console.print(f"wrote {out}")


def report(
    name: StudyName,
    out: Annotated[
        Path, typer.Option("--out", metavar="FILE", help="The HTML page to write.")
    ] = Path("report.html"),
) -> None:
    """One self-contained HTML page of a study, readable offline: every trial's curve, the
    objective over trials, parameter importances (Optuna's plots) and the best configuration."""
    from hpo.report import write_report

    with _client() as client:
        study = client.get_study(name)
        found = client.all_trials(name)
    numbers = {t.number: t for t in found}
    best = None if study.best_trial is None else numbers.get(study.best_trial)
    baseline = study.baseline.get(study.spec.search.objective.metric)
    write_report(study.spec, found, out, best=best, baseline=baseline)
    console.print(f"wrote {out}", soft_wrap=True, markup=False)


@study_app.command("export")
def export(
    name: StudyName,
    out: Annotated[
        Path | None, typer.Option("--out", metavar="FILE", help="Write it here (.json/.yaml).")
    ] = None,
) -> None:
    """The best configuration as keyword arguments of TrainingArguments, LoraConfig,
    SFTConfig and GenerationConfig, for training without this service."""
    with _client() as client:
        config = client.best_config(name).model_dump(mode="json")
    as_yaml = out is not None and out.suffix in (".yaml", ".yml")
    text = yaml.safe_dump(config, sort_keys=False) if as_yaml else json.dumps(config, indent=2)
    if out is None:
        typer.echo(text)
        return
    out.write_text(text)
    console.print(f"wrote {out}", soft_wrap=True, markup=False)


@study_app.command("download")
def download(
    name: StudyName,
    out: Annotated[Path, typer.Option("--out", metavar="FILE", help="The zip to write.")],
) -> None:
    """The best trial's adapter as a zip: unzip it, then PeftModel.from_pretrained(model, DIR)."""
    with _client() as client:
        client.download_adapter(name, out)
    console.print(f"wrote {out}", soft_wrap=True, markup=False)


@study_app.command("retrain")
def retrain(
    name: StudyName,
    new: Annotated[
        str | None, typer.Option("--as", metavar="NEW", help="Default NAME-final.")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Register a one-trial study of NAME's best configuration on all of the training data;
    workers train it like any study (its adapter is then GET /studies/NEW/best/adapter)."""
    from hpo.core.derived import retrain_spec

    with _client() as client:
        source = client.get_study(name)
        params = client.best(name).params
        created = client.create_study(
            retrain_spec(source.spec, params, name=new or f"{name}-final")
        )
    _emit(created, as_json, lambda: console.print(f"created study [bold]{created.name}[/]"))


@study_app.command("decode")
def decode(
    name: StudyName,
    metric: Annotated[str, typer.Option(help="exact_match, token_f1, rouge_l, contains.")],
    new: Annotated[
        str | None, typer.Option("--as", metavar="NEW", help="Default NAME-decode.")
    ] = None,
    trials: Annotated[int, typer.Option(help="Decoding settings to try.")] = 16,
    as_json: AsJson = False,
) -> None:
    """Register a study that searches decoding settings (temperature, top_p, repetition
    penalty, max new tokens) for NAME's best adapter, scored with METRIC on its evaluation
    prompts; its trials train nothing."""
    from hpo.core.derived import decode_spec

    with _client() as client:
        source = client.get_study(name)
        spec = decode_spec(source.spec, name=new or f"{name}-decode", metric=metric, trials=trials)
        created = client.create_study(spec)
    _emit(created, as_json, lambda: console.print(f"created study [bold]{created.name}[/]"))


@study_app.command("logs")
def logs(
    name: StudyName,
    number: Annotated[int, typer.Argument(metavar="TRIAL", help="The trial's number.")],
    out: Annotated[Path, typer.Option("--out", metavar="FILE", help="The zip to write.")],
) -> None:
    """A trial's training curves as TensorBoard logs (unzip, then tensorboard --logdir)."""
    with _client() as client:
        client.download_logs(name, number, out)
    console.print(f"wrote {out}", soft_wrap=True, markup=False)
