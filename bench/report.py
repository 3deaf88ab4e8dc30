"""How long the staff Reports page's figures take on a year's history.

Usage::

    .venv/bin/python bench/report.py [--per-day 250] [--repeat 3] [--postgresql]

Writes ``--per-day`` synthetic requests for each of the last 400 days (five timeline
events each, a patient grant, one permanent email attempt in fifty) into a fresh
migrated database (SQLite in a temporary folder; with ``--postgresql``, a schema of its
own on ``postgresql+psycopg://postgres@127.0.0.1:5432/test``, dropped after), then
times :meth:`release.report.Reports.build` for 30 and 365 days and prints the medians.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, insert, text  # noqa: E402

from release.report import Reports  # noqa: E402
from store.db import make_engine, make_sessions, migrate  # noqa: E402
from store.models import (  # noqa: E402
    Grant,
    Notification,
    NotificationAttempt,
    ReleaseRequest,
    RequestEvent,
)

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
DAYS = 400
MAIN_LINE = ("pending", "receiving", "ready", "packaging", "notified", "downloaded")


def fill(engine: Any, per_day: int) -> int:
    """Write the history; returns the number of requests."""
    rid = 0
    with engine.begin() as c:
        for day in range(DAYS):
            reqs, events, grants, notes, attempts = [], [], [], [], []
            for k in range(per_day):
                rid += 1
                created = NOW - timedelta(days=day, minutes=k)
                reqs.append(
                    {
                        "id": rid,
                        "reference": f"B{rid:09d}",
                        "state": "downloaded",
                        "patient_id": f"SYN{rid}",
                        "patient_name": "SYNTHETIC^PATIENT",
                        "recipient_email": "patient@example.org",
                        "second_channel": "sms:+447700900123",
                        "requested_by": "bench",
                        "created_at": created,
                        "updated_at": created,
                        "language": "en",
                        "urgency": "overnight",
                        "link_days": 30,
                        "note": "",
                        "patient_birth_date": "",
                        "patient_issuer": "",
                    }
                )
                for i, (a, b) in enumerate(itertools.pairwise(MAIN_LINE)):
                    at = created + timedelta(hours=(i + 1) * (1 + k % 12))
                    events.append(
                        {
                            "request_id": rid,
                            "at": at,
                            "actor": "bench",
                            "from_state": a,
                            "to_state": b,
                            "reason": "",
                        }
                    )
                grants.append(
                    {
                        "request_id": rid,
                        "purpose": "patient",
                        "recipient_email": "patient@example.org",
                        "second_channel": "sms:+447700900123",
                        "language": "en",
                        "token_salt": "s",
                        "token_hash": f"h{rid}",
                        "created_at": created,
                        "expires_at": created + timedelta(days=30),
                        "first_opened_at": created + timedelta(days=1),
                        "code_tries": 0,
                        "codes_sent": 0,
                        "codes_failed": 0,
                        "downloads": 1,
                        "failures": 0,
                    }
                )
                if rid % 50 == 0:
                    notes.append(
                        {
                            "id": rid,
                            "request_id": rid,
                            "kind": "link_email",
                            "channel": "email",
                            "recipient": "x",
                            "language": "en",
                            "params": "{}",
                            "message_id": f"<{rid}@bench>",
                            "state": "failed",
                            "attempts": 1,
                            "next_attempt_at": created,
                            "created_at": created,
                            "composed_at": created,
                            "provider_id": "",
                            "last_error": "",
                        }
                    )
                    attempts.append(
                        {
                            "notification_id": rid,
                            "started_at": created,
                            "channel": "smtp",
                            "outcome": "permanent",
                            "code": "550",
                            "detail": "",
                            "provider_id": "",
                        }
                    )
            c.execute(insert(ReleaseRequest), reqs)
            c.execute(insert(RequestEvent), events)
            c.execute(insert(Grant), grants)
            if notes:
                c.execute(insert(Notification), notes)
                c.execute(insert(NotificationAttempt), attempts)
    return rid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-day", type=int, default=250)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--postgresql", action="store_true")
    args = parser.parse_args()
    schema = None
    with tempfile.TemporaryDirectory() as tmp:
        if args.postgresql:
            schema = f"bench_{uuid.uuid4().hex[:10]}"
            with create_engine(PG).begin() as c:
                c.execute(text(f'CREATE SCHEMA "{schema}"'))
            engine = make_engine(PG, schema=schema)
        else:
            engine = make_engine(f"sqlite:///{tmp}/index.db")
        try:
            migrate(engine)
            started = time.perf_counter()
            n = fill(engine, args.per_day)
            print(f"{n} requests, {5 * n} events written in {time.perf_counter() - started:.1f} s")
            reports = Reports(make_sessions(engine), clock=lambda: NOW)
            for days in (30, 365):
                times = []
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    r = reports.build(days)
                    times.append(time.perf_counter() - t0)
                median = statistics.median(times)
                print(
                    f"{engine.dialect.name} {days:>3} days: median {median:.3f} s "
                    f"of {args.repeat} ({r.totals['downloaded']} downloads, "
                    f"{r.failures['smtp_permanent']} email failures)"
                )
        finally:
            engine.dispose()
            if schema:
                with create_engine(PG).begin() as c:
                    c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


if __name__ == "__main__":
    main()
