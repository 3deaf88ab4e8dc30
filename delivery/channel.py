"""The channel seam: what the outbox relay hands a channel, and what it gets back.

A channel is one small object per provider (``email.SmtpChannel``, ``sms.TwilioChannel``,
``files.FileChannel``) behind the :class:`Channel` protocol. It sends exactly one message
per :meth:`Channel.send` call, raises :class:`delivery.errors.DeliveryError` when it
cannot, and keeps no state about attempts: the relay owns retries, backoff, rate limits
and the record of each attempt.

Idempotency rests on :attr:`OutgoingMessage.message_id`, set once by the relay when it
writes the outbox row and reused by every re-send. Email puts it in the Message-ID header
(a duplicate after an unknown SMTP outcome is recognisably the same message); the file
backends name their file after it; SMS carries :attr:`OutgoingMessage.client_ref` inside
the text, which :meth:`Channel.lookup` searches for before a retry.
"""

from __future__ import annotations

import os
import re
import secrets
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, formataddr
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, TypeAlias

from delivery.errors import ChannelSetupError

if TYPE_CHECKING:
    from delivery.channel_settings import EmailSettings, SmsSettings
    from delivery.email import SmtpChannel
    from delivery.files import FileChannel
    from delivery.sms import TwilioChannel

EmailChannelT: TypeAlias = "SmtpChannel | FileChannel"
SmsChannelT: TypeAlias = "TwilioChannel | FileChannel"

ChannelKind = Literal["email", "sms"]

# Also a file name in the file backends: no '/', no leading dot, nothing a shell or a
# path join could misread.
_MESSAGE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}@[A-Za-z0-9][A-Za-z0-9.-]{0,99}$")


def new_message_id(domain: str) -> str:
    """A fresh, globally unique Message-ID (without angle brackets) in ``domain``."""
    return f"{secrets.token_hex(16)}@{domain}"


@dataclass(frozen=True)
class OutgoingMessage:
    """One message for one recipient, fully composed (see :mod:`delivery.messages`).

    ``to`` is an email address or an E.164 number; ``subject`` and ``html`` are for
    email only. ``date`` is when the message was composed: set it (the relay stores it
    with the row) so a re-send is byte-identical; ``None`` means "now" at send time.
    """

    kind: ChannelKind
    to: str
    text: str
    message_id: str
    subject: str = ""
    html: str | None = None
    client_ref: str | None = None
    language: str = "en"
    date: datetime | None = None

    def __post_init__(self) -> None:
        if not _MESSAGE_ID.match(self.message_id):
            raise ValueError("message_id must look like <random>@<domain> (no angle brackets)")
        if self.kind == "email" and not self.subject:
            raise ValueError("an email needs a subject")
        if self.kind == "sms" and (self.html is not None or self.subject):
            raise ValueError("an SMS has neither subject nor HTML")
        if self.client_ref is not None and self.client_ref not in self.text:
            raise ValueError("client_ref must appear in the text (lookup searches for it)")

    def __repr__(self) -> str:
        # Never show the recipient or the body (they may end up in a log).
        return f"OutgoingMessage(kind={self.kind!r}, message_id={self.message_id!r})"


@dataclass(frozen=True)
class Receipt:
    """The provider accepted the message: its id (Message-ID or Twilio SID), the channel
    that sent it, and when."""

    provider_id: str
    channel: str
    accepted_at: datetime = field(default_factory=lambda: datetime.now(UTC))


class Channel(Protocol):
    """What the outbox relay calls. ``name`` goes into the attempt log ("smtp", "twilio",
    "file"); ``kind`` says which messages it takes."""

    name: str
    kind: ChannelKind

    async def send(self, message: OutgoingMessage) -> Receipt:
        """Hand ``message`` to the provider; raises ``DeliveryError`` when it cannot."""
        ...

    async def lookup(self, message: OutgoingMessage) -> Receipt | None:
        """An earlier send of ``message`` the provider already accepted, if it can tell
        (SMS, file); ``None`` when it cannot know (SMTP) or found nothing."""
        ...

    async def aclose(self) -> None:
        """Release connections and threads. Idempotent."""
        ...


def to_email(message: OutgoingMessage, *, sender: str, sender_name: str = "") -> EmailMessage:
    """``message`` as a full RFC 5322 message: multipart/alternative text + HTML when
    there is HTML, a Message-ID from ``message_id``, Date from ``message.date`` (else
    now), and ``Auto-Submitted: auto-generated`` so auto-replies do not loop (RFC 3834)."""
    if message.kind != "email":
        raise ValueError("only email messages have an RFC 5322 form")
    mime = EmailMessage(policy=SMTP)
    mime["From"] = formataddr((sender_name, sender)) if sender_name else sender
    mime["To"] = message.to
    mime["Subject"] = message.subject
    mime["Date"] = format_datetime(message.date or datetime.now(UTC))
    mime["Message-ID"] = f"<{message.message_id}>"
    mime["Auto-Submitted"] = "auto-generated"
    mime.set_content(message.text, cte="quoted-printable")
    if message.html is not None:
        mime.add_alternative(message.html, subtype="html", cte="quoted-printable")
    # After the body: making the message multipart moves Content-* headers into the parts.
    mime["Content-Language"] = message.language
    return mime


def build_channels(
    email: EmailSettings,
    sms: SmsSettings,
    data_dir: Path,
    env: Mapping[str, str] = os.environ,
) -> tuple[EmailChannelT, SmsChannelT]:
    """The email and SMS channels the settings describe, ready to send. Relative paths
    (``file_dir``, ``ca_file``, ``*_file`` secrets) are resolved against ``data_dir``.
    Raises :class:`ChannelSetupError` naming the key when a secret or the CA file
    is missing. The caller owns the channels: ``await channel.aclose()`` at shutdown."""
    # Imported here: those modules import this one.
    from delivery.email import SmtpChannel
    from delivery.files import FileChannel
    from delivery.sms import TwilioChannel

    email_channel: EmailChannelT
    if email.backend == "file":
        email_channel = FileChannel(
            "email",
            data_dir / email.file_dir,
            sender=email.from_address,
            sender_name=email.from_name,
        )
    else:
        context = ssl.create_default_context()
        if email.ca_file:
            ca = (
                Path(email.ca_file)
                if Path(email.ca_file).is_absolute()
                else data_dir / email.ca_file
            )
            try:
                context.load_verify_locations(cafile=ca)
            except (OSError, ssl.SSLError) as exc:
                raise ChannelSetupError(f"email.ca_file: cannot load {ca}: {exc}") from None
        email_channel = SmtpChannel(
            email, password=email.read_password(data_dir, env), tls_context=context
        )
    sms_channel: SmsChannelT
    if sms.backend == "file":
        sms_channel = FileChannel("sms", data_dir / sms.file_dir)
    else:
        token = sms.read_auth_token(data_dir, env)
        assert token is not None  # the validator requires a token source for twilio
        sms_channel = TwilioChannel(sms, auth_token=token)
    return email_channel, sms_channel
