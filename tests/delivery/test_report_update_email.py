"""The corrected-report email (``report_update_email``) goes only to a live link.

A real database (SQLite and PostgreSQL), the portal rig's package and grant, and the
real relay writing emails as files. The email is queued, then the link changes before
the relay composes it: a link stopped, locked, expired, whose package was deleted or
whose request was cancelled or expired gets no email (the row ends ``superseded``, no
staff alert); a link already used to download still gets it (the correction is news
to a patient who has the first report).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import update

from store.models import (
    Grant,
    Notification,
    NotificationState,
    Package,
    ReleaseRequest,
    RequestState,
)
from tests.portal import patient_rig
from tests.portal.patient_rig import Patient, Rig

rig = patient_rig.rig
built_package = patient_rig.built_package

KIND = "report_update_email"
Change = Callable[[Rig, Patient], None]


def _grant(**values: object) -> Change:
    def change(rig: Rig, p: Patient) -> None:
        with rig.db.sessions() as s, s.begin():
            s.execute(update(Grant).where(Grant.id == p.grant_id).values(**values))

    return change


def _request(state: RequestState) -> Change:
    def change(rig: Rig, p: Patient) -> None:
        with rig.db.sessions() as s, s.begin():
            s.execute(
                update(ReleaseRequest).where(ReleaseRequest.id == p.request_id).values(state=state)
            )

    return change


def _package_deleted(rig: Rig, p: Patient) -> None:
    with rig.db.sessions() as s, s.begin():
        s.execute(
            update(Package).where(Package.request_id == p.request_id).values(deleted_at=rig.clock())
        )


def _expired(rig: Rig, p: Patient) -> None:
    rig.clock.now = rig.grant(p.grant_id).expires_at + timedelta(minutes=1)


def _nothing(rig: Rig, p: Patient) -> None:
    return None


def _downloaded(rig: Rig, p: Patient) -> None:
    _grant(downloads=1)(rig, p)
    _request(RequestState.DOWNLOADED)(rig, p)


CASES: list[tuple[str, Change, bool]] = [
    ("unchanged", _nothing, True),
    ("downloaded since", _downloaded, True),
    ("stopped (revoked)", _grant(revoked_at=patient_rig.Clock()()), False),
    ("locked (wrong codes)", _grant(locked_at=patient_rig.Clock()()), False),
    ("expired", _expired, False),
    ("package deleted", _package_deleted, False),
    ("request cancelled", _request(RequestState.CANCELLED), False),
    ("request expired", _request(RequestState.EXPIRED), False),
]


@pytest.mark.parametrize(("case", "change", "sent"), CASES, ids=[c[0] for c in CASES])
def test_the_report_update_email_goes_only_to_a_live_link(
    rig: Rig, case: str, change: Change, sent: bool
) -> None:
    p = rig.patient()
    with rig.db.sessions() as s, s.begin():
        req = s.get(ReleaseRequest, p.request_id)
        assert req is not None
        row = rig.ctx.outbox.enqueue(
            s,
            kind=KIND,
            channel="email",
            recipient=req.recipient_email,
            language=req.language,
            request_id=req.id,
            grant_id=p.grant_id,
        )
        s.flush()
        nid = row.id
    change(rig, p)
    rig.relay()
    with rig.db.sessions() as s:
        done = s.get(Notification, nid)
        assert done is not None
        state, error = done.state, done.last_error or ""
    mails = [m for m in rig.emails() if "report" in str(m["Subject"]).lower()]
    if sent:
        assert state == NotificationState.SENT, error
        [mail] = mails
        body = mail.get_body(("plain",))
        assert body is not None and f"/d/{p.token}" in body.get_content()
    else:
        assert state == NotificationState.FAILED
        assert "since the report update was queued" in error
        assert not mails
