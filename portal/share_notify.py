"""The patient's choice, per share, of the "your shared link was used" emails:
``POST /files/share/{id}/notify`` with ``notify=every`` (the default: an email at every
opening with the code, as before) or ``notify=first`` (only the first opening).

Only the patient who made the share can choose (another grant's share is a 404, a
clinician's session a 403); CSRF first (403), then ``portal.rate_limit_per_min``
posts per client address (429); the choice is on the request's timeline. The
code check (:mod:`portal.access`) reads it when the share is opened.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from portal.filespage import render_files
from portal.grantsession import (
    audit,
    checked_post,
    lock_grant,
    own_share,
    patient_grant,
    portal,
)
from store.db import writing
from store.models import Grant

router = APIRouter()
CHOICES = {"every": True, "first": False}


@router.post("/files/share/{grant_id}/notify", include_in_schema=False)
async def notify(request: Request, grant_id: int) -> Response:
    """Save the share's email choice and show the files page again."""
    form, refused = await checked_post(request)
    if refused is not None:
        return refused
    every = CHOICES.get(form.get("notify", ""))
    if every is None:
        return Response(status_code=400)
    ctx = portal(request)

    def run() -> Response:
        now = ctx.clock()
        with ctx.sessions() as s:
            grant = patient_grant(s, request, ctx)
            if not isinstance(grant, Grant):
                return grant
            child_id = own_share(s, grant, grant_id)
            if child_id is None:
                return Response(status_code=404)
            with writing(s):
                child = lock_grant(s, child_id)
                if bool(child.notify_every_access) != every:
                    child.notify_every_access = every
                    when = "every opening" if every else "the first opening only"
                    audit(s, grant, f"share grant {child.id}: patient emailed at {when}", now)
                s.commit()
                return render_files(request, ctx, s, grant, notice="notify_saved")

    return await run_in_threadpool(run)
