"""Issue 13 section 3: one reminder before a link expires, to whoever downloaded nothing.

A real database (SQLite and PostgreSQL), the portal rig's package and grants, an
injected clock, and the real relay writing the emails as files: the reminder is queued
once ``delivery.reminder_days_before`` days ahead, in the recipient's language, never
when something was downloaded, never twice (two workers on two engines, a restart),
for a clinician's share with its own setting, and the request's timeline shows it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from delivery.reminders import KIND, due, remind, send_reminders
from delivery.schedule import DeliveryScheduler
from delivery.settings import DeliverySettings
from store.db import make_engine, make_sessions
from store.models import Grant, Notification, NotificationState, ReleaseRequest, RequestState
from tests.conftest import Database
from tests.portal import patient_rig
from tests.portal.patient_rig import Patient, Rig, post, sign_in

rig = patient_rig.rig
built_package = patient_rig.built_package

SETTINGS = DeliverySettings()  # reminder_days_before 3, share_reminder_days_before 3


def _reminders(rig: Rig) -> list[Notification]:
    with rig.db.sessions() as s:
        return list(s.scalars(select(Notification).where(Notification.kind == KIND)))


def _to_window(rig: Rig, p: Patient, before: timedelta = timedelta(days=3)) -> None:
    """Move the clock to just inside the reminder window of ``p``'s link."""
    expires = rig.grant(p.grant_id).expires_at
    rig.clock.now = expires - before + timedelta(minutes=1)


def test_one_reminder_in_the_patients_language_and_on_the_timeline(rig: Rig) -> None:
    p = rig.patient(language="ar")
    expires = rig.grant(p.grant_id).expires_at
    rig.clock.now = expires - timedelta(days=3, minutes=1)  # just before the window
    assert send_reminders(rig.db.sessions, rig.ctx.outbox, SETTINGS, rig.clock) == 0
    rig.clock.advance(minutes=2)
    assert send_reminders(rig.db.sessions, rig.ctx.outbox, SETTINGS, rig.clock) == 1
    rig.clock.advance(hours=1)
    assert send_reminders(rig.db.sessions, rig.ctx.outbox, SETTINGS, rig.clock) == 0
    [row] = _reminders(rig)
    assert row.language == "ar" and row.request_id is None and row.grant_id == p.grant_id
    assert rig.relay() == 1
    [mail] = [m for m in rig.emails() if m["Message-ID"].strip("<>") == row.message_id]
    body = mail.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert f"/d/{p.token}" in text  # the same link, derived again
    assert "تذكير" in str(mail["Subject"]) and "Reminder" not in str(mail["Subject"])
    assert "اطلب مزيدًا من الوقت" in text
    reasons = [e.reason for e in rig.events(p.request_id)]
    assert any(r.startswith("reminder queued: nothing downloaded") for r in reasons)
    assert rig.grant(p.grant_id).reminded_at is not None


def test_chinese_and_english_reminders_render(rig: Rig) -> None:
    zh, en = rig.patient(language="zh-Hans"), rig.patient()
    _to_window(rig, en)
    assert send_reminders(rig.db.sessions, rig.ctx.outbox, SETTINGS, rig.clock) == 2
    assert rig.relay() == 2
    subjects = sorted(str(m["Subject"]) for m in rig.emails())
    assert any(s.startswith("Reminder: your link from St Elsewhere works until") for s in subjects)
    assert any(s.startswith("提醒") for s in subjects)
    assert zh.grant_id != en.grant_id


def test_no_reminder_once_something_was_downloaded(rig: Rig) -> None:
    downloaded, stopped, quiet = rig.patient(), rig.patient(), rig.patient()
    with rig.db.sessions() as s, s.begin():
        s.execute(update(Grant).where(Grant.id == downloaded.grant_id).values(downloads=1))
        s.execute(update(Grant).where(Grant.id == stopped.grant_id).values(revoked_at=rig.clock()))
    _to_window(rig, quiet)
    assert send_reminders(rig.db.sessions, rig.ctx.outbox, SETTINGS, rig.clock) == 1
    assert [r.grant_id for r in _reminders(rig)] == [quiet.grant_id]


