"""Talking to the PACS as an SCU: C-ECHO, C-FIND (study level) and C-MOVE to our own AE.

Thin wrappers: one association per call, study-root information model, answers turned
into plain records (:class:`StudyHit`, :class:`MoveOutcome`). The AE is built by an
injectable factory (``ae_factory``), so tests may swap it; the real thing is tested
against Orthanc on loopback. Nothing here retries: the caller (the node's pull sweep)
owns retries, backoff and recording.

Errors, each saying what to do next (also usable as the builtin they subclass):

- :class:`PacsError`: base; ``permanent`` is True when retrying cannot help until an
  admin changes a configuration.
- :class:`PacsUnreachable` (``ConnectionError``): no TCP connection or no answer to the
  association request (wrong host/port, PACS down, firewall).
- :class:`AssociationRejected` (``ConnectionError``): the PACS refused us (our AE title
  is not known to it, or the called AE is wrong); ``permanent``.
- :class:`PacsAborted` (``ConnectionError``): the PACS accepted the association, then
  aborted it or stopped answering mid-operation (Orthanc does this when our AE title
  may not query or retrieve, i.e. is missing from its ``DicomModalities``).
- :class:`QueryFailed`: a C-FIND failure status (``status``).
- :class:`MoveFailed`: a C-MOVE failure status or sub-operations that failed
  (``outcome``); :class:`MoveDestinationUnknown` (0xA801) is ``permanent``.

No patient data is logged: the patient ID is sent to the PACS and returned to the
caller, never written to a log line (pynetdicom's identifier logging is off).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from scp import association
from scp.pacs_settings import PacsSettings

log = logging.getLogger("courier.scp.pacs")

# C-FIND identifiers hold patient data: pynetdicom must never log them.
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False

# C-FIND / C-MOVE statuses (PS3.4 C.4.1.1.4, C.4.2.1.5).
SUCCESS = 0x0000  # Success: all matches returned / all sub-operations done
CANCELLED = 0xFE00  # Cancel: the operation was cancelled
PENDING = (0xFF00, 0xFF01)  # Pending: a match follows / sub-operations continue
WARNING_SUBOPS = 0xB000  # Warning: sub-operations complete, one or more failed
OUT_OF_RESOURCES_MATCHES = 0xA701  # Refused: out of resources, cannot calculate matches
OUT_OF_RESOURCES_SUBOPS = 0xA702  # Refused: out of resources, cannot do sub-operations
MOVE_DESTINATION_UNKNOWN = 0xA801  # Refused: move destination unknown

AeFactory = Callable[[str], AE]


class PacsError(Exception):
    """A PACS operation failed; ``permanent`` when retrying cannot help as configured."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class PacsUnreachable(PacsError, ConnectionError):
    """No association: the PACS did not answer at its address."""


class AssociationRejected(PacsError, ConnectionError):
    """The PACS answered and refused the association."""

    def __init__(self, message: str) -> None:
        super().__init__(message, permanent=True)


class PacsAborted(PacsError, ConnectionError):
    """The PACS aborted the association, or went silent, during an operation."""


