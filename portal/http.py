"""What every response of the web app shares: security headers, a body-size cap, and
errors as JSON that name the field and never echo the input.

Error bodies: ``{"errors": [{"field", "message"}]}`` for bad input (422), and
``{"detail": message}`` otherwise. Nothing here logs a request body or a message that
may quote one (validation messages can quote what was typed: patient data).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from release.errors import InvalidRequest, InvalidTransition, RequestConflict, RequestNotFound
from release.validation import field_errors as release_field_errors
from store.errors import DatabaseUnavailable

log = logging.getLogger("courier.portal")

# No inline script or style anywhere (the pages need no JavaScript); images may be the
# package's own previews only; nobody may frame a page (clickjacking a code form).
CSP = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"cache-control", b"no-store"),  # responses hold patient data: no cache keeps them
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", CSP),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
)
HSTS = (b"strict-transport-security", b"max-age=31536000; includeSubDomains")
# A request is a few kB of JSON; anything much larger is refused before it is read.
MAX_BODY = 256 * 1024
# Where a parameter came from is not part of its name for the caller.
_SOURCES = frozenset({"body", "query", "path", "header", "cookie"})


class FieldError(BaseModel):
    field: str
    message: str


class ErrorList(BaseModel):
    """Bad input: one entry per problem."""

    errors: list[FieldError]


class Detail(BaseModel):
    """Any other refusal, with what to do next."""

    detail: str


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every HTTP response; refuses oversized bodies."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                wanted = (
                    (*SECURITY_HEADERS, HSTS)
                    if scope.get("scheme") == "https"
                    else (SECURITY_HEADERS)
                )
                extra = [(k, v) for k, v in wanted if k not in names]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        if _declared_length(scope) > MAX_BODY:
            response = JSONResponse(
                {"detail": f"request body too large; at most {MAX_BODY} bytes"}, 413
            )
            await response(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


def _declared_length(scope: Scope) -> int:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


def field_errors(errors: Sequence[Any]) -> list[dict[str, str]]:
    """FastAPI's error dicts as ``{"field", "message"}``: the body/query prefix dropped,
    then :func:`release.validation.field_errors` (input values are never included)."""
    out: list[dict[str, str]] = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ())]
        if loc and loc[0] in _SOURCES:
            loc = loc[1:]
        kind = err.get("type", "")
        if kind == "json_invalid":
            out.append({"field": "request", "message": "malformed JSON; expected a JSON object"})
        elif not loc and kind in ("model_attributes_type", "dict_type", "model_type"):
            message = "expected a JSON object, sent as Content-Type: application/json"
            out.append({"field": "request", "message": message})
        else:
            out += release_field_errors([{**err, "loc": loc}])
    return out


def bad_input(errors: list[dict[str, str]]) -> JSONResponse:
    return JSONResponse({"errors": errors}, 422)


async def _on_validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return bad_input(field_errors(exc.errors()))


async def _on_invalid_request(_: Request, exc: Exception) -> JSONResponse:
    # Messages name the argument ("reason: at most 2000 characters"), never its value.
    field, _sep, message = str(exc).partition(": ")
    return bad_input([{"field": field, "message": message or str(exc)}])


async def _on_not_found(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, 404)


async def _on_conflict(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, 409)


async def _on_unavailable(request: Request, exc: Exception) -> JSONResponse:
    # The message names the driver's error type only (see store.catalog._unavailable).
    log.warning("%s %s: %s", request.method, request.url.path, exc)
    return JSONResponse({"detail": f"{exc}; try again shortly"}, 503, headers={"Retry-After": "30"})


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(InvalidRequest, _on_invalid_request)
    app.add_exception_handler(RequestNotFound, _on_not_found)
    app.add_exception_handler(InvalidTransition, _on_conflict)
    app.add_exception_handler(RequestConflict, _on_conflict)
    app.add_exception_handler(DatabaseUnavailable, _on_unavailable)
