"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import Scope

from hpo.core.db import Database, make_engine
from hpo.core.settings import Settings, get_settings, per_process
from hpo.core.storage import make_storage
from hpo.core.tokens import owner_of
from service import dashboard
from service.admission import Admission
from service.errors import install_error_handlers
from service.file_checks import FileChecks
from service.limits import ContentLengthLimit, FailedAuthLimiter, Turns
from service.routes import health, studies

MAX_BODY_BYTES = 1_000_000
POOL_HEADROOM = 5  # connections for health checks and registrations, which take no turn
TOKEN_CHECKS = 4  # token checks at once, before a request takes a turn (service.admission)
# Swagger UI and ReDoc from the fastapi-offline wheel: FastAPI's defaults load them from a CDN,
# which leaves /docs and /redoc blank on a machine without internet.
DOCS_ASSETS_URL = "/docs-assets"
DOCS_ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"


def _serve_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc with every asset served by the app itself."""
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=DOCS_ASSETS_DIR), name="docs-assets")
    favicon = f"{DOCS_ASSETS_URL}/favicon.png"

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=favicon,
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url="/openapi.json",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{DOCS_ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=favicon,
            with_google_fonts=False,
        )


def _exempt(scope: Scope) -> bool:
    """Requests admission lets through untouched: health checks and static files, so a load
    balancer still sees a live process while the API sheds load."""
    path = scope["path"]
    return path == "/healthz" or path.startswith(DOCS_ASSETS_URL)


def _takes_no_turn(scope: Scope) -> bool:
    """Registrations, whose file checks are bounded on their own (``FileChecks``) and must not
    hold a turn while they run; their few queries wait for a pooled connection, and a pool
    timeout answers 503."""
    return scope["method"] == "POST" and scope["path"] == "/studies"


def _admission(app: FastAPI, settings: Settings) -> None:
    """Owners' requests take a turn once their token is checked and their body is in; the
    others run apart (``service.admission``); oversized bodies are refused before either."""

    def check_token(token: str) -> str | None:
        with app.state.sessions() as session:
            return owner_of(session, token)

    app.add_middleware(
        Admission,
        check_token=check_token if settings.auth == "enabled" else None,
        cookie=dashboard.COOKIE,
        turns=Turns(
            settings.api_concurrency, queue=settings.api_queue, wait_s=settings.api_queue_timeout_s
        ),
        anonymous=Turns(settings.api_anonymous),
        checks=Turns(TOKEN_CHECKS, queue=settings.api_queue, wait_s=settings.api_queue_timeout_s),
        body_timeout_s=settings.api_body_timeout_s,
        anonymous_timeout_s=settings.api_anonymous_timeout_s,
        exempt=_exempt,
        takes_no_turn=_takes_no_turn,
    )
    app.add_middleware(ContentLengthLimit, max_bytes=MAX_BODY_BYTES)  # outermost


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; the database is opened at startup, not at import.

    Under ``hpo serve --workers N`` each process builds its own, with its share of the limits.
    """
    settings = per_process(settings or get_settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Each pool holds as many connections as requests may run at once (their turns), plus
        # a few for those that take no turn and (ours) for token checks: a request waits for
        # its turn at the door, where waiting is bounded and answers 503, not for a connection.
        pool = {"pool_size": settings.api_concurrency, "max_overflow": POOL_HEADROOM}
        ours = pool | {"max_overflow": POOL_HEADROOM + TOKEN_CHECKS}
        db = Database(make_engine(settings.database_url, **ours))
        app.state.settings = settings
        app.state.engine = db.engine
        app.state.sessions = db.sessions
        app.state.storage = make_storage(settings, **pool)
        app.state.auth_limiter = FailedAuthLimiter(settings.auth_failures_per_minute)
        app.state.file_checks = FileChecks(
            timeout_s=settings.preflight_timeout_s,
            per_owner=settings.preflight_per_owner,
            threads=settings.preflight_threads,
        )
        app.state.dashboard = dashboard.Dashboard(settings=settings, storage=app.state.storage)
        yield
        app.state.dashboard.close()
        app.state.storage.remove_session()
        app.state.storage.engine.dispose()
        db.close()

    app = FastAPI(
        title="finetune-hpo",
        summary="Hyperparameter search for fine-tuning language models.",
        version="0.1.0",
        lifespan=lifespan,
        # A slash redirect would build its Location from the client's Host header.
        redirect_slashes=False,
        docs_url=None,  # served from local assets by _serve_docs
        redoc_url=None,
    )
    install_error_handlers(app)
    _serve_docs(app)
    _admission(app, settings)
    app.include_router(health.router)
    app.include_router(studies.router)
    app.include_router(dashboard.router)  # optuna-dashboard's paths and /login, /logout
    return app
