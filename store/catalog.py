"""The catalog: index rows for what arrived, written once the file is durable.

One call, one transaction: the study and series rows are created or updated and the
instance row inserted together. A study that was ``stable`` and receives another
instance goes back to ``receiving``, and that change is recorded as a
:class:`~store.models.StudyEvent`. Database failures surface as
:class:`~store.errors.DatabaseUnavailable`; a concurrent insert of the same SOP
Instance UID as :class:`DuplicateRace`, so the caller can look again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import case, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, TimeoutError
from sqlalchemy.orm import Session, sessionmaker

from store.errors import DatabaseUnavailable, StoreError
from store.models import Instance, InstanceConflict, Series, Study, StudyEvent, StudyState, utcnow


class DuplicateRace(StoreError):
    """Another association inserted the same SOP Instance UID first."""


@dataclass(frozen=True)
class InstanceRecord:
    """Everything the index keeps about one arrival (patient fields stay out of logs)."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    sha256: str
    size_bytes: int
    path: str
    patient_id: str = ""
    patient_name: str = ""
    patient_birth_date: str = ""
    accession_number: str = ""
    study_date: str = ""
    study_description: str = ""
    modality: str = ""
    series_number: str = ""
    series_description: str = ""
    instance_number: str = ""
    calling_ae: str = ""
    called_ae: str = ""
    peer_host: str = ""


@dataclass(frozen=True)
class KnownInstance:
    """An instance already in the index."""

    id: int
    sha256: str
    path: str
    file_missing: bool


@contextmanager
def guarded(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose database failures become :class:`DatabaseUnavailable`."""
    try:
        with sessions() as session:
            yield session
    except IntegrityError:
        raise
    except (OperationalError, TimeoutError, DBAPIError) as exc:
        # The driver's message may quote SQL parameters (patient data): keep the type.
        cause = type(getattr(exc, "orig", None) or exc).__name__
        raise DatabaseUnavailable(
            f"the index database is unavailable ({cause}); "
            "check store.database_url and that the database is running"
        ) from None


class Catalog:
    """Index writes and look-ups for the SCP (and re-indexing at start-up)."""

    def __init__(
        self, sessions: sessionmaker[Session], clock: Callable[[], datetime] = utcnow
    ) -> None:
        self._sessions = sessions
        self._clock = clock

    def lookup(self, sop_instance_uid: str) -> KnownInstance | None:
        """The indexed instance with this UID, or None."""
        with guarded(self._sessions) as s:
            row = s.execute(
                select(Instance.id, Instance.sha256, Instance.path, Instance.file_missing).where(
                    Instance.sop_instance_uid == sop_instance_uid
                )
            ).first()
        return None if row is None else KnownInstance(row[0], row[1], row[2], row[3])

    def mark_restored(self, instance_id: int) -> None:
        """The file of a flagged instance is back (re-sent identical)."""
        with guarded(self._sessions) as s, s.begin():
            s.execute(update(Instance).where(Instance.id == instance_id).values(file_missing=False))

    def add(self, rec: InstanceRecord, received_at: datetime | None = None) -> None:
        """Index a durably stored instance; raises DuplicateRace or DatabaseUnavailable.

        Counters are incremented in SQL (never read-modify-write in Python), and the
        first statement is a write, so SQLite takes its write lock and PostgreSQL its
        row lock before anything is read: concurrent receivers lose no count.
        """
        now = received_at or self._clock()
        try:
            with guarded(self._sessions) as s, s.begin():
                study_id = self._bump_study(s, rec, now)
                state, modalities = s.execute(
                    select(Study.state, Study.modalities).where(Study.id == study_id)
                ).one()
                if state == StudyState.STABLE:
                    s.execute(
                        update(Study)
                        .where(Study.id == study_id)
                        .values(state=StudyState.RECEIVING, stable_at=None)
                    )
                    s.add(
                        StudyEvent(
                            study_id=study_id,
                            at=now,
                            from_state=StudyState.STABLE,
                            to_state=StudyState.RECEIVING,
                            reason="new instance after the study was stable",
                        )
                    )
                if rec.modality and rec.modality not in modalities.split("\\"):
                    joined = "\\".join(m for m in (modalities, rec.modality) if m)
                    s.execute(
                        update(Study).where(Study.id == study_id).values(modalities=joined[:64])
                    )
                series_id = self._bump_series(s, rec, study_id)
                s.add(
                    Instance(
                        study_id=study_id,
                        series_id=series_id,
                        sop_instance_uid=rec.sop_instance_uid,
                        sop_class_uid=rec.sop_class_uid,
                        transfer_syntax_uid=rec.transfer_syntax_uid,
                        instance_number=rec.instance_number,
                        size_bytes=rec.size_bytes,
                        sha256=rec.sha256,
                        path=rec.path,
                        calling_ae=rec.calling_ae,
                        received_at=now,
                        file_missing=False,
                    )
                )
        except IntegrityError:
            raise DuplicateRace("instance, series or study was inserted concurrently") from None

    @staticmethod
    def _bump_study(s: Session, rec: InstanceRecord, now: datetime) -> int:
        bumped = s.execute(
            update(Study)
            .where(Study.study_uid == rec.study_uid)
            .values(
                instance_count=Study.instance_count + 1,
                size_bytes=Study.size_bytes + rec.size_bytes,
                last_received_at=case(
                    (Study.last_received_at < now, now), else_=Study.last_received_at
                ),
            )
            .returning(Study.id)
        ).first()
        if bumped is not None:
            return int(bumped[0])
        study = Study(
            study_uid=rec.study_uid,
            patient_id=rec.patient_id,
            patient_name=rec.patient_name,
            patient_birth_date=rec.patient_birth_date,
            accession_number=rec.accession_number,
            study_date=rec.study_date,
            study_description=rec.study_description,
            modalities=rec.modality,
            state=StudyState.RECEIVING,
            instance_count=1,
            size_bytes=rec.size_bytes,
            calling_ae=rec.calling_ae,
            called_ae=rec.called_ae,
            peer_host=rec.peer_host,
            first_received_at=now,
            last_received_at=now,
        )
        s.add(study)
        s.flush()
        s.add(
            StudyEvent(
                study_id=study.id,
                at=now,
                from_state="",
                to_state=StudyState.RECEIVING,
                reason="first instance",
            )
        )
        return study.id

    @staticmethod
    def _bump_series(s: Session, rec: InstanceRecord, study_id: int) -> int:
        bumped = s.execute(
            update(Series)
            .where(Series.series_uid == rec.series_uid)
            .values(
                instance_count=Series.instance_count + 1,
                size_bytes=Series.size_bytes + rec.size_bytes,
            )
            .returning(Series.id)
        ).first()
        if bumped is not None:
            return int(bumped[0])
        series = Series(
            study_id=study_id,
            series_uid=rec.series_uid,
            modality=rec.modality,
            series_number=rec.series_number,
            series_description=rec.series_description,
            instance_count=1,
            size_bytes=rec.size_bytes,
        )
        s.add(series)
        s.flush()
        return series.id

    def add_conflict(self, rec: InstanceRecord) -> None:
        """Record a same-UID, different-bytes arrival kept aside at ``rec.path``."""
        with guarded(self._sessions) as s, s.begin():
            s.add(
                InstanceConflict(
                    sop_instance_uid=rec.sop_instance_uid,
                    study_uid=rec.study_uid,
                    sha256=rec.sha256,
                    size_bytes=rec.size_bytes,
                    path=rec.path,
                    calling_ae=rec.calling_ae,
                    received_at=self._clock(),
                )
            )
