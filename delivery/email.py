"""Email through an SMTP server (aiosmtplib), with connection reuse for batches.

Error mapping (the contract the outbox relay relies on):

- a 4xx reply, a refused or dropped connection, or a timeout *before* the server has the
  whole message → ``DeliveryError(permanent=False)``: retry later;
- a 5xx reply (bad sender, refused recipient, message rejected after the final dot)
  → ``permanent=True`` (``RecipientRefusedError`` for RCPT, so the relay can fall back);
- the connection drops, or no reply comes, *after the final dot* → ``permanent=False,
  outcome_unknown=True``: the server may have queued it. The relay re-sends the same
  message; the same Message-ID lets mail systems and people see the duplicate for what
  it is. This is the one duplicate the design allows.
- AUTH refused, TLS or greeting failures → ``ChannelAuthError`` / connection errors, never
  permanent: every message would fail alike until an admin fixes the settings.

aiosmtplib's ``data()`` waits for the 354 and for the final reply with one timeout and
cannot tell the caller which one failed, so :meth:`SmtpChannel._transact` sends ``DATA``
as a command and the body through the protocol itself: the point of no return is then
known exactly, and only the wait after the final dot gets the long RFC 5321 timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import aiosmtplib

from delivery.channel import OutgoingMessage, Receipt, to_email
from delivery.channel_settings import EmailSettings
from delivery.errors import (
    ChannelAuthError,
    DeliveryConnectionError,
    DeliveryError,
    DeliveryTimeoutError,
    RecipientRefusedError,
)

log = logging.getLogger(__name__)

# Servers drop idle clients after a while (Postfix: 300 s); reusing one older than this
# would only buy a failed MAIL and a reconnect.
_IDLE_REUSE_S = 30.0
_LEADING_DOT = re.compile(rb"(?m)^\.")


def _reply_error(code: int, stage: str) -> DeliveryError:
    if 400 <= code < 500:
        return DeliveryError(
            f"the SMTP server deferred the message at {stage} ({code}); it will be retried",
            permanent=False,
            code=code,
        )
    if stage == "RCPT":
        return RecipientRefusedError(
            f"the SMTP server refused the recipient ({code}); check the address or use "
            "the other channel",
            code=code,
        )
    return DeliveryError(
        f"the SMTP server rejected the message at {stage} ({code}); see its log",
        permanent=True,
        code=code,
    )


def _abandon(smtp: aiosmtplib.SMTP) -> None:
    # A half-open TLS connection: abort() frees the socket now (see SmtpChannel._drop).
    transport = smtp.transport
    smtp.close()
    if isinstance(transport, asyncio.Transport):
        transport.abort()


class SmtpChannel:
    """Sends :class:`OutgoingMessage` emails over SMTP; safe to share between tasks.

    At most ``max_connections`` transactions run at once, each on its own connection;
    connections that ended a transaction cleanly are kept and reused for the next one.
    """

    name = "smtp"
    kind = "email"

    def __init__(
        self,
        settings: EmailSettings,
        *,
        password: str | None,
        tls_context: ssl.SSLContext | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._s = settings
        self._password = password
        self._tls = tls_context
        self._clock = clock
        self._slots = asyncio.Semaphore(settings.max_connections)
        self._idle: list[tuple[float, aiosmtplib.SMTP]] = []
        # Each connection's transport, kept because aiosmtplib forgets it on close().
        self._transports: dict[aiosmtplib.SMTP, asyncio.Transport] = {}

    async def send(self, message: OutgoingMessage) -> Receipt:
        """Send one email; returns the Message-ID as the receipt. Raises DeliveryError."""
        if message.kind != "email":
            raise ValueError("SmtpChannel sends email only")
        async with self._slots:
            smtp, reused = await self._checkout()
            try:
                try:
                    await self._transact(smtp, message)
                except DeliveryError as exc:
                    if not (reused and exc.code is None and not exc.outcome_unknown):
                        raise
                    # A kept connection the server had meanwhile dropped: nothing was
                    # sent yet, so one fresh connection is safe.
                    self._drop(smtp)
                    smtp, _ = await self._checkout(fresh=True)
                    await self._transact(smtp, message)
            finally:
                # A refused transaction leaves a clean (RSET) connection: keep it too.
                self._checkin(smtp)
        log.info("email %s accepted by the SMTP server", message.message_id)
        return Receipt(provider_id=message.message_id, channel=self.name, accepted_at=self._clock())

    async def send_many(self, messages: Sequence[OutgoingMessage]) -> list[Receipt | DeliveryError]:
        """Send a batch over up to ``max_connections`` reused connections; returns, in
        order, a receipt or the error for each message (never raises DeliveryError)."""

        async def one(m: OutgoingMessage) -> Receipt | DeliveryError:
            try:
                return await self.send(m)
            except DeliveryError as exc:
                return exc

        return list(await asyncio.gather(*(one(m) for m in messages)))

    async def lookup(self, message: OutgoingMessage) -> Receipt | None:
        """SMTP cannot tell whether a message was queued: always ``None`` (the relay
        re-sends with the same Message-ID)."""
        return None

    async def verify(self) -> None:
        """Connect, TLS and log in as sending would, then QUIT (no message). Raises
        DeliveryError (``ChannelAuthError`` for a refused login)."""
        smtp = await self._connect()
        try:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                await smtp.quit(timeout=5)
        finally:
            self._drop(smtp)

    async def aclose(self) -> None:
        """QUIT every kept connection."""
        idle, self._idle = self._idle, []
        for _, smtp in idle:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                await smtp.quit(timeout=5)
            self._drop(smtp)

    async def _checkout(self, *, fresh: bool = False) -> tuple[aiosmtplib.SMTP, bool]:
        now = time.monotonic()
        while self._idle and not fresh:
            since, smtp = self._idle.pop()
            if smtp.is_connected and now - since < _IDLE_REUSE_S:
                return smtp, True
            self._drop(smtp)
        return await self._connect(), False

    def _checkin(self, smtp: aiosmtplib.SMTP) -> None:
        if smtp.is_connected:
            self._idle.append((time.monotonic(), smtp))
        else:
            self._drop(smtp)

    def _drop(self, smtp: aiosmtplib.SMTP) -> None:
        """Close for good. A TLS transport's close() waits for the peer's close_notify,
        which a dropped or refusing server never sends, and the socket would outlive the
        event loop; abort() closes it now."""
        smtp.close()
        transport = self._transports.pop(smtp, None)
        if transport is not None:
            transport.abort()

    async def _connect(self) -> aiosmtplib.SMTP:
        s = self._s
        smtp = aiosmtplib.SMTP(
            hostname=s.host,
            port=s.smtp_port,
            username=s.username,
            password=self._password,
            use_tls=s.security == "tls",
            # A bool, not None (= "if offered"): refuse to go on in clear when the
            # server offers no STARTTLS.
            start_tls=s.security == "starttls",
            tls_context=self._tls,
            timeout=s.connect_timeout_s,
        )
        try:
            await smtp.connect()
        except aiosmtplib.SMTPAuthenticationError as exc:
            _abandon(smtp)
            raise ChannelAuthError(
                f"the SMTP server refused our login ({exc.code}); check email.username "
                "and the password",
                code=exc.code,
            ) from None
        except aiosmtplib.SMTPResponseException as exc:
            _abandon(smtp)
            raise DeliveryError(
                f"the SMTP server refused the session ({exc.code}); check email.host "
                "and email.security",
                permanent=False,
                code=exc.code,
            ) from None
        except (aiosmtplib.SMTPTimeoutError, TimeoutError):
            _abandon(smtp)
            raise DeliveryTimeoutError(
                "the SMTP server did not answer in time; it will be retried"
            ) from None
        except ssl.SSLError:
            _abandon(smtp)
            raise DeliveryConnectionError(
                "TLS with the SMTP server failed; check email.security and email.ca_file"
            ) from None
        except (aiosmtplib.SMTPException, OSError):
            _abandon(smtp)
            raise DeliveryConnectionError(
                "cannot connect to the SMTP server; check email.host and email.port"
            ) from None
        smtp.timeout = s.command_timeout_s
        if isinstance(smtp.transport, asyncio.Transport):
            self._transports[smtp] = smtp.transport
        return smtp

    async def _transact(self, smtp: aiosmtplib.SMTP, message: OutgoingMessage) -> None:
        """MAIL, RCPT, DATA, body. On failure the connection is reset or closed."""
        payload = to_email(
            message, sender=self._s.from_address, sender_name=self._s.from_name
        ).as_bytes()
        stage = "MAIL"
        try:
            await smtp.mail(self._s.from_address)
            stage = "RCPT"
            await smtp.rcpt(message.to)
            stage = "DATA"
            reply = await smtp.execute_command(b"DATA")
            if reply.code != 354:
                raise aiosmtplib.SMTPResponseException(reply.code, reply.message)
        except aiosmtplib.SMTPResponseException as exc:
            await self._reset(smtp)
            raise _reply_error(exc.code, stage) from None
        except (aiosmtplib.SMTPTimeoutError, TimeoutError):
            self._drop(smtp)
            raise DeliveryTimeoutError(
                f"the SMTP server did not answer {stage} in time; it will be retried"
            ) from None
        except (aiosmtplib.SMTPException, OSError):
            self._drop(smtp)
            raise DeliveryConnectionError(
                f"the SMTP connection dropped at {stage}; it will be retried"
            ) from None
        # Point of no return: from the final dot on the server may have the message.
        body = _LEADING_DOT.sub(b"..", payload)  # RFC 5321 4.5.2 transparency
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
        protocol = smtp.protocol
        try:
            if protocol is None:
                raise aiosmtplib.SMTPServerDisconnected("connection lost")
            protocol.write(body + b".\r\n")
            reply = await protocol.read_response(timeout=self._s.data_timeout_s)
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            self._drop(smtp)
            raise DeliveryError(
                "no reply from the SMTP server after the message was sent; it may have "
                "been delivered: re-send with the same Message-ID",
                permanent=False,
                outcome_unknown=True,
            ) from None
        if reply.code != 250:
            await self._reset(smtp)
            raise _reply_error(reply.code, "end of DATA")

    async def _reset(self, smtp: aiosmtplib.SMTP) -> None:
        # After a refused transaction the connection is reusable once RSET clears the
        # envelope; if even RSET fails, drop it.
        if not smtp.is_connected:
            return
        try:
            await smtp.rset()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            self._drop(smtp)
