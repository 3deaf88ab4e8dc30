"""The MLLP listener: ``hl7.mllp``'s asyncio streams on a thread of their own.

Every message gets an ACK (original mode): AA once the report is durably stored, AE or
AR with a reason otherwise (docs/ris.md). Nothing a peer sends can stop the listener: a
message over ``ris.max_message_bytes`` is drained and answered AR; a block without the
MLLP start byte AR; a connection silent for ``ris.idle_timeout_s`` is closed; at most
``ris.max_connections`` at once (the others are closed at once). Log lines carry the
ACK code, the reason and the peer's address, never a field of the message.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

from hl7.mllp import HL7StreamProtocol, HL7StreamReader, HL7StreamWriter, InvalidBlockError
from hl7.mllp.streams import CARRIAGE_RETURN, END_BLOCK, START_BLOCK
from sqlalchemy.exc import SQLAlchemyError

from ris.oru import Header, Refused, ack, read_header, read_oru
from ris.reports import ReportBook
from ris.settings import RisSettings
from store.errors import StoreError

log = logging.getLogger(__name__)

_SEP = b"\x1c\x0d"
_CHUNK = 65536


class _Reader(HL7StreamReader):  # type: ignore[misc]
    """``hl7.mllp``'s reader, but knowing whether an over-long block was consumed whole
    (its end was in the buffer) or cut (the rest of it is still to come: drain it)."""

    overrun_whole = False
    overrun_tail = b""

    async def readblock(self) -> bytes:
        self.overrun_whole, self.overrun_tail = False, b""
        sep = END_BLOCK + CARRIAGE_RETURN
        buffer: bytearray = self._buffer
        try:
            block = bytes(await self.readuntil(sep))
        except asyncio.LimitOverrunError as loe:
            if buffer.startswith(sep, loe.consumed):
                del buffer[: loe.consumed + len(sep)]
                self.overrun_whole = True
            else:
                self.overrun_tail = bytes(buffer[-1:])
                buffer.clear()
            self._maybe_resume_transport()
            raise ValueError("message larger than the limit") from None
        if not block or block[0:1] != START_BLOCK:
            raise InvalidBlockError("Block does not begin with Start Block character <VT>")
        return block[1:-2]


class RisServer:
    """Start with :meth:`start`, stop with :meth:`stop`; ``port`` is the bound port."""

    def __init__(
        self,
        settings: RisSettings,
        book: ReportBook,
        *,
        port: int | None = None,
        on_report: Callable[[int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.book = book
        self.port = settings.port if port is None else port
        self._on_report = on_report
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._server: asyncio.AbstractServer | None = None
        self._connections = 0
        self._error: BaseException | None = None

    def start(self) -> None:
        """Listen (raises OSError when the port cannot be bound)."""
        self._thread = threading.Thread(target=self._run, name="ris-mllp", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            server = loop.run_until_complete(self._listen(loop))
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._server = server
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            server.close()
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    async def _listen(self, loop: asyncio.AbstractEventLoop) -> asyncio.AbstractServer:
        limit = self.settings.max_message_bytes

        def factory() -> HL7StreamProtocol:
            reader = _Reader(limit=limit, loop=loop)
            return HL7StreamProtocol(reader, self._connected, loop=loop)

        return await loop.create_server(factory, self.settings.host, self.port)

    async def _connected(self, reader: _Reader, writer: HL7StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        host = str(peer[0]) if peer else "?"
        if self._connections >= self.settings.max_connections:
            log.warning("MLLP connection from %s refused: %d open", host, self._connections)
            writer.close()
            return
        self._connections += 1
        try:
            await self._serve(reader, writer, host)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except Exception as exc:  # one connection's trouble never stops the listener
            log.error("MLLP connection from %s failed (%s)", host, type(exc).__name__)
        finally:
            self._connections -= 1
            writer.close()

    async def _serve(self, reader: _Reader, writer: HL7StreamWriter, host: str) -> None:
        timeout = self.settings.idle_timeout_s
        while True:
            try:
                block = await asyncio.wait_for(reader.readblock(), timeout)
            except ValueError:  # over max_message_bytes
                if not reader.overrun_whole:
                    await asyncio.wait_for(_drain(reader, reader.overrun_tail), timeout)
                await self._answer(
                    writer, host, Header(), "AR", "100", "message larger than the limit"
                )
                continue
            except InvalidBlockError:
                await self._answer(writer, host, Header(), "AR", "100", "no MLLP start block")
                continue
            except asyncio.IncompleteReadError:
                return  # the peer closed (between messages, or mid-message)
            except TimeoutError:
                log.info("MLLP connection from %s closed: idle", host)
                return
            await self._handle(block, writer, host)

    async def _handle(self, block: bytes, writer: HL7StreamWriter, host: str) -> None:
        try:
            oru = read_oru(
                block,
                accession_field=self.settings.accession_field,
                default_charset=self.settings.default_charset,
            )
            loop = asyncio.get_running_loop()
            recorded = await loop.run_in_executor(None, self.book.record_hl7, oru, block)
        except Refused as refused:
            header = refused.header or read_header(block)
            await self._answer(writer, host, header, refused.code, refused.error, refused.reason)
            return
        except (StoreError, SQLAlchemyError, OSError) as exc:
            # AE, not AR: the same message may be sent again once the store is back.
            log.warning("report not stored (%s)", type(exc).__name__)
            await self._answer(
                writer, host, read_header(block), "AE", "207", "report could not be stored"
            )
            return
        except Exception as exc:
            log.error("report not stored (%s)", type(exc).__name__)
            await self._answer(writer, host, read_header(block), "AE", "207", "internal error")
            return
        reason = "duplicate: already stored" if recorded.duplicate else ""
        await self._answer(writer, host, oru.header, "AA", "", reason, report=recorded.report_id)
        if self._on_report is not None and not recorded.duplicate:
            try:
                self._on_report(recorded.report_id)
            except Exception as exc:
                log.error("after report %d: %s", recorded.report_id, type(exc).__name__)

    async def _answer(
        self,
        writer: HL7StreamWriter,
        host: str,
        header: Header,
        code: str,
        error: str,
        reason: str,
        report: int | None = None,
    ) -> None:
        data = ack(
            header,
            code,
            application=self.settings.application,
            reason=reason,
            error=error,
            control_id=uuid.uuid4().hex[:20],
        )
        writer.writeblock(data)
        await writer.drain()
        if code == "AA":
            log.info("HL7 message from %s: AA report=%s %s", host, report, reason)
        else:
            log.warning("HL7 message from %s: %s %s (%s)", host, code, error, reason)


async def _drain(reader: Any, last: bytes) -> None:
    """Read and drop the rest of an over-long block, up to its end (bounded chunks)."""
    while True:
        chunk = await reader.read(_CHUNK)
        if not chunk:
            raise asyncio.IncompleteReadError(b"", None)
        if _SEP in last[-1:] + chunk:
            # Anything after the end of the block is the next message's start: kept.
            tail = (last[-1:] + chunk).split(_SEP, 1)[1]
            if tail:
                reader._buffer[:0] = tail
            return
        last = chunk
