"""What every DICOMweb route shares: the bearer token, the grant's scope, the answers.

- **Who**: ``Authorization: Bearer <token>`` only (cookies are never read here, so a
  page on another origin cannot ride a patient's session). No token: 401; a malformed,
  forged or expired one: 401 (``WWW-Authenticate: Bearer error="invalid_token"``); a
  genuine token whose grant is no longer live (:mod:`release.links`: revoked, its share
  stopped, locked or made from a locked link, expired, the request closed, the package
  deleted): 403. Refusals count per client
  address against ``portal.rate_limit_per_min`` (429 beyond: token guessing is slow);
  genuine tokens' calls count per grant (all its tokens together) against
  ``portal.dicomweb_requests_per_min``.
- **What**: the studies attached to the grant's request, their series and their stored
  instances (not marked missing), nothing else: any other UID is 404, the same answer
  whether it exists elsewhere or not.
- **Answers**: JSON (``{"detail": ...}``) for refusals, never echoing a UID; CORS for a
  viewer on another origin (any origin, no credentials: the token travels in a header
  the preflight allows).
- **Audit**: the first retrieval of a study by a token is recorded once on the request's
  timeline and in the audit trail (PS3.15 Export), not one event per frame; the first
  search by a token once as a Query.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from fastapi import Request
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.context import PortalContext
from portal.dicomweb_token import check
from portal.grantsession import actor, audit, client_address
from portal.studyzip import request_studies
from portal.viewer_data import viewer_folder
from release.links import link_live
from store.audit import record as audit_event
from store.db import writing
from store.models import Grant, Instance, Package, ReleaseRequest, RequestEvent, Series, Study

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    # Warning: a partial retrieve says so there (portal.dicomweb_partial).
    "Access-Control-Expose-Headers": "Content-Type, Content-Length, WWW-Authenticate, Warning",
}
PREFLIGHT_HEADERS = {
    **CORS_HEADERS,
    "Access-Control-Allow-Methods": "GET, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Accept",
    "Access-Control-Max-Age": "600",
}


def refusal(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """A JSON refusal with the CORS headers (a viewer on another origin can read why)."""
    return JSONResponse({"detail": detail}, status, headers={**CORS_HEADERS, **(headers or {})})


@dataclass(frozen=True)
class Scope:
    """A live grant as DICOMweb sees it: its request and the studies it opens."""

    grant_id: int
    request_id: int
    reference: str
    actor: str
    token_name: str
    studies: dict[str, int]  # Study Instance UID -> studies.id, in the page's order
    numbers: dict[str, int] = field(default_factory=dict)  # UID -> 1-based position
    # Report instances the report policy withholds (release.reports.withheld_instances):
    # never found, listed or retrieved.
    withheld: frozenset[int] = frozenset()
    # The grant's package's viewer folder, where metadata is kept (portal.viewer_data
    # .viewer_folder), and the package's own folder (nothing is kept once it is gone);
    # None without a package.
    cache: Path | None = None
    package_folder: Path | None = None


def _bearer(request: Request) -> str | None:
    value = request.headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()[:256]


def _scope(ctx: PortalContext, grant_id: int, name: str, now: datetime) -> Scope | None:
    with ctx.sessions() as s:
        grant = s.get(Grant, grant_id)
        if grant is None or not link_live(s, grant, now):
            return None
        reference = s.scalar(
            select(ReleaseRequest.reference).where(ReleaseRequest.id == grant.request_id)
        )
        rows = request_studies(s, grant.request_id)
        package = s.get(Package, grant.package_id) if grant.package_id else None
        return Scope(
            grant_id=grant.id,
            request_id=grant.request_id,
            reference=reference or "",
            actor=actor(grant),
            token_name=name,
            studies={row.study_uid: row.id for row in rows},
            numbers={row.study_uid: k for k, row in enumerate(rows, start=1)},
            withheld=frozenset(ctx.withheld(s, grant.request_id)),
            cache=viewer_folder(ctx, package) if package else None,
            package_folder=ctx.package_dir / package.folder if package else None,
        )


def authorize(ctx: PortalContext, request: Request) -> Scope | JSONResponse:
    """The caller's scope, or the refusal to send (see the module docstring). Reads the
    database: call it on a worker thread."""
    if ctx.content is None:
        return refusal(404, "this node serves no DICOMweb")
    address = client_address(request)
    token = _bearer(request)
    if token is None:
        failure = refusal(
            401,
            "a DICOMweb token is required: send Authorization: Bearer <token>",
            {"WWW-Authenticate": 'Bearer realm="dicomweb"'},
        )
    else:
        now = ctx.clock()
        checked = check(ctx.keys, token, now)
        if checked.status == "ok":
            # Per grant, before any database read: a new token for the same link (one
            # per click on the files page) does not reset the count.
            limit = ctx.portal.dicomweb_requests_per_min
            if not ctx.limiter.allow(f"dicomweb:grant-{checked.grant_id}", limit, 60):
                return refusal(429, "too many requests; wait a minute", {"Retry-After": "60"})
            scope = _scope(ctx, checked.grant_id, checked.name, now)
            if scope is not None:
                return scope
            failure = refusal(403, "this link was stopped or has expired; ask for a new one")
        else:
            why = "expired" if checked.status == "expired" else "not valid"
            failure = refusal(
                401,
                f"the DICOMweb token is {why}; ask for a new one on the files page",
                {"WWW-Authenticate": 'Bearer realm="dicomweb", error="invalid_token"'},
            )
    if not ctx.limiter.allow(f"dicomweb-refused:{address}", ctx.portal.rate_limit_per_min, 60):
        return refusal(429, "too many refused requests; wait a minute", {"Retry-After": "60"})
    return failure


# -- what a scope may reach ------------------------------------------------------------


@dataclass(frozen=True)
class Stored:
    """One instance within a scope, and where its file is."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    instance_number: str
    relpath: str
    sha256: str  # of the stored file, as indexed: what its cached metadata is keyed by
    size_bytes: int = -1  # of the stored file, as indexed (-1: not checked)


