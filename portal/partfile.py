"""Serving a package part file: ``Range`` support, and a hook once a body is all sent.

The body goes out through the server's zero-copy extensions when it offers them
(``http.response.pathsend`` for a whole part, ``http.response.zerocopysend`` for a single
range; ``courier serve`` does, see :mod:`node.sendfile`), else in 1 MiB reads. Once the
whole body of an answer was handed to the connection, ``on_sent(spans, size)`` runs with
the byte spans ``[start, end)`` of the file that answer carried (the whole file, one
range, or several) and the file's size. For a zero-copy message the server confirms the
hand-over by setting ``message[SENT]``; an interrupted answer (a reset, a client gone)
calls nothing, so not even its first bytes count. Whether a *download* is complete is
the caller's judgement, across answers (:mod:`portal.coverage`): a ``Range: bytes=-1``
touches the last byte and is not a download.
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

#: Byte spans ``[start, end)`` of a file.
Spans = list[tuple[int, int]]


class PartResponse(FileResponse):
    """A ZIP part with Range support that calls ``on_sent(spans, size)`` (in a worker
    thread) once an answer's body was all sent; never for HEAD or an error answer."""

    chunk_size = CHUNK

    def __init__(self, *args: object, on_sent: Callable[[Spans, int], None], **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self._on_sent = on_sent
        self._zero_copy = False
        self._spans: Spans = []
        self._size = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        finished = False
        self._zero_copy = ZEROCOPYSEND in (scope.get("extensions") or {})

        async def watch(message: Message) -> None:
            nonlocal finished
            kind = message["type"]
            await send(message)
            if kind in _LAST and not message.get("more_body", False):
                finished = kind == "http.response.body" or message.get(SENT) is True

        head = scope.get("method", "GET").upper() == "HEAD"
        await super().__call__(scope, receive, watch)
        # _spans stays empty for answers that carry none of the file (400, 416).
        if finished and self._spans and not head:
            await anyio.to_thread.run_sync(self._on_sent, list(self._spans), self._size)

    async def _handle_simple(self, send: Send, send_header_only: bool, send_pathsend: bool) -> None:
        self._size = int(self.headers["content-length"])
        self._spans = [(0, self._size)]
        await super()._handle_simple(send, send_header_only, send_pathsend)

    async def _handle_multiple_ranges(
        self, send: Send, ranges: list[tuple[int, int]], file_size: int, send_header_only: bool
    ) -> None:
        self._size, self._spans = file_size, list(ranges)
        await super()._handle_multiple_ranges(send, ranges, file_size, send_header_only)

    async def _handle_single_range(
        self, send: Send, start: int, end: int, file_size: int, send_header_only: bool
    ) -> None:
        """One range: Starlette's own answer, or a zero-copy one when the server can."""
        self._size, self._spans = file_size, [(start, end)]
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
