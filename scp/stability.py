"""Study stability: a study is ``stable`` once nothing has arrived for ``stable_after_s``.

Like Orthanc's StableAge. The sweep claims each study with a conditional UPDATE whose
row count says who won, so several sweepers (or nodes) never record a transition
twice; the transition and its :class:`~store.models.StudyEvent` commit together. A
new instance for a stable study sets it back to ``receiving`` (``store.catalog``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from store.catalog import guarded
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
                select(Study.id, Study.study_uid)
                .where(Study.state == StudyState.RECEIVING, Study.last_received_at <= cutoff)
                .order_by(Study.last_received_at)
                .limit(limit)
            ).all()
            s.rollback()  # end the read; each claim below is its own transaction
            for study_id, study_uid in candidates:
                with s.begin():
                    won = s.execute(  # type: ignore[attr-defined]
                        update(Study)
                        .where(
                            Study.id == study_id,
                            Study.state == StudyState.RECEIVING,
                            Study.last_received_at <= cutoff,
                        )
                        .values(state=StudyState.STABLE, stable_at=now)
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
                if won == 1:
                    became.append(study_uid)
                    log.info("study stable study=%s", study_uid)
        return became
