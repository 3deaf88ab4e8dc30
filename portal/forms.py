"""Reading the portal's HTML forms (``application/x-www-form-urlencoded``), bounded: the
one parser of the patient and the staff pages.

The pages post small urlencoded forms; parsing them here keeps the portal free of a
multipart parser it does not need. :func:`parse_form` keeps every value of a field, in
order (a staff form ticks several studies); the body is read as it arrives, never past
the caller's limit, whatever Content-Length says. Another content type, a body that is
not UTF-8, or more than :data:`MAX_FIELDS` fields read as an empty form, whose CSRF
check then fails (403).

The patient pages use :func:`read_form` (first value of each field; an oversized body
reads as empty) and :func:`csrf_ok`; the staff pages use :func:`parse_form` through
:func:`portal.staff_auth.checked_form` (an oversized body is a 413 there).
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import parse_qsl

from fastapi import Request

from portal import csrf

MAX_FORM = 16 * 1024
"""Bytes a patient page's form may have (a code, an email address, a phone number)."""
MAX_FIELDS = 400
"""Fields a form may have (more is not a form these pages sent)."""


class Form:
    """A posted form: its ``(name, value)`` pairs in the order sent."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._pairs = pairs

    def get(self, name: str, default: str = "") -> str:
        """The first value of ``name``, or ``default``."""
        return next((v for k, v in self._pairs if k == name), default)

    def getlist(self, name: str) -> list[str]:
        """Every value of ``name``, in order."""
        return [v for k, v in self._pairs if k == name]

    def first_values(self) -> dict[str, str]:
        """Each name with its first value."""
        fields: dict[str, str] = {}
        for name, value in self._pairs:
            fields.setdefault(name, value)
        return fields


class FormTooLarge(Exception):
    """The body went past the caller's limit (``limit`` bytes); it was not read further."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"form too large; at most {limit} bytes")
        self.limit = limit


async def parse_form(request: Request, max_bytes: int = MAX_FORM) -> Form:
    """The request's form, every value kept; empty when it is not a URL-encoded form,
    not UTF-8, or has more than :data:`MAX_FIELDS` fields. Raises :class:`FormTooLarge`
    once more than ``max_bytes`` have arrived."""
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        return Form([])
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise FormTooLarge(max_bytes)
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_FIELDS)
    except (UnicodeDecodeError, ValueError):
        return Form([])
    return Form(pairs)


async def read_form(request: Request) -> dict[str, str]:
    """The posted fields (first value of each name); empty when not a small (at most
    :data:`MAX_FORM` bytes) urlencoded form."""
    try:
        form = await parse_form(request, MAX_FORM)
    except FormTooLarge:
        return {}
    return form.first_values()


def csrf_ok(request: Request, form: Mapping[str, str] | Form) -> bool:
    """True when the form carries the browser's CSRF token."""
    return csrf.valid(request, form.get(csrf.FIELD) or None)
