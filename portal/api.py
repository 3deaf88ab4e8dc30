"""The REST API for staff and RIS integration, under ``/api/v1``.

``create_app`` builds the app from its dependencies (a session factory, the configured
API key hashes, a clock), so tests and ``courier serve`` build it the same way. Every
route needs a staff API key (``Authorization: Bearer <key>`` or ``X-API-Key``): none
gives 401, an unknown one 403. Input is validated by :class:`release.validation.RequestDraft`,
the same as the CLI; errors are ``{"errors": [{"field", "message"}]}`` with 422. The
OpenAPI document is at ``/api/openapi.json``. Bodies are never logged.

``POST /requests/{ref}/cancel`` and ``/resend`` do what ``courier request cancel|resend``
do, through the same :class:`~release.requests.RequestBook` calls (and, for a resend,
:func:`delivery.outbox.queue_link_again` in the same transaction as the event): 404 for
an unknown reference, 409 when the request's state does not allow it or there is no
active link to send again.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import (
    APIRouter,
    Depends,
    FastAPI,
    HTTPException,
    Path,
    Query,
    Request,
    Response,
    Security,
)
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from delivery.outbox import Outbox, link_status, queue_link_again
from portal.accesslog import AccessLog
from portal.apikeys import KeyRing, actor_of, check_hashes
from portal.context import PortalContext
from portal.gate import DIGEST_STATE, ApiGate
from portal.http import Detail, ErrorList, SecurityHeaders, install_error_handlers
from portal.metrics import install_metrics
from portal.site import install_pages
from release.holds import held_now
from release.records import event_dict, request_dict
from release.requests import RequestBook
from release.validation import RequestDraft
from store.catalog import guarded
from store.models import ReleaseRequest, RequestState, Study, StudyState, utcnow

MAX_LIMIT = 500
_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <staff API key>")
_header_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="staff API key")

_REFUSALS: dict[int | str, dict[str, Any]] = {
    401: {"model": Detail, "description": "no API key"},
    403: {"model": Detail, "description": "unknown API key"},
    413: {"model": Detail, "description": "body over 256 KB"},
    415: {"model": Detail, "description": "body not sent as application/json"},
    422: {"model": ErrorList, "description": "bad input, one entry per field"},
    503: {"model": Detail, "description": "the index database is unavailable"},
}
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="at most this many, newest first")]
Held = Annotated[
    Literal["held", "embargo", "report", "max_wait_passed", "rule_missing", "staff"],
    Query(
        description="only requests a release hold keeps back now: any hold (held), or "
        "one kind: embargo, report (waiting for the final report), max_wait_passed (the "
        "report did not come by max_wait: held for staff to decide), rule_missing (a "
        "study's rule no longer exists: held for staff to decide), staff (held by staff)"
    ),
]


class CancelBody(BaseModel):
    """Why the request is cancelled (recorded on its timeline)."""

    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str, Field(max_length=2000)] = "cancelled through the API"


class ResendBody(BaseModel):
    """Why the link is sent again (recorded on the request's timeline)."""

    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str, Field(max_length=2000)] = "resend requested through the API"


@dataclass(frozen=True)
class _Deps:
    sessions: sessionmaker[Session]
    keys: KeyRing
    book: RequestBook
    outbox: Outbox
    clock: Callable[[], datetime]


def _deps(request: Request) -> _Deps:
    deps: _Deps = request.app.state.courier
    return deps


Deps = Annotated[_Deps, Depends(_deps)]


