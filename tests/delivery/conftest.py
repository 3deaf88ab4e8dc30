"""Fixtures for the channel tests: a real aiosmtpd server (TLS from trustme, AUTH) and a
local Twilio-compatible endpoint, both on 127.0.0.1:0, and channels pointed at them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from delivery.channel_settings import EmailSettings, SmsSettings
from tests.smtp_server import Security, SmtpServer
from tests.twilio_server import TwilioServer

USER, PASSWORD = "courier", "s3cret-pass"


@pytest.fixture(params=["starttls", "tls"])
def smtp_server(request: pytest.FixtureRequest) -> Iterator[SmtpServer]:
    """An SMTP server requiring AUTH, once over STARTTLS and once over implicit TLS."""
    security: Security = request.param
    with SmtpServer(security=security, users={USER: PASSWORD}) as server:
        yield server


def email_settings(server: SmtpServer, **overrides: object) -> EmailSettings:
    """SMTP settings for ``server`` (the password comes from the env var COURIER_SMTP)."""
    values: dict[str, object] = {
        "backend": "smtp",
        "host": server.host,
        "port": server.port,
        "security": server.security,
        "username": USER if server.users else None,
        "password_env": "COURIER_SMTP" if server.users else None,
        "from_address": "imaging@hospital.example",
        "from_name": "St Elsewhere Imaging",
        "connect_timeout_s": 5,
        "command_timeout_s": 5,
        "data_timeout_s": 60,
    }
    values.update(overrides)
    return EmailSettings.model_validate(values)


@pytest.fixture
def twilio_server() -> Iterator[TwilioServer]:
    with TwilioServer() as server:
        yield server


def sms_settings(server: TwilioServer, **overrides: object) -> SmsSettings:
    values: dict[str, object] = {
        "backend": "twilio",
        "account_sid": server.sid,
        "auth_token_env": "COURIER_TWILIO",
        "from_number": "+15005550006",
        "api_base": server.base_url,
        "timeout_s": 2,
    }
    values.update(overrides)
    return SmsSettings.model_validate(values)
