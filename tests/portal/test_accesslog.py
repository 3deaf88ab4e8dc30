"""The access log writes one line per request, whatever the client puts in the path:
control characters are escaped in the text format and in the JSON format."""

from __future__ import annotations

import json
import logging

import pytest

from portal.accesslog import visible
from telemetry.jsonlog import JsonFormatter
from tests.portal.conftest import Api

CASES = [
    ("/nonexistent%0aFORGED2", "/nonexistent\\nFORGED2"),
    ("/x%0d%0aGET%20/admin%20200", "/x\\r\\nGET /admin 200"),
    ("/x%1b[31mred", "/x\\x1b[31mred"),
    ("/x%00nul", "/x\\x00nul"),
    ("/x%7f%c2%85%e2%80%a8", "/x\\x7f\\x85\\u2028"),
    ("/x%5c%0a", "/x\\\\\\n"),  # a backslash is escaped too: "\n" typed stays readable
    ("/d/tok%0aFORGED", None),  # a link token (with anything in it) is hashed
]


def _lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "courier.portal.access"]


@pytest.mark.parametrize(("path", "shown"), CASES)
def test_control_characters_in_the_path_never_make_a_second_line(
    api: Api, caplog: pytest.LogCaptureFixture, path: str, shown: str | None
) -> None:
    caplog.set_level(logging.INFO, logger="courier.portal.access")
    api.client.get(path + "?q=%0aFORGED3", headers={"User-Agent": "a\x1bb", "Referer": "/%0a"})
    records = _lines(caplog)
    assert len(records) == 1
    text = records[0].getMessage()
    assert "\n" not in text and "\r" not in text and "\x1b" not in text and "\x00" not in text
    assert all(ch.isprintable() for ch in text), text
    assert "FORGED3" not in text  # the query string is not logged at all
    if shown is not None:
        assert text.startswith(f"GET {shown} 404 "), text
    else:
        assert "FORGED" not in text and text.startswith("GET /d/"), text
    line = JsonFormatter().format(records[0])
    assert "\n" not in line and "\x1b" not in line and "\x00" not in line
    assert json.loads(line)["message"] == text


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain/path", "plain/path"),
        ("\t", "\\t"),
        ("\x01\x1f", "\\x01\\x1f"),
        ("\u2029", "\\u2029"),
        ("é中", "é中"),  # printable text of any script stays as it is
    ],
)
def test_visible(raw: str, shown: str) -> None:
    assert visible(raw) == shown