def _number(value: str) -> tuple[int, str]:
    try:
        return int(value), value
    except ValueError:
        return 1 << 62, value


def instances(
    s: Session,
    scope: Scope,
    study_uid: str,
    series_uid: str | None = None,
    sop_uid: str | None = None,
) -> list[Stored]:
    """The scope's stored instances of ``study_uid`` (and ``series_uid``, ``sop_uid``),
    by series then instance number; empty when any of them is outside the scope."""
    study_id = scope.studies.get(study_uid)
    if study_id is None:
        return []
    q = (
        select(Instance, Series.series_uid)
        .join(Series, Series.id == Instance.series_id)
        .where(Instance.study_id == study_id, Instance.file_missing.is_(False))
    )
    if series_uid is not None:
        q = q.where(Series.series_uid == series_uid, Series.study_id == study_id)
    if sop_uid is not None:
        q = q.where(Instance.sop_instance_uid == sop_uid)
    rows = s.execute(q.order_by(Series.id, Instance.id)).all()
    rows = [row for row in rows if row[0].id not in scope.withheld]
    found = [
        Stored(
            study_uid,
            series,
            inst.sop_instance_uid,
            inst.sop_class_uid,
            inst.transfer_syntax_uid,
            inst.instance_number,
            inst.path,
            inst.sha256,
            inst.size_bytes,
        )
        for inst, series in rows
    ]
    order = {uid: k for k, uid in enumerate(dict.fromkeys(x.series_uid for x in found))}
    found.sort(key=lambda x: (order[x.series_uid], _number(x.instance_number)))
    return found


def series_rows(s: Session, scope: Scope, study_uid: str) -> list[Series]:
    """The series of a study in the scope (none when the study is not)."""
    study_id = scope.studies.get(study_uid)
    if study_id is None:
        return []
    rows = list(s.scalars(select(Series).where(Series.study_id == study_id).order_by(Series.id)))
    if not scope.withheld:
        return rows
    # A series whose every instance is withheld (the report's own series) is not shown.
    shown = set(
        s.scalars(
            select(Instance.series_id)
            .where(Instance.study_id == study_id, Instance.id.not_in(list(scope.withheld)))
            .distinct()
        )
    )
    return [row for row in rows if row.id in shown]


def study_rows(s: Session, scope: Scope) -> list[Study]:
    """The scope's studies, in the page's order."""
    ids = list(scope.studies.values())
    rows = {row.id: row for row in s.scalars(select(Study).where(Study.id.in_(ids)))}
    return [rows[i] for i in ids if i in rows]


# -- audit, once per token and study ---------------------------------------------------

_AUDITED_LOCK = threading.Lock()
_AUDITED_MAX = 50_000


def _remembered(request: Request) -> set[tuple[str, str]]:
    """What this app has audited already (kept on the app: one set per node)."""
    state = request.app.state
    with _AUDITED_LOCK:
        seen: set[tuple[str, str]] | None = getattr(state, "dicomweb_audited", None)
        if seen is None:
            seen = set()
            state.dicomweb_audited = seen
        return seen


def audit_once(ctx: PortalContext, request: Request, scope: Scope, study_uid: str | None) -> None:
    """Record the token's first retrieval of ``study_uid`` (None: its first search),
    once: remembered by the app, and looked up on the timeline before writing (several
    processes, a restart) in the transaction that writes, under a lock on the grant, so
    parallel first requests write one event. Call on a worker thread."""
    remembered = _remembered(request)
    key = (scope.token_name, study_uid or "")
    with _AUDITED_LOCK:
        if key in remembered:
            return
    if study_uid is None:
        reason = f"DICOMweb: studies searched with token {scope.token_name}"
        kind, detail, studies = "query", "DICOMweb search (QIDO-RS)", []
    else:
        number = scope.numbers.get(study_uid, 0)
        reason = f"DICOMweb: study {number} retrieved with token {scope.token_name}"
        kind, detail, studies = "export", "DICOMweb retrieve (WADO-RS)", [study_uid]
    now = ctx.clock()
    # Look and write in one transaction holding the grant: SQLite's write lock (taken
    # by writing() before the look), PostgreSQL's lock on the grant's row (FOR UPDATE),
    # so parallel first requests, in this process or another node, write one event.
    with ctx.sessions() as s, writing(s):
        grant = s.scalar(select(Grant).where(Grant.id == scope.grant_id).with_for_update())
        if grant is None:
            return
        seen = s.scalar(
            select(RequestEvent.id).where(
                RequestEvent.request_id == scope.request_id, RequestEvent.reason == reason
            )
        )
        if seen is None:
            audit(s, grant, reason, now)
            audit_event(
                s,
                kind,
                actor=scope.actor,
                studies=studies,
                request=scope.reference,
                detail=detail,
                at=now,
            )
            s.commit()
    with _AUDITED_LOCK:
        if len(remembered) >= _AUDITED_MAX:
            remembered.clear()
        remembered.add(key)