def test_a_request_already_downloaded_is_not_reminded(rig: Rig) -> None:
    p = rig.patient()
    with rig.db.sessions() as s, s.begin():
        s.execute(
            update(ReleaseRequest)
            .where(ReleaseRequest.id == p.request_id)
            .values(state=RequestState.DOWNLOADED)
        )
    _to_window(rig, p)
    assert send_reminders(rig.db.sessions, rig.ctx.outbox, SETTINGS, rig.clock) == 0


def test_zero_days_turns_reminders_off_and_short_links_get_none(rig: Rig) -> None:
    p = rig.patient()
    _to_window(rig, p)
    off = DeliverySettings(reminder_days_before=0)
    assert send_reminders(rig.db.sessions, rig.ctx.outbox, off, rig.clock) == 0
    # A link that lived less than the window when sent is not reminded at once.
    short = rig.patient()
    with rig.db.sessions() as s, s.begin():
        g = s.get(Grant, short.grant_id)
        assert g is not None
        g.expires_at = g.created_at + timedelta(days=2)
    rig.clock.now = rig.grant(short.grant_id).created_at + timedelta(hours=1)
    assert send_reminders(rig.db.sessions, rig.ctx.outbox, SETTINGS, rig.clock) == 1
    assert [r.grant_id for r in _reminders(rig)] == [p.grant_id]  # not the short one


def test_two_workers_and_a_restart_queue_one_reminder(rig: Rig, db: Database) -> None:
    """Two nodes (engines of their own) read the same candidates; only one claim wins,
    in either order; a restarted node finds nothing to do; threads racing agree."""
    p, q = rig.patient(), rig.patient()
    _to_window(rig, p)
    other = make_engine(db.url, schema=db.schema)
    try:
        node_b = make_sessions(other)
        now = rig.clock()
        with rig.db.sessions() as a, node_b() as b:
            seen_a, seen_b = due(a, SETTINGS, now), due(b, SETTINGS, now)
        assert (
            {c.grant_id for c in seen_a}
            == {c.grant_id for c in seen_b}
            == {
                p.grant_id,
                q.grant_id,
            }
        )
        won = []
        for sessions, candidate in (
            (rig.db.sessions, seen_a[0]),
            (node_b, seen_b[0]),  # the same link: already claimed
            (node_b, seen_b[1]),
            (rig.db.sessions, seen_a[1]),  # already claimed by node b
        ):
            with sessions() as s, s.begin():
                won.append(remind(s, rig.ctx.outbox, candidate, now))
        assert won == [True, False, True, False]
        # A restart: a fresh engine, the same clock; nothing is due any more.
        with ThreadPoolExecutor(max_workers=2) as pool:
            runs = list(
                pool.map(
                    lambda sessions: send_reminders(sessions, rig.ctx.outbox, SETTINGS, rig.clock),
                    [rig.db.sessions, node_b],
                )
            )
        assert runs == [0, 0]
    finally:
        other.dispose()
    with rig.db.sessions() as s:
        n = s.scalar(
            select(func.count()).select_from(Notification).where(Notification.kind == KIND)
        )
    assert n == 2
    assert rig.relay() == 2


def test_racing_threads_queue_each_reminder_once(rig: Rig, db: Database) -> None:
    patients = [rig.patient() for _ in range(4)]
    _to_window(rig, patients[0])
    engines = [make_engine(db.url, schema=db.schema) for _ in range(2)]
    try:
        makers = [make_sessions(e) for e in engines]
        with ThreadPoolExecutor(max_workers=2) as pool:
            runs = list(
                pool.map(
                    lambda sessions: send_reminders(sessions, rig.ctx.outbox, SETTINGS, rig.clock),
                    makers,
                )
            )
    finally:
        for e in engines:
            e.dispose()
    assert sum(runs) == 4
    assert sorted(r.grant_id for r in _reminders(rig)) == sorted(p.grant_id for p in patients)


