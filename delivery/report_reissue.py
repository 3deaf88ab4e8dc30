"""Report-update emails and re-issued links: the corrected report still reaches a patient
whose link was locked and then re-issued by staff.

A link locked by wrong codes gets its report part but not the email: the composer drops
it (:data:`delivery.compose.REPORT_UPDATE_DROPPED`). When staff re-issue the locked link
(:func:`portal.staff_actions.reissue`), :func:`queue_again` moves that email to the new
link and queues it once more. An email the relay held (``sending``) at the re-issue is
out of its reach: the relay drops it moments later, and each sweep of
:class:`delivery.report_updates.ReportUpdates` then moves it to the link re-issue made
(:func:`follow`, :func:`requeue_dropped`).

May import: SQLAlchemy, :mod:`store`, :mod:`release` and :mod:`delivery`'s own compose
and audit helpers; nothing of the web app.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from delivery.compose import REPORT_UPDATE_DROPPED, REPORT_UPDATE_STATES
from release.links import link_live, request_state
from release.progress import note
from store.catalog import guarded
from store.models import Grant, Notification, NotificationState, ReleaseRequest

log = logging.getLogger("courier.delivery.report_updates")
ACTOR = "delivery"
KIND = "report_update_email"
#: Old links read per sweep at most.
PAGE = 1000
#: Re-issues followed from a dropped email's link at most (a new link locked and
#: re-issued in turn before the sweep came round).
HOPS = 8


def follow(sessions: sessionmaker[Session], now: datetime) -> list[int]:
    """Queue for the new link the report-update emails the relay dropped because
    their link was locked and then re-issued (:func:`requeue_dropped`, one
    transaction per old link); returns the outbox rows queued. Only links not yet
    past their expiry are read (the new link inherits it), at most :data:`PAGE`.
    Never raises for one link (logged, tried again at the next sweep)."""
    with guarded(sessions) as s:
        old_ids = list(
            s.scalars(
                select(Grant.id)
                .join(Notification, Notification.grant_id == Grant.id)
                .where(
                    Notification.kind == KIND,
                    Notification.state == NotificationState.FAILED,
                    Notification.last_error == REPORT_UPDATE_DROPPED,
                    Grant.revoked_at.is_not(None),
                    Grant.locked_at.is_not(None),
                    Grant.expires_at > now,
                )
                .distinct()
                .order_by(Grant.id)
                .limit(PAGE)
            )
        )
    moved = []
    for old_id in old_ids:
        try:
            with guarded(sessions) as s, s.begin():
                nid = requeue_dropped(s, old_id, now)
        except Exception as exc:  # one link's trouble never stops the others
            log.error("report update of link %d not followed (%s)", old_id, type(exc).__name__)
            continue
        if nid is not None:
            log.info("notification %d: report update queued for link %d's successor", nid, old_id)
            moved.append(nid)
    return moved


def queue_again(s: Session, old_grant_id: int, new_grant_id: int, now: datetime) -> int | None:
    """Queue for the link ``new_grant_id`` the corrected-report email that the locked
    link ``old_grant_id`` (now revoked: staff re-issued it) did not get, in ``s``'s
    transaction; returns the outbox row's id, or None when there was none.

    The newest such row counts: dropped by the composer because the link was locked
    (``failed`` with :data:`~delivery.compose.REPORT_UPDATE_DROPPED`), or still
    ``queued`` (it would be dropped: the old link no longer works). One email, however
    many corrections were missed: it says only that an updated report is there. The
    row itself moves to the new link (its message id, never sent, stays), so it is
    queued once: the conditional UPDATE matches only while the row still names the old
    link (row count 1: this transaction won); a second node re-issuing the same link
    at the same time waits for the first's row lock, then matches nothing.

    A row ``sending`` is left alone: a relay holds it, and moving it under the relay
    could send it twice (its ``sent`` would land on a row another relay has claimed
    again). The relay then drops it (the old link is revoked) and the next sweep moves
    it (:func:`requeue_dropped`), unless this function queued one already."""
    nid = s.scalar(
        select(Notification.id)
        .where(
            Notification.kind == KIND,
            Notification.grant_id == old_grant_id,
            or_(
                Notification.state == NotificationState.QUEUED,
                and_(
                    Notification.state == NotificationState.FAILED,
                    Notification.last_error == REPORT_UPDATE_DROPPED,
                ),
            ),
        )
        .order_by(Notification.id.desc())
        .limit(1)
    )
    if nid is None:
        return None
    won = _move(
        s,
        nid,
        old_grant_id,
        new_grant_id,
        now,
        Notification.state.in_((NotificationState.QUEUED, NotificationState.FAILED)),
    )
    return nid if won == 1 else None


def successor(s: Session, grant: Grant) -> Grant | None:
    """The link a staff re-issue made to replace ``grant``, or None.

    Re-issue (:func:`portal.staff_actions.reissue`) keeps no pointer from the old link to
    the new: in one transaction it revokes the locked patient link at ``now`` and makes
    the new one for the same request and package, ``created_at`` that same ``now``. That
    pair is what is matched: a patient link both locked and revoked, and the first
    patient link (not a share) of its request and package created at its revocation."""
    if grant.purpose != "patient" or grant.locked_at is None or grant.revoked_at is None:
        return None
    return s.scalars(
        select(Grant)
        .where(
            Grant.request_id == grant.request_id,
            Grant.package_id == grant.package_id,
            Grant.purpose == "patient",
            Grant.parent_grant_id.is_(None),
            Grant.id > grant.id,
            Grant.created_at == grant.revoked_at,
        )
        .order_by(Grant.id)
        .limit(1)
    ).first()


def requeue_dropped(s: Session, old_grant_id: int, now: datetime) -> int | None:
    """Queue for the live link that re-issue made to replace ``old_grant_id`` (following
    up to :data:`HOPS` re-issues) the newest report-update email the relay dropped for
    the old link, in ``s``'s transaction; returns the outbox row's id, or None.

    Why after the drop and not at it: a row ``sending`` at the re-issue (a relay
    composing it, or one stranded by a dead relay) is the relay's until it records the
    outcome, and the relay records ``failed`` unconditionally; only once the row is
    ``failed`` (final: no relay touches it again) can it be moved with no chance of a
    second send. The move is a conditional UPDATE (still ``failed``, dropped, on the old
    link): row count 1 means this transaction queued it, so it is queued once.

    One email per re-issue, as :func:`queue_again`: nothing is queued when a
    report-update row already names the new link (or a link between): the re-issue
    moved one, or a later report queued its own. The old link's row is locked first, so
    a re-issue of it still in flight has committed (and its :func:`queue_again` is
    visible) before this one looks."""
    old = s.get(Grant, old_grant_id, with_for_update=True)
    chain: list[int] = []
    grant = old
    for _ in range(HOPS):
        grant = successor(s, grant) if grant is not None else None
        if grant is None:
            return None
        chain.append(grant.id)
        if link_live(s, grant, now) and request_state(s, grant) in REPORT_UPDATE_STATES:
            break
    else:
        return None
    assert grant is not None
    queued = s.scalar(
        select(Notification.id)
        .where(Notification.kind == KIND, Notification.grant_id.in_(chain))
        .limit(1)
    )
    nid = s.scalar(
        select(Notification.id)
        .where(
            Notification.kind == KIND,
            Notification.grant_id == old_grant_id,
            Notification.state == NotificationState.FAILED,
            Notification.last_error == REPORT_UPDATE_DROPPED,
        )
        .order_by(Notification.id.desc())
        .limit(1)
    )
    if queued is not None or nid is None:
        return None
    won = _move(
        s,
        nid,
        old_grant_id,
        grant.id,
        now,
        Notification.state == NotificationState.FAILED,
        Notification.last_error == REPORT_UPDATE_DROPPED,
    )
    if won != 1:
        return None
    req = s.get(ReleaseRequest, grant.request_id)
    if req is not None:
        note(
            s,
            req,
            ACTOR,
            f"the corrected-report email link #{old_grant_id} missed (it was being sent "
            f"when the link was re-issued) is queued again for link #{grant.id}",
            now,
        )
    return nid


def _move(
    s: Session,
    nid: int,
    old_grant_id: int,
    new_grant_id: int,
    now: datetime,
    *still: ColumnElement[bool],
) -> int:
    """Queue outbox row ``nid`` again for link ``new_grant_id``, if it is still the old
    link's and ``still`` holds (one conditional UPDATE: one winner); rows changed."""
    return int(
        s.execute(  # type: ignore[attr-defined]
            update(Notification)
            .where(Notification.id == nid, Notification.grant_id == old_grant_id, *still)
            .values(
                grant_id=new_grant_id,
                state=NotificationState.QUEUED,
                next_attempt_at=now,
                claimed_until=None,
                claimed_by=None,
                last_error="",
            )
            .execution_options(synchronize_session=False)
        ).rowcount
    )
