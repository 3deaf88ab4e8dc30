"""SMTP channel against a real aiosmtpd (STARTTLS and implicit TLS, AUTH), and the file
backends. Each fault is a row: the reply the server plays, and the error it must map to."""

from __future__ import annotations

import asyncio
from datetime import date
from pathlib import Path

import pytest

from delivery import messages
from delivery.channel import OutgoingMessage, build_channels, new_message_id
from delivery.channel_settings import EmailSettings, SmsSettings
from delivery.email import SmtpChannel
from delivery.errors import (
    ChannelAuthError,
    ChannelSetupError,
    DeliveryConnectionError,
    DeliveryError,
    RecipientRefusedError,
)
from delivery.files import FileChannel
from tests.delivery.conftest import PASSWORD, email_settings
from tests.smtp_server import Fault, SmtpServer

PATIENT = "p.example@patients.example"


def link(message_id: str | None = None) -> OutgoingMessage:
    return messages.link_email(
        to=PATIENT,
        link_url="https://courier.example/l/Zx9",
        expires=date(2030, 1, 31),
        hospital="St Elsewhere",
        language="en",
        message_id=message_id or new_message_id("courier.test"),
    )


def channel(server: SmtpServer, **overrides: object) -> SmtpChannel:
    settings = email_settings(server, **overrides)
    return SmtpChannel(settings, password=PASSWORD, tls_context=server.client_context())


async def send(ch: SmtpChannel, msg: OutgoingMessage) -> DeliveryError | None:
    try:
        await ch.send(msg)
    except DeliveryError as exc:
        return exc
    return None


def test_sends_over_tls_with_auth_built_from_settings(
    smtp_server: SmtpServer, tmp_path: Path
) -> None:
    (tmp_path / "ca.pem").write_bytes(smtp_server.ca_pem())
    settings = email_settings(smtp_server, ca_file="ca.pem")
    email, sms = build_channels(settings, SmsSettings(), tmp_path, {"COURIER_SMTP": PASSWORD})
    msg = link()

    async def run() -> None:
        try:
            receipt = await email.send(msg)
            assert receipt.provider_id == msg.message_id
            assert receipt.channel == "smtp"
        finally:
            await email.aclose()
            await sms.aclose()

    asyncio.run(run())
    [got] = smtp_server.received
    assert got.tls and got.user == "courier"
    assert got.rcpt_tos == [PATIENT] and got.mail_from == "imaging@hospital.example"
    parsed = got.message()
    assert parsed.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in parsed.iter_parts()] == ["text/plain", "text/html"]
    assert parsed["Message-ID"] == f"<{msg.message_id}>"
    assert parsed["Date"] and parsed["Auto-Submitted"] == "auto-generated"
    assert "St Elsewhere Imaging" in parsed["From"]
    assert parsed["Subject"] == "Your imaging from St Elsewhere is ready"
    assert PATIENT not in parsed["Subject"]
    body = parsed.get_body(("plain",))
    assert body is not None and "https://courier.example/l/Zx9" in body.get_content()


FAULTS = [
    # fault, error type, permanent, outcome unknown, code, messages kept by the server
    (Fault("MAIL", "451 4.3.0 Try later"), DeliveryError, False, False, 451, 0),
    (Fault("RCPT", "421 4.3.2 Closing"), DeliveryError, False, False, 421, 0),
    (Fault("RCPT", "451 4.3.0 Try later"), DeliveryError, False, False, 451, 0),
    (Fault("RCPT", "550 5.1.1 No such user"), RecipientRefusedError, True, False, 550, 0),
    (Fault("DATA", "554 5.6.0 Rejected"), DeliveryError, True, False, 554, 0),
    (Fault("DATA", "452 4.3.1 Full"), DeliveryError, False, False, 452, 0),
    (Fault("DROP"), DeliveryError, False, True, None, 1),
    (Fault("STALL", seconds=3), DeliveryError, False, True, None, 1),
]


@pytest.mark.parametrize(("fault", "kind", "permanent", "unknown", "code", "kept"), FAULTS)
def test_fault_mapping(
    smtp_server: SmtpServer,
    fault: Fault,
    kind: type[DeliveryError],
    permanent: bool,
    unknown: bool,
    code: int | None,
    kept: int,
) -> None:
    ch = channel(smtp_server)
    # Below the settings' floor on purpose: the stall row must not take 60 s.
    ch._s = ch._s.model_copy(update={"data_timeout_s": 0.5})
    smtp_server.script({1: fault})

    async def run() -> DeliveryError | None:
        try:
            return await send(ch, link())
        finally:
            await ch.aclose()

    err = asyncio.run(run())
    assert isinstance(err, kind)
    assert (err.permanent, err.outcome_unknown, err.code) == (permanent, unknown, code)
    assert PATIENT not in str(err)
    assert len(smtp_server.received) == kept


