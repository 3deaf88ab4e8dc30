"""Serving a package part file: ``Range`` support, and a hook once the last byte is sent.

The body goes out through the server's zero-copy extensions when it offers them
(``http.response.pathsend`` for a whole part, ``http.response.zerocopysend`` for a single
range; ``courier serve`` does, see :mod:`node.sendfile`), else in 1 MiB reads. A transfer
counts as complete only when the part's last byte was handed to the connection: for a
zero-copy message the server confirms that by setting ``message[SENT]``.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
from fastapi.responses import FileResponse
from starlette.datastructures import MutableHeaders
from starlette.types import Message, Receive, Scope, Send

CHUNK = 1024 * 1024
ZEROCOPYSEND = "http.response.zerocopysend"
#: Set to True on a zero-copy message by the server once all of it was sent.
SENT = "courier.sent"
_LAST = {"http.response.body", "http.response.pathsend", ZEROCOPYSEND}


def _covers_end(message: Message) -> bool:
    """Whether a response start announces a body that reaches the file's last byte."""
    status = message["status"]
    if status == 200:
        return True
    if status != 206:
        return False
    headers = {k.lower(): v for k, v in message.get("headers", [])}
    rng = headers.get(b"content-range", b"").decode("latin-1")
    # "bytes a-b/size", one range only: it completes when b is the last byte
    try:
        span, total = rng.split(" ", 1)[1].split("/")
        return int(span.split("-")[1]) == int(total) - 1
    except (IndexError, ValueError):
        return False


class PartResponse(FileResponse):
    """A ZIP part with Range support that calls ``on_complete`` (in a worker thread)
    once the part's last byte was sent."""

    chunk_size = CHUNK

    def __init__(self, *args: object, on_complete: Callable[[], None], **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self._on_complete = on_complete
        self._zero_copy = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        covers_end = False
        finished = False
        self._zero_copy = ZEROCOPYSEND in (scope.get("extensions") or {})

        async def watch(message: Message) -> None:
            nonlocal covers_end, finished
            kind = message["type"]
            if kind == "http.response.start":
                covers_end = _covers_end(message)
            await send(message)
            if kind in _LAST and not message.get("more_body", False):
                finished = kind == "http.response.body" or message.get(SENT) is True

        head = scope.get("method", "GET").upper() == "HEAD"
        await super().__call__(scope, receive, watch)
        if finished and covers_end and not head:
            await anyio.to_thread.run_sync(self._on_complete)

    async def _handle_single_range(
        self, send: Send, start: int, end: int, file_size: int, send_header_only: bool
    ) -> None:
        """One range: Starlette's own answer, or a zero-copy one when the server can."""
        if not self._zero_copy or send_header_only:
            await super()._handle_single_range(send, start, end, file_size, send_header_only)
            return
        headers = MutableHeaders(raw=list(self.raw_headers))
        headers["content-range"] = f"bytes {start}-{end - 1}/{file_size}"
        headers["content-length"] = str(end - start)
        await send({"type": "http.response.start", "status": 206, "headers": headers.raw})
        with open(self.path, "rb") as file:
            await send(
                {
                    "type": ZEROCOPYSEND,
                    "file": file,
                    "offset": start,
                    "count": end - start,
                    "more_body": False,
                }
            )
