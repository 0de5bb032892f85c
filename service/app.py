"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from hpo.core.db import Database
from hpo.core.settings import Settings, get_settings
from hpo.core.storage import make_storage
from service import dashboard
from service.errors import install_error_handlers
from service.limits import ContentLengthLimit, FailedAuthLimiter
from service.routes import health, studies

MAX_BODY_BYTES = 1_000_000


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; the database is opened at startup, not at import."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database(settings.database_url)
        app.state.settings = settings
        app.state.engine = db.engine
        app.state.sessions = db.sessions
        app.state.storage = make_storage(settings)
        app.state.auth_limiter = FailedAuthLimiter(settings.auth_failures_per_minute)
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
    )
    install_error_handlers(app)
    app.add_middleware(ContentLengthLimit, max_bytes=MAX_BODY_BYTES)
    app.include_router(health.router)
    app.include_router(studies.router)
    app.include_router(dashboard.router)  # optuna-dashboard's paths and /login, /logout
    return app
