"""The ``email:`` and ``sms:`` sections of node.yaml.

Both default to the ``file`` backend, which writes each message into
``<data_dir>/outbox/`` (``.eml`` for email, ``.txt`` for SMS) so a fresh node runs with no
provider at all. Secrets never stand in the YAML: ``password_env`` / ``auth_token_env``
name an environment variable and ``password_file`` / ``auth_token_file`` a file (a
Docker or Kubernetes secret); a literal ``password`` or ``auth_token`` is refused, the
way ``store.database_url`` refuses a URL holding a password.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from delivery.errors import ChannelSetupError

_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def read_secret(
    key: str, *, env: str | None, file: str | None, base: Path, environ: Mapping[str, str]
) -> str | None:
    """The secret named by ``<key>_env`` or ``<key>_file`` (relative to ``base``);
    ``None`` when neither is set. Raises :class:`ChannelSetupError` naming the key when
    the variable is unset or the file unreadable or empty (never the secret itself)."""
    if env:
        value = environ.get(env, "").strip()
        if not value:
            raise ChannelSetupError(f"{key}_env: environment variable {env} is not set or empty")
        return value
    if file:
        path = Path(file) if Path(file).is_absolute() else base / file
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ChannelSetupError(f"{key}_file: cannot read {path}: {exc.strerror}") from None
        if not value:
            raise ChannelSetupError(f"{key}_file: {path} is empty")
        return value
    return None


def _refuse_literal(key: str, value: str | None) -> None:
    if value is not None:
        # Never echo the value: it is the secret.
        raise ValueError(
            f"{key} must not stand in node.yaml: put it in an environment variable "
            f"({key}_env) or a file ({key}_file) instead"
        )


class EmailSettings(BaseModel):
    """How patient and staff emails leave the node."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["file", "smtp"] = Field(
        default="file",
        description="file: write .eml files into file_dir (no mail leaves the node); "
        "smtp: send through the server below.",
    )
    file_dir: str = Field(
        default="outbox", description="Folder for the file backend, relative to node.data_dir."
    )
    from_address: str = Field(
        default="courier@localhost",
        pattern=r"^[^@\s<>]+@[^@\s<>]+$",
        description="Envelope sender and From address, e.g. imaging@hospital.example.",
    )
    from_name: str = Field(
        default="", max_length=100, description="Display name in From, e.g. the hospital's."
    )
    host: str = Field(default="", description="SMTP server host name (backend smtp).")
    port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="SMTP port. Empty: 587 for starttls, 465 for tls, 25 for none.",
    )
    security: Literal["starttls", "tls", "none"] = Field(
        default="starttls",
        description="starttls: plain connect then STARTTLS (required); tls: implicit TLS "
        "from the first byte; none: no encryption (a relay on this host only).",
    )
    ca_file: str | None = Field(
        default=None,
        description="PEM bundle of CAs to trust for the SMTP server, relative to "
        "node.data_dir. Empty: the system's CAs. Certificates are always verified.",
    )
    username: str | None = Field(default=None, description="SMTP AUTH user. Empty: no AUTH.")
    password: str | None = Field(
        default=None, description="Refused: use password_env or password_file."
    )
    password_env: str | None = Field(
        default=None, description="Environment variable holding the SMTP password."
    )
    password_file: str | None = Field(
        default=None, description="File holding the SMTP password, relative to node.data_dir."
    )
    connect_timeout_s: float = Field(
        default=30.0, gt=0, le=300, description="Connecting, TLS and greeting (seconds)."
    )
    command_timeout_s: float = Field(
        default=60.0, gt=0, le=600, description="Each SMTP command before the message body."
    )
    data_timeout_s: float = Field(
        default=600.0,
        ge=60,
        le=3600,
        description="Waiting for the reply after the final dot. RFC 5321 4.5.3.2.6 asks "
        "10 minutes: a shorter wait turns a slow server into duplicate emails.",
    )
    max_connections: int = Field(
        default=4, ge=1, le=64, description="Concurrent SMTP connections when sending a batch."
    )

    @field_validator("password")
    @classmethod
    def _no_password(cls, v: str | None) -> str | None:
        _refuse_literal("password", v)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> EmailSettings:
        if self.password_env and self.password_file:
            raise ValueError("give only one of password_env, password_file")
        if self.backend == "smtp" and not self.host:
            raise ValueError("backend smtp needs host (the SMTP server)")
        has_secret = bool(self.password_env or self.password_file)
        if self.username and not has_secret:
            raise ValueError("username needs password_env or password_file")
        if has_secret and not self.username:
            raise ValueError("password_env/password_file given without username")
        if self.username and self.security == "none" and self.host not in _LOOPBACK:
            raise ValueError(
                "AUTH without TLS would send the password in clear: use security starttls or tls"
            )
        return self

    @property
    def smtp_port(self) -> int:
        """The port to use: ``port`` or the default for ``security``."""
        return self.port or {"starttls": 587, "tls": 465, "none": 25}[self.security]

    def read_password(self, base: Path, environ: Mapping[str, str] = os.environ) -> str | None:
        """The SMTP password (``None`` without AUTH); raises ChannelSetupError."""
        return read_secret(
            "password",
            env=self.password_env,
            file=self.password_file,
            base=base,
            environ=environ,
        )


