"""The node's log lines: one per event on stderr, as text or JSON (``node.log_format``).

Kept apart from :mod:`node.app` so that a receiving process (:mod:`node.receiver`) sets
up the same format without importing the composition root.
"""

from __future__ import annotations

import logging

from telemetry.jsonlog import JsonFormatter

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"


def setup_logging(level: str = "INFO", log_format: str = "text") -> None:
    """One line per event on stderr, as text or as one JSON object (``node.log_format``);
    pynetdicom only above WARNING (it is chatty, never PHI-free). Calling it again
    replaces the handler it installed before (``courier serve`` learns the format from
    node.yaml after the command line set up logging)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "courier", False)]:
        root.removeHandler(old)
    handler = logging.StreamHandler()
    handler.courier = True  # type: ignore[attr-defined]
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # APScheduler logs "Running job"/"executed successfully" at INFO for every run of
    # every job (three lines every few seconds); our jobs log when they did something.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    # Every job runs one instance at a time by design (max_instances=1): a sweep still
    # running at its next tick is simply not doubled, which APScheduler reports as a
    # WARNING each time. Nothing is lost (the database holds the work), so it is dropped.
    logging.getLogger("apscheduler.scheduler").addFilter(_not_overlap_skips)
    logging.getLogger("uvicorn").setLevel(logging.WARNING)


def _not_overlap_skips(record: logging.LogRecord) -> bool:
    """False for APScheduler's "skipped: maximum number of running instances reached"."""
    return "maximum number of running instances reached" not in record.getMessage()
