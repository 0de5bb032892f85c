"""hpo db / token / owner: the service's own tables, its API tokens and the owners' shares
of the workers, straight on the database (no server needed)."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer

from hpo.core.settings import Settings, get_settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

db_app = typer.Typer(no_args_is_help=True, help="The service's own tables (Alembic).")
token_app = typer.Typer(no_args_is_help=True, help="API bearer tokens.")
owner_app = typer.Typer(no_args_is_help=True, help="Owners' shares of the workers.")

DatabaseUrl = Annotated[
    str | None, typer.Option("--database-url", help="Defaults to HPO_DATABASE_URL.")
]


def settings_for(database_url: str | None) -> Settings:
    """The environment's settings, with ``--database-url`` in place of HPO_DATABASE_URL."""
    base = get_settings()
    return (
        base.model_copy(update={"database_url": Settings(database_url=database_url).database_url})
        if database_url
        else base
    )


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Our own errors (database down, not migrated, ...) as one line on stderr, exit code 1."""
    from hpo.core.errors import HPOError

    try:
        yield
    except HPOError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


@db_app.command("upgrade")
def db_upgrade(database_url: DatabaseUrl = None, revision: str = "head") -> None:
    """Apply our migrations up to REVISION and let Optuna create its own tables.

    Creates the SQLite file of a sqlite:/// URL if it does not exist.
    """
    from hpo.core.migrate import upgrade
    from hpo.core.storage import make_storage

    settings = settings_for(database_url)
    with one_line_errors():
        upgrade(settings.database_url, revision)
    make_storage(settings).engine.dispose()  # Optuna creates or checks its schema here


@db_app.command("downgrade")
def db_downgrade(database_url: DatabaseUrl = None, revision: str = "base") -> None:
    """Revert migrations down to REVISION."""
    from hpo.core.migrate import downgrade

    with one_line_errors():
        downgrade(settings_for(database_url).database_url, revision)


DURATION = re.compile(r"^(\d+)([mhd])$")
DURATION_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


def _duration(text: str | None) -> dt.timedelta | None:
    if text is None:
        return None
    match = DURATION.match(text)
    if match is None:
        raise typer.BadParameter("give a number and m, h or d, e.g. 90m, 12h or 30d")
    return dt.timedelta(**{DURATION_UNITS[match.group(2)]: int(match.group(1))})


@contextmanager
def _token_session(database_url: str | None) -> Iterator[Session]:
    """A committed session for token commands; errors become one line and exit code 1."""
    from sqlalchemy.exc import SQLAlchemyError

    from hpo.core.db import Database
    from hpo.core.errors import HPOError
    from hpo.core.migrate import check_database

    url = settings_for(database_url).database_url
    with one_line_errors():
        check_database(url)  # before connecting: that would create a missing SQLite file
    db = Database(url)
    try:
        with db.session() as session:
            yield session
    except HPOError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    except SQLAlchemyError as exc:
        cause = getattr(exc, "orig", None) or exc
        typer.echo(
            f"error: {type(cause).__name__}: {str(cause).splitlines()[0]}"
            " (has `hpo db upgrade` run on this database?)",
            err=True,
        )
        raise typer.Exit(1) from exc
    finally:
        db.close()


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(metavar="NAME", help="A unique name for the token.")],
    owner: Annotated[str | None, typer.Option(help="Owner of the studies; default NAME.")] = None,
    expires_in: Annotated[
        str | None, typer.Option(help="Lifetime such as 90m, 12h or 30d; default: none.")
    ] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Create a token and print it once; only its hash is stored."""
    from hpo.core.tokens import create_token

    lifetime = _duration(expires_in)
    with _token_session(database_url) as session:
        token = create_token(session, name=name, owner=owner or name, expires_in=lifetime)
    typer.echo(token)


@token_app.command("list")
def token_list(database_url: DatabaseUrl = None) -> None:
    """Tokens by name, with owner, creation, expiry and revocation (never the token)."""
    from rich.console import Console
    from rich.table import Table

    from hpo.core.tokens import list_tokens

    with _token_session(database_url) as session:
        rows = list_tokens(session)
    table = Table("name", "owner", "created", "expires", "revoked")
    stamp = "%Y-%m-%d %H:%M"
    for row in rows:
        table.add_row(
            row.name,
            row.owner,
            row.created_at.strftime(stamp),
            row.expires_at.strftime(stamp) if row.expires_at else "-",
            row.revoked_at.strftime(stamp) if row.revoked_at else "-",
        )
    Console().print(table)


@token_app.command("revoke")
def token_revoke(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The token's name.")],
    database_url: DatabaseUrl = None,
) -> None:
    """Revoke the token NAME: requests with it get 401 from now on."""
    from hpo.core.tokens import revoke_token

    with _token_session(database_url) as session:
        revoke_token(session, name=name)
    typer.echo(f"revoked {name}")


@owner_app.command("weight")
def owner_weight(
    owner: Annotated[str, typer.Argument(metavar="OWNER", help="The owner (as on tokens).")],
    weight: Annotated[
        float, typer.Argument(metavar="WEIGHT", min=0.001, help="Share relative to 1.")
    ],
    database_url: DatabaseUrl = None,
) -> None:
    """Give OWNER WEIGHT times the default share: workers serve the owner with the fewest
    running trials per unit of weight first (every owner starts at 1)."""
    from hpo.core.owners import set_weight

    with _token_session(database_url) as session:
        set_weight(session, owner=owner, weight=weight)
    typer.echo(f"{owner}: weight {weight:g}")


@owner_app.command("list")
def owner_list(database_url: DatabaseUrl = None) -> None:
    """Owners whose weight was set (every other owner has weight 1)."""
    from hpo.core.owners import list_weights

    with _token_session(database_url) as session:
        rows = [(row.owner, row.weight) for row in list_weights(session)]
    for owner, weight in rows:
        typer.echo(f"{owner}\t{weight:g}")