class QueryFailed(PacsError):
    """C-FIND answered a failure status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class MoveFailed(PacsError):
    """C-MOVE did not deliver the whole study; ``outcome`` holds the counts."""

    def __init__(self, message: str, outcome: MoveOutcome, *, permanent: bool = False) -> None:
        super().__init__(message, permanent=permanent)
        self.outcome = outcome


class MoveDestinationUnknown(MoveFailed):
    """0xA801: the PACS does not know our move destination AE title."""

    def __init__(self, message: str, outcome: MoveOutcome) -> None:
        super().__init__(message, outcome, permanent=True)


@dataclass(frozen=True)
class StudyHit:
    """One study the PACS holds for the patient (as C-FIND reported it)."""

    study_uid: str
    study_date: str
    description: str
    modalities: str
    accession: str
    instances: int | None  # NumberOfStudyRelatedInstances; None if the PACS gave none

    def as_dict(self) -> dict[str, Any]:
        """Plain data (the CLI's ``--json``)."""
        return {
            "study_uid": self.study_uid,
            "study_date": self.study_date,
            "description": self.description,
            "modalities": self.modalities,
            "accession": self.accession,
            "instances": self.instances,
        }


@dataclass(frozen=True)
class MoveOutcome:
    """What the PACS reported at the end of one C-MOVE."""

    status: int
    completed: int
    failed: int
    warning: int
    elapsed_s: float

    @property
    def ok(self) -> bool:
        """Every sub-operation succeeded."""
        return self.status == SUCCESS and self.failed == 0

    def summary(self) -> str:
        """One line for a timeline (counts and the status code only)."""
        return (
            f"status 0x{self.status:04X}, {self.completed} sent, {self.failed} failed, "
            f"{self.warning} with warnings, {self.elapsed_s:.1f} s"
        )


def _default_ae(ae_title: str) -> AE:
    return AE(ae_title=ae_title)


def _where(settings: PacsSettings) -> str:
    return f"PACS {settings.ae_title} at {settings.host}:{settings.port}"


@contextmanager
def _associate(
    settings: PacsSettings,
    context: str,
    dimse_timeout_s: float,
    ae_factory: AeFactory,
) -> Iterator[Association]:
    _reachable(settings)
    ae = ae_factory(settings.calling)
    ae.add_requested_context(context)
    with association.opened(
        ae,
        settings.host,
        settings.port,
        settings.ae_title,
        connect_timeout_s=settings.connect_timeout_s,
        dimse_timeout_s=dimse_timeout_s,
        network_timeout_s=max(settings.connect_timeout_s, dimse_timeout_s),
    ) as assoc:
        if assoc.is_rejected:
            raise AssociationRejected(
                f"{_where(settings)} refused the association: it must know our AE title "
                f"{settings.calling} (with this host) and answer to {settings.ae_title}; "
                "ask the PACS admin to add Courier, or fix pacs.ae_title / "
                "pacs.calling_ae_title in node.yaml"
            )
        if not assoc.is_established:
            raise PacsUnreachable(
                f"{_where(settings)} did not answer within {settings.connect_timeout_s:g} s; "
                "check pacs.host and pacs.port in node.yaml, that the PACS is running, "
                "and the firewall (try `courier pacs echo`)"
            )
        if not any(c.abstract_syntax == context for c in assoc.accepted_contexts):
            raise AssociationRejected(
                f"{_where(settings)} does not offer {context} to us; ask the PACS admin "
                "to allow query/retrieve for Courier's AE title"
            )
        yield assoc


def _reachable(settings: PacsSettings) -> None:
    """Raise :class:`PacsUnreachable` unless a TCP connection to the PACS opens (see
    :func:`scp.association.unreachable`)."""
    reason = association.unreachable(settings.host, settings.port, settings.connect_timeout_s)
    if reason is not None:
        raise PacsUnreachable(
            f"{_where(settings)} cannot be reached ({reason}); check pacs.host and "
            "pacs.port in node.yaml, that the PACS is running, and the firewall "
            "(try `courier pacs echo`)"
        )


def _cut_off(settings: PacsSettings, operation: str, timeout_s: float) -> PacsAborted:
    # pynetdicom reports an A-ABORT and a DIMSE timeout alike (an empty status).
    return PacsAborted(
        f"{_where(settings)} aborted the {operation} or did not answer it within "
        f"{timeout_s:g} s: it probably does not allow it from our AE title "
        f"{settings.calling} (ask the PACS admin to allow query/retrieve for Courier), "
        "or it failed (see its log); try again"
    )


def echo(settings: PacsSettings, *, ae_factory: AeFactory = _default_ae) -> None:
    """C-ECHO the PACS; returns when it answered success, raises :class:`PacsError`."""
    with _associate(settings, Verification, settings.find_timeout_s, ae_factory) as assoc:
        status = assoc.send_c_echo()
        code = int(status.Status) if status and "Status" in status else None
        if code != SUCCESS:
            raise QueryFailed(
                f"{_where(settings)} answered C-ECHO with "
                + ("no response" if code is None else f"status 0x{code:04X}"),
                code if code is not None else -1,
            )


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    if value is None:
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _count(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def find_studies(
    settings: PacsSettings, patient_id: str, *, ae_factory: AeFactory = _default_ae
) -> list[StudyHit]:
    """The patient's studies on the PACS (C-FIND, study root, study level), oldest first.

    An unknown patient gives ``[]``. Raises :class:`PacsUnreachable`,
    :class:`AssociationRejected`, or :class:`QueryFailed` on a failure status.
    """
    if not patient_id.strip() or any(c in patient_id for c in "\\*?"):
        # Wildcards or multiple values would match other patients' studies.
        raise ValueError("a patient ID without wildcards (* ?) or backslashes is required")
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientID = patient_id
    query.StudyInstanceUID = ""
    query.StudyDate = ""
    query.StudyDescription = ""
    query.ModalitiesInStudy = ""
    query.AccessionNumber = ""
    query.NumberOfStudyRelatedInstances = ""
    hits: dict[str, StudyHit] = {}
    context = StudyRootQueryRetrieveInformationModelFind
    with _associate(settings, context, settings.find_timeout_s, ae_factory) as assoc:
        for status, identifier in assoc.send_c_find(query, context):
            if not status or "Status" not in status:
                raise _cut_off(settings, "C-FIND", settings.find_timeout_s)
            code = int(status.Status)
            if code in PENDING:
                if identifier is None:
                    continue
                uid = _text(identifier, "StudyInstanceUID")
                # The PACS must honour the patient filter; a hit for someone else is dropped.
                if uid and _text(identifier, "PatientID") in ("", patient_id):
                    hits[uid] = StudyHit(
                        study_uid=uid,
                        study_date=_text(identifier, "StudyDate"),
                        description=_text(identifier, "StudyDescription"),
                        modalities=_text(identifier, "ModalitiesInStudy"),
                        accession=_text(identifier, "AccessionNumber"),
                        instances=_count(identifier, "NumberOfStudyRelatedInstances"),
                    )
            elif code != SUCCESS:
                raise QueryFailed(
                    f"{_where(settings)} answered the C-FIND with failure status "
                    f"0x{code:04X}; see the PACS's log (patient IDs are not logged here)",
                    code,
                )
    log.info("C-FIND at %s: %d study(ies)", settings.ae_title, len(hits))
    return sorted(hits.values(), key=lambda h: (h.study_date, h.study_uid))


def move_study(
    settings: PacsSettings,
    study_uid: str,
    *,
    ae_factory: AeFactory = _default_ae,
    clock: Callable[[], float] = time.monotonic,
) -> MoveOutcome:
    """Ask the PACS to C-MOVE the study to ``settings.destination``; returns the outcome
    when every sub-operation succeeded.

    Raises :class:`PacsUnreachable`, :class:`AssociationRejected`,
    :class:`MoveDestinationUnknown` (0xA801), or :class:`MoveFailed` (a failure status,
    or sub-operations that failed: the instances that did arrive are kept, and a new
    C-MOVE sends the rest; identical re-sends are harmless).
    """
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    context = StudyRootQueryRetrieveInformationModelMove
    started = clock()
    last: Dataset | None = None
    with _associate(settings, context, settings.move_timeout_s, ae_factory) as assoc:
        for status, _identifier in assoc.send_c_move(query, settings.destination, context):
            if not status or "Status" not in status:
                raise _cut_off(settings, "C-MOVE", settings.move_timeout_s)
            last = status
            if int(status.Status) not in PENDING:
                break
    elapsed = clock() - started
    if last is None or int(last.Status) in PENDING:
        raise PacsAborted(f"{_where(settings)} ended the C-MOVE without a final status")
    code = int(last.Status)
    outcome = MoveOutcome(
        status=code,
        completed=int(last.get("NumberOfCompletedSuboperations", 0) or 0),
        failed=int(last.get("NumberOfFailedSuboperations", 0) or 0),
        warning=int(last.get("NumberOfWarningSuboperations", 0) or 0),
        elapsed_s=elapsed,
    )
    log.info("C-MOVE of study %s to %s: %s", study_uid, settings.destination, outcome.summary())
    if code == MOVE_DESTINATION_UNKNOWN:
        raise MoveDestinationUnknown(
            f"{_where(settings)} does not know the move destination "
            f"{settings.destination} (0xA801); ask the PACS admin to add it with Courier's "
            "address and DICOM port, or fix pacs.move_destination in node.yaml",
            outcome,
        )
    if not outcome.ok:
        if code in (SUCCESS, WARNING_SUBOPS):
            what = (
                f"{outcome.failed} instance(s) of study {study_uid} did not reach us; is "
                f"Courier's SCP accepting what the PACS sends to {settings.destination}?"
            )
        else:
            what = (
                f"the PACS could not move study {study_uid} (status 0x{code:04X}): it may "
                f"not know the destination {settings.destination} or not reach it (is "
                "Courier's SCP listening?), or not hold the study; see its log"
            )
        raise MoveFailed(f"{what} ({outcome.summary()})", outcome)
    return outcome
