"""Telling the patient when to expect the link: the flag on request create (CLI, web, API),
the one email when the release policy first holds the request (queued by the node), and
its text in every language. SQLite and PostgreSQL where the store is involved."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from delivery.compose import Branding, Composer
from delivery.grants import GrantKeys
from delivery.messages import release_expected_email, staff_alert
from node.cli import main
from node.config import load_config
from node.delivery import DeliveryService
from release.embargo import REPORT, Verdict
from store.content import ContentStore
from store.models import Notification, ReleaseRequest
from tests.conftest import Database
from tests.portal.conftest import Api
from tests.portal.conftest import api as api
from tests.portal.test_staff import Site, open_site
from tests.portal.test_staff import cheap_hashes as cheap_hashes
from tests.portal.test_staff import draft as form
from tests.release.helpers import draft, draft_data
from tests.release.test_cli_requests import CREATE
from tests.release.test_cli_requests import config as config
from tests.release.test_embargo import ARRIVAL, World

LANGUAGES = ["en", "ar", "zh-Hans"]


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("wait", ["embargo", "report"])
def test_the_email_says_when_in_the_patients_language(language: str, wait: str) -> None:
    row = Notification(
        kind="release_expected_email",
        channel="email",
        recipient="patient@example.org",
        language=language,
        params=json.dumps(
            {"until": "2026-03-30T12:00:00+00:00", "zone": "Europe/London", "wait": wait}
        ),
        message_id="abc@example.org",
        composed_at=ARRIVAL,
    )
    branding = Branding("https://courier.example.org", "St Example", "StExample")
    msg = Composer(GrantKeys(b"k" * 32), branding)(None, row)  # type: ignore[arg-type]
    assert msg.to == "patient@example.org" and msg.html is not None
    for part in (msg.subject, msg.text, msg.html):
        assert "{{" not in part and "%(" not in part and "{%" not in part
        assert "patient@example.org" not in part and "/d/" not in part  # no link in it
    local = {"en": "1:00", "ar": "1:00", "zh-Hans": "13:00"}[language]
    assert local in msg.text  # 12:00 UTC is 13:00 BST
    if language == "en":
        said = "from March 30, 2026" if wait == "embargo" else "once the report on it is final"
        assert said in msg.text
    else:
        assert "Your imaging" not in msg.text


def test_the_email_names_no_study_and_needs_a_zone() -> None:
    msg = release_expected_email(
        to="p@example.org",
        until=datetime(2026, 1, 5, 9, 0, tzinfo=UTC),
        zone="America/New_York",
        wait="embargo",
        hospital="St Example",
        language="en",
        message_id="abc@example.org",
    )
    assert "January 5, 2026" in msg.text and "4:00" in msg.text


def test_the_keeper_emails_once_when_it_first_holds(db: Database, tmp_path: Path) -> None:
    world = World(db, tmp_path)
    told: list[tuple[str, str]] = []
    world.keeper._on_expected = lambda s, req, v: told.append((req.reference, v.kind))
    ref = world.ready("report-staff")
    with world.db.sessions() as s, s.begin():
        req = s.scalars(select(ReleaseRequest).where(ReleaseRequest.reference == ref)).one()
        req.tell_patient_when = True
    world.keeper.sweep()
    world.clock.now += timedelta(hours=1)
    world.keeper.sweep()
    assert told == [(ref, REPORT)]
    assert "patient emailed when to expect the link (staff asked)" in world.timeline(ref)


def test_no_email_unless_staff_asked(db: Database, tmp_path: Path) -> None:
    world = World(db, tmp_path)
    told: list[Verdict] = []
    world.keeper._on_expected = lambda s, req, v: told.append(v)
    world.ready("ct-72h")
    world.keeper.sweep()
    assert told == []


def test_request_create_takes_the_flag(
    db: Database, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*CREATE, "--tell-patient-when", "--config", str(config), "--json"]
    assert main(argv) == 0
    made = json.loads(capsys.readouterr().out)
    ref = made["reference"]
    assert (made["tell_patient_when"], made["hold"], made["hold_until"]) == (True, "", None)
    with db.sessions() as s:
        flag = s.scalar(
            select(ReleaseRequest.tell_patient_when).where(ReleaseRequest.reference == ref)
        )
    assert flag is True
    assert draft().tell_patient_when is False  # off unless asked


@pytest.fixture
def site(db: Database, tmp_path: Path) -> Iterator[Site]:
    for s in open_site(db, tmp_path):
        assert s.login().status_code == 303
        yield s


def test_the_staff_form_takes_the_flag(site: Site) -> None:
    page = site.client.get("/staff/requests/new").text
    assert 'id="tell-patient-when"' in page
    made = site.post("/staff/requests/new", form(tell_patient_when="on"))
    assert made.status_code == 303
    with site.db.sessions() as s:
        assert list(s.scalars(select(ReleaseRequest.tell_patient_when))) == [True]


def test_the_node_queues_the_email_in_the_holding_transaction(
    db: Database, config: Path, tmp_path: Path
) -> None:
    text = config.read_text() + "delivery:\n  release: {after: 72h}\n"
    config.write_text(text + "  timezone: Europe/London\n")
    world = World(db, tmp_path)
    content = ContentStore(tmp_path / "data")
    service = DeliveryService(load_config(config), db.sessions, content, clock=world.clock)
    ref = world.ready("")  # staff attached it (no rule): node.yaml's delivery.release
    with db.sessions() as s, s.begin():
        req = s.scalars(select(ReleaseRequest).where(ReleaseRequest.reference == ref)).one()
        req.tell_patient_when = True
    assert service.keeper.sweep() == [ref]
    with db.sessions() as s:
        [row] = s.scalars(select(Notification).where(Notification.request_id.is_not(None)))
        assert (row.kind, row.recipient, row.grant_id) == (
            "release_expected_email",
            "patient@example.org",
            None,
        )
        msg = service.composer(s, row)
    assert "ready to download from March 30, 2026, 1:00" in msg.text  # 72 h, in BST


def test_the_node_alerts_staff_when_the_report_did_not_come(
    db: Database, config: Path, tmp_path: Path
) -> None:
    policy = "{until: report_final, max_wait: 2d, then: hold_for_staff}"
    config.write_text(config.read_text() + f"delivery:\n  release: {policy}\n")
    world = World(db, tmp_path)
    content = ContentStore(tmp_path / "data")
    service = DeliveryService(load_config(config), db.sessions, content, clock=world.clock)
    ref = world.ready("")  # staff attached it: the site default applies
    service.keeper.sweep()
    world.clock.now = ARRIVAL + timedelta(days=2)
    assert service.keeper.sweep() == [ref]
    with db.sessions() as s:
        kinds = list(s.scalars(select(Notification.kind)))
    assert kinds == ["alert_release_held"]


def test_the_api_takes_the_flag(api: Api) -> None:
    made = api.client.post(
        "/api/v1/requests", json=draft_data(tell_patient_when=True), headers=api.auth
    )
    assert made.status_code == 201, made.text
    body = made.json()
    assert (body["tell_patient_when"], body["hold"], body["hold_until"]) == (True, "", None)
    shown = api.client.get(f"/api/v1/requests/{body['reference']}", headers=api.auth).json()
    assert shown["tell_patient_when"] is True


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_staff_alert_when_the_report_did_not_come(language: str) -> None:
    msg = staff_alert(
        to="staff@example.org",
        kind="release_held",
        reference="CR-7KQ4-M2XD-9",
        message_id="abc@example.org",
        language=language,
    )
    assert "CR-7KQ4-M2XD-9" in msg.subject and "CR-7KQ4-M2XD-9" in msg.text
    assert "{{" not in msg.text and "%(" not in msg.text
    assert ("final report" in msg.subject) == (language == "en")
