"""Twilio channel through the real ``twilio`` client against a local Twilio-compatible
endpoint; GSM-7 handling; SMS settings. Faults are rows: what the gateway does, and the
error (and look-up result) the relay must see."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest

from delivery import messages
from delivery.channel import OutgoingMessage, Receipt, build_channels, new_message_id
from delivery.channel_settings import EmailSettings, SmsSettings
from delivery.errors import (
    ChannelAuthError,
    DeliveryError,
    RateLimitedError,
    RecipientRefusedError,
)
from delivery.sms import TwilioChannel, gsm_safe, is_gsm7, segments
from tests.delivery.conftest import sms_settings
from tests.twilio_server import Fault, TwilioServer

PHONE = "+447700900123"


def code_sms(code: str = "482913") -> OutgoingMessage:
    return messages.code_sms(
        to=PHONE,
        code=code,
        language="en",
        sender_name="Courier",
        message_id=new_message_id("courier.test"),
    )


async def attempt(ch: TwilioChannel, msg: OutgoingMessage) -> DeliveryError | None:
    try:
        await ch.send(msg)
    except DeliveryError as exc:
        return exc
    return None


def test_request_carries_auth_and_fields(twilio_server: TwilioServer, tmp_path: Path) -> None:
    settings = sms_settings(twilio_server)
    email, sms = build_channels(
        EmailSettings(), settings, tmp_path, {"COURIER_TWILIO": twilio_server.token}
    )
    msg = code_sms()

    async def run() -> str:
        try:
            return (await sms.send(msg)).provider_id
        finally:
            await sms.aclose()
            await email.aclose()

    sid = asyncio.run(run())
    [req] = twilio_server.requests
    assert req.method == "POST"
    assert req.path == f"/2010-04-01/Accounts/{twilio_server.sid}/Messages.json"
    assert req.auth == (twilio_server.sid, twilio_server.token)
    expected = base64.b64encode(f"{twilio_server.sid}:{twilio_server.token}".encode()).decode()
    assert req.headers["Authorization"] == f"Basic {expected}"
    assert req.form == {"To": PHONE, "From": "+15005550006", "Body": msg.text}
    assert twilio_server.messages[0]["sid"] == sid


def test_messaging_service_instead_of_from(twilio_server: TwilioServer) -> None:
    mg = "MG" + "0" * 32
    ch = TwilioChannel(
        sms_settings(twilio_server, from_number=None, messaging_service_sid=mg),
        auth_token=twilio_server.token,
    )

    async def run() -> None:
        try:
            await ch.send(code_sms())
        finally:
            await ch.aclose()

    asyncio.run(run())
    assert twilio_server.requests[0].form["MessagingServiceSid"] == mg
    assert "From" not in twilio_server.requests[0].form


FAULTS = [
    # gateway fault, error type, permanent, unknown, code, retry_after, lookup finds it
    (
        Fault("status", status=429, retry_after="7"),
        RateLimitedError,
        False,
        False,
        20429,
        7.0,
        False,
    ),
    (Fault("refuse", code=21211), RecipientRefusedError, True, False, 21211, None, False),
    (Fault("refuse", code=21614), RecipientRefusedError, True, False, 21614, None, False),
    (Fault("refuse", code=21610), RecipientRefusedError, True, False, 21610, None, False),
    (Fault("status", status=500), DeliveryError, False, True, 500, None, False),
    (Fault("accept_then_500"), DeliveryError, False, True, 20500, None, True),
    (Fault("timeout", seconds=4, store=True), DeliveryError, False, True, None, None, True),
    (Fault("timeout", seconds=4), DeliveryError, False, True, None, None, False),
]


@pytest.mark.parametrize(
    ("fault", "kind", "permanent", "unknown", "code", "retry_after", "found"), FAULTS
)
def test_fault_mapping_and_lookup(
    twilio_server: TwilioServer,
    fault: Fault,
    kind: type[DeliveryError],
    permanent: bool,
    unknown: bool,
    code: int | None,
    retry_after: float | None,
    found: bool,
) -> None:
    ch = TwilioChannel(sms_settings(twilio_server, timeout_s=1), auth_token=twilio_server.token)
    msg = code_sms()
    other = code_sms("111111")  # another message to the same number: must not match
    twilio_server.script({2: fault})

    async def run() -> tuple[DeliveryError | None, Receipt | None]:
        try:
            await ch.send(other)
            err = await attempt(ch, msg)
            return err, await ch.lookup(msg)
        finally:
            await ch.aclose()

    err, receipt = asyncio.run(run())
    assert isinstance(err, kind)
    assert (err.permanent, err.outcome_unknown, err.code, err.retry_after) == (
        permanent,
        unknown,
        code,
        retry_after,
    )
    assert PHONE not in str(err) and "482913" not in str(err)
    stored = [m for m in twilio_server.messages if msg.client_ref and msg.client_ref in m["body"]]
    assert (receipt is not None) == found == bool(stored)
    if found:
        assert receipt is not None and receipt.provider_id == stored[0]["sid"]


def test_wrong_token_is_an_auth_error(twilio_server: TwilioServer) -> None:
    ch = TwilioChannel(sms_settings(twilio_server), auth_token="not-the-token")

    async def run() -> DeliveryError | None:
        try:
            return await attempt(ch, code_sms())
        finally:
            await ch.aclose()

    err = asyncio.run(run())
    assert isinstance(err, ChannelAuthError) and not err.permanent and err.code == 20003


@pytest.mark.parametrize(
    ("text", "safe"),
    [
        ("It’s “ready” – now…", 'It\'s "ready" - now...'),
        ("Code\u00a0123456", "Code 123456"),
        ("zero\u200bwidth", "zerowidth"),
        ("plain ASCII stays", "plain ASCII stays"),
    ],
)
def test_gsm_safe(text: str, safe: str) -> None:
    assert gsm_safe(text) == safe
    assert is_gsm7(safe)


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("€" * 80, 1),
        ("€" * 81, 2),
        ("ع" * 70, 1),
        ("ع" * 71, 2),
        ("a’" * 40, 2),
    ],
)
def test_segments(text: str, count: int) -> None:
    assert segments(text) == count


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({"auth_token": "abc123secret"}, "must not stand in node.yaml"),
        ({"backend": "twilio"}, "account_sid"),
        (
            {"backend": "twilio", "account_sid": "AC" + "a" * 32, "auth_token_env": "T"},
            "exactly one of from_number, messaging_service_sid",
        ),
        ({"api_base": "http://gateway.example"}, "in clear"),
        ({"api_base": "https://gw.example/v1"}, "no path"),
        ({"from_number": "07700900123"}, "E.164"),
    ],
)
def test_sms_settings_refuse(values: dict[str, object], error: str) -> None:
    with pytest.raises(ValueError, match=error) as info:
        SmsSettings.model_validate(values)
    assert all("abc123secret" not in e["msg"] for e in info.value.errors())  # type: ignore[attr-defined]
