"""Is ``portal.public_url`` one patients can use? A plain-HTTP URL on a host other than
this machine's loopback is refused at start, by ``courier check-config`` and by
``courier doctor`` (all three load node.yaml through :class:`portal.settings.
PortalSettings`, whose validator calls :func:`plain_http_problem`).

Why an error and not a warning: the patient pages' session cookies carry the
``__Host-`` prefix, which browsers accept only over HTTPS. Over plain HTTP on a real
host name every emailed link answers "This link cannot be used", for every patient,
and nothing else says why. On loopback (``127.0.0.0/8``, ``::1``, ``localhost``)
browsers treat ``http://`` as a secure context, so the shipped default and the tests
keep working.

The check reads the URL as a string only: nothing is resolved or contacted (a host
name is not loopback, whatever it resolves to today).
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

#: What to do about it, named in the error.
FIX = (
    "patients' browsers refuse the portal's session cookies over plain HTTP, so every "
    "link would fail: give an https:// public_url, served either by Courier itself "
    "(portal.tls_cert_file and portal.tls_key_file) or by a reverse proxy that "
    "terminates TLS and is listed in portal.trusted_proxies"
)


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` (and ``*.localhost``, RFC 6761), ``127.0.0.0/8`` and ``::1``;
    decided from the text alone, never by resolving it."""
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plain_http_problem(url: str) -> str | None:
    """``None`` when patients can use ``url`` (https, or http on loopback); else the
    error, naming the URL's host and the fix (the URL holds no patient data)."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        return None
    host = parts.hostname or ""
    if is_loopback_host(host):
        return None
    return f"plain http:// on {host}, which is not this machine's loopback: {FIX}"
