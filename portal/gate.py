"""The API's front door: who is calling and what they send, checked before any parsing.

FastAPI decodes a JSON body before it runs the dependencies that check the API key, so
without this gate an anonymous caller would learn from a 422 how the body is validated,
and a body of any size would be read first. For every ``/api/v1`` call, in order:

1. an API key (401 without one, 403 for an unknown or revoked one — the same answers
   as the route dependency). The key is checked by :class:`portal.apikeys.KeyRing` on a
   worker thread (it may read the database); the digest it accepted is left in the
   request's state (``api_digest``), so the route dependency does not look it up again;
   503 when the database cannot be read;
2. a body-carrying method must send ``application/json`` (415 otherwise);
3. the body is read up to :data:`portal.http.MAX_BODY` bytes, with or without a
   Content-Length (413 beyond), then handed on.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from portal.apikeys import KeyRing
from portal.http import MAX_BODY
from store.errors import DatabaseUnavailable

#: Where the gate leaves the accepted key's digest (``request.state.api_digest``).
DIGEST_STATE = "api_digest"

_PREFIX = "/api/v1"
_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


class ApiGate:
    """ASGI middleware applying the checks above to ``/api/v1``."""

    def __init__(self, app: ASGIApp, keys: KeyRing) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith(_PREFIX):
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        refusal = await self._refusal(scope, headers, str(scope.get("method", "")))
        if refusal is None and scope.get("method") in _WITH_BODY:
            body, too_big = await _read_body(receive)
            if too_big:
                refusal = JSONResponse(
                    {"detail": f"request body too large; at most {MAX_BODY} bytes"}, 413
                )
            else:
                receive = _replay(body)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _refusal(
        self, scope: Scope, headers: dict[bytes, bytes], method: str
    ) -> JSONResponse | None:
        key = _presented_key(headers)
        if not key:
            return JSONResponse(
                {"detail": "an API key is required: send Authorization: Bearer <key> or X-API-Key"},
                401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        try:
            digest = await run_in_threadpool(self.keys.match, key)
        except DatabaseUnavailable as exc:
            return JSONResponse(
                {"detail": f"{exc}; try again shortly"}, 503, headers={"Retry-After": "30"}
            )
        if digest is None:
            return JSONResponse(
                {"detail": "unknown API key; ask an administrator for a valid one"}, 403
            )
        scope.setdefault("state", {})[DIGEST_STATE] = digest
        if method in _WITH_BODY:
            kind = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
            if kind != b"application/json":
                return JSONResponse(
                    {"detail": "send the body as JSON with Content-Type: application/json"},
                    415,
                )
        return None


def _presented_key(headers: dict[bytes, bytes]) -> str:
    auth = headers.get(b"authorization", b"").decode("latin-1")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return headers.get(b"x-api-key", b"").decode("latin-1").strip()


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    """The whole body, or (partial, True) once it passes MAX_BODY."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False  # disconnected: the app sees an empty body
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return b"", True
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), False


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive
