"""A study held because its patient identity differs, on the request's staff page: the
fields that differ and both sides' values (escaped, bidi-isolated), "attach anyway"
with a reason (the request moves on, audited with the staff member), "keep held";
refusals change nothing. Both databases, over TestClient (loopback, no network)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from store.models import (
    AuditEvent,
    IdentityMismatch,
    MismatchState,
    ReleaseRequest,
    RequestState,
    RequestStudy,
    Study,
)
from tests.conftest import Database
from tests.portal.test_staff import Site, add_study, make_request, open_site
from tests.portal.test_staff import cheap_hashes as cheap_hashes  # autouse fixture


@pytest.fixture
def site(db: Database, tmp_path: Path) -> Iterator[Site]:
    for s in open_site(db, tmp_path):
        assert s.login().status_code == 303
        yield s


def held(site: Site, ref: str, uid: str, fields: str = "patient_id birth_date") -> int:
    """The study ``uid`` (another patient's, accession ACC1) held from request ``ref``."""
    add_study(site, uid, patient_id="SYN-2", accession="ACC1")
    with site.db.sessions() as s, s.begin():
        study = s.scalars(select(Study).where(Study.study_uid == uid)).one()
        study.patient_name = "<b>ROE</b>^\u202eRICHARD"
        study.patient_birth_date = "19650505"
        rid = s.scalar(select(ReleaseRequest.id).where(ReleaseRequest.reference == ref))
        assert rid is not None
        m = IdentityMismatch(
            request_id=rid,
            study_id=study.id,
            fields=fields,
            rule="by-accession",
            found_at=site.clock(),
        )
        s.add(m)
        s.flush()
        return m.id


def state(site: Site, ref: str) -> str:
    return str(site.scalar(select(ReleaseRequest.state).where(ReleaseRequest.reference == ref)))


def test_the_page_shows_which_fields_differ(site: Site) -> None:
    ref = make_request(site)
    mid = held(site, ref, "1.2.3.901")
    page = site.client.get(f"/staff/requests/{ref}").text
    assert f'id="mismatch-{mid}"' in page and "patient_id, birth_date" in page
    assert "<bdi>SYN-2</bdi>" in page and "<bdi>19650505</bdi>" in page
    assert "<b>ROE</b>" not in page and "&lt;b&gt;ROE&lt;/b&gt;" in page
    assert f'action="/staff/requests/{ref}/identity/{mid}/attach"' in page


@pytest.mark.parametrize(
    ("action", "data", "status"),
    [
        ("attach", {"reason": "   "}, 409),  # a reason is required
        ("attach", {}, 409),
        ("dismiss", {"reason": ""}, 409),
        ("nothing", {"reason": "x"}, 404),
    ],
)
def test_refusals_change_nothing(
    site: Site, action: str, data: dict[str, str], status: int
) -> None:
    ref = make_request(site)
    mid = held(site, ref, "1.2.3.902")
    r = site.post(f"/staff/requests/{ref}/identity/{mid}/{action}", data)
    assert r.status_code == status
    assert state(site, ref) == RequestState.PENDING
    assert site.scalar(select(IdentityMismatch.state)) == MismatchState.OPEN
    assert site.scalar(select(RequestStudy.id)) is None


def test_without_csrf_nothing_is_attached(site: Site) -> None:
    ref = make_request(site)
    mid = held(site, ref, "1.2.3.903")
    r = site.client.post(
        f"/staff/requests/{ref}/identity/{mid}/attach",
        data={"reason": "checked"},
        follow_redirects=False,
    )
    assert r.status_code == 403
    assert site.scalar(select(RequestStudy.id)) is None


def test_attach_anyway_moves_the_request_on_and_is_audited(site: Site) -> None:
    ref = make_request(site)
    mid = held(site, ref, "1.2.3.904")
    reason = "RIS had a typo; confirmed with the patient by phone"
    r = site.post(f"/staff/requests/{ref}/identity/{mid}/attach", {"reason": reason})
    assert r.status_code == 303 and r.headers["location"].endswith("?done=identity-attach")
    assert state(site, ref) == RequestState.READY  # stable, the only selection: complete
    assert site.scalar(select(IdentityMismatch.resolved_by)) == "staff:alice"
    audit = site.scalar(select(AuditEvent).where(AuditEvent.kind == "identity-override"))
    assert audit.actor == "staff:alice" and "1.2.3.904" in audit.study_uids
    assert audit.request_ref == ref and "SYN-2" not in audit.detail
    story = [e.reason for e in site.events(ref)]
    assert any("attached despite identity mismatch (patient_id birth_date)" in e for e in story)
    again = site.post(f"/staff/requests/{ref}/identity/{mid}/attach", {"reason": reason})
    assert again.status_code == 409  # resolved once


def test_keep_held(site: Site) -> None:
    ref = make_request(site)
    mid = held(site, ref, "1.2.3.905")
    r = site.post(f"/staff/requests/{ref}/identity/{mid}/dismiss", {"reason": "another patient"})
    assert r.status_code == 303
    assert state(site, ref) == RequestState.PENDING
    assert site.scalar(select(IdentityMismatch.state)) == MismatchState.DISMISSED
    assert site.scalar(select(RequestStudy.id)) is None
    page = site.client.get(f"/staff/requests/{ref}").text
    assert "dismissed by staff:alice" in page


def test_the_dashboard_lists_held_studies(site: Site) -> None:
    ref = make_request(site)
    held(site, ref, "1.2.3.906")
    page = site.client.get("/staff").text
    assert f'href="/staff/requests/{ref}#identity"' in page
    assert 'id="identity-off"' not in page and 'id="all-clear"' not in page


def test_the_dashboard_flags_the_check_turned_off(db: Database, tmp_path: Path) -> None:
    for site in open_site(db, tmp_path, identity_check=False):
        assert site.login().status_code == 303
        page = site.client.get("/staff").text
        assert 'id="identity-off"' in page and "identity.check: false" in page
