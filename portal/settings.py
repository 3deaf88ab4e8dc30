"""The ``portal:`` section of node.yaml: the web app (REST API now, pages later)."""

from __future__ import annotations

import ipaddress
import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from portal.publicurl import plain_http_problem
from store.netaddr import ListenAddress

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# The same names as portal.staff_auth.check_username accepts (settings import no web code).
_ADMIN = re.compile(r"^[a-z0-9._@-]{1,64}$")


class PortalSettings(BaseModel):
    """Where the web app listens, and which API keys it accepts (as hashes)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=True, description="Serve the web app in `courier serve`.")
    host: ListenAddress = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(default=8080, ge=1, le=65535, description="HTTP port.")
    public_url: str = Field(
        default="http://127.0.0.1:8080",
        description="The address patients reach the portal at, as emailed links show it "
        "(https://… behind the hospital's reverse proxy in production; plain http:// "
        "only on loopback: 127.0.0.0/8, ::1, localhost).",
    )
    api_key_hashes: list[str] = Field(
        default_factory=list,
        description="SHA-256 hex digests of staff/RIS API keys (a digest is not a secret).",
    )
    api_keys_file: str = Field(
        default="api_keys.txt",
        description="Legacy: more digests, one per line, relative to node.data_dir, read "
        "at start. Keys made by `courier apikey create` or the staff Keys page live in "
        "the database and work at once.",
    )
    staff_admins: list[str] = Field(
        default_factory=list,
        max_length=100,
        description="Staff usernames who may make and revoke API keys on the staff Keys "
        "page (/staff/keys); empty: nobody there, `courier apikey` only.",
    )

    metrics_enabled: bool = Field(
        default=False, description="Serve Prometheus metrics at /metrics."
    )
    metrics_allow: list[str] = Field(
        default_factory=lambda: ["127.0.0.1", "::1"],
        description="Addresses or networks (CIDR) that may read /metrics; others get 403, "
        "and so does any request that came through a proxy (Forwarded/X-Forwarded-For).",
    )

    session_idle_min: int = Field(
        default=30,
        ge=1,
        le=24 * 60,
        description="A signed-in patient, clinician or staff member is signed out after "
        "this many minutes without a request.",
    )
    patient_session_max_h: int = Field(
        default=12,
        ge=1,
        le=7 * 24,
        description="A patient's or clinician's session ends this many hours after the "
        "code opened it, however active (staff sessions: 12 hours).",
    )
    staff_login_free_failures: int = Field(
        default=5,
        ge=1,
        le=100,
        description="Wrong passwords in a row one staff account may have before its "
        "sign-in is refused for a while (whatever the address they come from).",
    )
    staff_login_delay_s: int = Field(
        default=30,
        ge=1,
        le=3600,
        description="Seconds the account's sign-in is refused after that many failures; "
        "doubled at each further failure, up to staff_login_delay_max_s.",
    )
    staff_login_delay_max_s: int = Field(
        default=900,
        ge=1,
        le=24 * 3600,
        description="The longest such refusal, in seconds.",
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="Seconds a connection has to send a request's complete header "
        "(the first one, and each after keep-alive); then it is closed (slow clients).",
    )
    keep_alive_s: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="Seconds an idle keep-alive connection is kept open between requests.",
    )
    max_connections_per_host: int = Field(
        default=64,
        ge=0,
        le=100_000,
        description="Open connections one client address may hold at once; more are "
        "closed at once. 0: no cap. Addresses in trusted_proxies are not capped (the "
        "proxy carries every client: it applies its own limits).",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses of reverse proxies whose X-Forwarded-For / -Proto headers "
        "are believed (the client's address for rate limits, https for HSTS). Empty: "
        "none; the TCP peer is the client.",
    )
    rate_limit_per_min: int = Field(
        default=30,
        ge=1,
        le=10_000,
        description="Form posts (code requests, code checks, sign-ins) accepted per "
        "client address per minute; more get 429.",
    )
    max_shares_per_link: int = Field(
        default=5,
        ge=1,
        le=100,
        description="Clinician shares (not stopped or expired) one patient link may hold "
        "at once; the page refuses more (stop one first).",
    )
    max_shares_per_day: int = Field(
        default=10,
        ge=1,
        le=1000,
        description="Shares one request's links may create in any 24 hours, stopped ones "
        "included (each sends an email, and maybe SMS codes).",
    )
    held_alert_h: float = Field(
        default=4,
        gt=0,
        le=24 * 30,
        description="A study held (no request took it) for longer than this many hours "
        "is listed under What needs attention on the staff dashboard.",
    )
    reopen_expired_days: int = Field(
        default=7,
        ge=0,
        le=365,
        description="Days after a patient's link expired during which 'Ask for more "
        "time' on the expired-link page reopens it, once: the link works "
        "delivery.patient_extend_days more days from then and the request is in use again "
        "(on its timeline and audited, link-reopened). Only for a patient's own link not "
        "revoked, locked or extended before, of a request that expired (not cancelled), "
        "whose package is kept (never past delivery.purge_grace_days, less an hour), "
        "whose received studies are kept (never past store.retention_days after the "
        "request ended, less an hour: a retention_days below this window ends it first) "
        "and not queued for a CD. Later, or when 0 (or patient_extend_days is 0), staff "
        "are alerted instead. Default 7.",
    )
    dicomweb_token_h: int = Field(
        default=4,
        ge=1,
        le=72,
        description="Hours a DICOMweb token (Open in your own viewer, on the files "
        "page) is valid, never past its grant's own expiry; revoking the grant or the "
        "share ends it at once.",
    )
    dicomweb_requests_per_min: int = Field(
        default=3000,
        ge=10,
        le=100_000,
        description="DICOMweb requests one token may make per minute (a viewer loads a "
        "study one frame at a time); more get 429.",
    )
    viewer_cache_mb: int = Field(
        default=200,
        ge=1,
        le=100_000,
        description="Megabytes of rendered images the portal's viewer keeps on disk per "
        "package (beside it, deleted with it); the oldest go first past this.",
    )
    tls_cert_file: str | None = Field(
        default=None,
        description="Serve HTTPS with this certificate (PEM; relative to node.data_dir). "
        "Usually a reverse proxy terminates TLS instead.",
    )
    tls_key_file: str | None = Field(
        default=None, description="The certificate's private key (PEM), with tls_cert_file."
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, v: list[str]) -> list[str]:
        out = []
        for i, item in enumerate(v):
            try:
                out.append(str(ipaddress.ip_address(item.strip())))
            except ValueError:
                raise ValueError(f"entry {i} is not an IP address") from None
        return out

    @field_validator("metrics_allow")
    @classmethod
    def _metrics_allow(cls, v: list[str]) -> list[str]:
        out = []
        for i, item in enumerate(v):
            try:
                out.append(str(ipaddress.ip_network(item.strip(), strict=False)))
            except ValueError:
                raise ValueError(f"entry {i} is not an IP address or network") from None
        return out

    @field_validator("staff_admins")
    @classmethod
    def _admins(cls, v: list[str]) -> list[str]:
        out = []
        for i, name in enumerate(v):
            norm = name.strip().lower()
            if not _ADMIN.match(norm):
                raise ValueError(f"entry {i} is not a staff username (1-64 of a-z 0-9 . _ - @)")
            out.append(norm)
        return out

    @field_validator("api_key_hashes")
    @classmethod
    def _digests(cls, v: list[str]) -> list[str]:
        for i, h in enumerate(v):
            if not _SHA256.match(h.strip().lower()):
                raise ValueError(
                    f"entry {i} is not a SHA-256 hex digest: store the digest printed by "
                    "`courier apikey create`, never the key itself"
                )
        return [h.strip().lower() for h in v]

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, v: str) -> str:
        v = v.strip().rstrip("/")
        if not re.match(r"^https?://[A-Za-z0-9.\-\[\]:]+(/[A-Za-z0-9._~/-]*)?$", v):
            raise ValueError("expected an absolute http(s) URL such as https://courier.example.org")
        problem = plain_http_problem(v)  # the __Host- cookies need HTTPS off loopback
        if problem:
            raise ValueError(problem)
        return v
