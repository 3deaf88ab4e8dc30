"""Sending an authorization code: the portal's "send my code" button lands here.

A fresh code replaces the previous one and is queued for the grant's second channel
(``sms:+…`` → SMS, ``email:…`` → the second email) in the caller's transaction. At most
``code_sends_per_hour`` codes per grant per hour: a script cannot flood a phone.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from delivery.grants import GrantError, GrantKeys, issue_code
from delivery.outbox import Outbox
from store.models import Grant, Notification


def send_code(
    s: Session,
    keys: GrantKeys,
    outbox: Outbox,
    grant: Grant,
    *,
    now: datetime,
    ttl_min: int,
    sends_per_hour: int,
) -> Notification:
    """Issue a new code for ``grant`` and queue it; returns the outbox row.

    Raises :class:`GrantError` (expired, withdrawn, locked, or too many codes this
    hour: the message says when to try again).
    """
    recent = s.scalar(
        select(func.count())
        .select_from(Notification)
        .where(
            Notification.grant_id == grant.id,
            Notification.kind.in_(["code_sms", "code_email"]),
            Notification.created_at > now - timedelta(hours=1),
        )
    )
    if (recent or 0) >= sends_per_hour:
        raise GrantError(
            f"{sends_per_hour} codes were sent in the last hour; wait a while and try again"
        )
    issue_code(s, keys, grant, now=now, ttl_min=ttl_min)
    kind, _, address = grant.second_channel.partition(":")
    return outbox.enqueue(
        s,
        kind="code_sms" if kind == "sms" else "code_email",
        channel="sms" if kind == "sms" else "email",
        recipient=address,
        language=grant.language,
        params={"code_salt": grant.code_salt},
        request_id=grant.request_id,
        grant_id=grant.id,
    )
