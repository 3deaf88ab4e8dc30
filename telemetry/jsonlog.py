"""One JSON object per log line (``node.log_format: json``), for log shippers.

Each line holds ``time`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger``,
``message`` (the formatted text, exactly what the text format shows), ``process``, the
fields a caller passed with ``extra={...}``, and ``exception`` (the traceback) when one
is logged. It changes only the shape: what is logged is the same as in text, so the
no-patient-data rule of every log call holds here too.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON (never spanning lines)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and key not in out:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        # default=str: an extra that is not JSON (a Path, an enum) is written as text.
        return json.dumps(out, ensure_ascii=False, default=str)