def test_a_clinicians_share_has_its_own_setting(rig: Rig) -> None:
    p = rig.patient()
    patient = rig.client()
    sign_in(rig, patient, p.token)
    r = post(patient, "/files/share", email="gp@clinic.example", show_code="1")
    assert r.status_code == 200
    with rig.db.sessions() as s, s.begin():
        share = s.scalars(select(Grant).where(Grant.parent_grant_id == p.grant_id)).one()
        # The patient downloaded (their request moves on); the clinician has not.
        s.execute(update(Grant).where(Grant.id == p.grant_id).values(downloads=1))
        s.execute(
            update(ReleaseRequest)
            .where(ReleaseRequest.id == p.request_id)
            .values(state=RequestState.DOWNLOADED)
        )
        share_id = share.id
    _to_window(rig, Patient(p.request_id, share_id, ""), before=timedelta(days=5))
    five = DeliverySettings(share_reminder_days_before=5, reminder_days_before=0)
    off = DeliverySettings(share_reminder_days_before=0)
    assert send_reminders(rig.db.sessions, rig.ctx.outbox, off, rig.clock) == 0
    assert send_reminders(rig.db.sessions, rig.ctx.outbox, five, rig.clock) == 1
    [row] = _reminders(rig)
    assert row.grant_id == share_id and row.recipient == "gp@clinic.example"
    rig.relay()
    [mail] = [
        m
        for m in rig.emails()
        if str(m["To"]) == "gp@clinic.example" and "Reminder" in str(m["Subject"])
    ]
    body = mail.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert "A patient shared their imaging" in text and "Ask for more time" not in text
    assert "Test" not in text and "MRN-000123" not in text  # names no patient


def test_a_reminder_for_a_link_used_meanwhile_is_not_sent(rig: Rig) -> None:
    p = rig.patient()
    _to_window(rig, p)
    assert send_reminders(rig.db.sessions, rig.ctx.outbox, SETTINGS, rig.clock) == 1
    with rig.db.sessions() as s, s.begin():
        s.execute(update(Grant).where(Grant.id == p.grant_id).values(downloads=1))
    rig.relay()
    [row] = _reminders(rig)
    assert row.state == NotificationState.FAILED and "used, stopped or expired" in row.last_error
    assert not [m for m in rig.emails() if "Reminder" in str(m["Subject"])]


def test_a_share_whose_parent_link_was_revoked_after_queueing_gets_no_email(rig: Rig) -> None:
    p = rig.patient()
    patient = rig.client()
    sign_in(rig, patient, p.token)
    r = post(patient, "/files/share", email="gp@clinic.example", show_code="1")
    assert r.status_code == 200
    with rig.db.sessions() as s:
        share_id = s.scalars(select(Grant.id).where(Grant.parent_grant_id == p.grant_id)).one()
    _to_window(rig, Patient(p.request_id, share_id, ""))
    only_shares = DeliverySettings(reminder_days_before=0)
    assert send_reminders(rig.db.sessions, rig.ctx.outbox, only_shares, rig.clock) == 1
    with rig.db.sessions() as s, s.begin():  # the patient stops their own link meanwhile
        s.execute(update(Grant).where(Grant.id == p.grant_id).values(revoked_at=rig.clock()))
    rig.relay()
    [row] = _reminders(rig)
    assert row.grant_id == share_id and row.state == NotificationState.FAILED
    assert not [m for m in rig.emails() if "Reminder" in str(m["Subject"])]


def test_a_reminder_for_a_link_extended_or_locked_meanwhile_is_not_sent(rig: Rig) -> None:
    p, q = rig.patient(), rig.patient()
    _to_window(rig, p)
    assert send_reminders(rig.db.sessions, rig.ctx.outbox, SETTINGS, rig.clock) == 2
    with rig.db.sessions() as s, s.begin():
        g = s.get(Grant, p.grant_id)
        assert g is not None
        g.expires_at = g.expires_at + timedelta(days=14)
        s.execute(update(Grant).where(Grant.id == q.grant_id).values(locked_at=rig.clock()))
    rig.relay()
    assert {r.state for r in _reminders(rig)} == {NotificationState.FAILED}
    assert not [m for m in rig.emails() if "Reminder" in str(m["Subject"])]


