"""Reading the portal's HTML forms (``application/x-www-form-urlencoded``), bounded.

The pages post small urlencoded forms; parsing them here keeps the portal free of a
multipart parser it does not need. A body over :data:`MAX_FORM` bytes, or of another
content type, reads as an empty form (whose CSRF check then fails: 403).
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from fastapi import Request

from portal import csrf

MAX_FORM = 16 * 1024


async def read_form(request: Request) -> dict[str, str]:
    """The posted fields (first value of each name); empty when not a small urlencoded form."""
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        return {}
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            return {}
    fields: dict[str, str] = {}
    for name, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
        fields.setdefault(name, value)
    return fields


def csrf_ok(request: Request, form: dict[str, str]) -> bool:
    """True when the form carries the browser's CSRF token."""
    return csrf.valid(request, form.get(csrf.FIELD))
