"""How every ``courier`` command prints data: text, or JSON with ``--json``."""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from typing import Any

EXIT_OK, EXIT_NOT_FOUND, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


def json_default(value: object) -> str:
    """JSON for the values our records hold beyond JSON's own (times, as ISO 8601)."""
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(type(value).__name__)


def print_result(args: argparse.Namespace, data: Any, text: str) -> int:
    """Print ``data`` as JSON when ``--json`` was given, else ``text``; returns 0."""
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, default=json_default))
    else:
        print(text)
    return EXIT_OK
