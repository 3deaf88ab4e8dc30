"""DICOM over TLS for the SCP's second port (PS3.15 Annex B.9, BCP 195).

:func:`server_context` builds the one :class:`ssl.SSLContext` for ``scp.tls_port``
from Python's server defaults (no compression, forward-secret AEAD ciphers at OpenSSL
security level 2) with TLS 1.2 or 1.3 as the floor, our certificate, and optionally
the CA that client certificates must chain to. A missing or unreadable file, or a key
that does not match its certificate, raises :class:`TlsSetupError` naming the key.

:func:`handshake` runs the server side of one handshake on an accepted socket, with a
deadline, in the connection's own thread: pynetdicom would run it in the accept loop,
where one silent client stops every other connection. A failed handshake (a plain
DICOM client, TLS 1.1, no client certificate) is logged with the peer address and the
OpenSSL reason only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
from pathlib import Path

from scp.settings import ScpSettings

log = logging.getLogger("courier.scp.tls")

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class TlsSetupError(ValueError):
    """The TLS listener cannot start: the message names the setting and the file."""


def _no_password() -> bytes:
    # An encrypted key would otherwise make OpenSSL prompt on the terminal.
    return b""


def _readable(key: str, value: str, base: Path) -> Path:
    path = Path(value)
    path = path if path.is_absolute() else base / path
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise TlsSetupError(f"scp.{key}: cannot read {path}: {exc.strerror}") from None
    return path


def server_context(settings: ScpSettings, base: Path) -> ssl.SSLContext | None:
    """The TLS context for ``settings`` (None when ``tls_port`` is not set).

    Relative file names are resolved against ``base`` (node.data_dir). Raises
    :class:`TlsSetupError` when a file cannot be read or is not what it should be.
    """
    if settings.tls_port is None or not settings.tls_cert_file or not settings.tls_key_file:
        return None
    cert = _readable("tls_cert_file", settings.tls_cert_file, base)
    key = _readable("tls_key_file", settings.tls_key_file, base)
    ca = _readable("tls_ca_file", settings.tls_ca_file, base) if settings.tls_ca_file else None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = _VERSIONS[settings.tls_min_version]
    try:
        ctx.load_cert_chain(cert, key, password=_no_password)
    except ssl.SSLError as exc:
        raise TlsSetupError(
            f"scp.tls_cert_file/scp.tls_key_file: {cert} and {key} are not a PEM certificate "
            f"and its unencrypted private key ({exc.reason or exc.__class__.__name__})"
        ) from None
    if ca is not None:
        try:
            ctx.load_verify_locations(cafile=ca)
        except ssl.SSLError as exc:
            raise TlsSetupError(
                f"scp.tls_ca_file: {ca} holds no PEM CA certificate ({exc.reason})"
            ) from None
        ctx.verify_mode = (
            ssl.CERT_REQUIRED if settings.tls_require_client_cert else (ssl.CERT_OPTIONAL)
        )
    if os.stat(key).st_mode & 0o077:
        log.warning("scp.tls_key_file %s is readable by other users; chmod 600 it", key)
    return ctx


def handshake(
    ctx: ssl.SSLContext, sock: socket.socket, peer: tuple[str, int], timeout_s: float
) -> ssl.SSLSocket | None:
    """Wrap ``sock`` and complete the server handshake within ``timeout_s``.

    Returns the TLS socket (blocking again, as pynetdicom expects), or None after
    logging why the handshake failed and closing ``sock``.
    """
    tls: ssl.SSLSocket | None = None
    try:
        sock.settimeout(timeout_s)
        tls = ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        tls.do_handshake()
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or type(exc).__name__
        log.warning("TLS handshake refused host=%s port=%d: %s", peer[0], peer[1], reason)
        with contextlib.suppress(OSError):
            (tls or sock).close()  # wrapping detached sock: close what owns the fd
        return None
    tls.settimeout(None)
    log.info(
        "TLS session host=%s version=%s cipher=%s client_cert=%s",
        peer[0],
        tls.version(),
        (tls.cipher() or ("?",))[0],
        "yes" if tls.getpeercert() else "no",
    )
    return tls