def test_the_scheduler_runs_the_reminder_job() -> None:
    sched = DeliveryScheduler(
        DeliverySettings(),
        batch=lambda: None,
        urgent=lambda: None,
        sweep=lambda: None,
        last_batch_at=lambda: None,
        reminders=lambda: None,
    )
    job = sched.apscheduler.get_job("reminders")
    assert job is not None and job.max_instances == 1 and job.coalesce
    without = DeliverySettings()
    plain = DeliveryScheduler(
        without, batch=lambda: None, urgent=lambda: None, sweep=lambda: None,
        last_batch_at=lambda: None,
    )  # fmt: skip
    assert plain.apscheduler.get_job("reminders") is None


def test_opened_without_a_download_is_still_reminded(rig: Rig) -> None:
    """Signing in is not having the images: only a completed download stops the
    reminder (the issue's "not opened, or nothing downloaded")."""
    p = rig.patient()
    patient = rig.client()
    sign_in(rig, patient, p.token)
    assert rig.grant(p.grant_id).first_opened_at is not None
    _to_window(rig, p)
    assert send_reminders(rig.db.sessions, rig.ctx.outbox, SETTINGS, rig.clock) == 1
    rig.relay()
    [mail] = [m for m in rig.emails() if "Reminder" in str(m["Subject"])]
    body = mail.get_body(("plain",))
    assert body is not None and "nothing has been downloaded" in body.get_content()


@pytest.mark.parametrize(
    ("batch", "recent", "due_links"),
    [(2, 3, 1), (3, 3, 2), (1, 5, 1), (4, 0, 2)],
    ids=["more-recent-than-batch", "batch-of-recent", "batch-of-one", "none-recent"],
)
def test_links_sent_inside_the_window_never_fill_the_batch(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, batch: int, recent: int, due_links: int
) -> None:
    """A link made inside its reminder window is skipped by the query itself: however
    many such links expire first, the batch still reaches the ones due."""
    monkeypatch.setattr("delivery.reminders.BATCH", batch)
    due_ones = [rig.patient() for _ in range(due_links)]
    _to_window(rig, due_ones[0])
    now = rig.clock()
    short = [rig.patient() for _ in range(recent)]
    with rig.db.sessions() as s, s.begin():
        for p in short:  # made a day ago for two days: it expires before the due ones
            s.execute(
                update(Grant)
                .where(Grant.id == p.grant_id)
                .values(created_at=now - timedelta(days=1), expires_at=now + timedelta(days=1))
            )
    with rig.db.sessions() as s:
        seen = [c.grant_id for c in due(s, SETTINGS, now)]
    assert seen == [p.grant_id for p in due_ones][:batch]
    assert send_reminders(rig.db.sessions, rig.ctx.outbox, SETTINGS, rig.clock) == min(
        batch, due_links
    )


@pytest.mark.parametrize(
    ("lived", "reminded"),
    [
        (timedelta(days=3), False),  # exactly the window: sent inside it
        (timedelta(days=3, seconds=-1), False),
        (timedelta(days=3, seconds=2), True),
        (timedelta(days=30), True),
    ],
    ids=["exactly-the-window", "a-second-less", "two-seconds-more", "a-month"],
)
def test_the_window_boundary_in_sql(rig: Rig, lived: timedelta, reminded: bool) -> None:
    p = rig.patient()
    now = rig.clock()
    expires = now + timedelta(days=1, microseconds=250_000)
    with rig.db.sessions() as s, s.begin():
        s.execute(
            update(Grant)
            .where(Grant.id == p.grant_id)
            .values(created_at=expires - lived, expires_at=expires)
        )
    with rig.db.sessions() as s:
        assert [c.grant_id for c in due(s, SETTINGS, now)] == ([p.grant_id] if reminded else [])