class SmsSettings(BaseModel):
    """How authorization codes reach the patient's phone."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["file", "twilio"] = Field(
        default="file",
        description="file: write .txt files into file_dir (no SMS leaves the node); "
        "twilio: send through Twilio or a Twilio-compatible gateway (api_base).",
    )
    file_dir: str = Field(
        default="outbox", description="Folder for the file backend, relative to node.data_dir."
    )
    sender_name: str = Field(
        default="Courier",
        min_length=1,
        max_length=20,
        pattern=r"^[A-Za-z0-9 .&'-]+$",
        description="Short name the SMS text signs with (e.g. the hospital's short name); "
        "plain ASCII letters so the SMS stays GSM-7.",
    )
    account_sid: str = Field(
        default="", description="Twilio Account SID (AC followed by 32 hex digits)."
    )
    auth_token: str | None = Field(
        default=None, description="Refused: use auth_token_env or auth_token_file."
    )
    auth_token_env: str | None = Field(
        default=None, description="Environment variable holding the Twilio auth token."
    )
    auth_token_file: str | None = Field(
        default=None, description="File holding the auth token, relative to node.data_dir."
    )
    from_number: str | None = Field(
        default=None,
        description="Sending number in E.164 (+447700900123); or use "
        "messaging_service_sid, not both.",
    )
    messaging_service_sid: str | None = Field(
        default=None, description="Twilio Messaging Service SID (MG + 32 hex digits)."
    )
    api_base: str = Field(
        default="https://api.twilio.com",
        description="Base URL of the Twilio REST API, or of a Twilio-compatible gateway. "
        "http:// only for a gateway on this host.",
    )
    timeout_s: float = Field(
        default=15.0, gt=0, le=120, description="Per HTTP request to Twilio (seconds)."
    )
    allowed_countries: list[str] = Field(
        default_factory=list,
        description="ISO 3166 alpha-2 codes of the countries SMS may go to (e.g. [GB, "
        "GG, JE, IM]); other numbers are refused when a patient shares with a clinician "
        "and again before each SMS. Empty: any country.",
    )
    max_per_hour: int = Field(
        default=500,
        ge=0,
        le=1_000_000,
        description="Circuit breaker: at most this many SMS attempts in any hour, counted "
        "in the database across nodes; beyond it SMS stay queued, staff are alerted once, "
        "and sending resumes as the hour allows. 0: no limit.",
    )

    @field_validator("auth_token")
    @classmethod
    def _no_token(cls, v: str | None) -> str | None:
        _refuse_literal("auth_token", v)
        return v

    @field_validator("allowed_countries")
    @classmethod
    def _countries(cls, v: list[str]) -> list[str]:
        if not v:
            return []
        # phonenumbers only when countries are set: every `courier` command reads node.yaml.
        from release.phonepolicy import normalize_countries

        return sorted(normalize_countries(v))

    @field_validator("api_base")
    @classmethod
    def _api_base(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("api_base must be an https:// URL such as https://api.twilio.com")
        if parts.scheme == "http" and parts.hostname not in _LOOPBACK:
            raise ValueError(
                "api_base over http:// would send the auth token in clear: "
                "use https://, or http:// only for a gateway on this host"
            )
        if parts.path not in ("", "/") or parts.query:
            raise ValueError("api_base is scheme, host and port only (no path)")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _consistent(self) -> SmsSettings:
        if self.auth_token_env and self.auth_token_file:
            raise ValueError("give only one of auth_token_env, auth_token_file")
        if self.from_number and not _E164.match(self.from_number):
            raise ValueError("from_number must be E.164, e.g. +447700900123")
        if self.messaging_service_sid and not re.fullmatch(
            r"MG[0-9a-fA-F]{32}", self.messaging_service_sid
        ):
            raise ValueError("messaging_service_sid must be MG followed by 32 hex digits")
        if self.backend != "twilio":
            return self
        if not re.fullmatch(r"AC[0-9a-fA-F]{32}", self.account_sid):
            raise ValueError("backend twilio needs account_sid (AC followed by 32 hex digits)")
        if not (self.auth_token_env or self.auth_token_file):
            raise ValueError("backend twilio needs auth_token_env or auth_token_file")
        if bool(self.from_number) == bool(self.messaging_service_sid):
            raise ValueError(
                "backend twilio needs exactly one of from_number, messaging_service_sid"
            )
        return self

    def read_auth_token(self, base: Path, environ: Mapping[str, str] = os.environ) -> str | None:
        """The Twilio auth token (``None`` if not configured); raises ChannelSetupError."""
        return read_secret(
            "auth_token",
            env=self.auth_token_env,
            file=self.auth_token_file,
            base=base,
            environ=environ,
        )
