"""The request book: create, find, list and move release requests, each move audited.

Every change of state is one transaction holding a conditional UPDATE
(``... WHERE id = :id AND state = :from``) and the :class:`~store.models.RequestEvent`
that records it: the UPDATE's row count says who won when two actors move the same
request at once, and the loser writes nothing. The allowed moves are the table in
:mod:`release.states`.

Database failures surface as :class:`~store.errors.DatabaseUnavailable`; the rest as
:mod:`release.errors`. Log lines name requests by reference and id only.
"""

from __future__ import annotations

import builtins
import logging
import random
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import ColumnElement, CursorResult, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from release.errors import InvalidRequest, InvalidTransition, RequestConflict, RequestNotFound
from release.reference import new_reference, normalize_reference
from release.states import FINAL, JOINABLE, RESENDABLE, TRANSITIONS, allowed
from store.catalog import guarded
from store.models import (
    DicomDestination,
    ReleaseRequest,
    RequestEvent,
    RequestSelection,
    RequestState,
    RequestStudy,
    SelectionKind,
    Study,
    utcnow,
)

if TYPE_CHECKING:  # the validators (phonenumbers, email_validator) load where used
    from release.phonepolicy import PhonePolicy
    from release.validation import RequestDraft

log = logging.getLogger("courier.release")

_REFERENCE_ATTEMPTS = 5
_MAX_ACTOR = 200
_MAX_REASON = 2000


def study_uids(s: Session, request_id: int) -> builtins.list[str]:
    """The Study Instance UIDs attached to the request, sorted (each once)."""
    return builtins.list(
        s.scalars(
            select(Study.study_uid)
            .join(RequestStudy, RequestStudy.study_id == Study.id)
            .where(RequestStudy.request_id == request_id)
            .order_by(Study.study_uid)
            .distinct()
        )
    )


