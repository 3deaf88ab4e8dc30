"""The patient's access history: who opened their link or their shares, and what they did.

The files page of a *patient's* grant lists, newest first, every sign-in with the right
code, every wrong code, a lock after wrong codes, every completed download and every
image view (the portal viewer's and the DICOMweb ones, each audited once per session or
token and study), for the patient's own link and for each share made from it, with the
date and time (UTC) and who: "you", or the clinician's masked address
(``j•••@example.org``). An active share has its "stop sharing" button beside its rows,
and each share lets the patient choose to be emailed at every opening (the default) or
only the first (``POST /files/share/{id}/notify``, :mod:`portal.share_notify`).

Where it comes from: the audit trail (:mod:`store.audit`), whose events already name the
grant as the actor (``patient:grant-12``, ``clinician:grant-13``) and the request by its
reference (indexed); nothing is recorded twice. A clinician's grant gets none of it:
:func:`access_sections` answers an empty history for any grant that is not a patient's,
and the template shows the section to the patient only.

Nothing here writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from babel.dates import format_datetime
from sqlalchemy import select
from sqlalchemy.orm import Session

from delivery.i18n import locale_name
from portal.context import PortalContext
from portal.grantsession import mask
from portal.more_time import may_extend
from store.audit import Outcome
from store.models import AuditEvent, Grant, ReleaseRequest

#: Rows shown (the newest); older ones stay in the audit trail for staff.
LIMIT = 200


@dataclass(frozen=True)
class HistoryRow:
    """One line of the history. ``what``: ``opened``, ``wrong_code``, ``locked``,
    ``downloaded``, ``viewed`` or ``viewer_app``; ``who`` is empty for the patient."""

    at: str  # ISO 8601, UTC (the <time> element's datetime)
    when: str  # the date and time as the page's language writes it, in UTC
    what: str
    who: str
    share_id: int | None
    share_active: bool


@dataclass(frozen=True)
class ShareChoice:
    """A share whose access emails the patient may choose."""

    grant_id: int
    who: str
    every: bool


def classify(event: AuditEvent) -> str:
    """What an audit event of a grant means to the patient (see :class:`HistoryRow`)."""
    if event.kind == "login":
        return "opened" if event.outcome == int(Outcome.SUCCESS) else "wrong_code"
    if event.kind == "security-alert":
        return "locked"
    if event.detail.startswith("DICOMweb"):
        return "viewer_app"
    if event.kind == "export" and event.detail.startswith("downloaded"):
        return "downloaded"
    return "viewed"


def _when(at: datetime, lang: str) -> str:
    return format_datetime(at, format="medium", tzinfo=UTC, locale=locale_name(lang)) + " UTC"


def history(s: Session, grant: Grant, now: datetime, lang: str) -> list[HistoryRow]:
    """The access history of the patient's ``grant`` and its shares, newest first
    (at most :data:`LIMIT` rows); empty for a clinician's grant."""
    if grant.purpose == "forward":
        return []
    reference = s.scalar(
        select(ReleaseRequest.reference).where(ReleaseRequest.id == grant.request_id)
    )
    if reference is None:
        return []
    shares = s.scalars(select(Grant).where(Grant.parent_grant_id == grant.id)).all()
    by_actor: dict[str, Grant | None] = {f"patient:grant-{grant.id}": None}
    for child in shares:
        by_actor[f"clinician:grant-{child.id}"] = child
    events = s.scalars(
        select(AuditEvent)
        .where(AuditEvent.request_ref == reference, AuditEvent.actor.in_(list(by_actor)))
        .order_by(AuditEvent.at.desc(), AuditEvent.id.desc())
        .limit(LIMIT)
    ).all()
    rows = []
    for event in events:
        share = by_actor.get(event.actor)
        active = share is not None and share.revoked_at is None and now < share.expires_at
        rows.append(
            HistoryRow(
                at=event.at.astimezone(UTC).isoformat(timespec="seconds"),
                when=_when(event.at, lang),
                what=classify(event),
                who="" if share is None else mask(f"email:{share.recipient_email}"),
                share_id=None if share is None else share.id,
                share_active=active,
            )
        )
    return rows


def share_choices(s: Session, grant: Grant, now: datetime) -> list[ShareChoice]:
    """The patient's shares still in use (not stopped, not expired), newest first."""
    if grant.purpose == "forward":
        return []
    shares = s.scalars(
        select(Grant)
        .where(
            Grant.parent_grant_id == grant.id,
            Grant.revoked_at.is_(None),
            Grant.expires_at > now,
        )
        .order_by(Grant.id.desc())
    ).all()
    return [
        ShareChoice(g.id, mask(f"email:{g.recipient_email}"), bool(g.notify_every_access))
        for g in shares
    ]


def access_sections(ctx: PortalContext, s: Session, grant: Grant, lang: str) -> dict[str, Any]:
    """What the files page's patient-only sections need (``patient/files_history``):
    the access history, the shares' email choices and whether the patient may extend
    the link themselves (:mod:`portal.more_time`). Empty for a clinician's grant."""
    if grant.purpose == "forward":
        return {"history": [], "share_choices": [], "can_extend": False, "extend_days": 0}
    now = ctx.clock()
    days = ctx.delivery.patient_extend_days
    return {
        "history": history(s, grant, now, lang),
        "share_choices": share_choices(s, grant, now),
        "can_extend": may_extend(s, grant, days),
        "extend_days": days,
        "more_time": None,
    }


__all__ = ["LIMIT", "HistoryRow", "ShareChoice", "access_sections", "classify", "history"]
