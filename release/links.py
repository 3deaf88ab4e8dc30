"""Whether a link (a :class:`~store.models.Grant`) is live: the one rule.

The portal asks it when a link, a session, a download or a DICOMweb token is used
(:mod:`portal.grantsession`, :mod:`portal.dicomweb_scope`); delivery asks it again
when a message about a link is composed later than it was queued (a reminder, a
corrected report: :mod:`delivery.reminders`, :mod:`delivery.compose`). One rule, so a
link the portal refuses is never advertised by email, and the other way round.

A link is live at ``now`` when all of these hold:

- it is not revoked (staff, or the patient stopping a share), not locked (too many
  wrong codes) and not expired;
- its package exists and its files are not deleted;
- its request is in :data:`LIVE_STATES`: any state that is not final (a cancelled,
  expired or hospital-delivered request has no working link). An allowed set rather
  than a dead one, so a missing request or a state added later fails closed;
- for a clinician's share (``parent_grant_id`` set): the patient's link it was made
  from exists and is neither revoked nor locked. A locked parent means someone was
  guessing the patient's code: patient data must not keep flowing through a share of
  it until staff unlock the link.

A message may add its own narrower test on top (a reminder only while nothing was
downloaded); it never widens this one.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from release.states import FINAL
from store.models import Grant, Package, ReleaseRequest, RequestState

LIVE_STATES: frozenset[str] = frozenset(s.value for s in RequestState if s not in FINAL)
"""Request states in which the request's links work (every state that is not final)."""


def judge(
    grant: Grant,
    *,
    state: str | None,
    package: Package | None,
    parent: Grant | None,
    now: datetime,
) -> bool:
    """The rule of the module on what the caller read: ``state`` is the grant's
    request's (None: no request), ``package`` its package row (None: none) and
    ``parent`` the grant a share was made from (ignored for a patient's grant)."""
    if grant.revoked_at is not None or grant.locked_at is not None:
        return False
    if now >= grant.expires_at:
        return False
    if grant.package_id is None or package is None or package.deleted_at is not None:
        return False
    if state not in LIVE_STATES:
        return False
    if grant.parent_grant_id is None:
        return True
    return parent is not None and parent.revoked_at is None and parent.locked_at is None


def request_state(s: Session, grant: Grant) -> str | None:
    """The state of ``grant``'s request (None: no such request)."""
    return s.scalar(select(ReleaseRequest.state).where(ReleaseRequest.id == grant.request_id))


def link_live(s: Session, grant: Grant | None, now: datetime) -> bool:
    """Whether ``grant`` is live at ``now`` (the module's rule), read in ``s``."""
    if grant is None:
        return False
    package = s.get(Package, grant.package_id) if grant.package_id is not None else None
    parent = s.get(Grant, grant.parent_grant_id) if grant.parent_grant_id is not None else None
    return judge(grant, state=request_state(s, grant), package=package, parent=parent, now=now)


__all__ = ["LIVE_STATES", "judge", "link_live", "request_state"]