class RequestBook:
    """Release requests in the index database.

    ``clock`` gives aware UTC times; ``rng`` draws references (the OS's CSPRNG when None);
    ``phones`` is the node's SMS number policy (``sms.allowed_countries``; the number's
    type is already checked by :class:`RequestDraft`).
    Returned rows are detached, with ``selections`` loaded; use :meth:`timeline` for events.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        clock: Callable[[], datetime] = utcnow,
        rng: random.Random | None = None,
        *,
        phones: PhonePolicy | None = None,
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._rng = rng
        self._phones = phones

    # -- creating ---------------------------------------------------------------------

    def create(self, draft: RequestDraft, actor: str) -> ReleaseRequest:
        """Store ``draft`` as a new pending request; see :meth:`submit`."""
        return self.submit(draft, actor)[0]

    def submit(self, draft: RequestDraft, actor: str) -> tuple[ReleaseRequest, bool]:
        """Store ``draft`` as a pending request; returns ``(request, created)``.

        With an idempotency key already used for the same content, returns the existing
        request and ``created=False`` (nothing written). Raises :class:`RequestConflict`
        if the key was used for different content, :class:`InvalidRequest` (``second_channel:
        …``) for an SMS number outside the node's policy.
        """
        actor = _bounded(actor, "actor", _MAX_ACTOR)
        scheme, _, number = (draft.second_channel or "").partition(":")
        if scheme == "sms" and self._phones is not None:
            from release.phonepolicy import PhoneRefused

            try:
                self._phones.check(number)
            except PhoneRefused as exc:
                raise InvalidRequest(f"second_channel: {exc}") from None
        for _ in range(_REFERENCE_ATTEMPTS):
            if draft.idempotency_key is not None:
                existing = self._by_key(draft.idempotency_key)
                if existing is not None:
                    return self._same_or_conflict(existing, draft), False
            reference = new_reference(self._rng)
            try:
                req = self._insert(draft, actor, reference)
            except IntegrityError:
                # A reference collision or the same key inserted concurrently: look again.
                continue
            log.info("request %s created id=%d", req.reference, req.id)
            return req, True
        raise RequestConflict(
            "could not store the request (the same idempotency key is being used at this "
            "moment, or references keep colliding); try again"
        )

    def _insert(self, draft: RequestDraft, actor: str, reference: str) -> ReleaseRequest:
        now = self._clock()
        with guarded(self._sessions) as s, s.begin():
            req = ReleaseRequest(
                reference=reference,
                state=RequestState.PENDING,
                patient_id=draft.patient_id,
                patient_name=draft.patient_name,
                patient_birth_date=draft.patient_birth_date,
                patient_issuer=draft.patient_issuer,
                # A DICOM destination has no person to e-mail: the columns stay empty.
                recipient_email=draft.recipient_email or "",
                second_channel=draft.second_channel or "",
                backup_email=draft.backup_email,
                language=draft.language,
                urgency=draft.urgency,
                link_days=draft.link_days,
                note=draft.note,
                requested_by=draft.requested_by,
                idempotency_key=draft.idempotency_key,
                created_at=now,
                updated_at=now,
                due_by=draft.due_by,
                tell_patient_when=draft.tell_patient_when,
            )
            req.selections = [
                RequestSelection(
                    kind=sel.kind, value=sel.value, expected_instances=sel.expected_instances
                )
                for sel in draft.selection
            ]
            if draft.by_reference:
                req.selections.append(
                    RequestSelection(kind=SelectionKind.REFERENCE, value=reference)
                )
            # Set even when None: the returned (detached) row must not lazy-load it.
            req.destination = (
                None
                if draft.destination is None
                else DicomDestination(
                    ae_title=draft.destination.ae_title,
                    host=draft.destination.host,
                    port=draft.destination.port,
                    commitment=draft.destination.commitment,
                    attempts=0,
                    last_error="",
                )
            )
            s.add(req)
            s.flush()
            s.add(
                RequestEvent(
                    request_id=req.id,
                    at=now,
                    actor=actor,
                    from_state="",
                    to_state=RequestState.PENDING,
                    reason="created",
                )
            )
        return req

    def _by_key(self, key: str) -> ReleaseRequest | None:
        with guarded(self._sessions) as s:
            return s.scalars(
                select(ReleaseRequest)
                .where(ReleaseRequest.idempotency_key == key)
                .options(selectinload(ReleaseRequest.selections))
            ).first()

    def _same_or_conflict(self, existing: ReleaseRequest, draft: RequestDraft) -> ReleaseRequest:
        if _content_of(existing) != _content(draft):
            raise RequestConflict(
                f"idempotency key already used for request {existing.reference} with "
                "different content; use a new key for a new request, or resend the same "
                "content to get that request back"
            )
        return existing

    # -- reading ----------------------------------------------------------------------

    def get(self, ref_or_id: str | int) -> ReleaseRequest:
        """The request with this reference (as typed: any case, with or without dashes)
        or numeric id; raises :class:`RequestNotFound`."""
        with guarded(self._sessions) as s:
            return self._load(s, ref_or_id)

    def list(
        self,
        state: RequestState | None = None,
        limit: int = 100,
        *,
        where: ColumnElement[bool] | None = None,
    ) -> builtins.list[ReleaseRequest]:
        """Requests, newest first, optionally only those in ``state`` and those ``where``
        holds for (e.g. :func:`release.holds.held_now`); at most ``limit``."""
        q = (
            select(ReleaseRequest)
            .order_by(ReleaseRequest.created_at.desc(), ReleaseRequest.id.desc())
            .limit(max(1, limit))
            .options(selectinload(ReleaseRequest.selections))
        )
        if state is not None:
            q = q.where(ReleaseRequest.state == RequestState(state))
        if where is not None:
            q = q.where(where)
        with guarded(self._sessions) as s:
            return builtins.list(s.scalars(q))

    def timeline(self, ref_or_id: str | int) -> builtins.list[RequestEvent]:
        """Every recorded event of the request, oldest first; raises RequestNotFound."""
        with guarded(self._sessions) as s:
            req = self._load(s, ref_or_id)
            return builtins.list(
                s.scalars(
                    select(RequestEvent)
                    .where(RequestEvent.request_id == req.id)
                    .order_by(RequestEvent.id)
                )
            )

    def find_pending_by(
        self,
        kind: SelectionKind | str,
        value: str,
        states: Sequence[RequestState] = JOINABLE,
        *,
        session: Session | None = None,
    ) -> builtins.list[ReleaseRequest]:
        """Requests still waiting (``states``) that select ``value`` as ``kind``.

        One indexed look-up on (kind, value), never a scan of pending requests. A
        ``reference`` value is normalized first (a tag may hold it in any case); one
        whose check symbol fails finds nothing. With ``session``, the look-up runs in
        the caller's transaction (and the rows belong to that session).
        """
        kind = SelectionKind(kind)
        value = value.strip()
        if kind is SelectionKind.REFERENCE:
            value = normalize_reference(value) or ""
        if not value:
            return []
        q = (
            select(ReleaseRequest)
            .join(RequestSelection, RequestSelection.request_id == ReleaseRequest.id)
            .where(
                RequestSelection.kind == kind,
                RequestSelection.value == value,
                ReleaseRequest.state.in_([RequestState(s) for s in states]),
            )
            .order_by(ReleaseRequest.id)
            .options(selectinload(ReleaseRequest.selections))
        )
        if session is not None:
            return builtins.list(session.scalars(q).unique())
        with guarded(self._sessions) as s:
            return builtins.list(s.scalars(q).unique())

    # -- moving -----------------------------------------------------------------------

    def transition(
        self,
        ref_or_id: str | int,
        to_state: RequestState | str,
        actor: str,
        reason: str,
        *,
        from_state: RequestState | str | None = None,
    ) -> RequestEvent:
        """Move the request to ``to_state`` and record why; returns the recorded event.

        With ``from_state``, the move happens only if the request is in that state
        (what a worker claiming work wants). Raises :class:`InvalidTransition` when the
        table forbids the move or another actor moved the request first (nothing is
        written then), :class:`RequestNotFound`, :class:`InvalidRequest`.
        """
        target = RequestState(to_state)
        actor = _bounded(actor, "actor", _MAX_ACTOR)
        reason = _bounded(reason, "reason", _MAX_REASON, empty_ok=True)
        with guarded(self._sessions) as s, s.begin():
            req = self._load(s, ref_or_id, with_selections=False)
            current = RequestState(req.state)
            source = RequestState(from_state) if from_state is not None else current
            if current != source:
                raise InvalidTransition(
                    f"request {req.reference} is {current}, not {source}; look at it again "
                    f"(courier request show {req.reference})"
                )
            if not allowed(source, target):
                raise InvalidTransition(_refusal(req.reference, source, target))
            now = self._clock()
            return self.move(s, req, source, target, actor, reason, now)

    def cancel(self, ref_or_id: str | int, actor: str, reason: str) -> RequestEvent:
        """Cancel the request (from any state but a final one); returns the event.

        Raises :class:`InvalidTransition` if it is already expired or cancelled.
        """
        return self.transition(ref_or_id, RequestState.CANCELLED, actor, reason)

    def resend(
        self,
        ref_or_id: str | int,
        actor: str,
        reason: str = "resend requested",
        *,
        send: Callable[[Session, ReleaseRequest], None] | None = None,
    ) -> RequestEvent:
        """Record that staff asked to send the link again, and (with ``send``) queue it.

        ``send(session, request)`` runs in the same transaction as the recorded event
        (the node passes one that queues the link email of the patient's active link);
        it raises :class:`InvalidTransition` when there is nothing to send. The state
        does not change. Allowed once a link was sent or its sending failed; raises
        :class:`InvalidTransition` before that (the link goes out by itself when the
        request is ready).
        """
        actor = _bounded(actor, "actor", _MAX_ACTOR)
        reason = _bounded(reason, "reason", _MAX_REASON, empty_ok=True)
        with guarded(self._sessions) as s, s.begin():
            req = self._load(s, ref_or_id, with_selections=False)
            current = RequestState(req.state)
            if current not in RESENDABLE:
                raise InvalidTransition(
                    f"request {req.reference} is {current}: no link has been sent yet, "
                    "nothing to resend"
                    + ("" if current in FINAL else "; it is sent when the studies are ready")
                )
            event = self.move(s, req, current, current, actor, reason, self._clock())
            if send is not None:
                send(s, req)
            return event

    def move(
        self,
        s: Session,
        req: ReleaseRequest,
        source: RequestState,
        target: RequestState,
        actor: str,
        reason: str,
        now: datetime,
        *,
        provided: ColumnElement[bool] | None = None,
    ) -> RequestEvent:
        """Move ``req`` from ``source`` to ``target`` inside the caller's transaction ``s``
        and record the event there, so whatever else the caller writes (a decision, an
        outbox row) commits or rolls back with the move. The caller has checked the
        table (:func:`release.states.allowed`); raises :class:`InvalidTransition` when
        the request is no longer in ``source`` (another actor moved it first) or
        ``provided``, a further condition of the same UPDATE, no longer holds.
        """
        where = [ReleaseRequest.id == req.id, ReleaseRequest.state == source]
        if provided is not None:
            where.append(provided)
        result = cast(
            CursorResult[Any],
            s.execute(
                update(ReleaseRequest)
                .where(*where)
                .values(state=target, updated_at=now)
                .execution_options(synchronize_session=False)
            ),
        )
        if result.rowcount != 1:
            raise InvalidTransition(
                f"request {req.reference} was changed by someone else while moving it from "
                f"{source} to {target}; look at it again (courier request show {req.reference})"
            )
        event = RequestEvent(
            request_id=req.id,
            at=now,
            actor=actor,
            from_state=source,
            to_state=target,
            reason=reason,
        )
        s.add(event)
        s.flush()
        log.info("request %s id=%d %s -> %s by %s", req.reference, req.id, source, target, actor)
        return event

    def _load(
        self, s: Session, ref_or_id: str | int, *, with_selections: bool = True
    ) -> ReleaseRequest:
        q = select(ReleaseRequest)
        if with_selections:
            q = q.options(selectinload(ReleaseRequest.selections))
        text = str(ref_or_id).strip()
        reference = None if isinstance(ref_or_id, int) else normalize_reference(text)
        if reference is not None:
            q = q.where(ReleaseRequest.reference == reference)
        elif text.isascii() and text.isdigit() and len(text) < 19:
            q = q.where(ReleaseRequest.id == int(text))
        else:
            raise RequestNotFound(
                "not a request reference (expected like CR-7KQ4-M2XD-9; its check "
                "symbol catches typos): check it against `courier request list`"
            )
        req = s.scalars(q).first()
        if req is None:
            raise RequestNotFound(
                f"no request {text[:40]}; see `courier request list` for the references"
            )
        return req


def _refusal(reference: str, source: RequestState, target: RequestState) -> str:
    if source in FINAL:
        return f"request {reference} is {source} and stays so; create a new request instead"
    return (
        f"request {reference} cannot go from {source} to {target}; from {source} it can "
        f"go to {', '.join(sorted(_targets(source)))}"
    )


def _targets(source: RequestState) -> builtins.list[str]:
    return [str(t) for t in TRANSITIONS[source]]


def _bounded(value: str, what: str, limit: int, *, empty_ok: bool = False) -> str:
    value = value.strip()
    if not value and not empty_ok:
        raise InvalidRequest(f"{what}: required; say who does this")
    if len(value) > limit:
        raise InvalidRequest(f"{what}: at most {limit} characters")
    if any(ord(c) < 32 and c not in "\n\t" for c in value):
        raise InvalidRequest(f"{what}: control characters are not allowed")
    return value


def _content(draft: RequestDraft) -> dict[str, Any]:
    """What an idempotent re-submission must repeat exactly."""
    data = draft.model_dump(exclude={"selection", "idempotency_key"})
    data["selection"] = sorted((s.kind, s.value, s.expected_instances) for s in draft.selection)
    return data


def _content_of(req: ReleaseRequest) -> dict[str, Any]:
    special = {"selection", "by_reference", "idempotency_key", "destination"}
    from release.validation import RequestDraft

    fields = RequestDraft.model_fields.keys() - special
    data: dict[str, Any] = {name: getattr(req, name) for name in fields}
    dest = req.destination
    data["destination"] = None
    if dest is not None:
        data["destination"] = {
            "ae_title": dest.ae_title,
            "host": dest.host,
            "port": dest.port,
            "commitment": dest.commitment,
        }
        data["recipient_email"] = data["second_channel"] = None
    data["by_reference"] = any(s.kind == SelectionKind.REFERENCE for s in req.selections)
    data["selection"] = sorted(
        (s.kind, s.value, s.expected_instances)
        for s in req.selections
        if s.kind != SelectionKind.REFERENCE
    )
    return data
