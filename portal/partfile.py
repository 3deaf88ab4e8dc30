"""Serving a package part file: ``Range`` support, and a hook once the last byte is sent."""

from __future__ import annotations

from collections.abc import Callable

import anyio
from fastapi.responses import FileResponse
from starlette.types import Message, Receive, Scope, Send

CHUNK = 1024 * 1024


class PartResponse(FileResponse):
    """A ZIP part with Range support that calls ``on_complete`` (in a worker thread)
    once the part's last byte was sent."""

    chunk_size = CHUNK

    def __init__(self, *args: object, on_complete: Callable[[], None], **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self._on_complete = on_complete

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        covers_end = False
        finished = False

        async def watch(message: Message) -> None:
            nonlocal covers_end, finished
            if message["type"] == "http.response.start":
                headers = {k.lower(): v for k, v in message.get("headers", [])}
                status = message["status"]
                if status == 200:
                    covers_end = True
                elif status == 206:
                    rng = headers.get(b"content-range", b"").decode("latin-1")
                    # "bytes a-b/size", one range only: it completes when b is the last byte
                    try:
                        span, total = rng.split(" ", 1)[1].split("/")
                        covers_end = int(span.split("-")[1]) == int(total) - 1
                    except (IndexError, ValueError):
                        covers_end = False
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                finished = True

        head = scope.get("method", "GET").upper() == "HEAD"
        await super().__call__(scope, receive, watch)
        if finished and covers_end and not head:
            await anyio.to_thread.run_sync(self._on_complete)
