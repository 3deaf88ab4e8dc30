"""The audit trail: one append-only row per audited event, named as DICOM PS3.15 A.5 does.

Public surface: :func:`record` (in the caller's transaction, so the event commits or
rolls back with what it describes), :func:`record_now` (its own transaction, for events
that have none: start, stop), the read queries :func:`events` and :func:`after`, and
:data:`KINDS`, what each kind means in PS3.15 A.5.3 (Event ID, Event Type Code, Event
Action Code). Outcomes are the A.5 Event Outcome Indicator (:class:`Outcome`).

Nothing here updates or deletes an event, and the database refuses anyone who tries
(triggers, migration 0007). Exporters keep their watermark in ``audit_cursors``.

What a row may hold is checked, because an audit trail is copied to other systems:
participant objects are Study Instance UIDs (digits and dots) and a request reference
(``CR-…``); ``actor`` is a role and a name (``scp:PACS1``, ``staff:alice``,
``patient:grant-12``, ``node``). Never put a patient's name, ID, e-mail address or
phone number in ``detail``: say what happened and to which study or request.

Errors: :class:`AuditError` (a :class:`ValueError`) for a kind, actor, UID or reference
that is not acceptable; database failures surface as the caller's session raises them.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from store.models import AuditEvent, ReleaseRequest, RequestStudy, Study, utcnow


class AuditError(ValueError):
    """An audit event was given a value it must not hold (see the module docstring)."""


class Outcome(enum.IntEnum):
    """PS3.15 A.5 EventOutcomeIndicator."""

    SUCCESS = 0
    MINOR_FAILURE = 4  # the action failed but may be retried (a wrong password)
    SERIOUS_FAILURE = 8  # the action was not done (a purge that found its study changed)
    MAJOR_FAILURE = 12  # the action was made unavailable


@dataclass(frozen=True)
class Kind:
    """What one kind of event is in PS3.15 A.5.3: its Event ID, Event Type Code (if
    any) and Event Action Code (C create, R read, U update, D delete, E execute)."""

    event_id: str
    event_name: str
    action: str
    type_code: str = ""
    type_name: str = ""


#: Our kinds (the ``--type`` names) and their PS3.15 A.5.3 codes (DCM, CID 400-403).
KINDS: dict[str, Kind] = {
    "application-start": Kind("110100", "Application Activity", "E", "110120", "Application Start"),
    "application-stop": Kind("110100", "Application Activity", "E", "110121", "Application Stop"),
    # Received from a PACS: one event per study becoming stable (see scp.stability).
    "instances-stored": Kind("110104", "DICOM Instances Transferred", "C"),
    "begin-transferring": Kind("110102", "Begin Transferring DICOM Instances", "E"),
    # A received study's files purged (retention).
    "study-deleted": Kind("110105", "DICOM Study Deleted", "D"),
    # A package's files (copies of instances) purged after its link expired.
    "package-deleted": Kind("110103", "DICOM Instances Accessed", "D"),
    # Data leaving Courier's control: a package built, a disc image, a download.
    "export": Kind("110106", "Export", "R"),
    "query": Kind("110112", "Query", "E"),
    "login": Kind("110114", "User Authentication", "E", "110122", "Login"),
    "logout": Kind("110114", "User Authentication", "E", "110123", "Logout"),
    # A link locked after too many wrong codes: its security attributes changed.
    "security-alert": Kind(
        "110113", "Security Alert", "E", "110137", "User Security Attributes Changed"
    ),
    # A study held from a request because its patient identity disagrees (release.identity),
    # or staff keeping it held: who may receive the study changed.
    "identity-mismatch": Kind(
        "110113", "Security Alert", "E", "110135", "Object Security Attributes Changed"
    ),
    # Staff attached such a study anyway, with a reason: a safety check overridden.
    "identity-override": Kind(
        "110113", "Security Alert", "E", "110127", "Emergency Override Started"
    ),
    # Staff acted on a held study from the Studies page (attached it to a request, sent
    # it to the rules again, discarded it): who may receive the study changed.
    "held-study": Kind(
        "110113", "Security Alert", "E", "110135", "Object Security Attributes Changed"
    ),
    # Staff released a request before its release policy's hold ended (an embargo, the
    # wait for the report), or held it longer: when the patient may receive it changed.
    "release-hold": Kind(
        "110113", "Security Alert", "E", "110135", "Object Security Attributes Changed"
    ),
    # A patient reopened their expired link with "Ask for more time" (within
    # portal.reopen_expired_days): who may download the package changed again.
    "link-reopened": Kind(
        "110113", "Security Alert", "E", "110135", "Object Security Attributes Changed"
    ),
    # A staff/RIS API key made or revoked (CLI or the staff Keys page): who may call
    # the API changed.
    "api-key": Kind("110113", "Security Alert", "E", "110137", "User Security Attributes Changed"),
}

#: Names ``courier audit --type`` accepts beside the kinds.
GROUPS: dict[str, tuple[str, ...]] = {
    "purge": ("study-deleted", "package-deleted"),
    "authentication": ("login", "logout"),
    "identity": ("identity-mismatch", "identity-override"),
}

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_REFERENCE = re.compile(r"^[A-Z0-9][A-Z0-9-]{0,15}$")
# A role, then optionally ':' and a name without spaces (AE titles, user names, grant ids).
_ACTOR = re.compile(r"^[a-z]{2,16}(:[\x21-\x7e]{1,64})?$")
_HOST = re.compile(r"^[\x21-\x7e]{0,64}$")
DETAIL_MAX = 500


def safe_name(value: str) -> str:
    """``value`` made safe for an actor name or host: spaces and unprintable characters
    become ``_``, at most 64 characters."""
    return re.sub(r"[^\x21-\x7e]", "_", value.strip())[:64]


def actor_of(role: str, name: str = "") -> str:
    """The actor ``role:name`` (``scp:PACS1``, ``staff:alice``) with :func:`safe_name`;
    just ``role`` when ``name`` is empty."""
    safe = safe_name(name)
    return f"{role}:{safe}" if safe else role


def record(
    s: Session,
    kind: str,
    *,
    actor: str,
    outcome: Outcome = Outcome.SUCCESS,
    studies: Sequence[str] = (),
    request: str = "",
    detail: str = "",
    host: str = "",
    at: datetime | None = None,
) -> AuditEvent:
    """Add one event to ``s`` (the caller's transaction; it commits with the caller's).

    ``studies`` are Study Instance UIDs, ``request`` a request reference, ``host`` the
    actor's network address. Raises :class:`AuditError` for an unknown kind or a value
    that does not fit (see the module docstring); ``detail`` is cut to 500 characters.
    """
    spec = KINDS.get(kind)
    if spec is None:
        raise AuditError(f"unknown audit event kind {kind!r}; expected one of {sorted(KINDS)}")
    if not _ACTOR.match(actor):
        raise AuditError(f"audit actor {actor!r} is not 'role' or 'role:name'")
    bad = [u for u in studies if len(u) > 64 or not _UID.match(u)]
    if bad:
        raise AuditError(f"not a Study Instance UID: {bad[0]!r}")
    if request and not _REFERENCE.match(request):
        raise AuditError("not a request reference (expected e.g. CR-7KQ4-M2XD-9)")
    if not _HOST.match(host):
        raise AuditError("audit host must be an address or host name")
    uids = sorted(set(studies))
    event = AuditEvent(
        at=at or utcnow(),
        kind=kind,
        event_id=spec.event_id,
        event_type=spec.type_code,
        action=spec.action,
        outcome=int(outcome),
        actor=actor,
        host=host,
        request_ref=request,
        study_uids=f" {' '.join(uids)} " if uids else "",
        detail=" ".join(detail.split())[:DETAIL_MAX],
    )
    s.add(event)
    return event


def record_now(
    sessions: sessionmaker[Session],
    kind: str,
    *,
    clock: Callable[[], datetime] = utcnow,
    **fields: object,
) -> None:
    """:func:`record` in a transaction of its own (for events nothing else is written
    with: the node starting or stopping). Same arguments and errors."""
    with sessions() as s, s.begin():
        record(s, kind, at=clock(), **fields)  # type: ignore[arg-type]


def studies_of(event: AuditEvent) -> list[str]:
    """The Study Instance UIDs ``event`` names."""
    return event.study_uids.split()


def kinds_for(name: str) -> tuple[str, ...]:
    """The kinds a ``--type`` name stands for (a kind, or a group such as ``purge``);
    raises :class:`AuditError` for a name that is neither."""
    if name in KINDS:
        return (name,)
    if name in GROUPS:
        return GROUPS[name]
    raise AuditError(
        f"unknown event type {name!r}; expected one of {sorted(KINDS) + sorted(GROUPS)}"
    )


def events(
    s: Session,
    *,
    request: str | None = None,
    since: datetime | None = None,
    kinds: Sequence[str] = (),
    limit: int = 1000,
) -> list[AuditEvent]:
    """Events in the order they were recorded, the last ``limit`` of them.

    ``request`` keeps the events naming that reference and those naming a study
    attached to that request (what was received for it, purged, exported).
    """
    q = select(AuditEvent)
    if request:
        uids = list(
            s.scalars(
                select(Study.study_uid)
                .join(RequestStudy, RequestStudy.study_id == Study.id)
                .join(ReleaseRequest, ReleaseRequest.id == RequestStudy.request_id)
                .where(ReleaseRequest.reference == request)
            )
        )
        q = q.where(
            or_(
                AuditEvent.request_ref == request,
                *(AuditEvent.study_uids.contains(f" {u} ", autoescape=True) for u in uids),
            )
        )
    if since is not None:
        q = q.where(AuditEvent.at >= since)
    if kinds:
        q = q.where(AuditEvent.kind.in_(list(kinds)))
    rows = list(s.scalars(q.order_by(AuditEvent.id.desc()).limit(limit)))
    rows.reverse()
    return rows


def after(s: Session, last_id: int, limit: int) -> list[AuditEvent]:
    """Up to ``limit`` events recorded after event ``last_id``, oldest first (what an
    exporter has not shipped yet)."""
    return list(
        s.scalars(
            select(AuditEvent).where(AuditEvent.id > last_id).order_by(AuditEvent.id).limit(limit)
        )
    )
