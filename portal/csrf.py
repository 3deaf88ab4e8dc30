"""CSRF protection for every form: a double-submit token bound to the browser.

The first page a browser gets sets ``__Host-csrf`` (random, HttpOnly, SameSite=Strict,
Secure, Path=/); every form carries the same value in a hidden ``csrf`` field, and a POST
whose field does not match its cookie (compared in constant time) is refused with 403
before anything else happens. SameSite=Strict already stops cross-site posts in current
browsers; the token covers the rest.
"""

from __future__ import annotations

import hmac
import secrets

from fastapi import Request, Response

COOKIE = "__Host-csrf"
FIELD = "csrf"


def token_for(request: Request) -> str:
    """The browser's CSRF token (made if it has none; :func:`attach` sets the cookie)."""
    existing = request.cookies.get(COOKIE, "")
    if 20 <= len(existing) <= 100 and existing.isascii():
        return existing
    fresh: str = getattr(request.state, "csrf_new", "") or secrets.token_urlsafe(32)
    request.state.csrf_new = fresh
    return fresh


def attach(request: Request, response: Response) -> None:
    """Set the cookie when :func:`token_for` made a new token for this response."""
    fresh = getattr(request.state, "csrf_new", "")
    if fresh:
        response.set_cookie(COOKIE, fresh, secure=True, httponly=True, samesite="strict", path="/")


def valid(request: Request, submitted: str | None) -> bool:
    """True when the form's token matches the browser's cookie."""
    cookie = request.cookies.get(COOKIE, "")
    if not cookie or not submitted:
        return False
    return hmac.compare_digest(cookie.encode(), submitted.encode())
