"""The dashboard's FastAPI app: thin routes over ``deepscope.server._api``, offline static files, loopback by default.

Example:
    >>> app = create_app("runs")  # doctest: +SKIP
    >>> import uvicorn; uvicorn.run(app, host="127.0.0.1", port=6007)  # doctest: +SKIP
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from deepscope.server._api import (
    DEFAULT_POINTS,
    MAX_POINTS,
    NotFound,
    SeriesCache,
    run_ids,
    runs_impl,
    scalar_series_impl,
    scalar_tags_impl,
)

__all__ = ["check_bind", "create_app", "is_loopback"]

STATIC = Path(__file__).resolve().parent / "static"
CSP = (
    "default-src 'none'; script-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "style-src 'self' 'unsafe-inline'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)  # plotly.js sets inline styles on its own elements, hence 'unsafe-inline' for styles only


def _plotly_js() -> Path:
    import plotly

    return Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"


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


def _not_found(detail: str = "not found") -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=404)


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
    cache = SeriesCache()
    app = FastAPI(title="deepscope", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def _guard(request: Request, call_next: Any) -> Response:
        if token and request.url.path.startswith("/api") and not _authorized(request, token):
            return JSONResponse({"detail": "missing or wrong token"}, status_code=401)
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    @app.exception_handler(NotFound)
    async def _missing(request: Request, error: NotFound) -> JSONResponse:
        return _not_found(str(error))

    @app.exception_handler(ValueError)
    async def _invalid(request: Request, error: ValueError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=400)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/static/plotly.min.js", include_in_schema=False)
    def plotly_js() -> FileResponse:
        return FileResponse(_plotly_js(), media_type="text/javascript")

    @app.get("/static/{path:path}", include_in_schema=False)
    def static(path: str) -> Response:
        if "\x00" in path:
            return _not_found()
        target = (STATIC / path).resolve()
        if STATIC not in target.parents or not target.is_file():
            return _not_found()
        return FileResponse(target)

    @app.get("/api/runs")
    def runs() -> dict[str, Any]:
        return runs_impl(base)

    @app.get("/api/runs/{rest:path}")
    def run_route(
        rest: str,
        points: int = Query(DEFAULT_POINTS, ge=4, le=MAX_POINTS),
        start: int | None = None,
        end: int | None = None,
    ) -> dict[str, Any]:
        # run ids and tags both hold "/": split where the prefix is a known run id
        known = run_ids(base)
        for run_id in sorted(known, key=len, reverse=True):
            if rest == f"{run_id}/scalars":
                return scalar_tags_impl(base, run_id)
            if rest.startswith(f"{run_id}/scalars/"):
                tag = rest[len(run_id) + len("/scalars/") :]
                return scalar_series_impl(base, run_id, tag, points=points, start=start, end=end, cache=cache)
        raise NotFound(f"no run route {rest!r}")

    return app