def test_421_then_451_then_accepted_delivers_exactly_once(smtp_server: SmtpServer) -> None:
    ch = channel(smtp_server)
    msg = link()
    smtp_server.script({1: Fault("RCPT", "421 4.3.2 Closing"), 2: Fault("RCPT", "451 4.3.0 Later")})

    async def run() -> list[DeliveryError | None]:
        try:
            return [await send(ch, msg) for _ in range(3)]
        finally:
            await ch.aclose()

    outcomes = asyncio.run(run())
    assert [o.code if o else None for o in outcomes] == [421, 451, None]
    assert smtp_server.attempts == 3
    assert len(smtp_server.received) == 1


def test_drop_after_final_dot_resend_keeps_the_message_id(smtp_server: SmtpServer) -> None:
    ch = channel(smtp_server)
    msg = link()
    smtp_server.script({1: Fault("DROP")})

    async def run() -> list[DeliveryError | None]:
        try:
            return [await send(ch, msg), await send(ch, msg)]
        finally:
            await ch.aclose()

    first, second = asyncio.run(run())
    assert first is not None and first.outcome_unknown and second is None
    ids = {r.message()["Message-ID"] for r in smtp_server.received}
    assert len(smtp_server.received) == 2 and ids == {f"<{msg.message_id}>"}


def test_server_down_then_up(smtp_server: SmtpServer) -> None:
    ch = channel(smtp_server)
    smtp_server.stop()

    async def run() -> list[DeliveryError | None]:
        try:
            down = await send(ch, link())
            smtp_server.start()
            return [down, await send(ch, link())]
        finally:
            await ch.aclose()

    down, up = asyncio.run(run())
    assert isinstance(down, DeliveryConnectionError)
    assert not down.permanent and not down.outcome_unknown
    assert up is None and len(smtp_server.received) == 1


def test_wrong_password_is_an_auth_error_not_permanent(smtp_server: SmtpServer) -> None:
    ch = SmtpChannel(
        email_settings(smtp_server), password="wrong", tls_context=smtp_server.client_context()
    )

    async def run() -> DeliveryError | None:
        try:
            return await send(ch, link())
        finally:
            await ch.aclose()

    err = asyncio.run(run())
    assert isinstance(err, ChannelAuthError) and not err.permanent
    assert "wrong" not in str(err)


# A TLS socket of the in-process test server or client is sometimes collected after
# its loop closed (about 1 run in 7): a known-harmless ResourceWarning, not a leak of the
# channel under test (its connections are aborted in aclose). Tracked in the session note.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_send_many_reuses_connections(smtp_server: SmtpServer) -> None:
    ch = channel(smtp_server, max_connections=3)
    batch = [link() for _ in range(40)]

    async def run() -> list[object]:
        try:
            return list(await ch.send_many(batch))
        finally:
            await ch.aclose()

    results = asyncio.run(run())
    assert all(not isinstance(r, DeliveryError) for r in results)
    assert len(smtp_server.received) == 40
    assert smtp_server.connections <= 3 + 1  # +1: none of ours, the server counts from 0


@pytest.mark.parametrize("kind", ["email", "sms"])
def test_file_backend_is_atomic_and_idempotent(tmp_path: Path, kind: str) -> None:
    ch = FileChannel("email" if kind == "email" else "sms", tmp_path / "outbox")
    msg = (
        link()
        if kind == "email"
        else messages.code_sms(
            to="+447700900123",
            code="123456",
            language="en",
            sender_name="Courier",
            message_id=new_message_id("c.test"),
        )
    )

    async def run() -> tuple[object, object]:
        return await ch.send(msg), await ch.send(msg)

    first, second = asyncio.run(run())
    assert first == second
    files = sorted(p.name for p in (tmp_path / "outbox").iterdir())
    assert files == [msg.message_id + (".eml" if kind == "email" else ".txt")]
    data = (tmp_path / "outbox" / files[0]).read_bytes()
    if kind == "email":
        assert f"Message-ID: <{msg.message_id}>".encode() in data
    else:
        assert msg.text.encode() in data


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({"password": "hunter2"}, "must not stand in node.yaml"),
        ({"backend": "smtp"}, "needs host"),
        ({"host": "mx.example", "username": "u"}, "needs password_env or password_file"),
        (
            {"host": "mx.example", "username": "u", "password_env": "P", "security": "none"},
            "send the password in clear",
        ),
        ({"password_env": "A", "password_file": "b"}, "only one of"),
        ({"surprise": 1}, "Extra inputs are not permitted"),
    ],
)
def test_email_settings_refuse(values: dict[str, object], error: str) -> None:
    with pytest.raises(ValueError, match=error) as info:
        EmailSettings.model_validate(values)
    assert all("hunter2" not in e["msg"] for e in info.value.errors())  # type: ignore[attr-defined]


def test_missing_password_env_names_the_key(tmp_path: Path) -> None:
    settings = EmailSettings(
        backend="smtp", host="mx.example", username="u", password_env="NOPE_UNSET"
    )
    with pytest.raises(ChannelSetupError, match="password_env: environment variable NOPE_UNSET"):
        build_channels(settings, SmsSettings(), tmp_path, {})
