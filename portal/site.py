"""The portal's pages mounted on the web app: static files, patient and staff routes.

Routers find their dependencies in ``request.app.state.portal`` (a
:class:`~portal.context.PortalContext`). Patient and clinician pages live under ``/d/``
(the emailed link), ``/access`` and ``/files``; staff pages under ``/staff``.

Errors a route did not answer itself (an unknown URL, a refused method, 403, 413, 429,
an unexpected exception: 500) are HTML pages: the staff layout under ``/staff``, the
patient layout elsewhere, in the page's language (its ``lang`` parameter or cookie)
with texts the catalogs already hold. Only ``/api/`` (and ``/metrics``) answer JSON /
plain text as before. A 500 page says nothing about the exception.
"""

from __future__ import annotations

import importlib
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from portal.context import PortalContext
from portal.pages import STATIC, render

# Routers added as they are built (module name -> attribute holding the APIRouter).
ROUTERS = ("portal.patient", "portal.staff", "portal.dicomweb")


def install_pages(app: FastAPI, portal: PortalContext) -> None:
    """Mount ``/static`` and include every router in :data:`ROUTERS` that exists."""
    app.state.portal = portal
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    for name in ROUTERS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        app.include_router(module.router)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_server_error)  # 500 (still logged by uvicorn)


# Staff error pages: a title and a line that says what to do (English, like the staff pages).
_STAFF_ERRORS = {
    403: ("Not allowed", "This page or action is not allowed. Sign in again and retry."),
    404: ("Not found", "No page has this address. Use the menu above."),
    405: ("Not found", "No page has this address. Use the menu above."),
    413: ("Too large", "The form sent was too large; nothing was done."),
    429: ("Too many attempts", "Too many requests from this address; wait a minute and retry."),
    500: (
        "Something went wrong",
        "Nothing more was done. Try again; if it happens again, "
        "tell an administrator the time it happened (the node log has the details).",
    ),
}


def _json_only(request: Request) -> bool:
    path = request.url.path
    return path.startswith("/api/") or path == "/api" or path == "/metrics"


def error_page(
    request: Request, status: int, headers: dict[str, str] | None = None, detail: str = ""
) -> Response:
    """The HTML page for ``status`` (see the module docstring); ``detail``, a message
    a staff route raised with (written for staff, no patient data), replaces the
    generic line on staff pages."""
    path = request.url.path
    portal: PortalContext = request.app.state.portal
    if path == "/staff" or path.startswith("/staff/"):
        title, message = _STAFF_ERRORS.get(status, _STAFF_ERRORS[500 if status >= 500 else 404])
        message = detail or message
        response = render(
            request,
            "staff/message.html.j2",
            status_code=status,
            lang="en",
            hospital=portal.hospital,
            staff=None,
            title=title,
            message=message,
        )
    else:
        response = render(
            request,
            "error.html.j2",
            status_code=status,
            hospital=portal.hospital,
            contact=portal.contact,
            status=status,
        )
    for name, value in (headers or {}).items():  # e.g. Retry-After, Allow
        response.headers[name] = value
    return response


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code < 400 or _json_only(request):
        return await http_exception_handler(request, exc)  # redirects, and the API's JSON
    detail = exc.detail if isinstance(exc.detail, str) else ""
    try:
        default = HTTPStatus(exc.status_code).phrase
    except ValueError:  # a code Python does not name
        default = ""
    if detail == default:  # Starlette's own text ("Not Found"): the page says more
        detail = ""
    return error_page(request, exc.status_code, dict(exc.headers or {}), detail)


async def _on_server_error(request: Request, exc: Exception) -> Response:
    if _json_only(request):
        return JSONResponse({"detail": "internal error; see the node log"}, 500)
    return error_page(request, 500)


def context_of(request: Request) -> PortalContext:
    """The portal context of the app serving ``request``."""
    ctx: PortalContext = request.app.state.portal
    return ctx
