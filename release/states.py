"""Request states and the one table of allowed transitions.

The main line is ``pending → receiving → ready → packaging → notified → downloaded``;
a request to a DICOM destination (hospital-to-hospital) goes ``ready → packaging →
delivered`` instead, ``packaging`` then meaning "sending".
Side exits: ``overdue`` (selected studies not received in time: staff are alerted and
may fall back to a CD; late studies can still complete it), ``failed`` (permanent
delivery failure: staff are alerted and may try again), ``expired`` (the link's life
ended, or an overdue request was given up) and ``cancelled`` (by staff, from any state
that is not final). ``expired``, ``cancelled`` and ``delivered`` are final.

Why the less obvious moves exist:

- ``pending → ready``: every selected study was already here and stable when the
  request was matched, so it never spent time receiving.
- ``ready → receiving``: a selected study changed (new instances) before packaging.
- ``packaging → ready``: packaging was interrupted (a crash, the store busy) and is retried.
- ``failed → ready``: staff asked to deliver again after fixing the cause.
- ``packaging → delivered``: the receiving hospital acknowledged every instance by
  C-STORE (and committed them, where storage commitment was asked). Its own state,
  not ``notified``: there is no link to expire, resend or revoke, nothing for a patient
  to download. Final, so the studies' retention counts from then on.
- ``packaging → ready`` also ends a DICOM send attempt that must be retried (peer down,
  instances refused); the destination row says when the next attempt is due.
"""

from __future__ import annotations

from store.models import RequestState

S = RequestState

TRANSITIONS: dict[RequestState, frozenset[RequestState]] = {
    S.PENDING: frozenset({S.RECEIVING, S.READY, S.OVERDUE, S.CANCELLED}),
    S.RECEIVING: frozenset({S.READY, S.OVERDUE, S.CANCELLED}),
    S.READY: frozenset({S.PACKAGING, S.RECEIVING, S.CANCELLED}),
    S.PACKAGING: frozenset({S.NOTIFIED, S.DELIVERED, S.READY, S.FAILED, S.CANCELLED}),
    S.NOTIFIED: frozenset({S.DOWNLOADED, S.EXPIRED, S.FAILED, S.CANCELLED}),
    S.DOWNLOADED: frozenset({S.EXPIRED, S.CANCELLED}),
    S.OVERDUE: frozenset({S.RECEIVING, S.READY, S.EXPIRED, S.CANCELLED}),
    S.FAILED: frozenset({S.READY, S.CANCELLED}),
    S.EXPIRED: frozenset(),
    S.CANCELLED: frozenset(),
    S.DELIVERED: frozenset(),
}
"""For each state, the states a request may move to from it."""

FINAL: frozenset[RequestState] = frozenset(s for s, targets in TRANSITIONS.items() if not targets)
"""States a request never leaves (but for :data:`REOPEN`)."""

REOPEN: dict[RequestState, frozenset[RequestState]] = {
    S.EXPIRED: frozenset({S.NOTIFIED, S.DOWNLOADED}),
}
"""The one way back out of a final state, and not in :data:`TRANSITIONS` (no staff,
API or CLI move makes it): the patient's own "Ask for more time" on their expired link
within ``portal.reopen_expired_days`` of its expiry, while the package's files are kept
(:func:`portal.more_time.ask`). The request goes back to the state it expired from; the
move is on its timeline and audited (``link-reopened``)."""

JOINABLE: tuple[RequestState, ...] = (S.PENDING, S.RECEIVING)
"""States in which arriving studies may still be attached to a request."""

RESENDABLE: frozenset[RequestState] = frozenset({S.NOTIFIED, S.DOWNLOADED, S.FAILED})
"""States in which a link was (or should have been) sent, so a resend makes sense."""


def allowed(from_state: RequestState, to_state: RequestState) -> bool:
    """True when the table allows ``from_state → to_state``."""
    return to_state in TRANSITIONS[from_state]
