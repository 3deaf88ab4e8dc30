"""Which actions a request's staff page offers (:mod:`portal.staff_actions` does them).

Only what is shown: each action checks again in its own transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

from portal.staff_story import GrantLine, Story
from release.states import RESENDABLE, allowed
from store.models import ReleaseRequest, RequestState

LIVE = (RequestState.NOTIFIED, RequestState.DOWNLOADED)
"""States in which a request's links are in use (a package exists and is kept)."""


@dataclass(frozen=True)
class Choices:
    """Which actions the request page offers, and on which links. The action itself
    checks again, in its transaction: this only decides what is shown."""

    resend: bool
    revoke: list[GrantLine]
    extend: list[GrantLine]
    reissue: list[GrantLine]
    cd: bool
    cancel: bool


def choices(req: ReleaseRequest, told: Story) -> Choices:
    state = RequestState(req.state)
    live = state in LIVE
    grants = told.grants
    return Choices(
        resend=state in RESENDABLE
        and any(g.state == "active" and g.purpose == "patient" for g in grants),
        revoke=[g for g in grants if g.state in ("active", "locked")],
        extend=[g for g in grants if live and g.state in ("active", "expired")],
        reissue=[g for g in grants if live and g.state == "locked" and g.purpose == "patient"],
        cd=state != RequestState.CANCELLED and not told.marked_for_cd,
        cancel=allowed(state, RequestState.CANCELLED),
    )
