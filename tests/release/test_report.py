"""release.report: the figures, exactly, from a known history, on SQLite and PostgreSQL.

One table (:data:`HISTORY`) of synthetic requests, each with its timeline and what else
it left (grants opened or not, outbox attempts, a destination, a burned CD, identity
mismatches), written straight into the tables; the report over 30 and 365 days must
give the numbers worked out by hand beside it, every day of the period listed, empty
days and weeks included.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy.orm import Session

from release.report import CAUSES, OUTCOMES, Report, ReportError, Reports, nearest_rank
from store.models import (
    DicomDestination,
    DiscJob,
    Grant,
    IdentityMismatch,
    Notification,
    NotificationAttempt,
    ReleaseRequest,
    RequestEvent,
    Study,
)
from tests.conftest import Database

NOW = datetime(2026, 3, 18, 15, 0, tzinfo=UTC)  # a Wednesday; 30 days start on 2026-02-17


def at(day: str, hh: int = 0, mm: int = 0) -> datetime:
    return datetime.fromisoformat(f"2026-{day}").replace(hour=hh, minute=mm, tzinfo=UTC)


@dataclass
class Past:
    """One request's history: ``moves`` are (from, to, when)."""

    created: datetime
    moves: list[tuple[str, str, datetime]]
    opened: bool | None = None  # a patient grant: opened or not (None: no grant)
    dicom: bool = False  # to a DICOM destination
    burned: datetime | None = None  # a CD burned then
    attempts: list[tuple[str, str, datetime]] = field(default_factory=list)  # channel, outcome
    mismatches: list[datetime] = field(default_factory=list)


HISTORY: dict[str, Past] = {
    # Downloads (hours from creation to the first download in brackets).
    "DL-24H": Past(at("03-16", 10), [("notified", "downloaded", at("03-17", 10))]),  # 24
    "DL-60H": Past(at("03-16"), [("notified", "downloaded", at("03-18", 12))]),  # 60
    "DL-W11-24H": Past(at("03-10"), [("notified", "downloaded", at("03-11"))]),  # 24
    "DL-TWICE": Past(  # counted once, on its first download (2 h)
        at("03-09", 6),
        [
            ("notified", "downloaded", at("03-09", 8)),
            ("downloaded", "downloaded", at("03-12")),
        ],
    ),
    "DL-8-DAYS": Past(at("03-02"), [("notified", "downloaded", at("03-10"))]),  # 192
    "DL-BEFORE": Past(  # a minute before the 30 days: only in the year
        at("01-01"), [("notified", "downloaded", at("02-16", 23, 59))]
    ),
    "DL-FIRST-DAY": Past(at("02-16"), [("notified", "downloaded", at("02-17"))]),  # 24
    # Expiry: only a link never opened counts as "expired unopened".
    "EXP-UNOPENED": Past(at("02-10"), [("notified", "expired", at("03-15", 3))], opened=False),
    "EXP-OPENED": Past(at("02-10"), [("notified", "expired", at("03-15", 4))], opened=True),
    "EXP-AFTER-DL": Past(
        at("01-20"),
        [("notified", "downloaded", at("02-01")), ("downloaded", "expired", at("03-15"))],
        opened=True,
    ),
    # Failures.
    "PKG-FAIL": Past(at("03-14"), [("packaging", "failed", at("03-14", 9))]),
    "PKG-FAIL-TWICE": Past(  # failed once as an outcome; two packaging failures
        at("03-01"),
        [
            ("packaging", "failed", at("03-01", 9)),
            ("failed", "ready", at("03-01", 10)),
            ("ready", "packaging", at("03-01", 11)),
            ("packaging", "failed", at("03-02", 9)),
        ],
    ),
    "DICOM": Past(
        at("03-13"),
        [
            ("packaging", "failed", at("03-13", 9)),
            ("failed", "ready", at("03-13", 10)),
            ("ready", "packaging", at("03-14", 1)),
            ("packaging", "delivered", at("03-14", 2)),
        ],
        dicom=True,
    ),
    "MAIL-FAIL": Past(
        at("03-13"),
        [("notified", "failed", at("03-14", 12))],
        attempts=[
            ("email", "permanent", at("03-14", 12)),
            ("email", "retry", at("03-14", 11)),  # a retry is no failure
            ("sms", "permanent", at("03-14", 13)),
            ("sms", "permanent", at("02-01")),  # before the 30 days
        ],
    ),
    "OVERDUE-CD": Past(at("02-20"), [("pending", "overdue", at("03-05"))], burned=at("03-06")),
    "MISMATCH": Past(at("03-07"), [], mismatches=[at("03-08"), at("01-05")]),
}

