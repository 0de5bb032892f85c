"""optuna-dashboard inside the service: behind the API's tokens, one owner's studies, read-only.

The dashboard's frontend calls its API at absolute paths (``/api/...``, ``/csv/...``,
``/artifacts/...``, ``/static/...``, ``/favicon.ico``) and serves its pages under
``/dashboard``, so it cannot live under a prefix: those paths reach its WSGI (Bottle) app
unchanged. None clashes with the REST API (``/studies``, ``/healthz``, ``/docs``). Bottle's
other routes are never reached: ``/`` and ``/incompatible-rdb-schema`` (whose POST migrates
the schema), and ``/sql-profiler`` where profiling is on.

Each dashboard request passes, in this order:

1. Only GET and HEAD: any other method answers 403 before Bottle, which blocks every write the
   dashboard offers (rename, delete, tell, notes, user attrs, artifact upload and delete,
   preferences, LLM queries). The 403 carries a ``reason`` (what the frontend's error
   messages show), and every page a banner saying the dashboard is read-only.
2. A bearer token or the login cookie names the owner (``service.deps.authenticate``, as for
   the REST API, failed-check limit included); without a valid one, pages redirect to
   ``/login`` and everything else answers 401.
3. A study id in the path must be the owner's; an artifact must be one a worker recorded in
   ``hpo_artifacts`` for the trial in its path, and that trial must belong to the study in its
   path (optuna-dashboard finds a trial's artifact in that trial's attributes and never checks
   the trial against the study); otherwise 404.
4. Bottle runs on ``OwnerScopedStorage`` scoped to the owner's studies, in its own thread.

Login cookie: it holds the token itself, not a session. Every request checks it against the
hashed token table, so revoking or expiring a token signs its browsers out at once, and the
service keeps no signing key and no session table. HttpOnly keeps it from scripts,
SameSite=Strict off cross-site requests, and it is Secure when the request came over https as
uvicorn reports the scheme: uvicorn takes X-Forwarded-Proto only from the proxies listed in
FORWARDED_ALLOW_IPS (``hpo serve`` trusts none unless it is set), so a client cannot fake it; a
TLS proxy beside ``hpo serve`` on the same host needs FORWARDED_ALLOW_IPS=127.0.0.1 (for
compose, see docker-compose.yml). ``POST /login`` and ``POST /logout`` refuse forms posted from
another origin (login CSRF).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, cast
from urllib.parse import urlsplit

import optuna_dashboard
from a2wsgi import WSGIMiddleware
from a2wsgi.wsgi_typing import Environ, IterableChunks, StartResponse
from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.security.utils import get_authorization_scheme_param
from optuna.storages import RDBStorage
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from hpo.core.artifacts import artifact_store
from hpo.core.db import ArtifactRecord, session_scope
from hpo.core.settings import Settings
from service.dashboard_storage import OwnerScopedStorage
from service.deps import SessionDep, authenticate

COOKIE = "hpo_token"
PAGE_PATHS = ("/dashboard", "/dashboard/{rest:path}")
DATA_PATHS = (
    "/api/{rest:path}",
    "/csv/{rest:path}",
    "/artifacts/{rest:path}",
    "/static/{rest:path}",
    "/favicon.ico",
)
READ_METHODS = frozenset({"GET", "HEAD"})
_STUDIES_KEY = "hpo.dashboard.studies"  # in the ASGI scope: the study ids Bottle may show
_STUDY_IN_PATH = re.compile(r"/(?:api/studies|csv|artifacts)/(-?\d+)(?=/|$)")
_TRIAL_ARTIFACT = re.compile(r"/artifacts/-?\d+/(-?\d+)/([^/]+)$")
READ_ONLY = "the dashboard is read-only; use the REST API"
# On every page, outside the frontend's root: markup and inline style only, which the page's
# Content-Security-Policy allows (no inline scripts).
BANNER = (
    b'<div id="hpo-read-only" role="status" style="position: fixed; bottom: 0; left: 0; '
    b"right: 0; z-index: 10000; padding: 4px 12px; background: #fff3cd; color: #664d03; "
    b'font: 14px system-ui, sans-serif; text-align: center">Read-only dashboard: its edit, '
    b"delete, tell and note buttons do nothing here. Change studies with <code>hpo</code> or "
    b"the REST API.</div>"
)


class Dashboard:
    """The gate (an ASGI app) in front of optuna-dashboard on the owner-scoped storage."""

    def __init__(self, *, settings: Settings, storage: RDBStorage) -> None:
        self._engine = storage.engine
        self._storage = OwnerScopedStorage(storage)
        store = artifact_store(settings)
        self._bottle = optuna_dashboard.wsgi(self._storage, artifact_store=store)
        self._wsgi = WSGIMiddleware(self._scoped_bottle)

    def close(self) -> None:
        """Stop the threads that run Bottle."""
        self._wsgi.executor.shutdown()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope)
        if request.method not in READ_METHODS:
            # ``reason``: what the frontend puts in its "Failed to ..." messages
            body = {"detail": READ_ONLY, "reason": READ_ONLY}
            await JSONResponse(body, status_code=403)(scope, receive, send)
            return
        try:
            visible = await run_in_threadpool(self._authorize, request)
        except HTTPException as exc:
            if exc.status_code != 401 or not scope["path"].startswith("/dashboard"):
                raise
            await RedirectResponse("/login", status_code=303)(scope, receive, send)
            return
        # Bottle's asset routes index Accept-Encoding without a default (a KeyError, so a 500,
        # for a client that sends none): say "identity", which is what no header means.
        headers = scope["headers"]
        if not any(name == b"accept-encoding" for name, _ in headers):
            headers = [*headers, (b"accept-encoding", b"identity")]
        scoped = {**scope, "headers": headers, _STUDIES_KEY: visible}
        # a2wsgi types ASGI messages with TypedDicts of its own; Starlette's are plain dicts.
        await self._wsgi(cast(Any, scoped), cast(Any, receive), cast(Any, send))

    def _authorize(self, request: Request) -> frozenset[int]:
        """The ids of the studies the request's owner may see.

        Raises:
            HTTPException: 401/429 from ``authenticate``; 404 when the path names a study or
                trial outside them.
        """
        with session_scope(request.app.state.sessions) as session:
            owner = authenticate(request, session, _credentials(request))
        visible = self._storage.study_ids_of(owner)
        if not self._path_is_visible(request.scope["path"], visible):
            raise HTTPException(404, "not found")
        return visible

    def _path_is_visible(self, path: str, visible: frozenset[int]) -> bool:
        study = _STUDY_IN_PATH.match(path)
        if study is None:
            return True
        study_id = int(study.group(1))
        if study_id not in visible:
            return False
        if not path.startswith("/artifacts/"):
            return True
        # Only adapters a worker recorded for this very trial (the service stores no study-level
        # artifacts); a trial attribute naming some other artifact id opens nothing.
        artifact = _TRIAL_ARTIFACT.match(path)
        if artifact is None:
            return False
        trial_id, artifact_id = int(artifact.group(1)), artifact.group(2)
        return self._storage.study_of_trial(trial_id) == study_id and self._recorded(
            trial_id, artifact_id
        )

    def _recorded(self, trial_id: int, artifact_id: str) -> bool:
        query = select(ArtifactRecord.artifact_id).where(
            ArtifactRecord.trial_id == trial_id, ArtifactRecord.artifact_id == artifact_id
        )
        with self._engine.connect() as conn:
            return conn.scalar(query) is not None

    def _scoped_bottle(self, environ: Environ, start_response: StartResponse) -> IterableChunks:
        """Bottle on the storage scoped to the studies the gate allowed (none if it did not)."""
        scope = cast(dict[str, Any], environ)["asgi.scope"]  # a2wsgi adds the ASGI scope
        with self._storage.scoped(scope.get(_STUDIES_KEY, frozenset())):
            if environ["PATH_INFO"].startswith("/dashboard"):
                return self._page(environ, start_response)
            return self._bottle(environ, start_response)

    def _page(self, environ: Environ, start_response: StartResponse) -> IterableChunks:
        """The dashboard's page (one small HTML file for every route), with ``BANNER``."""
        started: list[Any] = []

        def keep(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            started[:] = [status, headers, exc_info]
            return lambda data: None  # Bottle returns its body, never calls write()

        chunks = self._bottle(environ, cast(StartResponse, keep))
        try:
            body = b"".join(chunks)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        status, headers, exc_info = started
        if status.startswith("200") and b"</body>" in body:
            body = body.replace(b"</body>", BANNER + b"</body>", 1)
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            headers.append(("Content-Length", str(len(body))))
        start_response(status, headers, exc_info)
        return [body]


def _credentials(request: Request) -> str | None:
    """The bearer token when the request sends one, else the login cookie's."""
    scheme, token = get_authorization_scheme_param(request.headers.get("Authorization"))
    if scheme.lower() == "bearer" and token:
        return token
    return request.cookies.get(COOKIE)


class _ToDashboard:
    """Route endpoint for dashboard paths: an ASGI app, so the path reaches Bottle unchanged.

    The dashboard itself is built in the app's lifespan, with the storage.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await scope["app"].state.dashboard(scope, receive, send)


router = APIRouter(include_in_schema=False)
for _path in (*PAGE_PATHS, *DATA_PATHS):
    router.add_route(_path, _ToDashboard())  # type: ignore[arg-type]  # an ASGI app endpoint

_LOGIN_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in - finetune-hpo</title>
</head>
<body style="font-family: system-ui, sans-serif; max-width: 28rem; margin: 4rem auto">
<h1>finetune-hpo dashboard</h1>
<p>Sign in with an API token (<code>hpo token create NAME</code> prints one).</p>
{message}
<form method="post" action="/login">
<p><label>Token <input name="token" type="password" autocomplete="off" required autofocus>
</label></p>
<p><button type="submit">Sign in</button></p>
</form>
</body>
</html>
"""
# No scripts, no external assets, not to be framed (clickjacking the token field).
_LOGIN_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
)


def _login_page(message: str = "", status_code: int = 200) -> HTMLResponse:
    notice = f'<p role="alert" style="color: #b00020">{message}</p>' if message else ""
    return HTMLResponse(
        _LOGIN_PAGE.format(message=notice),
        status_code=status_code,
        headers={"Content-Security-Policy": _LOGIN_CSP},
    )


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


@router.get("/login")
def login_form() -> HTMLResponse:
    return _login_page()


def _same_origin(request: Request) -> None:
    """Refuse a form posted from another site (login CSRF, forced sign-out): 403.

    SameSite=Strict keeps our cookie off cross-site requests but cannot stop a foreign page
    from setting it (signing the victim in as the attacker) or clearing it. Browsers say where a
    form came from: ``Origin`` on every POST, ``Sec-Fetch-Site`` in current ones, ``Referer``
    unless suppressed. Any of them naming another host than the request's ``Host`` is refused
    (a proxy in front must pass ``Host`` on); a client that sends none of them (curl, scripts)
    is not a browser being steered and passes. The scheme is not compared, so a proxy whose
    X-Forwarded-Proto is not trusted does not lock browsers out.
    """
    host = request.headers.get("host", "")
    origin = request.headers.get("origin")
    referer = request.headers.get("referer")
    fetch_site = request.headers.get("sec-fetch-site")
    if origin is not None:
        foreign = urlsplit(origin).netloc != host
    elif fetch_site is not None:
        foreign = fetch_site not in ("same-origin", "none")
    else:
        foreign = referer is not None and urlsplit(referer).netloc != host
    if foreign:
        raise HTTPException(403, "cross-origin sign-in and sign-out are refused")


@router.post("/login")
def login(request: Request, session: SessionDep, token: Annotated[str, Form()] = "") -> Response:
    """Sign a browser in: the token goes into the login cookie (see the module docstring)."""
    _same_origin(request)
    token = token.strip()
    try:
        authenticate(request, session, token or None)
    except HTTPException as exc:
        if exc.status_code != 401:
            raise
        return _login_page("That token is unknown, revoked or expired.", status_code=401)
    response = RedirectResponse("/dashboard", status_code=303)
    response.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=_secure(request))
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    _same_origin(request)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, httponly=True, samesite="strict", secure=_secure(request))
    return response
