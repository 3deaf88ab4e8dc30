"""Pulls: studies a request asked the PACS to send, moved with retries and recorded.

``courier request create --pull`` stores the request (its selection: the chosen Study
UIDs with the PACS's instance counts as ``expected``) and then one
:class:`~store.models.Pull` row per study (:meth:`PullQueue.enqueue`). The running
node's pull sweep (:meth:`PullQueue.sweep`, on a thread of its own so a long C-MOVE
never holds up stability and matching) claims due rows with a conditional UPDATE,
asks the PACS for a C-MOVE to Courier's AE, and records the attempt's outcome on the
request's timeline. A failed or partial move is retried after
``pacs.retry_backoff_s`` (doubling, capped by ``pacs.retry_backoff_max_s``) until
``pacs.max_attempts``; then, or at once when retrying cannot help (the PACS refused
us, or does not know our AE: :attr:`scp.pacs.PacsError.permanent`), the pull is
``failed`` and the timeline tells staff what to fix.

The instances arrive through the normal C-STORE path; the matcher completes the
request when each study is stable with its expected count. A crash mid-move leaves the
row ``moving`` until its lease ends; the next sweep moves it again (an identical
re-send is harmless). Log lines and timeline entries hold UIDs, AE titles, statuses
and request ids only.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from release.states import FINAL
from scp.pacs import MoveOutcome, PacsError, move_study
from scp.pacs_settings import PacsSettings
from store.catalog import guarded
from store.errors import StoreError
from store.models import (
    Pull,
    PullState,
    ReleaseRequest,
    RequestEvent,
    RequestState,
    utcnow,
)

log = logging.getLogger("courier.node.pulls")

ACTOR = "pacs"
_MAX_REASON = 2000

Mover = Callable[[PacsSettings, str], MoveOutcome]


@dataclass(frozen=True)
class Wanted:
    """A study to pull and the instance count the PACS reported (None: unknown)."""

    study_uid: str
    expected_instances: int | None


def _note(s: Session, request_id: int, reason: str, now: datetime) -> None:
    """Add a timeline entry to the request without changing its state."""
    state = s.scalar(select(ReleaseRequest.state).where(ReleaseRequest.id == request_id))
    s.add(
        RequestEvent(
            request_id=request_id,
            at=now,
            actor=ACTOR,
            from_state=state or "",
            to_state=state or "",
            reason=reason[:_MAX_REASON],
        )
    )


class PullQueue:
    """The ``pulls`` table: queue studies, claim due ones, move them, record outcomes.

    ``move(settings, study_uid)`` is :func:`scp.pacs.move_study` unless a test swaps
    it; ``clock`` gives aware UTC times; ``on_failed(session, request_id)`` runs in the
    transaction that marks a pull failed (the node may queue a staff alert there).
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: PacsSettings,
        *,
        move: Mover | None = None,
        clock: Callable[[], datetime] = utcnow,
        on_failed: Callable[[Session, int], None] | None = None,
    ) -> None:
        self._sessions = sessions
        self._settings = settings
        self._move: Mover = move or (lambda st, uid: move_study(st, uid))
        self._clock = clock
        self._on_failed = on_failed
        # A claim outlives the longest C-MOVE we would wait for, with room to record it.
        self._lease = timedelta(seconds=settings.connect_timeout_s + settings.move_timeout_s + 60)

    # -- queueing ---------------------------------------------------------------------

    def enqueue(self, request_id: int, studies: Sequence[Wanted]) -> int:
        """Queue a pull of each study for the request (due now); returns how many were
        new. Idempotent: a study already queued for the request is left as it is."""
        now = self._clock()
        added = 0
        with guarded(self._sessions) as s, s.begin():
            known = set(s.scalars(select(Pull.study_uid).where(Pull.request_id == request_id)))
            for w in studies:
                if w.study_uid in known:
                    continue
                known.add(w.study_uid)
                s.add(
                    Pull(
                        request_id=request_id,
                        study_uid=w.study_uid,
                        expected_instances=w.expected_instances,
                        state=PullState.QUEUED,
                        attempts=0,
                        next_attempt_at=now,
                        created_at=now,
                        last_status="",
                        last_error="",
                    )
                )
                count = "?" if w.expected_instances is None else str(w.expected_instances)
                _note(
                    s,
                    request_id,
                    f"pull queued: study {w.study_uid} from PACS {self._settings.ae_title} "
                    f"({count} instances expected)",
                    now,
                )
                added += 1
        return added

    # -- claiming and moving ----------------------------------------------------------

    def due(self, limit: int = 20) -> list[int]:
        """Ids of pulls ready for an attempt: queued and due, or claimed by a sweep whose
        lease ran out (the node stopped mid-move)."""
        now = self._clock()
        with guarded(self._sessions) as s:
            return list(
                s.scalars(
                    select(Pull.id)
                    .where(
                        or_(
                            (Pull.state == PullState.QUEUED) & (Pull.next_attempt_at <= now),
                            (Pull.state == PullState.MOVING) & (Pull.claimed_until < now),
                        )
                    )
                    .order_by(Pull.next_attempt_at, Pull.id)
                    .limit(limit)
                )
            )

    def claim(self, pull_id: int) -> bool:
        """Take the pull for one attempt (counts it); False when another sweep has it."""
        now = self._clock()
        with guarded(self._sessions) as s, s.begin():
            result = cast(
                CursorResult[Any],
                s.execute(
                    update(Pull)
                    .where(
                        Pull.id == pull_id,
                        or_(
                            (Pull.state == PullState.QUEUED) & (Pull.next_attempt_at <= now),
                            (Pull.state == PullState.MOVING) & (Pull.claimed_until < now),
                        ),
                    )
                    .values(
                        state=PullState.MOVING,
                        claimed_until=now + self._lease,
                        attempts=Pull.attempts + 1,
                    )
                    .execution_options(synchronize_session=False)
                ),
            )
            return result.rowcount == 1

    def attempt(self, pull_id: int) -> str | None:
        """Claim and move one pull; returns its state afterwards (None: not claimed)."""
        if not self.claim(pull_id):
            return None
        with guarded(self._sessions) as s:
            pull = s.get(Pull, pull_id)
            if pull is None:
                return None
            request_state = s.scalar(
                select(ReleaseRequest.state).where(ReleaseRequest.id == pull.request_id)
            )
            study_uid, request_id, attempts = pull.study_uid, pull.request_id, pull.attempts
        if request_state is None or RequestState(request_state) in FINAL:
            # Nobody waits for it any more: drop it quietly (the request says why).
            return self._finish(pull_id, PullState.FAILED, f"request is {request_state}", "")
        of = f"{attempts}/{self._settings.max_attempts}"
        log.info(
            "pull %d (request %d) attempt %s: C-MOVE study %s", pull_id, request_id, of, study_uid
        )
        try:
            outcome = self._move(self._settings, study_uid)
        except PacsError as exc:
            return self._failed(pull_id, request_id, study_uid, attempts, exc)
        except Exception as exc:  # the sweep must go on; the row is retried
            err = PacsError(f"unexpected {type(exc).__name__} while moving; see the node log")
            log.error("pull %d: unexpected %s", pull_id, type(exc).__name__)
            return self._failed(pull_id, request_id, study_uid, attempts, err)
        reason = f"pull attempt {of}: study {study_uid} sent by the PACS ({outcome.summary()})"
        return self._finish(
            pull_id, PullState.DONE, "", f"0x{outcome.status:04X}", request_id, reason
        )

    def _failed(
        self, pull_id: int, request_id: int, study_uid: str, attempts: int, exc: PacsError
    ) -> str:
        of = f"{attempts}/{self._settings.max_attempts}"
        status = ""
        outcome = getattr(exc, "outcome", None)
        if isinstance(outcome, MoveOutcome):
            status = f"0x{outcome.status:04X}"
        log.warning(
            "pull %d (request %d) attempt %s failed: %s",
            pull_id,
            request_id,
            of,
            type(exc).__name__,
        )
        if exc.permanent or attempts >= self._settings.max_attempts:
            why = "retrying cannot help" if exc.permanent else "no attempts left"
            reason = (
                f"pull attempt {of} failed: {exc}. Pull of study {study_uid} FAILED ({why}); "
                "staff: fix the cause, then create the request again or ask the PACS to "
                "send the study"
            )
            return self._finish(
                pull_id, PullState.FAILED, str(exc), status, request_id, reason, failed=True
            )
        wait = self._settings.backoff_s(attempts)
        now = self._clock()
        with guarded(self._sessions) as s, s.begin():
            s.execute(
                update(Pull)
                .where(Pull.id == pull_id)
                .values(
                    state=PullState.QUEUED,
                    claimed_until=None,
                    next_attempt_at=now + timedelta(seconds=wait),
                    last_status=status,
                    last_error=str(exc)[:_MAX_REASON],
                )
                .execution_options(synchronize_session=False)
            )
            _note(
                s,
                request_id,
                f"pull attempt {of} failed: {exc}. Next attempt in {wait:g} s",
                now,
            )
        return PullState.QUEUED

    def _finish(
        self,
        pull_id: int,
        state: PullState,
        error: str,
        status: str,
        request_id: int | None = None,
        reason: str = "",
        *,
        failed: bool = False,
    ) -> str:
        now = self._clock()
        with guarded(self._sessions) as s, s.begin():
            s.execute(
                update(Pull)
                .where(Pull.id == pull_id)
                .values(
                    state=state,
                    claimed_until=None,
                    finished_at=now,
                    last_status=status,
                    last_error=error[:_MAX_REASON],
                )
                .execution_options(synchronize_session=False)
            )
            if request_id is not None and reason:
                _note(s, request_id, reason, now)
            if failed and request_id is not None and self._on_failed is not None:
                self._on_failed(s, request_id)
        log.info("pull %d: %s", pull_id, state)
        return state

    def sweep(self, limit: int = 20) -> int:
        """One pass: attempt every due pull (one C-MOVE at a time); returns attempts made."""
        made = 0
        for pull_id in self.due(limit):
            if self.attempt(pull_id) is not None:
                made += 1
        return made


class PullWorker:
    """Runs :meth:`PullQueue.sweep` every ``interval_s`` on a daemon thread until stopped."""

    def __init__(self, queue: PullQueue, interval_s: float) -> None:
        self._queue = queue
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="courier-pulls", daemon=True)

    def start(self) -> None:
        """Start sweeping."""
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the thread to end after the current move, and wait up to ``timeout``."""
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._queue.sweep()
            except StoreError as exc:
                log.warning("pull sweep skipped: %s", exc)
            except Exception as exc:  # never let the thread die
                log.error("pull sweep failed (%s)", type(exc).__name__)
            self._stop.wait(self._interval)