EXPECTED_30: dict[str, dict[str, int]] = {  # day -> outcome -> count (others 0)
    "2026-02-17": {"downloaded": 1},
    "2026-03-01": {"failed": 1},
    "2026-03-06": {"disc": 1},
    "2026-03-09": {"downloaded": 1},
    "2026-03-10": {"downloaded": 1},
    "2026-03-11": {"downloaded": 1},
    "2026-03-13": {"failed": 1},
    "2026-03-14": {"failed": 2, "delivered": 1},
    "2026-03-15": {"expired_unopened": 1},
    "2026-03-17": {"downloaded": 1},
    "2026-03-18": {"downloaded": 1},
}
# ISO week (its Monday) -> downloads, median h, 90th percentile h, under two days.
WEEKS_30: dict[str, tuple[int, float | None, float | None, int]] = {
    "2026-W08": (1, 24.0, 24.0, 1),  # DL-FIRST-DAY
    "2026-W09": (0, None, None, 0),
    "2026-W10": (0, None, None, 0),
    "2026-W11": (3, 24.0, 192.0, 2),  # 2, 24, 192 h
    "2026-W12": (2, 24.0, 60.0, 1),  # 24, 60 h
}
FAILURES_30 = {
    "smtp_permanent": 1,
    "sms_refused": 1,
    "packaging": 3,
    "dicom_send": 1,
    "identity_mismatch": 1,
    "overdue": 1,
}


def write(s: Session, ref: str, past: Past, n: int) -> None:
    req = ReleaseRequest(
        reference=ref,
        state=past.moves[-1][1] if past.moves else "pending",
        patient_id=f"SYN-{n}",
        patient_name="SYNTHETIC^PATIENT",
        recipient_email="" if past.dicom else "patient@example.org",
        second_channel="" if past.dicom else "sms:+447700900123",
        requested_by="test",
        created_at=past.created,
        updated_at=past.created,
    )
    s.add(req)
    s.flush()
    for from_state, to_state, when in past.moves:
        s.add(
            RequestEvent(
                request_id=req.id, at=when, actor="test", from_state=from_state, to_state=to_state
            )
        )
    if past.dicom:
        s.add(DicomDestination(request_id=req.id, ae_title="OTHER", host="127.0.0.1", port=104))
    if past.opened is not None:
        s.add(
            Grant(
                request_id=req.id,
                purpose="patient",
                recipient_email="patient@example.org",
                second_channel="sms:+447700900123",
                token_salt=f"salt-{n}",
                token_hash=f"hash-{n}",
                created_at=past.created,
                expires_at=past.created + timedelta(days=30),
                first_opened_at=past.created + timedelta(days=1) if past.opened else None,
            )
        )
    if past.burned is not None:
        s.add(
            DiscJob(
                request_id=req.id,
                why="overdue",
                queued_at=past.burned - timedelta(hours=2),
                queued_by="test",
                burned_at=past.burned,
                burned_by="staff:alice",
            )
        )
    for i, (channel, outcome, when) in enumerate(past.attempts):
        note = Notification(
            request_id=req.id,
            kind="link_email" if channel == "email" else "code_sms",
            channel=channel,
            recipient="x",
            message_id=f"<{ref}-{i}@test>",
            state="failed",
            next_attempt_at=when,
            created_at=when,
            composed_at=when,
        )
        s.add(note)
        s.flush()
        s.add(
            NotificationAttempt(
                notification_id=note.id,
                started_at=when,
                finished_at=when,
                channel="smtp" if channel == "email" else "twilio",
                outcome=outcome,
            )
        )
    for i, when in enumerate(past.mismatches):
        study = Study(
            study_uid=f"1.2.826.0.1.3680043.10.1.{n}.{i}",
            patient_id="SYN-OTHER",
            first_received_at=when,
            last_received_at=when,
        )
        s.add(study)
        s.flush()
        s.add(
            IdentityMismatch(
                request_id=req.id, study_id=study.id, fields="patient_id", found_at=when
            )
        )


