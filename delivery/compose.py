"""Composing an outbox row into the message its channel sends.

Links and codes are derived here, at send time, from the grant and the node secret
(:mod:`delivery.grants`): the row holds no secret. A code row carries the ``code_salt``
it was issued with; if a newer code has been issued since, the row is not sent (the
patient would get two different codes), and neither is a code past its validity.

Shares (:mod:`portal.share`): ``forward_link_email`` carries the clinician grant's link;
``share_used_email`` tells the patient (their grant) that a share was opened, at the
time in its params. ``reminder_email`` (:mod:`delivery.reminders`) carries the grant's
link again, unless it was used, stopped or expired since it was queued (superseded).
``report_update_email`` (:mod:`delivery.report_updates`) carries the patient's link
only while it is live (:func:`release.links.link_live`: not stopped, locked or
expired, its package kept, its request not closed) and its request ``notified`` or
``downloaded``.
``release_expected_email`` (:mod:`release.embargo`, when staff asked at request time)
tells the patient when to expect the link of a request its release policy holds.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy.orm import Session

from delivery import messages
from delivery.channel import OutgoingMessage
from delivery.grants import GrantKeys
from delivery.reminders import still_due
from release.links import link_live, request_state
from store.models import Grant, Notification, RequestState, utcnow

#: A corrected report is news whether or not the patient downloaded already.
REPORT_UPDATE_STATES = (RequestState.NOTIFIED, RequestState.DOWNLOADED)
#: Why a report update was not sent (its row's ``last_error``): a re-issue of the
#: locked link queues it again (:func:`delivery.report_reissue.queue_again`); one the
#: relay held at the re-issue and dropped after it is queued for the new link at the
#: next sweep (:func:`delivery.report_reissue.requeue_dropped`). The composer only reads:
#: the relay records the drop, so the move waits until the row is ``failed``.
REPORT_UPDATE_DROPPED = (
    "the link was stopped, locked or expired (or its package deleted, its request closed) "
    "since the report update was queued"
)


class ComposeError(Exception):
    """The row cannot be composed. ``outcome`` is recorded; ``alert`` says whether this is
    a failure staff must hear of (a missing grant) or an expected end (superseded)."""

    def __init__(self, message: str, *, outcome: str = "permanent", alert: bool = True) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.alert = alert


@dataclass(frozen=True)
class Branding:
    """What the messages say about the sender."""

    public_url: str
    hospital: str
    sms_sender: str
    contact: str = ""


class Composer:
    """Callable ``(session, row) -> OutgoingMessage``."""

    def __init__(
        self, keys: GrantKeys, branding: Branding, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self._keys = keys
        self._b = branding
        self._clock = clock

    def link_url(self, grant: Grant) -> str:
        """The download link of ``grant``."""
        return f"{self._b.public_url.rstrip('/')}/d/{self._keys.token(grant)}"

    def __call__(
        self, s: Session, row: Notification, *, check_expiry: bool = True
    ) -> OutgoingMessage:
        """The message of ``row``. ``check_expiry=False`` composes a code past its
        validity too: only to look up whether an earlier attempt was delivered."""
        params = json.loads(row.params or "{}")
        if row.kind.startswith("alert_"):
            return messages.staff_alert(
                to=row.recipient,
                kind=cast(messages.AlertKind, params.get("alert")),
                reference=params.get("reference"),
                message_id=row.message_id,
                composed_at=row.composed_at,
            )
        if row.kind == "release_expected_email":  # no link in it: no grant yet
            return messages.release_expected_email(
                to=row.recipient,
                until=datetime.fromisoformat(str(params.get("until"))),
                zone=str(params.get("zone") or "UTC"),
                wait="report" if params.get("wait") == "report" else "embargo",
                hospital=self._b.hospital,
                language=row.language,
                message_id=row.message_id,
                contact=self._b.contact,
                composed_at=row.composed_at,
            )
        grant = s.get(Grant, row.grant_id) if row.grant_id is not None else None
        if grant is None:
            raise ComposeError("the grant of this message is gone")
        if row.kind == "link_email":
            return messages.link_email(
                to=row.recipient,
                link_url=self.link_url(grant),
                expires=grant.expires_at.date(),
                hospital=self._b.hospital,
                language=row.language,
                message_id=row.message_id,
                contact=self._b.contact,
                composed_at=row.composed_at,
            )
        if row.kind == "forward_link_email":
            return messages.forward_link_email(
                to=row.recipient,
                link_url=self.link_url(grant),
                expires=grant.expires_at.date(),
                hospital=self._b.hospital,
                language=row.language,
                message_id=row.message_id,
                shown_code=grant.second_channel.startswith("shown:"),
                contact=self._b.contact,
                composed_at=row.composed_at,
            )
        if row.kind == "share_used_email":
            return messages.share_used_email(
                to=row.recipient,
                opened_at=datetime.fromisoformat(str(params.get("opened_at"))),
                hospital=self._b.hospital,
                language=row.language,
                message_id=row.message_id,
                contact=self._b.contact,
                composed_at=row.composed_at,
            )
        if row.kind == "reminder_email":
            queued = params.get("expires_at")
            queued_expiry = datetime.fromisoformat(str(queued)) if queued else None
            if not still_due(s, grant, queued_expiry, self._clock()):
                raise ComposeError(
                    "the link was used, stopped or expired since the reminder was queued",
                    outcome="superseded",
                    alert=False,
                )
            return messages.reminder_email(
                to=row.recipient,
                link_url=self.link_url(grant),
                expires=grant.expires_at.date(),
                hospital=self._b.hospital,
                language=row.language,
                message_id=row.message_id,
                clinician=grant.purpose == "forward",
                contact=self._b.contact,
                composed_at=row.composed_at,
            )
        if row.kind == "report_update_email":
            now = self._clock()
            if not link_live(s, grant, now) or request_state(s, grant) not in REPORT_UPDATE_STATES:
                raise ComposeError(REPORT_UPDATE_DROPPED, outcome="superseded", alert=False)
            return messages.report_update_email(
                to=row.recipient,
                link_url=self.link_url(grant),
                expires=grant.expires_at.date(),
                hospital=self._b.hospital,
                language=row.language,
                message_id=row.message_id,
                contact=self._b.contact,
                composed_at=row.composed_at,
            )
        if params.get("code_salt") != grant.code_salt:
            raise ComposeError("superseded by a newer code", outcome="superseded", alert=False)
        expired = grant.code_expires_at is None or self._clock() >= grant.code_expires_at
        if check_expiry and expired:
            raise ComposeError(
                "the code expired before it could be sent", outcome="expired", alert=False
            )
        code = self._keys.code(grant)
        if row.kind == "code_sms":
            return messages.code_sms(
                to=row.recipient,
                code=code,
                language=row.language,
                sender_name=self._b.sms_sender,
                message_id=row.message_id,
            )
        if row.kind == "code_email":
            return messages.code_email(
                to=row.recipient,
                code=code,
                hospital=self._b.hospital,
                language=row.language,
                message_id=row.message_id,
                composed_at=row.composed_at,
            )
        raise ComposeError(f"unknown notification kind {row.kind}")
