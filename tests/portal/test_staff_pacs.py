"""The New request page with a PACS: list the patient's studies on it, tick some, and
the request selects them with the PACS's instance counts and queues their pulls.

The PACS and the pull queue are injected into the portal as callables (the fakes here
record what they were asked); the last test wires the node's real ones to Orthanc
(skipped without it).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from node.config import load_config
from node.delivery import DeliveryService
from portal import passwords
from portal.api import create_app
from portal.passwords import ScryptParams
from portal.staff_studies import PacsLookupFailed, PacsStudy
from release.requests import RequestBook
from store.content import ContentStore
from store.models import Pull, ReleaseRequest, RequestEvent
from tests.conftest import Database, have_orthanc, need
from tests.orthanc import Orthanc
from tests.peers import free_port
from tests.portal.test_staff import Clock, Site, count, draft
from tests.portal.test_staff import open_site as staff_site
from tests.scp.pacs_peers import N_INSTANCES, PATIENT, pacs_study

UID_CT = "1.2.826.0.1.3680043.10.201"
UID_MR = "1.2.826.0.1.3680043.10.202"
UID_OTHER = "1.2.826.0.1.3680043.10.299"
ON_PACS = {
    "SYN-1": [
        PacsStudy(UID_MR, "20240101", "MR KNEE", "MR", "ACCMR", None),
        PacsStudy(UID_CT, "20250301", "CT CHEST", "CT\\SR", "ACCCT", 240),
    ],
    "OTHER": [PacsStudy(UID_OTHER, "20250302", "NOT HERS", "US", "ACCX", 3)],
}


@dataclass
class FakePacs:
    """The PACS and the pull queue as the portal sees them; records every call."""

    error: str = ""
    asked: list[str] = field(default_factory=list)
    queued: list[tuple[int, list[tuple[str, int | None]]]] = field(default_factory=list)

    def find(self, patient_id: str) -> list[PacsStudy]:
        self.asked.append(patient_id)
        if self.error:
            raise PacsLookupFailed(self.error)
        return list(ON_PACS.get(patient_id, []))

    def queue(self, request_id: int, studies: list[tuple[str, int | None]]) -> int:
        self.queued.append((request_id, studies))
        return len(studies)


@pytest.fixture(autouse=True)
def cheap_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(passwords, "PARAMS", ScryptParams(n=16, r=1, p=1))


def open_site(db: Database, tmp_path: Path, **pacs: Any) -> Iterator[Site]:
    for site in staff_site(db, tmp_path, **pacs):
        assert site.login().status_code == 303
        yield site


@pytest.fixture
def fake() -> FakePacs:
    return FakePacs()


@pytest.fixture
def signed_in(db: Database, tmp_path: Path, fake: FakePacs) -> Iterator[Site]:
    yield from open_site(db, tmp_path, pacs_find=fake.find, queue_pulls=fake.queue)


def pull_form(*uids: str, **over: str) -> dict[str, Any]:
    return {**draft(accessions="", **over), "pacs_study": list(uids), "pacs_listed": "1"}


def reference(r: Any) -> str:
    assert r.status_code == 303, r.text
    return str(r.headers["location"].split("/")[-1].split("?")[0])


def test_the_page_lists_the_patients_studies_on_the_pacs_when_asked(
    signed_in: Site, fake: FakePacs
) -> None:
    site = signed_in
    plain = site.client.get("/staff/requests/new", params={"patient_id": "SYN-1"})
    assert 'id="find-on-pacs"' in plain.text and 'id="pacs-studies"' not in plain.text
    assert fake.asked == []  # the PACS is asked only when staff ask for it
    page = site.client.get("/staff/requests/new", params={"patient_id": "SYN-1", "pacs": "1"})
    assert page.status_code == 200 and fake.asked == ["SYN-1"]
    table = page.text[page.text.index('id="pacs-studies"') :]
    for shown in ("CT CHEST", "MR KNEE", "CT\\SR", "ACCCT", "<td>240</td>", "<td>?</td>"):
        assert shown in table, shown
    assert "NOT HERS" not in page.text
    assert '<label for="pacs-study-1"' in table and '<label for="pacs-study-2"' in table
    nobody = site.client.get("/staff/requests/new", params={"patient_id": "NOBODY", "pacs": "1"})
    assert 'id="no-pacs-studies"' in nobody.text


def test_ticked_pacs_studies_are_selected_with_expected_counts_and_pulled(
    signed_in: Site, fake: FakePacs
) -> None:
    site = signed_in
    form = pull_form(UID_CT, UID_MR, form_key="staff-form:pull-1")
    ref = reference(site.post("/staff/requests/new", form))
    assert fake.asked == ["SYN-1"]  # asked again at submit, for the form's Patient ID
    req = RequestBook(site.db.sessions).get(ref)
    assert sorted((s.kind, s.value, s.expected_instances) for s in req.selections) == [
        ("study_uid", UID_CT, 240),
        ("study_uid", UID_MR, None),  # the PACS gave no count: complete when stable
    ]
    assert fake.queued == [(req.id, [(UID_CT, 240), (UID_MR, None)])]
    # A double click: the same request, and its pulls queued again (the queue is
    # idempotent, so a crash between the two is made good).
    assert reference(site.post("/staff/requests/new", form)) == ref
    assert count(site, ReleaseRequest) == 1 and len(fake.queued) == 2


def test_received_and_pacs_studies_go_through_the_same_validation(
    signed_in: Site, fake: FakePacs
) -> None:
    site = signed_in
    bad = site.post("/staff/requests/new", pull_form(UID_CT, recipient_email="nope"))
    assert bad.status_code == 422 and 'id="email-error-1"' in bad.text
    assert count(site, ReleaseRequest) == 0 and fake.queued == []
    # The list comes back with the tick kept.
    assert re.search(rf'name="pacs_study" value="{re.escape(UID_CT)}" checked', bad.text)
    twice = {**pull_form(UID_CT), "study": UID_CT}  # ticked as received and on the PACS
    r = site.post("/staff/requests/new", twice)
    assert r.status_code == 422 and "listed twice" in r.text
    assert count(site, ReleaseRequest) == 0 and fake.queued == []


@pytest.mark.parametrize("uid", [UID_OTHER, "1.2.826.0.1.3680043.10.404"])
def test_a_study_the_pacs_does_not_hold_for_the_patient_is_refused(
    signed_in: Site, fake: FakePacs, uid: str
) -> None:
    site = signed_in
    events = count(site, RequestEvent)
    r = site.post("/staff/requests/new", pull_form(UID_CT, uid))
    assert r.status_code == 422
    assert "holds no such study for Patient ID SYN-1" in r.text and 'id="studies-error-1"' in r.text
    assert count(site, ReleaseRequest) == 0 and count(site, RequestEvent) == events
    assert fake.queued == []


def test_a_pacs_error_is_shown_with_what_to_fix_and_nothing_is_stored(
    signed_in: Site, fake: FakePacs
) -> None:
    site = signed_in
    fake.error = "PACS ORTHANC at 127.0.0.1:4242 cannot be reached; check pacs.host"
    page = site.client.get("/staff/requests/new", params={"patient_id": "SYN-1", "pacs": "1"})
    assert page.status_code == 200
    assert 'id="pacs-error"' in page.text and "check pacs.host" in page.text
    r = site.post("/staff/requests/new", pull_form(UID_CT))
    assert r.status_code == 503
    assert "could not be asked" in r.text and "check pacs.host" in r.text
    assert count(site, ReleaseRequest) == 0 and fake.queued == []


PARAMS = {"patient_id": "SYN-1", "pacs": "1"}


def test_a_silent_pacs_never_holds_the_page(db: Database, tmp_path: Path) -> None:
    release = threading.Event()

    def silent(patient_id: str) -> list[PacsStudy]:
        release.wait(10)
        return []

    try:
        for site in open_site(db, tmp_path, pacs_find=silent, pacs_timeout_s=0.2):
            page = site.client.get("/staff/requests/new", params=PARAMS)
            assert page.status_code == 200 and "did not answer within 0.2 s" in page.text
    finally:
        release.set()


def test_a_broken_pacs_lookup_is_a_message_not_a_500(db: Database, tmp_path: Path) -> None:
    def broken(patient_id: str) -> list[PacsStudy]:
        raise RuntimeError("bug")

    for site in open_site(db, tmp_path, pacs_find=broken):
        page = site.client.get("/staff/requests/new", params=PARAMS)
        assert page.status_code == 200 and "failed unexpectedly (RuntimeError)" in page.text


def test_without_a_pacs_the_page_offers_none_and_refuses_pulls(
    db: Database, tmp_path: Path
) -> None:
    for site in open_site(db, tmp_path):
        page = site.client.get("/staff/requests/new", params={"patient_id": "SYN-1", "pacs": "1"})
        assert "find-on-pacs" not in page.text and "pacs-studies" not in page.text
        r = site.post("/staff/requests/new", pull_form(UID_CT))
        assert r.status_code == 422 and "no PACS to pull from" in r.text
        assert count(site, ReleaseRequest) == 0
        with db.sessions() as s:
            assert s.scalars(select(Pull)).first() is None


def test_the_node_wires_the_page_to_a_real_pacs(db: Database, tmp_path: Path) -> None:
    """DeliveryService.portal_context() against Orthanc: listed, created, pull queued."""
    need("orthanc", have_orthanc())
    files, study_uid = pacs_study(tmp_path / "ct")
    with Orthanc({"courier": ("COURIER", "127.0.0.1", free_port())}, workdir=tmp_path) as o:
        o.upload(files)
        url = db.url + (f"?options=-csearch_path%3D{db.schema}" if db.schema else "")
        (tmp_path / "data").mkdir()
        yaml = tmp_path / "node.yaml"
        yaml.write_text(
            f"node:\n  data_dir: {tmp_path / 'data'}\nstore:\n  database_url: '{url}'\n"
            f"pacs:\n  ae_title: {o.aet}\n  host: 127.0.0.1\n  port: {o.dicom_port}\n"
            "  connect_timeout_s: 5\n  find_timeout_s: 20\n"
        )
        service = DeliveryService(load_config(yaml), db.sessions, ContentStore(tmp_path / "c"))
        ctx = service.portal_context()
        app = create_app(db.sessions, [], portal=ctx)
        with TestClient(app, base_url="https://testserver") as client:
            site = Site(client, db, Clock(), ctx)
            site.add_user("alice")
            assert site.login().status_code == 303
            params = {"patient_id": PATIENT, "pacs": "1"}
            page = site.client.get("/staff/requests/new", params=params)
            assert study_uid in page.text and f"<td>{N_INSTANCES}</td>" in page.text
            form = {**pull_form(study_uid), "patient_id": PATIENT}
            ref = reference(site.post("/staff/requests/new", form))
    req = RequestBook(db.sessions).get(ref)
    assert [(s.value, s.expected_instances) for s in req.selections] == [(study_uid, N_INSTANCES)]
    with db.sessions() as s:
        pulls = [(p.request_id, p.study_uid, p.expected_instances) for p in s.scalars(select(Pull))]
    assert pulls == [(req.id, study_uid, N_INSTANCES)]