def report(db: Database, days: int, history: dict[str, Past] | None = None) -> Report:
    with db.sessions() as s, s.begin():
        for n, (ref, past) in enumerate((HISTORY if history is None else history).items()):
            write(s, ref, past, n)
    return Reports(db.sessions, clock=lambda: NOW).build(days)


def test_thirty_days_by_hand(db: Database) -> None:
    r = report(db, 30)
    assert (r.since, r.until) == (at("02-17"), NOW)
    assert [d.day for d in r.per_day] == [date(2026, 2, 17) + timedelta(days=i) for i in range(30)]
    got = {d.day.isoformat(): {k: n for k, n in d.counts.items() if n} for d in r.per_day}
    assert {day: c for day, c in got.items() if c} == EXPECTED_30
    assert all(set(d.counts) == set(OUTCOMES) for d in r.per_day)  # empty days: zeros
    weeks = {w.week: (w.downloads, w.median_h, w.p90_h, w.under_2_days) for w in r.weeks}
    assert weeks == WEEKS_30
    assert r.weeks[0].starts == date(2026, 2, 16)  # the Monday of the first day
    assert r.failures == FAILURES_30
    assert r.totals == {
        "downloaded": 6,
        "expired_unopened": 1,
        "failed": 4,
        "disc": 1,
        "delivered": 1,
    }


def test_the_year_takes_in_what_came_before(db: Database) -> None:
    r = report(db, 365)
    assert len(r.per_day) == 365 and r.per_day[-1].day == NOW.date()
    assert r.totals["downloaded"] == 8  # DL-BEFORE and EXP-AFTER-DL's download too
    assert r.failures["sms_refused"] == 2
    assert r.failures["identity_mismatch"] == 2
    w08 = next(w for w in r.weeks if w.week == "2026-W08")
    # DL-BEFORE (2016 h, Feb 16) joins DL-FIRST-DAY (24 h, Feb 17) in week 8.
    assert (w08.downloads, w08.median_h, w08.p90_h, w08.under_2_days) == (2, 24.0, 1127.98, 1)
    assert len({w.week for w in r.weeks}) == len(r.weeks) == 53


def test_an_empty_database_gives_every_day_and_week_at_zero(db: Database) -> None:
    r = report(db, 30, history={})
    assert len(r.per_day) == 30
    assert all(n == 0 for d in r.per_day for n in d.counts.values())
    assert r.failures == dict.fromkeys(CAUSES, 0)
    assert [(w.downloads, w.median_h, w.p90_h) for w in r.weeks] == [(0, None, None)] * 5
    data = r.as_dict()
    assert data["days"] == 30 and len(data["per_day"]) == 30
    assert data["per_day"][0] == {"day": "2026-02-17", **dict.fromkeys(OUTCOMES, 0)}


@pytest.mark.parametrize(
    ("values", "share", "expected"),
    [
        ([], 0.5, None),
        ([5.0], 0.5, 5.0),
        ([5.0], 0.9, 5.0),
        ([3.0, 1.0], 0.5, 1.0),  # rank ceil(1.0) = 1
        ([3.0, 1.0], 0.9, 3.0),  # rank ceil(1.8) = 2
        ([4.0, 1.0, 3.0, 2.0], 0.5, 2.0),
        ([float(i) for i in range(1, 11)], 0.9, 9.0),  # rank 9 of 10
        ([float(i) for i in range(1, 12)], 0.9, 10.0),  # rank ceil(9.9) = 10 of 11
    ],
)
def test_nearest_rank(values: list[float], share: float, expected: float | None) -> None:
    assert nearest_rank(values, share) == expected


@pytest.mark.parametrize("days", [0, -1, 367])
def test_a_period_out_of_range_is_refused(days: int) -> None:
    with pytest.raises(ReportError, match=str(days)):
        Reports(None, clock=lambda: NOW).build(days)  # type: ignore[arg-type]
