"""The studies staff pick from for a new request, read from the database.

Read-only; plain dataclasses out, so templates never touch a session. Also the rows a
request's page lists as matched (:func:`portal.staff_story.story` fills ``matched_at``).

With a PACS (``pacs:`` in node.yaml), the node also gives the portal a C-FIND as
``PortalContext.pacs_find``: the patient's studies on the PACS as :class:`PacsStudy`
rows, or :class:`PacsLookupFailed` whose message says what to fix. The portal never
imports the DICOM side; :func:`studies_on_pacs` runs that callable on a worker thread
and waits at most the node's bound, so a silent PACS never holds a page for longer.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from store.models import Study, StudyState

log = logging.getLogger("courier.portal.staff")

STUDY_LIMIT = 200


@dataclass(frozen=True)
class StudyLine:
    study_uid: str
    accession_number: str
    study_date: str
    study_description: str
    modalities: str
    instance_count: int
    state: str
    matched_at: datetime | None = None


def study_line(st: Study, matched_at: datetime | None = None) -> StudyLine:
    """The row of ``st`` (``matched_at``: when it joined the request, if it did)."""
    return StudyLine(
        st.study_uid,
        st.accession_number,
        st.study_date,
        st.study_description,
        st.modalities,
        st.instance_count,
        str(st.state),
        matched_at,
    )


def studies_of_patient(s: Session, patient_id: str) -> list[StudyLine]:
    """Received studies (not purged) whose Patient ID is ``patient_id``, newest first."""
    q = (
        select(Study)
        .where(Study.patient_id == patient_id, Study.state != StudyState.PURGED)
        .order_by(Study.study_date.desc(), Study.last_received_at.desc())
        .limit(STUDY_LIMIT)
    )
    return [study_line(st) for st in s.scalars(q)]


def patient_of(s: Session, patient_id: str) -> tuple[str, str]:
    """The name and birth date the newest received study gives for ``patient_id``
    (to prefill the form; staff check them), or empty strings."""
    row = s.execute(
        select(Study.patient_name, Study.patient_birth_date)
        .where(Study.patient_id == patient_id)
        .order_by(Study.last_received_at.desc())
        .limit(1)
    ).first()
    return (row[0], row[1]) if row else ("", "")


@dataclass(frozen=True)
class PacsStudy:
    """One study the PACS holds for the patient, as its C-FIND reported it."""

    study_uid: str
    study_date: str
    description: str
    modalities: str
    accession: str
    instances: int | None  # NumberOfStudyRelatedInstances; None if the PACS gave none


class PacsLookupFailed(Exception):
    """The PACS could not be asked (unreachable, refusing, failed, too slow); the
    message says what to fix and holds no patient data."""


PacsFind = Callable[[str], list[PacsStudy]]


def studies_on_pacs(find: PacsFind, patient_id: str, timeout_s: float) -> list[PacsStudy]:
    """``find(patient_id)`` run on a daemon thread, waited for at most ``timeout_s``.

    Raises :class:`PacsLookupFailed`: as ``find`` raised it, when the answer took
    longer (the thread ends on its own once the PACS times out), or when ``find``
    failed in an unexpected way (only its type is logged).
    """
    box: Future[list[PacsStudy]] = Future()

    def run() -> None:
        try:
            box.set_result(find(patient_id))
        except BaseException as exc:  # handed to the waiting page
            box.set_exception(exc)

    threading.Thread(target=run, name="courier-pacs-find", daemon=True).start()
    try:
        return box.result(timeout=timeout_s)
    except PacsLookupFailed:
        raise
    except TimeoutError:
        raise PacsLookupFailed(
            f"the PACS did not answer within {timeout_s:g} s; try again, and if it keeps "
            "happening ask an admin to check the PACS (`courier pacs echo`)"
        ) from None
    except Exception as exc:
        log.error("PACS query from the staff page failed (%s)", type(exc).__name__)
        raise PacsLookupFailed(
            f"the PACS query failed unexpectedly ({type(exc).__name__}); see the node log, "
            "or name the studies below to wait for them"
        ) from None
