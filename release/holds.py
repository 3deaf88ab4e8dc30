"""Which requests a release hold keeps back now: the kinds of hold and their SQL.

The release policy (:mod:`release.embargo`) sets ``hold_kind`` and ``hold_until`` on a
request; this module says what they mean at an instant, for the batch's claim and for
everyone who lists held requests (the staff pages, the REST API, ``courier request list
--held``), without loading the policy itself (``courier request list`` stays quick).

Imports nothing of ours but ``store``.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, and_, or_

from store.models import ReleaseRequest, RequestState

NONE, EMBARGO, REPORT, STAFF = "", "embargo", "report", "staff"
#: The report did not come by ``max_wait`` and the policy says ``hold_for_staff``: held
#: until a staff member decides (no end). Not ``staff``, which a staff member set: the
#: lists, the API and the CLI tell the two apart. Rows held so before this kind existed
#: keep ``staff``.
MAX_WAIT = "max_wait_passed"
#: A rule that attached one of the request's studies was renamed or removed since: its
#: release policy is unknown, so the request is held until a staff member decides (no
#: end; never released under the site default). Rows held so before this kind existed
#: keep ``staff``.
RULE_MISSING = "rule_missing"
#: Kinds whose reason is the release policy's own line on the timeline (the deadline and
#: the ``max_wait``; the lost rule's name): :func:`release.embargo.policy_reasons`.
EXPLAINED = (MAX_WAIT, RULE_MISSING)
#: States in which staff may still hold or release a request (before packaging).
HOLDABLE = (
    RequestState.PENDING,
    RequestState.RECEIVING,
    RequestState.READY,
    RequestState.OVERDUE,
)


def releasable(now: datetime) -> ColumnElement[bool]:
    """The SQL condition of a ready request its hold lets go at ``now`` (the batch's)."""
    return or_(
        ReleaseRequest.hold_kind == NONE,
        and_(
            ReleaseRequest.hold_kind.in_([EMBARGO, STAFF]),
            ReleaseRequest.hold_until.is_not(None),
            ReleaseRequest.hold_until <= now,
        ),
    )


#: What staff may ask the lists for: any hold, or one kind (``held_now``'s ``kind``).
HOLD_FILTERS = ("held", EMBARGO, REPORT, MAX_WAIT, RULE_MISSING, STAFF)


def held_now(now: datetime, kind: str = "held") -> ColumnElement[bool]:
    """The SQL condition of a request a hold keeps back at ``now``: not yet packaged
    (:data:`HOLDABLE`), and its hold not over (:func:`releasable` false). ``kind`` narrows
    it to one kind (``embargo``, ``report``, ``max_wait_passed``, ``rule_missing``,
    ``staff``); ``held``:
    any. What the staff pages, the REST API and ``courier request list --held`` show as
    held."""
    if kind not in HOLD_FILTERS:
        raise ValueError(f"hold filter {kind!r}: choose one of {', '.join(HOLD_FILTERS)}")
    found = and_(
        ReleaseRequest.state.in_(HOLDABLE),
        ReleaseRequest.hold_kind != NONE,
        ~releasable(now),
    )
    return found if kind == "held" else and_(found, ReleaseRequest.hold_kind == kind)


def needs_staff() -> ColumnElement[bool]:
    """The SQL condition of a hold only a staff member ends: ``max_wait_passed``,
    ``rule_missing``, or ``staff`` with no end (combine it with :func:`held_now`)."""
    return or_(
        ReleaseRequest.hold_kind.in_([MAX_WAIT, RULE_MISSING]),
        and_(ReleaseRequest.hold_kind == STAFF, ReleaseRequest.hold_until.is_(None)),
    )


def is_free(req: ReleaseRequest, now: datetime) -> bool:
    """:func:`releasable` for one loaded row."""
    if req.hold_kind == NONE:
        return True
    return (
        req.hold_kind in (EMBARGO, STAFF) and req.hold_until is not None and req.hold_until <= now
    )


def held_at(req: ReleaseRequest, now: datetime) -> bool:
    """:func:`held_now` for one loaded row."""
    return RequestState(req.state) in HOLDABLE and not is_free(req, now)
