"""A corrected-report email the relay holds (``sending``) while staff re-issue the
patient's locked link is sent once, with the new link
(:meth:`delivery.report_updates.ReportUpdates.follow_reissues`).

End to end on SQLite and PostgreSQL, with the staff pages, the real relay and a real
aiosmtpd server. The re-issue cannot move a row a relay holds (:func:`queue_again`
matches nothing); the relay then drops it because the old link is revoked; the next
sweep queues it once for the new link; the relay sends it once, and nothing more on
later sweeps and relay runs. Two ways a relay holds the row at the re-issue:

- ``composing``: the relay claimed it and the re-issue lands just before it composes;
- ``stranded``: a relay died after claiming it; the next relay releases it and drops it.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from delivery.channel import Channel
from delivery.compose import REPORT_UPDATE_DROPPED, Branding, Composer
from delivery.email import SmtpChannel
from delivery.outbox import process_identity
from delivery.relay import Relay
from delivery.report_updates import KIND, ReportUpdates
from store.models import Grant, Notification, NotificationState
from tests.delivery.conftest import PASSWORD, email_settings
from tests.delivery.test_report_update_reissue import BASE, _links, _queue_report_update
from tests.portal import test_staff
from tests.portal.test_staff import Site, notified
from tests.smtp_server import SmtpServer

site = test_staff.site
signed_in = test_staff.signed_in
cheap_hashes = test_staff.cheap_hashes


class ReissueWhileComposing(Composer):
    """A relay's composer before which staff re-issue the link: the row is claimed."""

    def __init__(self, site: Site, ref: str, grant_id: int) -> None:
        super().__init__(site.ctx.keys, Branding(BASE, "St Example", "StExample"), site.clock)
        self._site, self._ref, self._grant_id = site, ref, grant_id
        self.pending = True

    def __call__(self, s: Session, row: Notification, *, check_expiry: bool = True) -> Any:
        if self.pending and row.kind == KIND:
            self.pending = False
            with self._site.db.sessions() as look:
                held = look.get(Notification, row.id)
                assert held is not None and held.state == NotificationState.SENDING
            _reissue(self._site, self._ref, self._grant_id)
        return super().__call__(s, row, check_expiry=check_expiry)


def _relay(site: Site, server: SmtpServer, composer: Composer | None = None) -> int:
    """One relay run over a fresh SMTP channel (closed after it)."""
    compose = composer or Composer(
        site.ctx.keys, Branding(BASE, "St Example", "StExample"), site.clock
    )

    async def run() -> int:
        channel = SmtpChannel(
            email_settings(server), password=PASSWORD, tls_context=server.client_context()
        )
        channels = {"email": cast(Channel, channel)}  # its kind is a str, not a Literal
        relay = Relay(
            site.db.sessions, site.ctx.outbox, channels, compose, site.ctx.book, clock=site.clock
        )
        try:
            return await relay.run_once()
        finally:
            await channel.aclose()

    return asyncio.run(run())


def _reissue(site: Site, ref: str, grant_id: int) -> None:
    r = site.post(f"/staff/requests/{ref}/reissue", {"grant": str(grant_id)})
    assert r.status_code == 303
    # queue_again found nothing to move: the relay holds the email.
    assert "queued again" not in site.events(ref)[-1].reason


def _strand(site: Site, nid: int) -> None:
    """The row as a relay left it that died right after claiming it."""
    dead = process_identity().rsplit(":", 1)[0] + ":0"  # this pid, another start
    with site.db.sessions() as s, s.begin():
        s.execute(
            update(Notification)
            .where(Notification.id == nid)
            .values(
                state=NotificationState.SENDING,
                claimed_by=dead,
                claimed_until=site.clock() + timedelta(seconds=900),
                attempts=1,
            )
        )


def _row(site: Site, nid: int) -> tuple[str, int | None, str]:
    with site.db.sessions() as s:
        row = s.get(Notification, nid)
        assert row is not None
        return row.state, row.grant_id, row.last_error


@pytest.mark.parametrize("held", ["composing", "stranded"])
def test_a_report_email_held_by_the_relay_at_the_reissue_is_sent_once_with_the_new_link(
    signed_in: Site, smtp_server: SmtpServer, tmp_path: Path, held: str
) -> None:
    site = signed_in
    ref, grant_id = notified(site)
    with site.db.sessions() as s, s.begin():
        g = s.get(Grant, grant_id)
        assert g is not None
        g.locked_at, g.failures = site.clock(), 20
    nid = _queue_report_update(site, ref, grant_id)
    composer: ReissueWhileComposing | None = None
    if held == "composing":
        composer = ReissueWhileComposing(site, ref, grant_id)
    else:
        _strand(site, nid)
        _reissue(site, ref, grant_id)

    # The relay drops it (the old link is revoked) and sends the new link email.
    assert _relay(site, smtp_server, composer) == 1
    assert composer is None or not composer.pending
    assert _row(site, nid) == (NotificationState.FAILED, grant_id, REPORT_UPDATE_DROPPED)
    with site.db.sessions() as s:
        new = s.scalars(select(Grant).where(Grant.id != grant_id)).one()
        token = site.ctx.keys.token(new)
    assert [t for _, t in _links(smtp_server)] == [token]

    updates = ReportUpdates(
        site.db.sessions, cast(Any, None), site.ctx.outbox, tmp_path, _none, site.clock
    )
    assert updates.follow_reissues() == [nid]
    assert _row(site, nid) == (NotificationState.QUEUED, new.id, "")
    assert "queued again for link" in site.events(ref)[-1].reason
    updates.sweep()  # the node's sweep: nothing more to move
    assert updates.follow_reissues() == []

    assert _relay(site, smtp_server) == 1
    sent = _links(smtp_server)
    assert len(sent) == 2 and {t for _, t in sent} == {token}
    assert "report" in sent[1][0].lower()
    assert _row(site, nid)[:2] == (NotificationState.SENT, new.id)
    updates.sweep()
    assert _relay(site, smtp_server) == 0
    assert len(smtp_server.received) == 2
    with site.db.sessions() as s:
        rows = list(s.scalars(select(Notification.id).where(Notification.kind == KIND)))
    assert rows == [nid]


def _none(s: Session, request_id: int) -> list[str]:
    """No request's policy sends reports: the sweep builds no part (no content needed)."""
    return []
