"""One rule for whether a link is live (:mod:`release.links`), followed by the portal
(link, session, download, DICOMweb) and by delivery's messages about a link (reminders,
corrected reports).

Before, the portal's twin let a clinician's share of a *locked* patient's link work,
and judged the request's state by a dead set where the messages used an allowed one.
A real database (SQLite and PostgreSQL), the portal rig's package and grants.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from delivery.reminders import send_reminders
from delivery.settings import DeliverySettings
from release.links import LIVE_STATES, link_live
from release.states import FINAL
from store.models import Grant, Package, ReleaseRequest, RequestState
from tests.portal import patient_rig, test_dicomweb
from tests.portal.patient_rig import Patient, Rig, post
from tests.portal.test_dicomweb import Served, ask

rig = patient_rig.rig
built_package = patient_rig.built_package
served = test_dicomweb.served

SHARES_ONLY = DeliverySettings(reminder_days_before=0)  # share_reminder_days_before 3


def _share(rig: Rig, p: Patient) -> tuple[int, str, str]:
    """The patient signs in and shares with a shown code: the share's id, link, code."""
    patient = rig.client()
    patient_rig.sign_in(rig, patient, p.token)
    r = post(patient, "/files/share", email="gp@clinic.example", show_code="1")
    code = re.search(r'id="share-code" dir="ltr">(\d{6})<', r.text)
    assert code is not None
    with rig.db.sessions() as s:
        child = s.scalars(select(Grant).where(Grant.parent_grant_id == p.grant_id)).one()
        return child.id, rig.keys.token(child), code.group(1)


def _set(rig: Rig, grant_id: int, **values: object) -> None:
    with rig.db.sessions() as s, s.begin():
        s.execute(update(Grant).where(Grant.id == grant_id).values(**values))


def _live(rig: Rig, grant_id: int) -> bool:
    with rig.db.sessions() as s:
        return link_live(s, s.get(Grant, grant_id), rig.clock())


@pytest.mark.parametrize("state", list(RequestState))
def test_a_link_is_live_in_every_state_that_is_not_final(rig: Rig, state: RequestState) -> None:
    p = rig.patient()
    share_id, _, _ = _share(rig, p)
    with rig.db.sessions() as s, s.begin():
        s.execute(
            update(ReleaseRequest).where(ReleaseRequest.id == p.request_id).values(state=state)
        )
    expected = state not in FINAL
    assert (state.value in LIVE_STATES) is expected
    assert _live(rig, p.grant_id) is expected
    assert _live(rig, share_id) is expected


# (what is changed, on which grant, whether the patient's and the share's links live)
CASES = [
    ("nothing", None, True, True),
    ("locked", "patient", False, False),  # the share of a locked link is not live
    ("revoked", "patient", False, False),
    ("locked", "share", True, False),
    ("revoked", "share", True, False),
    ("expired", "share", True, False),
    ("package deleted", "patient", False, False),
]


@pytest.mark.parametrize(("change", "on", "patient_live", "share_live"), CASES)
def test_the_rule_table(
    rig: Rig, change: str, on: str | None, patient_live: bool, share_live: bool
) -> None:
    p = rig.patient()
    share_id, _, _ = _share(rig, p)
    target = p.grant_id if on == "patient" else share_id
    now = rig.clock()
    if change in ("locked", "revoked"):
        _set(rig, target, **{f"{change}_at": now})
    elif change == "expired":
        _set(rig, target, expires_at=now - timedelta(seconds=1))
    elif change == "package deleted":
        with rig.db.sessions() as s, s.begin():
            package_id = s.get(Grant, p.grant_id).package_id  # type: ignore[union-attr]
            s.execute(update(Package).where(Package.id == package_id).values(deleted_at=now))
    assert _live(rig, p.grant_id) is patient_live
    assert _live(rig, share_id) is share_live


def test_a_share_of_a_locked_link_is_refused_by_the_portal_and_gets_no_reminder(
    served: Served,
) -> None:
    rig = served.rig
    p = served.patient(0)
    share_id, link, code = _share(rig, p)
    gp = rig.client()
    assert gp.get(f"/d/{link}").status_code == 303
    assert post(gp, "/access/verify", code=code).status_code == 303
    part = json.loads(rig.package.parts)[0]
    assert gp.get("/files").status_code == 200
    token = ask(gp)
    assert served.get("/studies", token).status_code == 200

    _set(rig, p.grant_id, locked_at=rig.clock())  # someone guessed at the patient's code
    assert gp.get("/files").status_code == 401
    r = gp.get(f"/files/package/{part['name']}")
    assert r.status_code == 401 and b"PK" not in r.content[:2]
    assert served.get("/studies", token).status_code == 403
    assert served.get(f"/studies/{served.uids[0]}/metadata", token).status_code == 403
    fresh = rig.client()
    fresh.get(f"/d/{link}")  # the same answer for every token; the next page tells
    assert fresh.get("/access").status_code == 404  # the neutral page, no code form
    assert post(fresh, "/access/verify", code=code).status_code != 303

    # No reminder for the share while the patient's link is locked, and it is not
    # used up: once staff unlock the patient's link, the share is reminded once.
    rig.clock.now = rig.grant(share_id).expires_at - timedelta(days=3, minutes=-1)
    assert send_reminders(rig.db.sessions, rig.ctx.outbox, SHARES_ONLY, rig.clock) == 0
    assert rig.grant(share_id).reminded_at is None
    _set(rig, p.grant_id, locked_at=None)
    assert send_reminders(rig.db.sessions, rig.ctx.outbox, SHARES_ONLY, rig.clock) == 1
    assert send_reminders(rig.db.sessions, rig.ctx.outbox, SHARES_ONLY, rig.clock) == 0
