"""One place that maps errors to status codes and JSON bodies; no HTML, no stack traces."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from optuna.exceptions import StorageInternalError
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException

from hpo.core.errors import (
    QuotaExceeded,
    SpecError,
    StorageUnavailable,
    StudyBroken,
    StudyConflict,
    StudyNotFound,
)

log = logging.getLogger(__name__)


def _validation_body(errors: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "detail": [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
            for e in errors
        ]
    }


async def _request_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse(_validation_body(list(exc.errors())), status_code=422)


async def _spec_error(_: Request, exc: SpecError) -> JSONResponse:
    errors = [
        {"loc": ["body", *e.loc], "msg": e.message, "type": e.kind}
        | ({"ctx": e.ctx} if e.ctx else {})
        for e in exc.errors()
    ]
    return JSONResponse({"detail": errors}, status_code=422)


async def _not_found(_: Request, exc: StudyNotFound) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=404)


async def _conflict(_: Request, exc: StudyConflict | StudyBroken) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=409)


async def _quota(_: Request, exc: QuotaExceeded) -> JSONResponse:
    # No Retry-After: the owner frees the quota (stops or deletes a study), not the clock.
    return JSONResponse(
        {"detail": str(exc), "quota": exc.quota, "limit": exc.limit}, status_code=429
    )


async def _unavailable(_: Request, exc: Exception) -> JSONResponse:
    log.warning("database unavailable: %s", exc)
    return JSONResponse(
        {"detail": "database unavailable, try again shortly"},
        status_code=503,
        headers={"Retry-After": "5"},
    )


async def _http(_: Request, exc: HTTPException) -> JSONResponse:
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return JSONResponse({"detail": "internal error"}, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _request_validation)  # type: ignore[arg-type]
    app.add_exception_handler(SpecError, _spec_error)  # type: ignore[arg-type]
    app.add_exception_handler(StudyNotFound, _not_found)  # type: ignore[arg-type]
    app.add_exception_handler(StudyConflict, _conflict)  # type: ignore[arg-type]
    app.add_exception_handler(StudyBroken, _conflict)  # type: ignore[arg-type]
    app.add_exception_handler(QuotaExceeded, _quota)  # type: ignore[arg-type]
    app.add_exception_handler(StorageUnavailable, _unavailable)
    app.add_exception_handler(OperationalError, _unavailable)
    app.add_exception_handler(StorageInternalError, _unavailable)
    app.add_exception_handler(PoolTimeout, _unavailable)  # no pooled connection came in time
    app.add_exception_handler(HTTPException, _http)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)
