"""A corrected-report email dropped because the patient's link was locked is sent once
the link is re-issued (:func:`delivery.report_reissue.queue_again`).

End to end on SQLite and PostgreSQL: the staff pages re-issue the link, the real relay
sends through a real aiosmtpd server (STARTTLS and implicit TLS, AUTH). The email that
was queued while the link was locked is dropped by the composer (nothing reaches the
server); after the re-issue the server receives the new link email and the report
email, both carrying the *new* link, and nothing more on later relay runs. Two nodes
re-issuing at once queue it once: the second's conditional UPDATE matches nothing.
"""

from __future__ import annotations

import asyncio
import re
import threading
from typing import cast

import pytest
from sqlalchemy import select, text

from delivery.channel import Channel
from delivery.compose import REPORT_UPDATE_DROPPED, Branding, Composer
from delivery.email import SmtpChannel
from delivery.grants import new_grant
from delivery.relay import Relay
from delivery.report_reissue import KIND, queue_again
from store.models import Grant, Notification, NotificationState, ReleaseRequest
from tests.conftest import Database
from tests.delivery.conftest import PASSWORD, email_settings
from tests.pglocks import wait_until_blocked_on
from tests.portal import test_staff
from tests.portal.test_staff import Site, notified
from tests.smtp_server import SmtpServer

site = test_staff.site
signed_in = test_staff.signed_in
cheap_hashes = test_staff.cheap_hashes

BASE = "https://courier.example"


def _relay(site: Site, server: SmtpServer) -> int:
    """One relay run over a fresh SMTP channel (closed after it)."""

    async def run() -> int:
        channel = SmtpChannel(
            email_settings(server), password=PASSWORD, tls_context=server.client_context()
        )
        channels = {"email": cast(Channel, channel)}  # its kind is a str, not a Literal
        relay = Relay(
            site.db.sessions,
            site.ctx.outbox,
            channels,
            Composer(site.ctx.keys, Branding(BASE, "St Example", "StExample"), site.clock),
            site.ctx.book,
            clock=site.clock,
        )
        try:
            return await relay.run_once()
        finally:
            await channel.aclose()

    return asyncio.run(run())


def _queue_report_update(site: Site, ref: str, grant_id: int) -> int:
    """The outbox row :class:`delivery.report_updates.ReportUpdates` writes."""
    with site.db.sessions() as s, s.begin():
        req = s.scalars(select(ReleaseRequest).where(ReleaseRequest.reference == ref)).one()
        row = site.ctx.outbox.enqueue(
            s,
            kind=KIND,
            channel="email",
            recipient=req.recipient_email,
            language=req.language,
            request_id=req.id,
            grant_id=grant_id,
        )
        return row.id


def _links(server: SmtpServer) -> list[tuple[str, str]]:
    """(subject, link token) of each received email."""
    out = []
    for received in server.received:
        msg = received.message()
        body = msg.get_body(("plain",))
        assert body is not None
        found = re.search(r"/d/([A-Za-z0-9_-]+)", body.get_content())
        assert found is not None
        out.append((str(msg["Subject"]), found.group(1)))
    return out


@pytest.mark.parametrize("when", ["dropped before", "still queued"])
def test_a_report_email_the_locked_link_missed_is_sent_after_the_reissue(
    signed_in: Site, smtp_server: SmtpServer, when: str
) -> None:
    site = signed_in
    ref, grant_id = notified(site)
    with site.db.sessions() as s, s.begin():
        g = s.get(Grant, grant_id)
        assert g is not None
        g.locked_at, g.failures = site.clock(), 20
    nid = _queue_report_update(site, ref, grant_id)
    if when == "dropped before":
        assert _relay(site, smtp_server) == 0
        assert smtp_server.received == []
        with site.db.sessions() as s:
            row = s.get(Notification, nid)
            assert row is not None
            assert (row.state, row.last_error) == (NotificationState.FAILED, REPORT_UPDATE_DROPPED)

    r = site.post(f"/staff/requests/{ref}/reissue", {"grant": str(grant_id)})
    assert r.status_code == 303
    with site.db.sessions() as s:
        new = s.scalars(select(Grant).where(Grant.id != grant_id)).one()
        token = site.ctx.keys.token(new)
    assert "corrected-report email the locked link missed is queued again" in (
        site.events(ref)[-1].reason
    )
    assert _relay(site, smtp_server) == 2
    sent = _links(smtp_server)
    assert len(sent) == 2 and {t for _, t in sent} == {token}
    assert any("report" in subject.lower() for subject, _ in sent)
    assert _relay(site, smtp_server) == 0
    assert len(smtp_server.received) == 2
    with site.db.sessions() as s:
        row = s.get(Notification, nid)
        assert row is not None and (row.state, row.grant_id) == (NotificationState.SENT, new.id)


def _two_new_links(site: Site, ref: str) -> list[int]:
    """Two fresh patient links of ``ref`` (what two re-issues would make)."""
    with site.db.sessions() as s, s.begin():
        req = s.scalars(select(ReleaseRequest).where(ReleaseRequest.reference == ref)).one()
        package_id = s.scalar(select(Grant.package_id).where(Grant.request_id == req.id))
        return [
            new_grant(
                s, site.ctx.keys, req, package_id=package_id, link_days=30, now=site.clock()
            ).id
            for _ in range(2)
        ]


def _rows(site: Site) -> list[tuple[int, int | None, str]]:
    with site.db.sessions() as s:
        rows = s.scalars(select(Notification).where(Notification.kind == KIND))
        return [(r.id, r.grant_id, r.state) for r in rows]


def test_queued_again_once_one_node_after_the_other(signed_in: Site) -> None:
    site = signed_in
    ref, grant_id = notified(site)
    nid = _queue_report_update(site, ref, grant_id)
    first, second = _two_new_links(site, ref)
    won = []
    for new_id in (first, second):
        with site.db.sessions() as s, s.begin():
            won.append(queue_again(s, grant_id, new_id, site.clock()))
    assert won == [nid, None]
    assert _rows(site) == [(nid, first, NotificationState.QUEUED)]


# PostgreSQL only: SQLite has one writer at a time, so the second waits before it reads.
@pytest.mark.parametrize("db", ["postgresql"], indirect=True)
def test_queued_again_once_by_two_nodes_at_once(db: Database, signed_in: Site) -> None:
    site = signed_in
    ref, grant_id = notified(site)
    nid = _queue_report_update(site, ref, grant_id)
    first, second = _two_new_links(site, ref)
    other = db.sessions()  # one node's re-issue, not yet committed
    other.begin()
    assert queue_again(other, grant_id, first, site.clock()) == nid
    xid = other.scalar(text("SELECT pg_current_xact_id()::text"))
    result: list[int | None] = []

    def second_node() -> None:
        with site.db.sessions() as s, s.begin():
            result.append(queue_again(s, grant_id, second, site.clock()))

    worker = threading.Thread(target=second_node)
    try:
        worker.start()
        wait_until_blocked_on(db.engine, xid, worker)  # until it waits on the row's lock
        other.commit()
    finally:
        other.close()
        worker.join(30)
    assert result == [None]
    assert _rows(site) == [(nid, first, NotificationState.QUEUED)]
