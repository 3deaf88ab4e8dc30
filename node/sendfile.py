"""Zero-copy file bodies for the web app: the ASGI ``pathsend`` and ``zerocopysend``
extensions on top of uvicorn's h11 protocol.

uvicorn passes every response body through Python (a read into a buffer, then
``transport.write``), which caps a download at about a sixth of what the page cache gives.
:class:`ZeroCopy` wraps the app: for requests served by uvicorn's h11 protocol on an
asyncio loop it announces the two standard extensions in ``scope["extensions"]`` and
answers their messages with :meth:`asyncio.loop.sendfile` (``os.sendfile`` on a plain TCP
socket: the kernel copies from the page cache to the socket; over TLS asyncio falls back to
reads and writes by itself):

- ``{"type": "http.response.pathsend", "path": str}``: the whole file (Starlette's
  ``FileResponse`` sends it for an answer without ``Range``);
- ``{"type": "http.response.zerocopysend", "file": binary file, "offset": int,
  "count": int, "more_body": bool}``: ``count`` bytes from ``offset`` (a single range).

h11 still frames the body and counts its length: a placeholder object of the right length
goes through ``send_with_data_passthrough`` (h11's documented way to sendfile), and the
message that ends the body goes to uvicorn's own ``send`` as an empty body, so keep-alive,
the end of the message and uvicorn's bookkeeping stay uvicorn's.

When the whole body has been handed to the kernel, the wrapper sets
``message["courier.sent"] = True`` on the message it was given; a broken connection
leaves it unset (and closes the connection), so the app can tell a completed transfer from
an interrupted one. Anything else (another server, uvloop, websockets) passes through
untouched and the app falls back to ordinary body messages.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, BinaryIO

import h11
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from portal.partfile import SENT, ZEROCOPYSEND

log = logging.getLogger("courier.web")

PATHSEND = "http.response.pathsend"


class _Span:
    """A stand-in for ``count`` body bytes: h11 only asks for its length."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count


def _cycle(send: Send) -> Any | None:
    """uvicorn's h11 request/response cycle behind ``send``, when that is what it is."""
    cycle = getattr(send, "__self__", None)
    needed = ("conn", "transport", "flow", "disconnected")
    if cycle is None or not all(hasattr(cycle, a) for a in needed):
        return None
    if not isinstance(cycle.conn, h11.Connection):
        return None
    return cycle


class ZeroCopy:
    """ASGI middleware adding ``pathsend``/``zerocopysend`` on uvicorn's h11 protocol."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        cycle = _cycle(send) if scope["type"] == "http" else None
        loop = asyncio.get_running_loop()
        if cycle is None or not isinstance(loop, asyncio.BaseEventLoop):
            await self.app(scope, receive, send)
            return
        extensions = dict(scope.get("extensions") or {})
        extensions[PATHSEND] = {}
        extensions[ZEROCOPYSEND] = {}
        scope = {**scope, "extensions": extensions}
        head = scope.get("method", "GET").upper() == "HEAD"

        async def zero_copy_send(message: Message) -> None:
            kind = message["type"]
            if kind == PATHSEND:
                with open(message["path"], "rb") as file:
                    size = file.seek(0, 2)
                    ok = await _send_span(cycle, loop, file, 0, size, head)
                if ok:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    message[SENT] = True
            elif kind == ZEROCOPYSEND:
                file = message["file"]
                offset = int(message.get("offset", 0) or 0)
                count = message.get("count")
                if count is None:
                    count = os.fstat(file.fileno()).st_size - offset
                ok = await _send_span(cycle, loop, file, offset, int(count), head)
                if ok:
                    if not message.get("more_body", False):
                        await send({"type": "http.response.body", "body": b"", "more_body": False})
                    message[SENT] = True
            else:
                await send(message)

        await self.app(scope, receive, zero_copy_send)


async def _send_span(
    cycle: Any, loop: asyncio.AbstractEventLoop, file: BinaryIO, offset: int, count: int, head: bool
) -> bool:
    """Hand ``count`` bytes of ``file`` from ``offset`` to the connection; False when the
    connection is gone (then it is closed and nothing more is sent)."""
    if cycle.flow.write_paused and not cycle.disconnected:
        await cycle.flow.drain()
    if cycle.disconnected:
        return False
    if head or count == 0:
        return True
    span = _Span(count)
    chunks = cycle.conn.send_with_data_passthrough(h11.Data(data=span))  # type: ignore[arg-type]
    try:
        for chunk in chunks:
            if chunk is span:
                await _sendfile(loop, cycle.transport, file, offset, count)
            else:
                cycle.transport.write(chunk)
    except (OSError, RuntimeError) as exc:  # reset, broken pipe, transport closing
        log.info("download interrupted: %s", type(exc).__name__)
        cycle.transport.close()
        cycle.disconnected = True
        return False
    return not (cycle.disconnected or cycle.transport.is_closing())


async def _sendfile(
    loop: asyncio.AbstractEventLoop,
    transport: asyncio.Transport,
    file: BinaryIO,
    offset: int,
    count: int,
) -> None:
    """``os.sendfile`` where the transport allows it (plain TCP), else asyncio's reads and
    writes (TLS, or a file ``os.sendfile`` refuses). Raises ``ConnectionError`` unless all
    ``count`` bytes went out: asyncio's fall-back reads from the file's *current* position
    when ``offset`` is 0 and returns what it sent, so both are checked here."""
    sent = 0
    if transport.get_extra_info("sslcontext") is None:
        try:
            sent = await loop.sendfile(transport, file, offset, count, fallback=False)
        except asyncio.SendfileNotAvailableError:
            sent = 0  # refused before the first byte (file system, socket, or a reset)
    if sent == 0:
        file.seek(offset)
        sent = await loop.sendfile(transport, file, offset, count, fallback=True)
    if sent != count:
        raise ConnectionError(f"sent {sent} of {count} bytes")
