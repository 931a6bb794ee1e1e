"""The dashboard's FastAPI app: each panel's routes under ``/api/<panel>/``, offline static files, loopback by default.

Example:
    >>> app = create_app("runs")  # doctest: +SKIP
    >>> import uvicorn; uvicorn.run(app, host="127.0.0.1", port=6007)  # doctest: +SKIP
"""

from __future__ import annotations

import hmac
import inspect
import ipaddress
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from deepscope.server._api import NotFound, panels_impl, resolve_run, runs_impl, version_impl
from deepscope.server.panels import Route, panels
from deepscope.store import RunReader

__all__ = ["check_bind", "create_app", "is_loopback"]

STATIC = Path(__file__).resolve().parent / "static"
CSP = (
    "default-src 'none'; script-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "style-src 'self' 'unsafe-inline'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)  # plotly.js sets inline styles on its own elements, hence 'unsafe-inline' for styles only
MAX_QUERY_BYTES = 4096  # no route needs a longer query string; longer ones are refused (414)


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve beyond this machine without a token.

    Raises:
        ValueError: ``host`` is not a loopback address and ``token`` is empty.
    """
    if not is_loopback(host) and not token:
        raise ValueError(
            f"binding {host!r} exposes every run to the network; pass --token SECRET "
            "(every /api request then needs ?token=SECRET or an 'Authorization: Bearer SECRET' header)"
        )


def _authorized(request: Request, token: str) -> bool:
    given = request.query_params.get("token", "")
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        given = header[7:].strip()
    return hmac.compare_digest(given.encode(), token.encode())


def _error(detail: str, status: int) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def _endpoint(base: Path, route: Route) -> Callable[..., dict[str, Any]]:
    """A FastAPI endpoint for ``route``: ``run`` plus the impl's keyword arguments as typed query parameters."""
    params = list(inspect.signature(route.impl).parameters.values())[1:]  # after the reader

    def endpoint(run: str, **query: Any) -> dict[str, Any]:
        with RunReader(resolve_run(base, run)) as reader:
            return {"run": run, **route.impl(reader, **query)}

    run_param = inspect.Parameter("run", inspect.Parameter.KEYWORD_ONLY, annotation=str, default=Query(...))
    endpoint.__signature__ = inspect.Signature([run_param, *params])  # type: ignore[attr-defined]
    endpoint.__name__ = f"{route.impl.__module__.rsplit('.', 1)[-1]}_{route.path}"
    return endpoint


def create_app(root: str | os.PathLike, *, token: str | None = None) -> FastAPI:
    """The dashboard app serving the runs found under ``root`` (read-only).

    Args:
        root: a run folder or a folder of runs (up to 3 levels down, as :func:`deepscope.store.find_runs`).
        token: when set, every ``/api`` request must carry it (``?token=`` or ``Authorization: Bearer``).

    Raises:
        FileNotFoundError: ``root`` does not exist.
    """
    base = Path(root).expanduser()
    if not base.is_dir():
        raise FileNotFoundError(f"{base} is not a folder of runs")
    base = base.resolve()
    app = FastAPI(title="deepscope", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def _guard(request: Request, call_next: Any) -> Response:
        if len(request.url.query.encode()) > MAX_QUERY_BYTES:
            response: Response = _error(f"query string over {MAX_QUERY_BYTES} bytes", 414)
        elif token and request.url.path.startswith("/api") and not _authorized(request, token):
            response = _error("missing or wrong token", 401)
        else:
            response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store" if request.url.path.startswith("/api") else "no-cache"
        return response

    @app.exception_handler(LookupError)
    async def _missing(request: Request, error: LookupError) -> JSONResponse:
        plain = type(error) is KeyError and len(error.args) == 1  # str(KeyError) adds quotes around its message
        return _error(str(error.args[0]) if plain else str(error), 404)

    @app.exception_handler(ValueError)
    async def _invalid(request: Request, error: ValueError) -> JSONResponse:
        return _error(str(error), 400)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/static/{path:path}", include_in_schema=False)
    def static(path: str) -> Response:
        if "\x00" in path:
            return _error("not found", 404)
        target = (STATIC / path).resolve()
        if STATIC not in target.parents or not target.is_file():
            return _error("not found", 404)
        return FileResponse(target)

    @app.get("/api/runs")
    def runs() -> dict[str, Any]:
        return runs_impl(base)

    @app.get("/api/version")
    def version(run: str) -> dict[str, Any]:
        return version_impl(base, run)

    @app.get("/api/panels")
    def panel_list(run: str) -> dict[str, Any]:
        return panels_impl(base, run)

    for panel in panels():
        for route in panel.routes:
            app.add_api_route(f"/api/{panel.name}/{route.path}", _endpoint(base, route), methods=["GET"])

    @app.api_route("/api/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    def unknown(rest: str) -> JSONResponse:
        raise NotFound(f"no API route {rest!r}")

    return app
