"""The portal's access log: method, path, status and duration, and never a secret.

A link token in a path (``/d/<token>``) is logged as the first 8 hex digits of its
SHA-256, enough to match a patient's complaint to a log line without the line being a
usable link; the UIDs in a DICOMweb path as ``{uid}``. Query strings, cookies, form
bodies and client addresses are not logged (codes travel in form bodies; addresses are
personal data). Logger
``courier.portal.access``, level INFO.

Every logged value goes through :func:`visible` first: the path arrives percent-decoded,
so ``GET /x%0aFORGED`` would otherwise write a second, forged line (and ``%1b`` a terminal
escape). Control characters (C0, DEL, C1) and the Unicode line and paragraph separators
are written as ``\\n``, ``\\r``, ``\\t`` or ``\\xNN``/``\\uNNNN``, and a backslash as
``\\\\``, so a line is always one line and reads back unambiguously. The JSON format
(``node.log_format: json``) writes the same escaped text inside a JSON string.

Two ways to install it: :class:`LoggedRoute` as the ``route_class`` of a router (the
patient pages use it, so their lines exist whatever the app wiring), or
:class:`AccessLog` as an ASGI middleware around the whole app.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable

from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from telemetry import text

log = logging.getLogger("courier.portal.access")

_LINK = re.compile(r"^/d/([^/]*)")
# A DICOMweb path segment after studies/, series/ or instances/ (a UID, or any text
# sent in its place): never logged.
_DICOMWEB_UID = re.compile(r"/(studies|series|instances)/[^/]+")
# C0 controls, DEL, C1 controls, the line/paragraph separators some viewers break on, and
# the backslash (so that every escape in a line is one of ours).
_CONTROL = text.pattern(text.CONTROLS | {ord("\\")})
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _escape(match: re.Match[str]) -> str:
    ch = match.group(0)
    named = _NAMED.get(ch)
    if named is not None:
        return named
    return text.escape(ch)


def visible(value: str) -> str:
    """``value`` with every control character (and the backslash) written as an escape:
    safe to put on one log line."""
    return _CONTROL.sub(_escape, value)


def redact(path: str) -> str:
    """``path`` with a link token replaced by a short hash of it, and the UIDs of a
    DICOMweb path (``/dicomweb/studies/<uid>/…``) by ``{uid}``."""
    if path.startswith("/dicomweb/"):
        return _DICOMWEB_UID.sub(r"/\1/{uid}", path)
    match = _LINK.match(path)
    if match is None:
        return path
    digest = hashlib.sha256(match.group(1).encode("utf-8", "replace")).hexdigest()[:8]
    return f"/d/{digest}{path[match.end() :]}"


async def _logged(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    status = 0
    started = time.perf_counter()

    async def record(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])
        await send(message)

    try:
        await app(scope, receive, record)
    finally:
        log.info(
            "%s %s %d %.1fms",
            visible(str(scope.get("method", ""))),
            visible(redact(str(scope.get("path", "")))),
            status or 500,
            (time.perf_counter() - started) * 1000,
        )


class AccessLog:
    """ASGI middleware logging every HTTP request as described above."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await _logged(self.app, scope, receive, send)


class LoggedRoute(APIRoute):
    """An APIRoute whose requests are access-logged (the line is written once the
    response is fully sent, so a download's duration is the whole transfer)."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        parent: Callable[[Scope, Receive, Send], object] = super().handle

        async def inner(scope: Scope, receive: Receive, send: Send) -> None:
            await parent(scope, receive, send)  # type: ignore[misc]

        await _logged(inner, scope, receive, send)
