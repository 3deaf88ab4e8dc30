"""Study stability: a study is ``stable`` once nothing has arrived for ``stable_after_s``.

Like Orthanc's StableAge. The sweep claims each study with ``FOR UPDATE SKIP LOCKED``
(PostgreSQL: a study another node's sweep is recording is skipped, not waited for) and
a conditional UPDATE whose row count says who won, so several sweepers (or nodes) never
record a transition twice; the transition and its :class:`~store.models.StudyEvent`
commit together. A new instance for a stable study sets it back to ``receiving``
(``store.catalog``).

Becoming stable is also when a study's arrival is audited (``instances-stored``, PS3.15
"DICOM Instances Transferred"), in the same transaction: one event per study rather
than per association, because A.5.3 allows one patient per message and an association
may carry several; because the sweep's claim makes it exactly once even with several
receiving processes; and because the C-STORE path then writes nothing more per
instance. The event names the sending AE and host as the study recorded them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from store.audit import actor_of, record, safe_name
from store.catalog import guarded
from store.claims import skip_locked
from store.models import Study, StudyEvent, StudyState, utcnow

log = logging.getLogger("courier.scp.stability")


class StabilitySweep:
    """Marks quiet studies stable; call :meth:`run` periodically."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        stable_after_s: float,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._sessions = sessions
        self._after = timedelta(seconds=stable_after_s)
        self._clock = clock

    def run(self, limit: int = 1000) -> list[str]:
        """Mark every quiet study stable; returns the study UIDs that became stable."""
        now = self._clock()
        cutoff = now - self._after
        became: list[str] = []
        with guarded(self._sessions) as s:
            candidates = s.execute(
                select(
                    Study.id,
                    Study.study_uid,
                    Study.calling_ae,
                    Study.peer_host,
                )
                .where(Study.state == StudyState.RECEIVING, Study.last_received_at <= cutoff)
                .order_by(Study.last_received_at)
                .limit(limit)
            ).all()
            s.rollback()  # end the read; each claim below is its own transaction
            for study_id, study_uid, calling_ae, peer_host in candidates:
                with s.begin():
                    quiet = (
                        Study.id == study_id,
                        Study.state == StudyState.RECEIVING,
                        Study.last_received_at <= cutoff,
                    )
                    # Another node's sweep holds it: theirs to record, skip it.
                    if s.scalar(skip_locked(select(Study.id).where(*quiet))) is None:
                        continue
                    won = s.execute(  # type: ignore[attr-defined]
                        update(Study).where(*quiet).values(state=StudyState.STABLE, stable_at=now)
                    ).rowcount
                    if won == 1:
                        s.add(
                            StudyEvent(
                                study_id=study_id,
                                at=now,
                                from_state=StudyState.RECEIVING,
                                to_state=StudyState.STABLE,
                                reason=f"quiet for {self._after.total_seconds():g} s",
                            )
                        )
                        count = s.scalar(select(Study.instance_count).where(Study.id == study_id))
                        record(
                            s,
                            "instances-stored",
                            actor=actor_of("scp", calling_ae),
                            host=safe_name(peer_host),
                            studies=[study_uid],
                            detail=f"study received and stable: {count} instance(s)",
                            at=now,
                        )
                if won == 1:
                    became.append(study_uid)
                    log.info("study stable study=%s", study_uid)
        return became
