"""A real aiosmtpd server on 127.0.0.1:0 for the channel tests and bench/notify.py.

It runs its own event loop in a thread (so synchronous tests and ``asyncio.run`` clients
both work), speaks STARTTLS or implicit TLS with ``trustme`` certificates, requires AUTH
when given users, records every accepted message, and plays scripted faults per
*attempt* (one attempt = one MAIL transaction, counted from 1)::

    server.script({1: Fault("RCPT", "421 4.3.2 closing"), 2: Fault("RCPT", "451 4.3.0 later")})

Fault stages: ``MAIL``, ``RCPT``, ``DATA`` (the reply after the final dot, the message
is *not* recorded), ``DROP`` (record the message, then drop the connection without
answering: "accepted, but the reply was lost") and ``STALL`` (record, then answer only
after ``seconds``).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any, Literal

import trustme
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

Security = Literal["starttls", "tls", "none"]
# aiosmtpd logs a deprecation notice of its own (Session.login_data) on every AUTH.
logging.getLogger("mail.log").setLevel(logging.ERROR)


@dataclass(frozen=True)
class Fault:
    stage: Literal["MAIL", "RCPT", "DATA", "DROP", "STALL"]
    reply: str = ""
    seconds: float = 0.0


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    tls: bool
    user: str | None

    def message(self) -> EmailMessage:
        msg = message_from_bytes(self.data, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        return msg


@dataclass
class _State:
    received: list[Received] = field(default_factory=list)
    attempts: int = 0
    faults: dict[int, Fault] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler:
    def __init__(self, state: _State) -> None:
        self.state = state

    def _fault(self, stage: str) -> Fault | None:
        f = self.state.faults.get(self.state.attempts)
        return f if f is not None and f.stage == stage else None

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        with self.state.lock:
            self.state.attempts += 1
        f = self._fault("MAIL")
        if f:
            return f.reply
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        f = self._fault("RCPT")
        if f:
            return f.reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        f = self._fault("DATA")
        if f:
            return f.reply
        user = session.auth_data.decode() if isinstance(session.auth_data, bytes) else None
        data = envelope.original_content or b""
        with self.state.lock:
            self.state.received.append(
                Received(
                    str(envelope.mail_from),
                    list(envelope.rcpt_tos),
                    data,
                    tls=session.ssl is not None
                    or (
                        server.transport is not None
                        and server.transport.get_extra_info("ssl_object") is not None
                    ),
                    user=user,
                )
            )
        if self._fault("DROP") and isinstance(server.transport, asyncio.Transport):
            server.transport.abort()
            return "250 OK"
        stall = self._fault("STALL")
        if stall:
            await asyncio.sleep(stall.seconds)
        return "250 2.0.0 queued"


class _ImplicitTlsSMTP(SMTP):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # aiosmtpd only knows STARTTLS; on an implicit-TLS socket AUTH is safe already.
        if transport.get_extra_info("ssl_object") is not None:
            self._auth_require_tls = False


class SmtpServer:
    """Start with :meth:`start` (or ``with``); ``port``, ``received``, ``attempts``."""

    def __init__(
        self,
        *,
        security: Security = "none",
        users: dict[str, str] | None = None,
        ca: trustme.CA | None = None,
    ) -> None:
        self.security = security
        self.users = users or {}
        self.ca = ca or trustme.CA()
        self._cert = self.ca.issue_cert("127.0.0.1", "localhost")
        self._state = _State()
        self.host = "127.0.0.1"
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._conns: list[SMTP] = []
        self.connections = 0  # sessions opened since construction

    @property
    def received(self) -> list[Received]:
        with self._state.lock:
            return list(self._state.received)

    @property
    def attempts(self) -> int:
        return self._state.attempts

    def script(self, faults: dict[int, Fault]) -> None:
        """Faults by attempt number, counted from the next MAIL (1 = the next one)."""
        with self._state.lock:
            base = self._state.attempts
            self._state.faults = {base + n: f for n, f in faults.items()}

    def client_context(self) -> ssl.SSLContext:
        """A client TLS context trusting this server's CA."""
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx

    def ca_pem(self) -> bytes:
        return self.ca.cert_pem.bytes()

    def _server_ctx(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._cert.configure_cert(ctx)
        return ctx

    def _factory(self) -> SMTP:
        kw: dict[str, Any] = {"hostname": "courier-test", "enable_SMTPUTF8": True}
        if self.users:
            kw.update(authenticator=self._auth, auth_required=True)
        cls = SMTP
        if self.security == "starttls":
            kw.update(tls_context=self._server_ctx(), require_starttls=True)
        elif self.security == "tls":
            cls = _ImplicitTlsSMTP
        proto = cls(_Handler(self._state), **kw)
        self._conns.append(proto)
        self.connections += 1
        return proto

    def _auth(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and self.users.get(data.login.decode()) == data.password.decode()
        )
        return AuthResult(success=ok, auth_data=data.login if ok else None, handled=False)

    def start(self) -> SmtpServer:
        """Listen (again, on the same port after a :meth:`stop`). Callable from inside a
        running event loop: the server's loop lives in its own thread."""
        loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, args=(loop,), name="smtp-server")
        self._thread.start()
        ssl_ctx = self._server_ctx() if self.security == "tls" else None
        create = loop.create_server(self._factory, self.host, self.port, ssl=ssl_ctx)
        self._server = asyncio.run_coroutine_threadsafe(create, loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        self._loop = loop
        return self

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        loop.run_forever()
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    def stop(self) -> None:
        """Close every connection and the listener; the port stays reserved for start()."""
        loop, server, thread = self._loop, self._server, self._thread
        if loop is None or server is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(server), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._loop = self._server = self._thread = None

    async def _shutdown(self, server: asyncio.Server) -> None:
        server.close()
        for c in self._conns:
            if c.transport is not None:
                # abort(), not close(): a TLS close waits for the client's close_notify,
                # which may never come, and the socket would outlive this loop (an
                # "unclosed transport" ResourceWarning in whatever test runs next).
                c.transport.abort()
        self._conns.clear()
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

    def __enter__(self) -> SmtpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