def _actor(
    request: Request,
    deps: Deps,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    header_key: Annotated[str | None, Security(_header_key)],
) -> str:
    key = bearer.credentials if bearer is not None else header_key
    if not key:
        raise HTTPException(
            401,
            "an API key is required: send Authorization: Bearer <key> or X-API-Key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    # The gate (portal.gate) has checked this very key already; else check it here.
    digest = getattr(request.state, DIGEST_STATE, None) or deps.keys.match(key)
    if digest is None:
        raise HTTPException(403, "unknown API key; ask an administrator for a valid one")
    return actor_of(digest)


Actor = Annotated[str, Depends(_actor)]
Ref = Annotated[str, Path(max_length=64, description="a reference like CR-7KQ4-M2XD-9, or an id")]
api = APIRouter(prefix="/api/v1", responses=_REFUSALS)


@api.post(
    "/requests",
    status_code=201,
    responses={
        200: {"description": "the same idempotency key: the existing request"},
        409: {"model": Detail, "description": "idempotency key reused for other content"},
    },
)
def create_request(
    draft: RequestDraft, response: Response, who: Actor, deps: Deps
) -> dict[str, Any]:
    """Create a release request (201), or return the one made earlier with the same
    idempotency key and content (200). The recipient is a person (``recipient_email``
    and ``second_channel``) or, with an optional ``destination`` object (``ae_title``,
    ``host``, ``port``, ``commitment``: auto, required or off), another hospital's DICOM
    node that receives the studies by C-STORE."""
    req, created = deps.book.submit(draft, who)
    if not created:
        response.status_code = 200
    return {**request_dict(req), "created": created}


@api.get("/requests")
def list_requests(
    who: Actor,
    deps: Deps,
    state: RequestState | None = None,
    held: Held | None = None,
    limit: Limit = 100,
) -> list[dict[str, Any]]:
    """Release requests, newest first, optionally only those in ``state``, and only
    those a release hold keeps back now (``held``: ``held`` any hold; ``embargo``,
    ``report``, ``max_wait_passed``, ``rule_missing``, ``staff``). ``link_email``: the
    latest link email's status (``queued``, ``accepted`` by the mail server, ``failed``)
    and since when; null when none was queued."""
    where = held_now(deps.clock(), held) if held else None
    rows = [request_dict(r) for r in deps.book.list(state=state, limit=limit, where=where)]
    links = link_status(deps.sessions, [r["id"] for r in rows])
    return [{**r, "link_email": links.get(r["id"])} for r in rows]


@api.get("/requests/{ref}", responses={404: {"model": Detail}})
def get_request(ref: Ref, who: Actor, deps: Deps) -> dict[str, Any]:
    """One request with its selection and its timeline (oldest event first)."""
    req = deps.book.get(ref)
    timeline = [event_dict(e) for e in deps.book.timeline(req.id)]
    link = link_status(deps.sessions, [req.id]).get(req.id)
    return {**request_dict(req), "link_email": link, "timeline": timeline}


@api.post(
    "/requests/{ref}/cancel",
    responses={404: {"model": Detail}, 409: {"model": Detail}},
)
def cancel_request(ref: Ref, body: CancelBody, who: Actor, deps: Deps) -> dict[str, Any]:
    """Cancel a request that is not expired or cancelled already."""
    event = deps.book.cancel(ref, who, body.reason)
    return {**request_dict(deps.book.get(event.request_id)), "event": event_dict(event)}


@api.post(
    "/requests/{ref}/resend",
    responses={
        404: {"model": Detail},
        409: {"model": Detail, "description": "no link sent yet, or none active to resend"},
    },
)
def resend_request(ref: Ref, body: ResendBody, who: Actor, deps: Deps) -> dict[str, Any]:
    """Queue the link email of the patient's active link again (a notified, downloaded
    or failed request); the state does not change."""

    def send(s: Session, req: ReleaseRequest) -> None:
        queue_link_again(s, deps.outbox, req, deps.clock())

    event = deps.book.resend(ref, who, body.reason, send=send)
    return {**request_dict(deps.book.get(event.request_id)), "event": event_dict(event)}


@api.get("/studies")
def list_studies(
    who: Actor, deps: Deps, state: StudyState | None = None, limit: Limit = 100
) -> list[dict[str, Any]]:
    """Received studies, most recently received first."""
    q = select(Study).order_by(Study.last_received_at.desc(), Study.id.desc()).limit(limit)
    if state is not None:
        q = q.where(Study.state == state)
    with guarded(deps.sessions) as s:
        return [study_dict(st) for st in s.scalars(q)]


def create_app(
    sessions: sessionmaker[Session],
    api_key_hashes: Sequence[str],
    clock: Callable[[], datetime] = utcnow,
    portal: PortalContext | None = None,
    metrics_allow: Sequence[str] | None = None,
) -> FastAPI:
    """The web app: the REST API, and with ``portal`` the patient and staff pages.

    ``api_key_hashes`` are :func:`portal.apikeys.hash_api_key` digests; a malformed one
    raises ValueError here, at start-up. Keys in the ``api_keys`` table are accepted
    too, looked up on each call; with neither, every API call is refused (403).
    Resends are queued in ``portal.outbox`` (the node's, with its Message-ID domain);
    without ``portal``, in an :class:`~delivery.outbox.Outbox` with its defaults.
    With ``metrics_allow`` (addresses or networks), ``GET /metrics`` serves Prometheus
    metrics to them (:mod:`portal.metrics`); without, there is no such route.
    """
    app = FastAPI(
        title="Courier",
        summary="Release requests and received studies, for staff and the RIS",
        version="1",
        openapi_url="/api/openapi.json",
        # No HTML docs: FastAPI's pages load an unpinned script from a public CDN on the
        # origin where staff cookies live. Read /api/openapi.json with a local tool.
        docs_url=None,
        redoc_url=None,
    )
    # The digests given here, and every key in the api_keys table (portal.apikeys).
    keys = KeyRing(check_hashes(api_key_hashes), sessions, clock)
    outbox = portal.outbox if portal is not None else Outbox(clock=clock)
    # The node's SMS number policy (sms.allowed_countries) comes with the portal's context.
    phones = portal.phones if portal is not None else None
    book = RequestBook(sessions, clock, phones=phones)
    app.state.courier = _Deps(sessions, keys, book, outbox, clock)
    app.include_router(api)
    if portal is not None:
        install_pages(app, portal)
    if metrics_allow is not None:
        install_metrics(app, sessions, metrics_allow)
    install_error_handlers(app)
    app.add_middleware(ApiGate, keys=keys)
    app.add_middleware(AccessLog)  # method, path (link tokens hashed), status, duration
    app.add_middleware(SecurityHeaders)  # outermost: its headers go on the gate's refusals
    return app


def study_dict(st: Study) -> dict[str, Any]:
    """A received study as plain data."""
    return {
        "id": st.id,
        "study_uid": st.study_uid,
        "patient_id": st.patient_id,
        "patient_name": st.patient_name,
        "patient_birth_date": st.patient_birth_date,
        "accession_number": st.accession_number,
        "study_date": st.study_date,
        "study_description": st.study_description,
        "modalities": st.modalities,
        "state": str(st.state),
        "instance_count": st.instance_count,
        "size_bytes": st.size_bytes,
        "calling_ae": st.calling_ae,
        "called_ae": st.called_ae,
        "first_received_at": st.first_received_at,
        "last_received_at": st.last_received_at,
        "stable_at": st.stable_at,
    }
