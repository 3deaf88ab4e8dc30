"""``notified`` is honest (issue 16): the request page, ``courier request list|show``
(text and ``--json``) and the API tell "link queued" from "link email accepted by the
mail server" (and "failed"); the dashboard lists links queued for more than a few
minutes. In-process, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from delivery.outbox import LINK_QUEUED_WARN, LINK_STATUS_TEXT, queue_link_again
from node.cli import main
from portal.api import create_app
from portal.apikeys import hash_api_key, new_api_key
from store.models import Notification, ReleaseRequest
from tests.conftest import Database, free_port, write_config
from tests.portal.test_staff import (  # noqa: F401
    Site,
    cheap_hashes,
    main_text,
    notified,
    signed_in,
    site,
)


def _queue_link(site_: Site) -> tuple[str, int]:
    """A notified request whose link email is queued; returns (reference, row id)."""
    ref, _grant = notified(site_)
    with site_.db.sessions() as s, s.begin():
        req = s.scalars(select(ReleaseRequest).where(ReleaseRequest.reference == ref)).one()
        queue_link_again(s, site_.ctx.outbox, req, site_.clock())
        nid = s.scalars(select(Notification.id).where(Notification.request_id == req.id)).one()
    return ref, nid


@pytest.fixture
def cli_config(db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A node.yaml naming the test database, for ``courier request`` in-process."""
    path = tmp_path / "node.yaml"
    write_config(path, tmp_path / "data", free_port(), db)
    url = db.url + (f"?options=-csearch_path%3D{db.schema}" if db.schema else "")
    monkeypatch.setenv("COURIER_TEST_DB_URL", url)
    yield path


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    capsys.readouterr()
    assert main(list(argv)) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize(
    ("row_state", "status"),
    [("queued", "queued"), ("sending", "queued"), ("sent", "accepted"), ("failed", "failed")],
)
def test_every_view_tells_queued_from_accepted(
    signed_in: Site,  # noqa: F811
    cli_config: Path,
    capsys: pytest.CaptureFixture[str],
    row_state: str,
    status: str,
) -> None:
    ref, nid = _queue_link(signed_in)
    with signed_in.db.sessions() as s, s.begin():
        sent_at = signed_in.clock() if row_state == "sent" else None
        s.execute(
            update(Notification)
            .where(Notification.id == nid)
            .values(state=row_state, sent_at=sent_at)
        )
    text = LINK_STATUS_TEXT[status]

    page = signed_in.client.get(f"/staff/requests/{ref}")
    assert page.status_code == 200
    assert f'id="link-email" class="link-{status}">{text}' in main_text(page.text)

    key = new_api_key()
    app = create_app(signed_in.db.sessions, [hash_api_key(key)], clock=signed_in.clock)
    with TestClient(app) as client:
        auth = {"Authorization": f"Bearer {key}"}
        one = client.get(f"/api/v1/requests/{ref}", headers=auth).json()
        many = client.get("/api/v1/requests", headers=auth).json()
    assert one["state"] == "notified" and one["link_email"]["status"] == status
    assert [r["link_email"]["status"] for r in many if r["reference"] == ref] == [status]

    config = ["--config", str(cli_config)]
    shown: dict[str, Any] = json.loads(_cli(capsys, "request", "show", ref, "--json", *config))
    assert shown["link_email"]["status"] == status and shown["link_email"]["text"] == text
    listed = json.loads(_cli(capsys, "request", "list", "--json", *config))
    assert [r["link_email"]["status"] for r in listed if r["reference"] == ref] == [status]
    assert f"link_email: {text}" in _cli(capsys, "request", "show", ref, *config)
    [line] = [x for x in _cli(capsys, "request", "list", *config).splitlines() if ref in x]
    assert f" {status} " in line


def test_a_request_without_a_link_email_claims_none(signed_in: Site) -> None:  # noqa: F811
    ref, _grant = notified(signed_in)
    page = main_text(signed_in.client.get(f"/staff/requests/{ref}").text)
    assert 'id="link-email" class="link-none">' in page and "accepted" not in page


def test_the_dashboard_lists_links_queued_for_more_than_a_few_minutes(
    signed_in: Site,  # noqa: F811
) -> None:
    ref, nid = _queue_link(signed_in)
    assert 'id="queued-links"' not in signed_in.client.get("/staff").text  # just queued
    signed_in.clock.advance(seconds=LINK_QUEUED_WARN.total_seconds() + 60)
    board = signed_in.client.get("/staff").text
    assert 'id="queued-links"' in board
    assert ref in board.split('id="queued-links"', 1)[1].split("</section>", 1)[0]
    with signed_in.db.sessions() as s, s.begin():
        s.execute(
            update(Notification)
            .where(Notification.id == nid)
            .values(state="sent", sent_at=signed_in.clock())
        )
    assert 'id="queued-links"' not in signed_in.client.get("/staff").text
