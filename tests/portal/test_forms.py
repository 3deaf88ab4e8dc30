"""The portal's one form parser: every value kept, bounded, strict about what a form is."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from fastapi import Request
from starlette.types import Message

from portal.forms import MAX_FIELDS, MAX_FORM, FormTooLarge, parse_form, read_form

URLENCODED = "application/x-www-form-urlencoded"


def request(body: bytes, content_type: str = URLENCODED, chunk: int = 1000) -> Request:
    """A POST whose body arrives in ``chunk``-byte pieces (no Content-Length)."""
    pieces: Iterator[bytes] = iter([body[i : i + chunk] for i in range(0, len(body), chunk)])

    async def receive() -> Message:
        piece = next(pieces, None)
        return {"type": "http.request", "body": piece or b"", "more_body": piece is not None}

    headers = [(b"content-type", content_type.encode())] if content_type else []
    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers}
    return Request(scope, receive)


@pytest.mark.parametrize(
    ("body", "content_type", "pairs"),
    [
        (
            b"study=1.2&study=1.3&note=",
            URLENCODED,
            [("study", "1.2"), ("study", "1.3"), ("note", "")],
        ),
        (b"a=%C3%A9&b=x+y", f"{URLENCODED}; charset=UTF-8", [("a", "é"), ("b", "x y")]),
        (b"a=\xff", URLENCODED, []),  # not UTF-8
        (b"a=1", "multipart/form-data; boundary=x", []),
        (b"a=1", "application/json", []),
        (b"a=1", "", []),
        (b"&".join([b"f=1"] * (MAX_FIELDS + 1)), URLENCODED, []),
    ],
)
def test_what_a_form_reads_as(body: bytes, content_type: str, pairs: list[tuple[str, str]]) -> None:
    form = asyncio.run(parse_form(request(body, content_type)))
    names = dict.fromkeys(name for name, _ in pairs)
    assert [(n, v) for n in names for v in form.getlist(n)] == pairs
    assert form.first_values() == {n: form.get(n) for n in names}


def test_a_body_past_the_limit_stops_being_read() -> None:
    big = b"a=" + b"x" * MAX_FORM
    with pytest.raises(FormTooLarge) as raised:
        asyncio.run(parse_form(request(big)))
    assert raised.value.limit == MAX_FORM
    assert asyncio.run(parse_form(request(big), max_bytes=2 * MAX_FORM)).get("a") == "x" * MAX_FORM


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        (b"csrf=t&code=123&code=456", {"csrf": "t", "code": "123"}),  # the first value
        (b"a=" + b"x" * MAX_FORM, {}),  # too large: empty, the CSRF check then refuses it
        (b"", {}),
    ],
)
def test_the_patient_pages_read_the_first_values(body: bytes, fields: dict[str, str]) -> None:
    assert asyncio.run(read_form(request(body))) == fields
